// KeyRing: which key file an image path gets, and reading it as QEMU does.
#include "crypto/key_ring.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>

#include "qemu_images.h"

namespace kvmfs::crypto {
namespace {

using kvmfs::testing::ScratchDir;

std::string Bytes(const Secret& s) { return std::string(reinterpret_cast<const char*>(s.data()), s.size()); }

class KeyRingTest : public ::testing::Test {
 protected:
  std::string Key(const std::string& name, const std::string& text, mode_t mode = 0600) {
    std::string p = dir_.P(name);
    std::ofstream(p, std::ios::binary) << text;
    ::chmod(p.c_str(), mode);
    return p;
  }
  ScratchDir dir_;
};

TEST_F(KeyRingTest, FirstMatchingGlobOnThePathInsideThePool) {
  std::string a = Key("a", "alpha\n"), b = Key("b", "beta");
  KeyRing ring({{"vms/special.luks", a, "k.yaml:2"}, {"vms/*", b, "k.yaml:4"}},
               {"/pool", "/backing"});
  auto k = ring.KeyFor("/pool/vms/special.luks");
  ASSERT_TRUE(k.ok()) << k.status().ToString();
  EXPECT_EQ(Bytes(**k), "alpha\n");  // the file's bytes, newline included
  k = ring.KeyFor("/pool/vms/deeper/x.qcow2");  // '*' crosses '/'
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(Bytes(**k), "beta");
  k = ring.KeyFor("/backing/vms/base.luks");  // relative to the backing root
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(Bytes(**k), "beta");
}

TEST_F(KeyRingTest, AbsoluteGlobsMatchTheHostPath) {
  std::string a = Key("a", "alpha");
  KeyRing ring({{"/pool/*.luks", a, "k.yaml:2"}}, {"/pool"});
  EXPECT_TRUE(ring.KeyFor("/pool/x.luks").ok());
  EXPECT_FALSE(ring.KeyFor("/other/x.luks").ok());
}

TEST_F(KeyRingTest, NoMatchIsPermissionNamingThePath) {
  KeyRing ring({}, {"/pool"});
  auto k = ring.KeyFor("/pool/sub/vm.luks");
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.status().code(), Status::Code::kPermission);
  EXPECT_NE(k.status().message().find("no key configured"), std::string::npos);
  EXPECT_NE(k.status().message().find("sub/vm.luks"), std::string::npos);
}

TEST_F(KeyRingTest, KeyFileProblemsArePermissionWithoutTheSecret) {
  std::string big = Key("big", std::string(kMaxKeyFileBytes + 1, 'x'));
  KeyRing ring({{"missing", dir_.P("nope"), "k.yaml:2"},
                {"dir", dir_.P(""), "k.yaml:4"},
                {"big", big, "k.yaml:6"}},
               {"/pool"});
  for (const char* name : {"missing", "dir", "big"}) {
    auto k = ring.KeyFor(std::string("/pool/") + name);
    ASSERT_FALSE(k.ok()) << name;
    EXPECT_EQ(k.status().code(), Status::Code::kPermission) << name;
    EXPECT_NE(k.status().message().find("key file"), std::string::npos) << k.status().message();
    EXPECT_EQ(k.status().message().find("xxxx"), std::string::npos);
  }
}

TEST_F(KeyRingTest, LooseModesAreWarnedAbout) {
  std::string tight = Key("tight", "a", 0600), loose = Key("loose", "b", 0644),
              group = Key("group", "c", 0640);
  auto w = KeyFileWarnings({{"*", tight, "k:1"}, {"*", loose, "k:2"}, {"*", group, "k:3"}});
  ASSERT_EQ(w.size(), 2u);
  EXPECT_NE(w[0].find("mode 0644"), std::string::npos) << w[0];
  EXPECT_NE(w[1].find("mode 0640"), std::string::npos) << w[1];
}

TEST_F(KeyRingTest, KeyFileBytesLiveInASecret) {
  auto s = ReadKeyFile(Key("k", "passphrase"));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->size(), 10u);
}

}  // namespace
}  // namespace kvmfs::crypto
