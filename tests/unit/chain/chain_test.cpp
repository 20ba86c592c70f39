// The chain opener against images made by qemu-img at test time.
#include "kvmfs/chain.h"

#include <gtest/gtest.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace kvmfs {
namespace {

class ChainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvmfs-chain-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    char canon[PATH_MAX];
    ASSERT_NE(::realpath(tmpl, canon), nullptr);
    dir_ = canon;
    policy_.allowed_roots = {dir_};
    has_qemu_img_ = std::system("qemu-img --version >/dev/null 2>&1") == 0;
  }
  void TearDown() override { Run("rm -rf '" + dir_ + "'"); }

  static bool Run(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }
  std::string P(const std::string& name) const { return dir_ + "/" + name; }

  void WriteFile(const std::string& name, const std::string& bytes) {
    std::ofstream(P(name), std::ios::binary) << bytes;
  }

  std::vector<uint8_t> ReadAll(Image& image) {
    std::vector<uint8_t> out(image.size());
    EXPECT_TRUE(image.Read(0, out.data(), out.size()).ok());
    return out;
  }

  std::string dir_;
  ChainPolicy policy_;
  bool has_qemu_img_ = false;
};

#define REQUIRE_QEMU_IMG() \
  if (!has_qemu_img_) GTEST_SKIP() << "SKIPPED: qemu-img is not installed"

