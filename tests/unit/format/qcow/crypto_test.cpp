// Encrypted qcow (v1, legacy AES) against qemu-img given the secret: reads,
// writes (whole and partial sectors, new clusters, zeroes) checked with
// `qemu-img compare`, a chain of encrypted layers each with its own key, a
// wrong key reading the same noise QEMU reads, and no key at all.
#include <gtest/gtest.h>

#include "../qcow2/crypto_helpers.h"

namespace kvmfs {
namespace {

using test::CryptoImageTest;
using test::ExpectImageEquals;
using test::FirstDiff;

constexpr uint64_t kSize = 2 << 20;

std::vector<uint8_t> Pattern(uint64_t seed, size_t n) {
  std::vector<uint8_t> v(n);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (auto& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<uint8_t>(x);
  }
  return v;
}

class QcowCrypto : public CryptoImageTest {
 public:
  // Writes (and zeroes) through `img`, applied to `expect` too.
  void Change(Image& img, std::vector<uint8_t>& expect) {
    struct W {
      uint64_t off, len;
      int zero;  // 0 write, 1 zeroes, 2 discard
    };
    const W changes[] = {
        {4096, 4096, 0},   {100, 200, 0},         {130 * 1024 + 7, 5000, 0},
        {512 * 1024, 128 * 1024, 0}, {1000 * 1024 + 33, 70, 0}, {1003 * 1024 + 5, 9000, 1},
        {16 * 1024, 8192, 2},        {kSize - 512, 512, 0},     {1500 * 1024 + 300, 700, 1},
    };
    uint64_t seed = 1;
    for (const W& c : changes) {
      SCOPED_TRACE(c.off);
      if (c.zero == 0) {
        const std::vector<uint8_t> d = Pattern(seed++, c.len);
        ASSERT_TRUE(img.Write(c.off, d.data(), d.size()).ok());
        std::copy(d.begin(), d.end(), expect.begin() + c.off);
      } else {
        Status st = img.WriteZeroes(c.off, c.len, c.zero == 2);
        ASSERT_TRUE(st.ok()) << st.ToString();
        std::fill_n(expect.begin() + c.off, c.len, 0);
      }
    }
  }
};

TEST_F(QcowCrypto, AesReadsAndWritesAsQemu) {
  CreateMany({"-f qcow -o encrypt.format=aes,encrypt.key-secret=sec0 a.qcow 2M"});
  const std::string opts = Opts("a.qcow", "qcow");
  IoEnc(opts, {"write -P 0x5a 0 64k", "write -P 0x17 100k 3k", "write -P 0x44 1000k 100k",
               "write -P 0x66 2047k 1k", "write -z 1010k 8k"});
  std::vector<uint8_t> expect = QemuRawEnc(opts);
  ASSERT_EQ(expect.size(), kSize);
  {
    auto image = OpenEnc("a.qcow", secrets_["sec0"], false, "qcow");
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    EXPECT_TRUE((*image)->Info().encrypted);
    ExpectImageEquals(**image, expect);
    // Read-only, yet never a file piece: the file holds ciphertext.
    ReadPlan plan;
    ASSERT_TRUE((*image)->PlanRead(0, kSize, plan).ok());
    for (const ReadPlan::Piece& p : plan.pieces()) EXPECT_LT(p.fd, 0);
  }
  {
    auto image = OpenEnc("a.qcow", secrets_["sec0"], true, "qcow");
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    ASSERT_TRUE((*image)->BeginWrites().ok());
    Change(**image, expect);
    ExpectImageEquals(**image, expect);
    ASSERT_TRUE((*image)->EndWrites().ok());
  }
  std::string out;
  EXPECT_EQ(CompareEnc(opts, expect, &out), 0) << out;
}

TEST_F(QcowCrypto, ChainOfAesLayersEachWithItsOwnKey) {
  // base (sec0, 4 KiB clusters) <- top (sec1, 512-byte clusters, as
  // qemu-img makes overlays).
  CreateMany({"-f qcow -o encrypt.format=aes,encrypt.key-secret=sec0 base.qcow 2M"});
  CreateMany({"-u -f qcow -b base.qcow -F qcow -o encrypt.format=aes,encrypt.key-secret=sec1 "
              "top.qcow 2M"});
  const std::string top_opts =
      Opts("top.qcow", "qcow", "sec1",
           "backing.driver=qcow,backing.encrypt.key-secret=sec0,backing.file.filename=base.qcow");
  IoEnc(Opts("base.qcow", "qcow"), {"write -P 0xb1 0 2M"});
  IoEnc(top_opts, {"write -P 0xb2 64k 3k"});
  std::vector<uint8_t> expect = QemuRawEnc(top_opts);
  {
    auto chain = OpenChainEnc("top.qcow", {{"base.qcow", "sec0"}, {"top.qcow", "sec1"}}, true);
    ASSERT_TRUE(chain.ok()) << chain.status().ToString();
    ASSERT_EQ(chain->layers.size(), 2u);
    ExpectImageEquals(*chain->top(), expect);
    ASSERT_TRUE(chain->top()->BeginWrites().ok());
    Change(*chain->top(), expect);
    ExpectImageEquals(*chain->top(), expect);
    ASSERT_TRUE(chain->top()->EndWrites().ok());
  }
  std::string out;
  EXPECT_EQ(CompareEnc(top_opts, expect, &out), 0) << out;
}

TEST_F(QcowCrypto, WrongKeyReadsTheNoiseQemuReads) {
  CreateMany({"-f qcow -o encrypt.format=aes,encrypt.key-secret=sec0 w.qcow 1M"});
  IoEnc(Opts("w.qcow", "qcow"), {"write -P 0x5a 0 64k", "write -P 0x17 300k 3k"});
  // No key check value: QEMU and kvmfs both decrypt with whatever key.
  std::vector<uint8_t> noise = QemuRawEnc(Opts("w.qcow", "qcow", "sec2"));
  auto image = OpenEnc("w.qcow", secrets_["sec2"], false, "qcow");
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_TRUE((*image)->DataStatus().ok());
  ExpectImageEquals(**image, noise);
  EXPECT_NE(noise[0], 0x5a);
}

TEST_F(QcowCrypto, NoKeyLeavesTheImageDescribed) {
  CreateMany({"-f qcow -o encrypt.format=aes,encrypt.key-secret=sec0 n.qcow 1M"});
  auto image = OpenEnc("n.qcow", "", true, "qcow");
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  const Status why = (*image)->DataStatus();
  EXPECT_EQ(why.code(), Status::Code::kPermission) << why.ToString();
  EXPECT_NE(why.message().find("no key configured"), std::string::npos) << why.ToString();
  EXPECT_NE(why.message().find("(AES)"), std::string::npos) << why.ToString();
  EXPECT_EQ((*image)->size(), 1u << 20);
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ((*image)->Read(0, buf.data(), buf.size()).code(), Status::Code::kPermission);
  EXPECT_EQ((*image)->BeginWrites().code(), Status::Code::kPermission);
  EXPECT_FALSE((*image)->writable());
}

}  // namespace
}  // namespace kvmfs
