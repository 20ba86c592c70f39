// Opening chains for writing: only the top layer, only writable formats, and
// the raw driver's writes, zeroes and resize.
#include <gtest/gtest.h>
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "kvmfs/chain.h"

namespace kvmfs {
namespace {

class ChainWriteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvmfs-chainw-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    char canon[PATH_MAX];
    ASSERT_NE(::realpath(tmpl, canon), nullptr);
    dir_ = canon;
    policy_.allowed_roots = {dir_};
    policy_.writable_top = true;
    has_qemu_img_ = Run("qemu-img --version");
  }
  void TearDown() override { Run("rm -rf '" + dir_ + "'"); }
  static bool Run(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }
  std::string P(const std::string& name) const { return dir_ + "/" + name; }
  void WriteFile(const std::string& name, const std::string& bytes) {
    std::ofstream(P(name), std::ios::binary) << bytes;
  }
  std::string FileBytes(const std::string& name) {
    std::ifstream f(P(name), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  Chain Open(const std::string& name) {
    auto chain = OpenChain(P(name), policy_);
    EXPECT_TRUE(chain.ok()) << chain.status().ToString();
    return chain.ok() ? std::move(chain).value() : Chain{};
  }

  std::string dir_;
  ChainPolicy policy_;
  bool has_qemu_img_ = false;
};

TEST_F(ChainWriteTest, WritableFormatsAreTheDriversThatSaySo) {
  EXPECT_TRUE(FormatWritable("raw"));
  EXPECT_TRUE(FormatWritable("qcow2"));
  EXPECT_FALSE(FormatWritable("no-such-format"));
  for (const FormatDriver* f : AllFormats()) EXPECT_EQ(FormatWritable(f->name()), f->caps().writable);
}

TEST_F(ChainWriteTest, RawTopOpensWritableOnlyWhenAsked) {
  WriteFile("a.raw", std::string(8192, 'a'));
  Chain rw = Open("a.raw");
  ASSERT_EQ(rw.layers.size(), 1u);
  EXPECT_TRUE(rw.layers[0].writable);
  policy_.writable_top = false;
  Chain ro = Open("a.raw");
  EXPECT_FALSE(ro.layers[0].writable);
  EXPECT_EQ(ro.top()->BeginWrites().code(), Status::Code::kReadOnly);
  EXPECT_EQ(ro.top()->Write(0, "x", 1).code(), Status::Code::kReadOnly);
}

TEST_F(ChainWriteTest, RawWritesNeedBeginWrites) {
  WriteFile("a.raw", std::string(8192, 'a'));
  Chain c = Open("a.raw");
  Image& img = *c.top();
  EXPECT_FALSE(img.writable());
  EXPECT_EQ(img.Write(0, "x", 1).code(), Status::Code::kReadOnly);
  ASSERT_TRUE(img.BeginWrites().ok());
  ASSERT_TRUE(img.BeginWrites().ok());  // idempotent
  EXPECT_TRUE(img.writable());
  ASSERT_TRUE(img.Write(100, "hello", 5).ok());
  ASSERT_TRUE(img.Flush().ok());
  EXPECT_EQ(FileBytes("a.raw").substr(98, 9), "aahelloaa");
  // Past the end of the disk: refused, the file does not grow.
  EXPECT_EQ(img.Write(8190, "xyz", 3).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(FileBytes("a.raw").size(), 8192u);
  ASSERT_TRUE(img.EndWrites().ok());
}

TEST_F(ChainWriteTest, RawZeroesAndDiscard) {
  WriteFile("a.raw", std::string(1 << 20, 'a'));
  Chain c = Open("a.raw");
  Image& img = *c.top();
  ASSERT_TRUE(img.BeginWrites().ok());
  ASSERT_TRUE(img.WriteZeroes(4096, 65536, true).ok());
  ASSERT_TRUE(img.WriteZeroes(131072, 100, false).ok());
  std::string bytes = FileBytes("a.raw");
  EXPECT_EQ(bytes.size(), 1u << 20);
  EXPECT_EQ(bytes.substr(4096, 65536), std::string(65536, '\0'));
  EXPECT_EQ(bytes.substr(131072, 100), std::string(100, '\0'));
  EXPECT_EQ(bytes[4095], 'a');
  EXPECT_EQ(bytes[131172], 'a');
  // The hole is reported as such (SEEK_HOLE on the mount).
  auto bs = img.GetBlockStatus(4096, 65536);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kZero);
  EXPECT_EQ(img.WriteZeroes((1 << 20) - 10, 20, false).code(), Status::Code::kInvalidArgument);
}

TEST_F(ChainWriteTest, RawResizeGrowsAndRefusesShrinking) {
  WriteFile("a.raw", std::string(4096, 'a'));
  Chain c = Open("a.raw");
  Image& img = *c.top();
  EXPECT_EQ(img.Resize(8192).code(), Status::Code::kReadOnly);  // before BeginWrites
  ASSERT_TRUE(img.BeginWrites().ok());
  ASSERT_TRUE(img.Resize(1 << 20).ok());
  EXPECT_EQ(img.size(), 1u << 20);
  EXPECT_EQ(img.Info().virtual_size, 1u << 20);
  std::vector<char> buf(16, 'x');
  ASSERT_TRUE(img.Read(8192, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, std::vector<char>(16, '\0'));
  ASSERT_TRUE(img.Write((1 << 20) - 1, "z", 1).ok());  // the new end is writable
  EXPECT_EQ(img.Resize(4096).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(img.size(), 1u << 20);
  EXPECT_EQ(FileBytes("a.raw").size(), 1u << 20);
}

TEST_F(ChainWriteTest, BackingLayersAlwaysReadOnly) {
  ASSERT_TRUE(has_qemu_img_) << "qemu-img is required (tools/setup-deps.sh)";
  WriteFile("base.raw", std::string(1 << 20, 'b'));
  ASSERT_TRUE(Run("qemu-img create -q -f qcow2 -b '" + P("base.raw") + "' -F raw '" + P("top.qcow2") + "'"));
  Chain c = Open("top.qcow2");
  ASSERT_EQ(c.layers.size(), 2u);
  EXPECT_TRUE(c.layers[0].writable);
  EXPECT_FALSE(c.layers[1].writable);
  EXPECT_EQ(c.layers[1].image->BeginWrites().code(), Status::Code::kReadOnly);
}

TEST_F(ChainWriteTest, BackingFilesUnderWritableRootsOpenForWriting) {
  ASSERT_TRUE(has_qemu_img_) << "qemu-img is required (tools/setup-deps.sh)";
  WriteFile("base.raw", std::string(1 << 20, 'b'));
  ASSERT_TRUE(Run("qemu-img create -q -f qcow2 -b '" + P("base.raw") + "' -F raw '" + P("top.qcow2") + "'"));
  policy_.writable_roots = {dir_};
  Chain c = Open("top.qcow2");
  ASSERT_EQ(c.layers.size(), 2u);
  EXPECT_TRUE(c.layers[0].writable);
  EXPECT_TRUE(c.layers[1].writable);
  policy_.writable_top = false;  // a read-only pool opens nothing for writing
  Chain ro = Open("top.qcow2");
  EXPECT_FALSE(ro.layers[0].writable);
  EXPECT_FALSE(ro.layers[1].writable);
}

// The host refuses writing: the file is served read-only with the reason.
// CI runs as root, who may write a 0444 file: the check runs in a child that
// drops to an unprivileged user first.
TEST_F(ChainWriteTest, UnwritableHostFileOpensReadOnly) {
  WriteFile("a.raw", std::string(4096, 'a'));
  ASSERT_EQ(::chmod(P("a.raw").c_str(), 0444), 0);
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::geteuid() == 0 && (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
                             ::setresuid(65534, 65534, 65534) != 0))
      ::_exit(2);
    auto c = OpenChain(P("a.raw"), policy_);
    if (!c.ok() || c->layers.size() != 1) ::_exit(3);
    if (c->layers[0].writable) ::_exit(4);
    if (c->layers[0].read_only_reason.empty()) ::_exit(5);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: cannot drop privileges, 3: open failed, 4: opened "
                                       "writable, 5: no read-only reason";
}

}  // namespace
}  // namespace kvmfs
