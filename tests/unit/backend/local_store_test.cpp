// The local directory and block-device stores (kvmfs/store.h) and the
// Backend's multi-range read and capabilities.
#include <gtest/gtest.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>

#include "kvmfs/store.h"

namespace kvmfs {
namespace {

class StoreDir : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvmfs-store-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    char canon[PATH_MAX];
    ASSERT_NE(::realpath(tmpl, canon), nullptr);
    dir_ = canon;
  }
  void TearDown() override {
    if (!dir_.empty()) (void)std::system(("rm -rf '" + dir_ + "'").c_str());
  }
  std::string P(const std::string& name) const { return dir_ + "/" + name; }
  void Write(const std::string& name, const std::string& bytes) const {
    std::ofstream(P(name), std::ios::binary) << bytes;
  }
  std::string dir_;
};

TEST_F(StoreDir, ListsEveryEntryWithoutDots) {
  Write("a.qcow2", "x");
  ASSERT_EQ(::mkdir(P("sub").c_str(), 0755), 0);
  ASSERT_EQ(::symlink("a.qcow2", P("link").c_str()), 0);
  auto store = NewLocalStore(dir_);
  EXPECT_EQ(store->kind(), "dir");
  EXPECT_EQ(store->root(), dir_);
  auto listed = store->List(dir_);
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  std::vector<std::string> names;
  for (const StoreEntry& e : *listed) names.push_back(e.name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"a.qcow2", "link", "sub"}));
  EXPECT_EQ(store->List(P("missing")).status().code(), Status::Code::kNotFound);
}

TEST_F(StoreDir, StatFollowsLinksOnlyWhenAsked) {
  Write("a.raw", std::string(1000, 'z'));
  ASSERT_EQ(::symlink("a.raw", P("link").c_str()), 0);
  auto store = NewLocalStore(dir_);
  auto l = store->Stat(P("link"), false);
  ASSERT_TRUE(l.ok());
  EXPECT_TRUE(S_ISLNK(l->st_mode));
  auto f = store->Stat(P("link"), true);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(S_ISREG(f->st_mode));
  EXPECT_EQ(f->st_size, 1000);
  EXPECT_EQ(store->Stat(P("none"), true).status().code(), Status::Code::kNotFound);
  auto canon = store->Canonical(P("link"));
  ASSERT_TRUE(canon.ok());
  EXPECT_EQ(*canon, P("a.raw"));
}

TEST_F(StoreDir, ResolvesNamesRelativeToTheNamingImage) {
  ASSERT_EQ(::mkdir(P("sub").c_str(), 0755), 0);
  Write("sub/base.qcow2", "b");
  Write("top.qcow2", "t");
  auto store = NewLocalStore(dir_);
  auto rel = store->Resolve(P("top.qcow2"), "sub/base.qcow2");
  ASSERT_TRUE(rel.ok());
  EXPECT_EQ(*rel, P("sub/base.qcow2"));
  auto up = store->Resolve(P("sub/base.qcow2"), "../top.qcow2");
  ASSERT_TRUE(up.ok());
  EXPECT_EQ(*up, P("top.qcow2"));
  auto abs = store->Resolve(P("top.qcow2"), P("sub/base.qcow2"));
  ASSERT_TRUE(abs.ok());
  EXPECT_EQ(*abs, P("sub/base.qcow2"));
  EXPECT_EQ(store->Resolve(P("top.qcow2"), "nothing").status().code(), Status::Code::kNotFound);
}