TEST_F(ChainTest, RawNameIsNeverProbed) {
  // A guest could write a qcow2 header into sector 0 of a raw disk; a file
  // whose name says raw must stay raw.
  WriteFile("disk.raw", std::string("QFI\xfb\0\0\0\3", 8) + std::string(504, '\0'));
  auto fmt = DetectFormat(P("disk.raw"), "");
  ASSERT_TRUE(fmt.ok());
  EXPECT_EQ(*fmt, "raw");
  auto chain = OpenChain(P("disk.raw"), policy_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_EQ(chain->layers.size(), 1u);
  EXPECT_EQ(chain->layers[0].format, "raw");
}

TEST_F(ChainTest, UnknownContentIsRaw) {
  WriteFile("plain.img", std::string(4096, 'x'));
  auto fmt = DetectFormat(P("plain.img"), "");
  ASSERT_TRUE(fmt.ok());
  EXPECT_EQ(*fmt, "raw");
}

TEST_F(ChainTest, UnknownFormatHintIsRefused) {
  WriteFile("plain.img", std::string(512, 'x'));
  auto fmt = DetectFormat(P("plain.img"), "bogus");
  ASSERT_FALSE(fmt.ok());
  EXPECT_EQ(fmt.status().code(), Status::Code::kNotSupported);
}

TEST_F(ChainTest, MissingTopIsNotFound) {
  auto chain = OpenChain(P("nope.qcow2"), policy_);
  ASSERT_FALSE(chain.ok());
  EXPECT_TRUE(chain.status().IsNotFound());
}

TEST_F(ChainTest, ThreeDeepMixedChainWithShorterBase) {
  REQUIRE_QEMU_IMG();
  ASSERT_TRUE(Run("mkdir -p " + P("base") + " " + P("top")));
  ASSERT_TRUE(Run("qemu-img create -f raw " + P("base/base.raw") + " 1M"));
  ASSERT_TRUE(Run("qemu-io -f raw -c 'write -P 0x11 0 1M' " + P("base/base.raw")));
  ASSERT_TRUE(Run("qemu-img create -f qcow2 -b ../base/base.raw -F raw " + P("top/mid.qcow2") + " 2M"));
  ASSERT_TRUE(Run("qemu-io -c 'write -P 0x22 512k 256k' " + P("top/mid.qcow2")));
  ASSERT_TRUE(Run("qemu-img create -f qcow2 -b mid.qcow2 -F qcow2 " + P("top/top.qcow2") + " 3M"));
  ASSERT_TRUE(Run("qemu-io -c 'write -P 0x33 2560k 64k' " + P("top/top.qcow2")));

  auto chain = OpenChain(P("top/top.qcow2"), policy_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  ASSERT_EQ(chain->layers.size(), 3u);
  EXPECT_EQ(chain->layers[1].path, P("top/mid.qcow2"));
  EXPECT_EQ(chain->layers[2].path, P("base/base.raw"));
  EXPECT_EQ(chain->layers[2].format, "raw");

  std::vector<uint8_t> data = ReadAll(*chain->top());
  ASSERT_EQ(data.size(), 3u << 20);
  EXPECT_EQ(data[0], 0x11);                    // from the base
  EXPECT_EQ(data[(512 << 10) + 5], 0x22);      // from the middle
  EXPECT_EQ(data[(1 << 20) + 7], 0);           // past the shorter base
  EXPECT_EQ(data[(2560 << 10) + 9], 0x33);     // from the top
  EXPECT_EQ(data[(3 << 20) - 1], 0);           // past the middle's size

  auto bs = ChainBlockStatus(*chain->top(), 0, 4096);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kData);
  auto past_mid = ChainBlockStatus(*chain->top(), 2 << 20, 64 << 10);
  ASSERT_TRUE(past_mid.ok());
  EXPECT_EQ(past_mid->kind, Allocation::kZero);
}

TEST_F(ChainTest, MissingBackingFileIsNotFoundAndNamesIt) {
  REQUIRE_QEMU_IMG();
  ASSERT_TRUE(Run("qemu-img create -f raw " + P("b.raw") + " 1M"));
  ASSERT_TRUE(Run("qemu-img create -f qcow2 -b b.raw -F raw " + P("o.qcow2") + " 1M"));
  ASSERT_TRUE(Run("rm " + P("b.raw")));
  auto chain = OpenChain(P("o.qcow2"), policy_);
  ASSERT_FALSE(chain.ok());
  EXPECT_TRUE(chain.status().IsNotFound());
  EXPECT_NE(chain.status().message().find("o.qcow2"), std::string::npos);
  EXPECT_NE(chain.status().message().find("b.raw"), std::string::npos);
}

TEST_F(ChainTest, BackingOutsideRootsIsRefused) {
  REQUIRE_QEMU_IMG();
  char tmpl[] = "/tmp/kvmfs-outside-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string outside = tmpl;
  ASSERT_TRUE(Run("qemu-img create -f raw " + outside + "/secret.raw 1M"));
  ASSERT_TRUE(Run("qemu-img create -f qcow2 -b " + outside + "/secret.raw -F raw " + P("o.qcow2") + " 1M"));
  auto chain = OpenChain(P("o.qcow2"), policy_);
  ASSERT_FALSE(chain.ok());
  EXPECT_EQ(chain.status().code(), Status::Code::kPermission);

  char canon[PATH_MAX];
  ASSERT_NE(::realpath(outside.c_str(), canon), nullptr);
  ChainPolicy allowed = policy_;
  allowed.allowed_roots.push_back(canon);
  auto ok = OpenChain(P("o.qcow2"), allowed);
  EXPECT_TRUE(ok.ok()) << ok.status().ToString();
  Run("rm -rf " + outside);
}

TEST_F(ChainTest, RootPrefixIsNotARoot) {
  // /tmp/x-evil must not pass as being under /tmp/x.
  REQUIRE_QEMU_IMG();
  std::string evil = dir_ + "-evil";
  ASSERT_TRUE(Run("mkdir -p " + evil));
  ASSERT_TRUE(Run("qemu-img create -f raw " + evil + "/b.raw 1M"));
  ASSERT_TRUE(Run("qemu-img create -f qcow2 -b " + evil + "/b.raw -F raw " + P("o.qcow2") + " 1M"));
  auto chain = OpenChain(P("o.qcow2"), policy_);
  EXPECT_EQ(chain.status().code(), Status::Code::kPermission);
  Run("rm -rf " + evil);
}

TEST_F(ChainTest, BackingLoopIsRefused) {
  REQUIRE_QEMU_IMG();
  ASSERT_TRUE(Run("qemu-img create -f qcow2 " + P("b.qcow2") + " 1M"));
  ASSERT_TRUE(Run("qemu-img create -f qcow2 -b b.qcow2 -F qcow2 " + P("a.qcow2") + " 1M"));
  ASSERT_TRUE(Run("qemu-img rebase -u -b a.qcow2 -F qcow2 " + P("b.qcow2")));
  auto chain = OpenChain(P("a.qcow2"), policy_);
  ASSERT_FALSE(chain.ok());
  EXPECT_EQ(chain.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(chain.status().message().find("loop"), std::string::npos);
}

TEST_F(ChainTest, SelfBackingIsALoop) {
  REQUIRE_QEMU_IMG();
  ASSERT_TRUE(Run("qemu-img create -f qcow2 " + P("s.qcow2") + " 1M"));
  ASSERT_TRUE(Run("qemu-img rebase -u -b s.qcow2 -F qcow2 " + P("s.qcow2")));
  auto chain = OpenChain(P("s.qcow2"), policy_);
  ASSERT_FALSE(chain.ok());
  EXPECT_NE(chain.status().message().find("loop"), std::string::npos);
}

TEST_F(ChainTest, ChainDeeperThanCapIsRefused) {
  REQUIRE_QEMU_IMG();
  ASSERT_TRUE(Run("qemu-img create -f qcow2 " + P("l0.qcow2") + " 1M"));
  for (int i = 1; i < 6; ++i)
    ASSERT_TRUE(Run("qemu-img create -f qcow2 -b l" + std::to_string(i - 1) + ".qcow2 -F qcow2 " +
                    P("l" + std::to_string(i) + ".qcow2") + " 1M"));
  ChainPolicy shallow = policy_;
  shallow.max_depth = 5;
  auto refused = OpenChain(P("l5.qcow2"), shallow);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("deeper"), std::string::npos);
  shallow.max_depth = 6;
  auto ok = OpenChain(P("l5.qcow2"), shallow);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->layers.size(), 6u);
}

TEST_F(ChainTest, JsonBackingSpecIsRefused) {
  REQUIRE_QEMU_IMG();
  ASSERT_TRUE(Run("qemu-img create -f qcow2 " + P("j.qcow2") + " 1M"));
  ASSERT_TRUE(Run("qemu-img rebase -u -b 'json:{\"driver\":\"raw\"}' -F raw " + P("j.qcow2")));
  auto chain = OpenChain(P("j.qcow2"), policy_);
  ASSERT_FALSE(chain.ok());
  EXPECT_EQ(chain.status().code(), Status::Code::kNotSupported);
}

}  // namespace
}  // namespace kvmfs
