// The luks driver on qemu-img-made images held in memory: reads and writes
// compared with qemu-img convert, and every way of not having the key.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>

#include "../../crypto/qemu_images.h"
#include "base/endian.h"
#include "kvmfs/backend.h"
#include "kvmfs/format.h"

namespace kvmfs {
namespace {

using testing::CreateManyLuks;
using testing::QemuRaw;
using testing::ReadAll;
using testing::ScratchDir;
using testing::WriteAll;

const char kPass[] = "luks-driver-pass";

KeyLookup KeyOf(const std::string& pass) {
  return [pass]() -> Result<std::shared_ptr<const Secret>> {
    KVMFS_ASSIGN_OR_RETURN(Secret s, Secret::Copy(reinterpret_cast<const uint8_t*>(pass.data()),
                                                  pass.size()));
    return std::shared_ptr<const Secret>(std::make_shared<Secret>(std::move(s)));
  };
}

// Three images made once: the default (aes-256-xts), aes-128-cbc-essiv, and
// aes-192-xts (which OpenSSL cannot compute).
struct Images {
  ScratchDir dir;
  std::string xts = dir.P("xts.luks"), cbc = dir.P("cbc.luks"), a192 = dir.P("a192.luks");
  bool ok = false;
  Images() {
    ok = CreateManyLuks({{xts, ""},
                         {cbc, "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv"},
                         {a192, "cipher-alg=aes-192,cipher-mode=xts"}},
                        kPass) &&
         testing::QemuIo(xts, kPass, "luks", {"write -P 0x61 0 64k", "write -P 0x62 100k 1k"});
  }
};
const Images& Imgs() {
  static const Images* images = new Images;
  return *images;
}

Result<std::unique_ptr<Image>> OpenBytes(const std::vector<uint8_t>& bytes, KeyLookup key,
                                         bool writable = false,
                                         std::shared_ptr<Backend>* backend = nullptr) {
  std::shared_ptr<Backend> b = NewMemBackend("mem.luks", bytes, writable);
  if (backend) *backend = b;
  OpenContext ctx;
  ctx.name = "mem.luks";
  ctx.writable = writable;
  ctx.key = std::move(key);
  return FindFormat("luks")->Open(b, ctx);
}

std::vector<uint8_t> BackendBytes(Backend& b) {
  auto size = b.Size();
  std::vector<uint8_t> out(size.ok() ? *size : 0);
  EXPECT_TRUE(b.ReadAt(0, out.data(), out.size()).ok());
  return out;
}

TEST(LuksFormat, ProbesTheMagicOfBothVersions) {
  const FormatDriver* d = FindFormat("luks");
  ASSERT_NE(d, nullptr);
  uint8_t head[16] = {'L', 'U', 'K', 'S', 0xba, 0xbe, 0, 1};
  EXPECT_EQ(d->Probe(head, sizeof head), 100);
  head[7] = 2;
  EXPECT_EQ(d->Probe(head, sizeof head), 100);
  head[7] = 3;
  EXPECT_EQ(d->Probe(head, sizeof head), 0);
  head[0] = 'X';
  EXPECT_EQ(d->Probe(head, sizeof head), 0);
  EXPECT_TRUE(d->caps().writable);
}

TEST(LuksFormat, ReadsAsQemu) {
  ASSERT_TRUE(Imgs().ok);
  for (const std::string& path : {Imgs().xts, Imgs().cbc}) {
    SCOPED_TRACE(path);
    auto img = OpenBytes(ReadAll(path), KeyOf(kPass));
    ASSERT_TRUE(img.ok()) << img.status().ToString();
    ASSERT_TRUE((*img)->DataStatus().ok());
    std::vector<uint8_t> raw = QemuRaw(path, kPass, "luks", path + ".raw");
    ASSERT_EQ((*img)->size(), raw.size());
    std::vector<uint8_t> mine(raw.size());
    ASSERT_TRUE((*img)->Read(0, mine.data(), mine.size()).ok());
    EXPECT_EQ(mine, raw);
    // Unaligned pieces.
    uint8_t piece[777];
    ASSERT_TRUE((*img)->Read(100 * 1024 - 3, piece, sizeof piece).ok());
    EXPECT_EQ(std::memcmp(piece, raw.data() + 100 * 1024 - 3, sizeof piece), 0);
    ImageInfo info = (*img)->Info();
    EXPECT_EQ(info.format, "luks");
    EXPECT_TRUE(info.encrypted);
    EXPECT_EQ(info.format_specific_type, "luks");
    auto st = (*img)->GetBlockStatus(0, raw.size());
    ASSERT_TRUE(st.ok());
    EXPECT_EQ(st->kind, Allocation::kData);
    EXPECT_EQ(st->length, raw.size());
  }
}

TEST(LuksFormat, WritesReadBackThroughQemu) {
  ASSERT_TRUE(Imgs().ok);
  const std::string path = Imgs().cbc;
  std::shared_ptr<Backend> backend;
  auto img = OpenBytes(ReadAll(path), KeyOf(kPass), true, &backend);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  ASSERT_TRUE((*img)->BeginWrites().ok());
  std::vector<uint8_t> expect(Imgs().ok ? (*img)->size() : 0);
  ASSERT_TRUE((*img)->Read(0, expect.data(), expect.size()).ok());
  std::mt19937 rng(3);
  struct W {
    uint64_t off;
    size_t len;
  };
  const W writes[] = {{0, 4096}, {513, 10}, {4000, 700}, {expect.size() - 1, 1}, {65536, 65536}};
  for (const W& w : writes) {
    std::vector<uint8_t> data(w.len);
    for (auto& b : data) b = uint8_t(rng());
    ASSERT_TRUE((*img)->Write(w.off, data.data(), data.size()).ok());
    std::copy(data.begin(), data.end(), expect.begin() + long(w.off));
  }
  // Whole-sector writes from several threads at once.
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    std::vector<uint8_t> data(8192, uint8_t(0xc0 + t));
    std::copy(data.begin(), data.end(), expect.begin() + 136 * 1024 + t * 8192);
    threads.emplace_back([&img, t, data] {
      EXPECT_TRUE((*img)->Write(136 * 1024 + t * 8192, data.data(), data.size()).ok());
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE((*img)->EndWrites().ok());
  std::vector<uint8_t> mine(expect.size());
  ASSERT_TRUE((*img)->Read(0, mine.data(), mine.size()).ok());
  EXPECT_EQ(mine, expect);
  const std::string out = path + ".written";
  WriteAll(out, BackendBytes(*backend));
  EXPECT_EQ(QemuRaw(out, kPass, "luks", out + ".raw"), expect);
}

TEST(LuksFormat, WithoutKeyIsDescribedButLocked) {
  ASSERT_TRUE(Imgs().ok);
  auto img = OpenBytes(ReadAll(Imgs().xts), nullptr, true);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  Status data = (*img)->DataStatus();
  EXPECT_EQ(data.code(), Status::Code::kPermission);
  EXPECT_NE(data.message().find("no key configured"), std::string::npos);
  ImageInfo info = (*img)->Info();
  EXPECT_TRUE(info.encrypted);
  EXPECT_FALSE(info.format_specific.empty());
  uint8_t buf[512];
  EXPECT_EQ((*img)->Read(0, buf, sizeof buf).code(), Status::Code::kPermission);
  EXPECT_EQ((*img)->BeginWrites().code(), Status::Code::kPermission);
  EXPECT_EQ((*img)->Write(0, buf, sizeof buf).code(), Status::Code::kPermission);
}

TEST(LuksFormat, KeyLookupErrorsAreTheDataStatus) {
  ASSERT_TRUE(Imgs().ok);
  KeyLookup unreadable = []() -> Result<std::shared_ptr<const Secret>> {
    return Status::Permission("mem.luks: unreadable key (x.yaml:3): key file /k: No such file");
  };
  auto img = OpenBytes(ReadAll(Imgs().xts), unreadable);
  ASSERT_TRUE(img.ok());
  EXPECT_NE((*img)->DataStatus().message().find("unreadable key"), std::string::npos);
}

TEST(LuksFormat, WrongKeyIsPermission) {
  ASSERT_TRUE(Imgs().ok);
  auto img = OpenBytes(ReadAll(Imgs().xts), KeyOf("not the key"));
  ASSERT_TRUE(img.ok());
  EXPECT_EQ((*img)->DataStatus().code(), Status::Code::kPermission);
  EXPECT_NE((*img)->DataStatus().message().find("wrong key"), std::string::npos);
}

TEST(LuksFormat, CipherOpenSslLacksIsNotSupported) {
  ASSERT_TRUE(Imgs().ok);
  auto img = OpenBytes(ReadAll(Imgs().a192), KeyOf(kPass));
  ASSERT_TRUE(img.ok());
  EXPECT_EQ((*img)->DataStatus().code(), Status::Code::kNotSupported);
  EXPECT_TRUE((*img)->Info().encrypted);
}

TEST(LuksFormat, TruncatedAndShortFilesAreCorruption) {
  ASSERT_TRUE(Imgs().ok);
  std::vector<uint8_t> bytes = ReadAll(Imgs().xts);
  std::vector<uint8_t> head(bytes.begin(), bytes.begin() + 300);
  auto img = OpenBytes(head, KeyOf(kPass));
  ASSERT_FALSE(img.ok());
  EXPECT_EQ(img.status().code(), Status::Code::kCorruption);
  // Header and key material intact, payload offset past the end.
  std::vector<uint8_t> short_file(bytes.begin(), bytes.begin() + 1024 * 1024);
  img = OpenBytes(short_file, KeyOf(kPass));
  ASSERT_FALSE(img.ok());
  EXPECT_EQ(img.status().code(), Status::Code::kCorruption);
  EXPECT_NE(img.status().message().find("past the end"), std::string::npos);
}

}  // namespace
}  // namespace kvmfs