TEST_F(StoreDir, OpensFilesAsBackendsWithTheirCapabilities) {
  Write("a.raw", "0123456789abcdef");
  auto store = NewLocalStore(dir_);
  auto file = store->Open(P("a.raw"), false);
  ASSERT_TRUE(file.ok());
  EXPECT_FALSE((*file)->writable());
  const BackendCaps caps = (*file)->caps();
  EXPECT_TRUE(caps.splice);
  EXPECT_TRUE(caps.zeroing);
  EXPECT_TRUE(caps.allocation_map);
  EXPECT_FALSE(caps.remote);
  EXPECT_GE((*file)->fd(), 0);
  // Several ranges at once, one past the end (zeros).
  char a[4], b[4], c[4];
  ASSERT_TRUE((*file)->ReadV({{0, a, 4}, {10, b, 4}, {100, c, 4}}).ok());
  EXPECT_EQ(std::string(a, 4), "0123");
  EXPECT_EQ(std::string(b, 4), "abcd");
  EXPECT_EQ(std::string(c, 4), std::string(4, '\0'));
  EXPECT_EQ(store->Open(dir_, false).status().code(), Status::Code::kInvalidArgument);
  auto rw = store->Open(P("a.raw"), true);
  ASSERT_TRUE(rw.ok());
  EXPECT_TRUE((*rw)->writable());
}

TEST_F(StoreDir, LocksTakeQemusBytesAndKvmfsNeverRefusesItself) {
  Write("a.qcow2", std::string(4096, '\0'));
  auto store = NewLocalStore(dir_);
  auto writer = store->Lock(P("a.qcow2"), kWriterLocks);
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  EXPECT_EQ((*writer)->set(), kWriterLocks);
  // A second claim in this process shares the file's locks.
  auto reader = store->Lock(P("a.qcow2"), kReaderLocks);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  ASSERT_TRUE((*writer)->Change(kReaderLocks).ok());
  EXPECT_EQ((*writer)->set(), kReaderLocks);
  // Another program (qemu-io, when present) sees them: it cannot write.
  if (std::system("command -v qemu-io >/dev/null 2>&1") == 0) {
    const std::string cmd = "qemu-io -f raw -c 'write 0 512' '" + P("a.qcow2") + "' >/dev/null 2>&1";
    EXPECT_NE(std::system(cmd.c_str()), 0);
  }
}

TEST_F(StoreDir, StatFsOfTheRoot) {
  auto store = NewLocalStore(dir_);
  auto sv = store->StatFs(dir_);
  ASSERT_TRUE(sv.ok());
  EXPECT_GT(sv->f_bsize, 0u);
  EXPECT_FALSE(store->caps().snapshots);
  EXPECT_EQ(store->Snapshots(P("x")).value().size(), 0u);
  EXPECT_EQ(store->CreateSnapshot(P("x"), "s").status().code(), Status::Code::kNotSupported);
}

TEST_F(StoreDir, BlockDeviceStoreListsOnlyBlockDevices) {
  Write("plain.raw", "x");
  // /dev/loop-control is a char device; a block device may not exist in a
  // container: link one when there is.
  bool have_block = false;
  for (const char* dev : {"/dev/loop0", "/dev/sda", "/dev/vda", "/dev/nvme0n1"}) {
    struct stat st;
    if (::stat(dev, &st) == 0 && S_ISBLK(st.st_mode)) {
      ASSERT_EQ(::symlink(dev, P("lv0").c_str()), 0);
      have_block = true;
      break;
    }
  }
  auto store = NewBlockDeviceStore(dir_);
  EXPECT_EQ(store->kind(), "blockdev");
  EXPECT_TRUE(store->caps().every_file_an_image);
  auto listed = store->List(dir_);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), have_block ? 1u : 0u);
  if (have_block) EXPECT_EQ(listed->front().name, "lv0");
  EXPECT_EQ(store->Open(P("plain.raw"), false).status().code(), Status::Code::kInvalidArgument);
}

TEST(HostStore, IsOneLocalStoreOfTheWholeHost) {
  EXPECT_EQ(HostStore().get(), HostStore().get());
  EXPECT_EQ(HostStore()->root(), "/");
  EXPECT_EQ(HostStore()->kind(), "dir");
}

}  // namespace
}  // namespace kvmfs
