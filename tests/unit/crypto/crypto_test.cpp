// The cipher layer against QEMU: every LUKS combination qemu-img makes is
// decrypted (and encrypted) by kvmfs and compared with what QEMU reads.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "base/endian.h"
#include "kvmfs/cipher.h"
#include "qemu_images.h"

namespace kvmfs {
namespace {

using testing::CreateLuks;
using testing::QemuIo;
using testing::QemuRaw;
using testing::ReadAll;
using testing::ScratchDir;
using testing::WriteAll;

const char kPass[] = "correct-horse-7";

Secret Pass(const std::string& s) {
  auto r = Secret::Copy(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  EXPECT_TRUE(r.ok());
  return std::move(r).value();
}

LuksReadFn FileReader(const std::vector<uint8_t>& file, uint64_t base = 0) {
  return [&file, base](uint64_t off, uint8_t* buf, size_t len) {
    for (size_t i = 0; i < len; ++i) {
      uint64_t at = base + off + i;
      buf[i] = at < file.size() ? file[at] : 0;
    }
    return Status::OK();
  };
}

// One qemu-img-made LUKS image shared by the tests that only read it
// (qemu-img spends seconds of CPU per image): aes-128-cbc-essiv:sha256.
struct BaseImage {
  ScratchDir dir;
  std::string path = dir.P("base.luks");
  std::vector<uint8_t> bytes;
  BaseImage() {
    if (CreateLuks(path, kPass, "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv", "64K"))
      bytes = ReadAll(path);
  }
};
const BaseImage& Base() {
  static const BaseImage* base = new BaseImage;
  return *base;
}

// ---- Secret ----------------------------------------------------------------

// The VmFlags line of /proc/self/smaps for the mapping holding `p`.
std::string VmFlagsOf(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in = false;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  while (std::getline(smaps, line)) {
    unsigned long lo, hi;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      in = addr >= lo && addr < hi;
    } else if (in && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

TEST(CryptoSecret, LivesInPagesLeftOutOfCoreDumps) {
  auto s = Secret::Copy(reinterpret_cast<const uint8_t*>("abc"), 3);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->size(), 3u);
  EXPECT_EQ(std::memcmp(s->data(), "abc", 3), 0);
  std::string flags = VmFlagsOf(s->data());
  EXPECT_NE(flags.find(" dd"), std::string::npos) << flags;  // MADV_DONTDUMP
}

TEST(CryptoSecret, MovesTruncatesAndCompares) {
  auto a = Secret::Copy(reinterpret_cast<const uint8_t*>("secret!"), 7);
  auto b = Secret::Copy(reinterpret_cast<const uint8_t*>("secret?"), 7);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE(a->Equals(*b));
  b->Truncate(6);
  Secret c = std::move(*a);
  EXPECT_TRUE(a->empty());
  c.Truncate(6);
  EXPECT_TRUE(c.Equals(*b));
  auto empty = Secret::Allocate(0);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

// ---- PBKDF2, sector cipher -----------------------------------------------------

TEST(CryptoPbkdf2, MatchesRfc6070) {
  uint8_t out[20];
  ASSERT_TRUE(Pbkdf2(HashAlg::kSha1, reinterpret_cast<const uint8_t*>("password"), 8,
                     reinterpret_cast<const uint8_t*>("salt"), 4, 4096, out, sizeof out)
                  .ok());
  const uint8_t want[20] = {0x4b, 0x00, 0x79, 0x01, 0xb7, 0x65, 0x48, 0x9a, 0xbe, 0xad,
                            0x49, 0xd9, 0x26, 0xf7, 0x21, 0xd0, 0x65, 0xa4, 0x29, 0xc1};
  EXPECT_EQ(std::memcmp(out, want, 20), 0);
  EXPECT_FALSE(Pbkdf2(HashAlg::kSha1, nullptr, 0, nullptr, 0, 0, out, 20).ok());
}

TEST(CryptoSectorCipher, UnalignedLengthIsRefused) {
  auto key = Secret::Allocate(64);
  ASSERT_TRUE(key.ok());
  for (size_t i = 0; i < 64; ++i) key->data()[i] = uint8_t(i);  // XTS halves must differ
  auto c = SectorCipher::Create(CipherSpec{}, *key);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  uint8_t buf[600] = {};
  EXPECT_EQ((*c)->Encrypt(0, buf, 600).code(), Status::Code::kInvalidArgument);
  EXPECT_TRUE((*c)->Encrypt(0, buf, 512).ok());
}

TEST(CryptoSectorCipher, Aes192XtsIsNotSupported) {
  CipherSpec spec;
  spec.alg = CipherAlg::kAes192;
  spec.key_bytes = 48;
  EXPECT_EQ(spec.Supported().code(), Status::Code::kNotSupported);
  spec.mode = CipherMode::kCbc;
  spec.key_bytes = 24;
  EXPECT_TRUE(spec.Supported().ok());
  spec.ivgen = IvGen::kEssiv;
  spec.ivgen_hash = HashAlg::kSha1;  // 20-byte digest: no AES key of that size
  EXPECT_EQ(spec.Supported().code(), Status::Code::kNotSupported);
}

TEST(CryptoBatch, ParallelRangeEqualsOneCall) {
  auto key = Secret::Allocate(64);
  ASSERT_TRUE(key.ok());
  for (size_t i = 0; i < 64; ++i) key->data()[i] = uint8_t(i * 7 + 1);
  auto c = SectorCipher::Create(CipherSpec{}, *key);
  ASSERT_TRUE(c.ok());
  std::vector<uint8_t> data(1 << 20);
  std::mt19937 rng(5);
  for (auto& b : data) b = uint8_t(rng());
  std::vector<uint8_t> a = data, b = data;
  ASSERT_TRUE((*c)->Encrypt(100, a.data(), a.size()).ok());
  ASSERT_TRUE(CryptRange(**c, true, 100, b.data(), b.size(), 64 * 1024).ok());
  EXPECT_EQ(a, b);
  ASSERT_TRUE(CryptRange(**c, false, 100, b.data(), b.size(), 4096).ok());
  EXPECT_EQ(b, data);
}

// ---- LUKS against qemu-img --------------------------------------------------------

struct Combo {
  std::string alg, mode, ivgen, hash, ivhash;
  bool computable = true;  // OpenSSL has the cipher
};

std::vector<Combo> QemuCombos() {
  // Every mode and IV generator with AES-256, the other key sizes in a few
  // modes, and every PBKDF2 hash QEMU offers spread over them (qemu-img
  // spends seconds per image calibrating, so the hashes share images).
  std::vector<Combo> out;
  const char* hashes[] = {"sha256", "sha1", "sha512", "md5", "sha224", "sha384", "ripemd160"};
  int h = 0;
  for (const char* mode : {"xts", "cbc", "ecb", "ctr"})
    for (const char* ivgen : {"plain", "plain64", "essiv"})
      out.push_back({"aes-256", mode, ivgen, hashes[h++ % 7], ""});
  out.push_back({"aes-128", "xts", "plain64", "sha256", ""});
  out.push_back({"aes-128", "cbc", "essiv", "sha1", "md5"});  // ESSIV with an AES-128 key
  out.push_back({"aes-128", "ctr", "plain", "sha512", ""});
  // qemu-img makes AES-192 only in XTS mode (other modes trip an assertion
  // in QEMU 7.2); OpenSSL has no AES-192-XTS.
  out.push_back({"aes-192", "xts", "plain64", "sha256", "", false});
  return out;
}

std::string Opts(const Combo& c) {
  std::string o = "cipher-alg=" + c.alg + ",cipher-mode=" + c.mode + ",ivgen-alg=" + c.ivgen +
                  ",hash-alg=" + c.hash;
  if (!c.ivhash.empty()) o += ",ivgen-hash-alg=" + c.ivhash;
  return o;
}

TEST(CryptoLuks, EveryQemuCombinationDecryptsAndEncryptsAsQemu) {
  ScratchDir dir;
  const std::vector<Combo> combos = QemuCombos();
  std::vector<std::pair<std::string, std::string>> images;
  for (size_t i = 0; i < combos.size(); ++i)
    images.push_back({dir.P("t" + std::to_string(i) + ".luks"), Opts(combos[i])});
  ASSERT_TRUE(testing::CreateManyLuks(images, kPass));
  for (size_t i = 0; i < combos.size(); ++i) {
    const Combo& c = combos[i];
    SCOPED_TRACE(Opts(c));
    const std::string img = images[i].first;
    ASSERT_TRUE(QemuIo(img, kPass, "luks",
                       {"write -P 0x5a 0 64k", "write -P 0x17 100k 3k", "write -P 0xee 191k 1k"}));
    std::vector<uint8_t> file = ReadAll(img);
    auto h = DecodeLuksHeader(file.data(), file.size(), file.size(), img);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    EXPECT_EQ(h->spec.AlgName(), c.alg);
    EXPECT_STREQ(CipherModeName(h->spec.mode), c.mode.c_str());
    EXPECT_STREQ(IvGenName(h->spec.ivgen), c.ivgen.c_str());
    EXPECT_STREQ(HashName(h->hash), c.hash.c_str());
    if (!c.computable) {
      EXPECT_EQ(h->support.code(), Status::Code::kNotSupported);
      EXPECT_EQ(LuksUnlock(*h, Pass(kPass), FileReader(file), img).status().code(),
                Status::Code::kNotSupported);
      continue;
    }
    ASSERT_TRUE(h->support.ok()) << h->support.ToString();
    auto mk = LuksUnlock(*h, Pass(kPass), FileReader(file), img);
    ASSERT_TRUE(mk.ok()) << mk.status().ToString();
    auto cipher = LuksCipher(*h, *mk);
    ASSERT_TRUE(cipher.ok()) << cipher.status().ToString();

    // Decrypt: the whole payload, guest sector numbers, equals qemu-img convert.
    std::vector<uint8_t> raw = QemuRaw(img, kPass, "luks", dir.P("out.raw"));
    ASSERT_EQ(raw.size(), file.size() - h->payload_bytes());
    std::vector<uint8_t> mine(file.begin() + long(h->payload_bytes()), file.end());
    ASSERT_TRUE(CryptRange(**cipher, false, 0, mine.data(), mine.size()).ok());
    ASSERT_EQ(mine, raw);
    EXPECT_EQ(raw[0], 0x5a);
    EXPECT_EQ(raw[100 * 1024 + 5], 0x17);

    // Encrypt: new plaintext written by kvmfs's cipher reads back through QEMU.
    std::vector<uint8_t> plain(raw.size());
    std::mt19937 rng(42);
    for (auto& b : plain) b = uint8_t(rng());
    std::vector<uint8_t> enc = plain;
    ASSERT_TRUE(CryptRange(**cipher, true, 0, enc.data(), enc.size(), 8192).ok());
    std::copy(enc.begin(), enc.end(), file.begin() + long(h->payload_bytes()));
    WriteAll(img, file);
    EXPECT_EQ(QemuRaw(img, kPass, "luks", dir.P("out2.raw")), plain);
  }
}

TEST(CryptoLuks, InfoFieldsMatchQemuImgInfo) {
  const std::string img = Base().path;
  std::vector<uint8_t> file = Base().bytes;
  ASSERT_FALSE(file.empty());
  auto h = DecodeLuksHeader(file.data(), file.size(), file.size(), img);
  ASSERT_TRUE(h.ok());
  auto info = testing::Shell("qemu-img info --output=json '" + img + "'");
  ASSERT_TRUE(info);
  // A textual comparison of the fields in qemu-img's order.
  std::string expect;
  for (const InfoField& f : h->InfoFields(false)) {
    if (const auto* s = std::get_if<std::string>(&f.value)) {
      expect = "\"" + f.key + "\": \"" + *s + "\"";
    } else if (const auto* n = std::get_if<int64_t>(&f.value)) {
      expect = "\"" + f.key + "\": " + std::to_string(*n);
    } else {
      continue;
    }
    EXPECT_NE(info->find(expect), std::string::npos) << expect << "\n" << *info;
  }
  const std::vector<InfoField> fields = h->InfoFields(false);
  auto it = std::find_if(fields.begin(), fields.end(), [](const InfoField& f) { return f.key == "slots"; });
  ASSERT_NE(it, fields.end());
  const auto& slots = std::get<std::vector<InfoObject>>(it->value);
  ASSERT_EQ(slots.size(), 8u);
  EXPECT_TRUE(std::get<bool>(slots[0][0].value));
  EXPECT_NE(info->find("\"iters\": " + std::to_string(h->slots[0].iterations)), std::string::npos);
}

TEST(CryptoLuks, WrongPassphraseIsPermission) {
  const std::string img = Base().path;
  std::vector<uint8_t> file = Base().bytes;
  ASSERT_FALSE(file.empty());
  auto h = DecodeLuksHeader(file.data(), file.size(), file.size(), img);
  ASSERT_TRUE(h.ok());
  auto mk = LuksUnlock(*h, Pass("not-it"), FileReader(file), img);
  ASSERT_FALSE(mk.ok());
  EXPECT_EQ(mk.status().code(), Status::Code::kPermission);
  EXPECT_NE(mk.status().message().find("wrong key"), std::string::npos);
  EXPECT_EQ(mk.status().message().find("not-it"), std::string::npos);
  // QEMU secret data is a C string: bytes after a NUL do not count.
  std::string with_nul = std::string(kPass) + std::string("\0junk", 5);
  EXPECT_TRUE(LuksUnlock(*h, Pass(with_nul), FileReader(file), img).ok());
}

// A header mutated by `edit` must be refused with `code` and a message
// containing `what`.
class CryptoLuksHeader : public ::testing::Test {
 protected:
  void SetUp() override {
    img_ = Base().path;
    file_ = Base().bytes;
    ASSERT_FALSE(file_.empty());
  }
  void Expect(const std::function<void(uint8_t*)>& edit, Status::Code code, const std::string& what,
              size_t len = kLuksHeaderSize) {
    std::vector<uint8_t> f = file_;
    edit(f.data());
    auto start = std::chrono::steady_clock::now();
    auto h = DecodeLuksHeader(f.data(), len, f.size(), img_);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
    ASSERT_FALSE(h.ok()) << what;
    EXPECT_EQ(h.status().code(), code) << h.status().ToString();
    EXPECT_NE(h.status().message().find(what), std::string::npos) << h.status().ToString();
    EXPECT_EQ(h.status().message().rfind(img_, 0), 0u) << h.status().ToString();
  }
  static uint8_t* Slot(uint8_t* p, int i) { return p + 208 + 48 * i; }

  std::string img_;
  std::vector<uint8_t> file_;
};

TEST_F(CryptoLuksHeader, TruncatedHeaderIsCorruption) {
  Expect([](uint8_t*) {}, Status::Code::kCorruption, "truncated", 100);
}
TEST_F(CryptoLuksHeader, BadMagicIsCorruption) {
  Expect([](uint8_t* p) { p[0] = 'X'; }, Status::Code::kCorruption, "not in LUKS format");
}
TEST_F(CryptoLuksHeader, Version2IsNotSupported) {
  Expect([](uint8_t* p) { StoreBE16(p + 6, 2); }, Status::Code::kNotSupported, "version 2");
}
TEST_F(CryptoLuksHeader, UnterminatedCipherNameIsCorruption) {
  Expect([](uint8_t* p) { std::memset(p + 8, 'a', 32); }, Status::Code::kCorruption,
         "not NUL terminated");
}
TEST_F(CryptoLuksHeader, PayloadOverlappingHeaderIsCorruption) {
  Expect([](uint8_t* p) { StoreBE32(p + 104, 4); }, Status::Code::kCorruption, "payload");
}
TEST_F(CryptoLuksHeader, ZeroMasterKeyIterationsIsCorruption) {
  Expect([](uint8_t* p) { StoreBE32(p + 164, 0); }, Status::Code::kCorruption, "iteration count is zero");
}
TEST_F(CryptoLuksHeader, AbsurdIterationCountIsRefusedAtOnce) {
  Expect([](uint8_t* p) { StoreBE32(Slot(p, 0) + 4, 0xFFFFFFFF); }, Status::Code::kNotSupported,
         "PBKDF2 iterations");
  Expect([](uint8_t* p) { StoreBE32(p + 164, 0xFFFFFFFF); }, Status::Code::kNotSupported,
         "PBKDF2 iterations");
}
TEST_F(CryptoLuksHeader, CorruptKeySlotStateIsCorruption) {
  Expect([](uint8_t* p) { StoreBE32(Slot(p, 3), 0x12345678); }, Status::Code::kCorruption,
         "key slot 3 state");
}
TEST_F(CryptoLuksHeader, WrongStripesIsCorruption) {
  Expect([](uint8_t* p) { StoreBE32(Slot(p, 1) + 44, 3999); }, Status::Code::kCorruption,
         "stripes 3999");
}
TEST_F(CryptoLuksHeader, ActiveSlotWithZeroIterationsIsCorruption) {
  Expect([](uint8_t* p) { StoreBE32(Slot(p, 0) + 4, 0); }, Status::Code::kCorruption,
         "key slot 0 iteration count is zero");
}
TEST_F(CryptoLuksHeader, KeyMaterialInHeaderIsCorruption) {
  Expect([](uint8_t* p) { StoreBE32(Slot(p, 0) + 40, 2); }, Status::Code::kCorruption,
         "overlapping with the LUKS header");
}
TEST_F(CryptoLuksHeader, KeyMaterialInPayloadIsCorruption) {
  Expect([](uint8_t* p) { StoreBE32(Slot(p, 7) + 40, LoadBE32(p + 104) - 8); },
         Status::Code::kCorruption, "overlapping with the encrypted payload");
}
TEST_F(CryptoLuksHeader, OverlappingSlotsAreCorruption) {
  Expect([](uint8_t* p) { StoreBE32(Slot(p, 2) + 40, LoadBE32(Slot(p, 1) + 40) + 8); },
         Status::Code::kCorruption, "key slots 1 and 2 are overlapping");
}
TEST_F(CryptoLuksHeader, KeyMaterialPastTheAreaIsCorruption) {
  std::vector<uint8_t> f = file_;
  auto h = DecodeLuksHeader(f.data(), f.size(), 8192, img_);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), Status::Code::kCorruption);
  EXPECT_NE(h.status().message().find("past the end of the LUKS area"), std::string::npos);
}
TEST_F(CryptoLuksHeader, UnknownHashIsDescribedButNotSupported) {
  std::vector<uint8_t> f = file_;
  std::memset(f.data() + 72, 0, 32);
  std::memcpy(f.data() + 72, "whirlpool", 9);
  auto h = DecodeLuksHeader(f.data(), f.size(), f.size(), img_);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->support.code(), Status::Code::kNotSupported);
  EXPECT_NE(h->support.message().find("whirlpool"), std::string::npos);
}
TEST_F(CryptoLuksHeader, CorruptedKeyMaterialIsWrongKey) {
  std::vector<uint8_t> f = file_;
  auto h = DecodeLuksHeader(f.data(), f.size(), f.size(), img_);
  ASSERT_TRUE(h.ok());
  const size_t at = size_t(h->slots[0].key_offset) * 512;
  for (size_t i = 0; i < 4096; ++i) f[at + i] ^= 0xff;
  auto mk = LuksUnlock(*h, Pass(kPass), FileReader(f), img_);
  EXPECT_EQ(mk.status().code(), Status::Code::kPermission);
}

// ---- Inside qcow2: the round-2 engine's calls, checked now -------------------

// The host offset of guest cluster `index` of a small qcow2 (one L2 table).
uint64_t HostCluster(const std::vector<uint8_t>& f, uint64_t index) {
  const uint32_t cluster_bits = LoadBE32(f.data() + 20);
  const uint64_t l1 = LoadBE64(f.data() + 40);
  const uint64_t l2 = LoadBE64(f.data() + l1) & 0x00fffffffffffe00ull;
  (void)cluster_bits;
  return LoadBE64(f.data() + l2 + 8 * index) & 0x00fffffffffffe00ull;
}

TEST(CryptoQcow2, LuksClustersUseHostSectorIvs) {
  ScratchDir dir;
  const std::string img = dir.P("l.qcow2");
  ASSERT_TRUE(CreateLuks(img, kPass, "", "1M", "qcow2"));
  ASSERT_TRUE(QemuIo(img, kPass, "qcow2", {"write -P 0x42 64k 64k"}));
  std::vector<uint8_t> f = ReadAll(img);
  // Header extensions of a v3 image start at header_length (offset 100).
  uint64_t area = 0, area_len = 0;
  for (size_t p = LoadBE32(f.data() + 100); p + 8 <= f.size();) {
    uint32_t type = LoadBE32(f.data() + p), len = LoadBE32(f.data() + p + 4);
    if (type == 0) break;
    if (type == 0x0537BE77) {
      area = LoadBE64(f.data() + p + 8);
      area_len = LoadBE64(f.data() + p + 16);
    }
    p += 8 + (len + 7) / 8 * 8;
  }
  ASSERT_GT(area, 0u);
  auto h = DecodeLuksHeader(f.data() + area, f.size() - area, area_len, img);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  auto mk = LuksUnlock(*h, Pass(kPass), FileReader(f, area), img);
  ASSERT_TRUE(mk.ok()) << mk.status().ToString();
  auto cipher = LuksCipher(*h, *mk);
  ASSERT_TRUE(cipher.ok());
  const uint64_t host = HostCluster(f, 1);
  ASSERT_GT(host, 0u);
  std::vector<uint8_t> data(f.begin() + long(host), f.begin() + long(host) + 65536);
  ASSERT_TRUE(CryptRange(**cipher, false, host / 512, data.data(), data.size()).ok());
  EXPECT_EQ(data, std::vector<uint8_t>(65536, 0x42));
}

TEST(CryptoQcow2, LegacyAesUsesGuestSectorIvs) {
  ScratchDir dir;
  for (const char* format : {"qcow2", "qcow"}) {
    SCOPED_TRACE(format);
    const std::string img = dir.P(std::string("a.") + format);
    ASSERT_TRUE(testing::Shell(std::string("qemu-img create -q -f ") + format + " " +
                               testing::SecretObject(kPass) +
                               " -o encrypt.format=aes,encrypt.key-secret=sec0 '" + img + "' 1M"));
    ASSERT_TRUE(QemuIo(img, kPass, format, {"write -P 0x33 66k 2k"}));
    std::vector<uint8_t> raw = QemuRaw(img, kPass, format, dir.P("a.raw"));
    ASSERT_EQ(raw.size(), 1u << 20);
    std::vector<uint8_t> f = ReadAll(img);
    auto cipher = QcowAesCipher(Pass(kPass));
    ASSERT_TRUE(cipher.ok());
    uint64_t host;
    size_t cluster;
    if (std::string(format) == "qcow2") {
      cluster = 65536;
      host = HostCluster(f, 1);
    } else {
      // qcow v1: cluster_bits at 32, l2_bits at 33, L1 at 40 (8-byte entries).
      cluster = size_t(1) << f[32];
      const uint64_t l1 = LoadBE64(f.data() + 40);
      const uint64_t per_l2 = uint64_t(1) << f[33];
      const uint64_t idx = 66 * 1024 / cluster;
      const uint64_t l2 = LoadBE64(f.data() + l1 + 8 * (idx / per_l2));
      host = LoadBE64(f.data() + l2 + 8 * (idx % per_l2));
    }
    ASSERT_GT(host, 0u);
    const uint64_t guest = 66 * 1024 / cluster * cluster;
    std::vector<uint8_t> data(f.begin() + long(host), f.begin() + long(host + cluster));
    ASSERT_TRUE(CryptRange(**cipher, false, guest / 512, data.data(), data.size()).ok());
    EXPECT_TRUE(std::equal(data.begin(), data.end(), raw.begin() + long(guest)));
  }
}

}  // namespace
}  // namespace kvmfs
