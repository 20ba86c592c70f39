// Encrypted qcow2 (LUKS and legacy AES) against qemu-img: images made with
// `--object secret` at test time in every cipher combination qemu-img makes
// and OpenSSL computes, read and compared with `qemu-img convert` given the
// secret, written through the engine and checked with `qemu-img check` and
// `qemu-img compare` given the secret. Snapshots, a chain of encrypted
// layers each with its own key, extended L2, external data files,
// compressed clusters, a dirty image's repair, concurrent writes into one
// sector, and every key problem.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "base/endian.h"
#include "crypto_helpers.h"

namespace kvmfs {
namespace {

using nlohmann::json;
using test::CryptoImageTest;
using test::ExpectImageEquals;
using test::FirstDiff;
using test::ReadImage;

constexpr uint64_t kSize = 2 << 20;

// One change the engine makes, and the same change applied to the expected
// bytes.
struct Change {
  enum Kind { kWrite, kZero, kDiscard } kind;
  uint64_t off, len;
};

// Writes that cover every road of guest data: in place (whole and partial
// sectors), allocating (whole clusters; partial, with copy-on-write from
// zeros, from a compressed cluster, from the backing), zeroes and discard.
std::vector<Change> Changes(bool compressed) {
  std::vector<Change> c = {
      {Change::kWrite, 4096, 4096},           {Change::kWrite, 100, 200},
      {Change::kWrite, 130 * 1024 + 7, 5000}, {Change::kWrite, 512 * 1024, 128 * 1024},
      {Change::kWrite, 700 * 1024 + 300, 1000}, {Change::kWrite, 1000 * 1024 + 33, 70},
      {Change::kWrite, 1100 * 1024 - 10, 20}, {Change::kZero, 768 * 1024, 64 * 1024},
      {Change::kZero, 1005 * 1024 + 3, 1000}, {Change::kDiscard, 256 * 1024, 64 * 1024},
      {Change::kWrite, kSize - 512, 512},
  };
  if (compressed) c.push_back({Change::kWrite, 390 * 1024, 2048});
  return c;
}

// The qemu-io writes every image gets first (-c: a compressed cluster).
std::vector<std::string> QemuWrites(bool compressed) {
  std::vector<std::string> w = {"write -P 0x5a 0 64k", "write -P 0x17 100k 3k",
                                "write -z 256k 64k", "write -P 0x44 1000k 100k",
                                "write -P 0x66 2047k 1k"};
  if (compressed) w.push_back("write -c -P 0x33 384k 64k");
  return w;
}

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

json ToJson(const InfoValue& v);
json ToJson(const InfoObject& o) {
  json j = json::object();
  for (const InfoField& f : o) j[f.key] = ToJson(f.value);
  return j;
}
json ToJson(const InfoValue& v) {
  if (auto* b = std::get_if<bool>(&v)) return *b;
  if (auto* i = std::get_if<int64_t>(&v)) return *i;
  if (auto* s = std::get_if<std::string>(&v)) return *s;
  if (auto* o = std::get_if<InfoObject>(&v)) return ToJson(*o);
  json a = json::array();
  for (const InfoObject& o : std::get<std::vector<InfoObject>>(v)) a.push_back(ToJson(o));
  return a;
}

class Qcow2Crypto : public CryptoImageTest {
 public:
  const std::string pass0() const { return secrets_.at("sec0"); }

  // The encrypt object of `image` equals qemu-img info's (which needs no key).
  void ExpectInfoLikeQemu(Image& image, const std::string& name) {
    std::string out;
    ASSERT_EQ(test::RunCmd("cd " + dir_ + " && qemu-img info -U --output=json " + name, &out), 0)
        << out;
    const json want = json::parse(out)["format-specific"]["data"];
    const ImageInfo info = image.Info();
    EXPECT_TRUE(info.encrypted);
    const json got = ToJson(info.format_specific);
    ASSERT_TRUE(want.contains("encrypt")) << want.dump();
    EXPECT_EQ(got, want) << "kvmfs: " << got.dump() << "\nqemu-img: " << want.dump();
  }

  // Reads `name` as QEMU does (`opts`), plans reads without ciphertext
  // pieces, writes Changes() through the engine, and has qemu-img check
  // and compare the result with the secret.
  void Exercise(const std::string& name, const std::string& opts, bool compressed = true) {
    SCOPED_TRACE(name);
    IoEnc(opts, QemuWrites(compressed));
    std::vector<uint8_t> expect = QemuRawEnc(opts);
    ASSERT_EQ(expect.size(), kSize);
    {
      auto image = OpenEnc(name, pass0(), false);
      ASSERT_TRUE(image.ok()) << image.status().ToString();
      ASSERT_TRUE((*image)->DataStatus().ok()) << (*image)->DataStatus().ToString();
      ExpectImageEquals(**image, expect);
      ExpectInfoLikeQemu(**image, name);
      // A read-only image would hand out file pieces: never ciphertext.
      ReadPlan plan;
      ASSERT_TRUE((*image)->PlanRead(0, kSize, plan).ok());
      std::vector<uint8_t> planned;
      for (const ReadPlan::Piece& p : plan.pieces()) {
        ASSERT_LT(p.fd, 0) << "a file piece of an encrypted image";
        const auto* m = static_cast<const uint8_t*>(p.mem);
        planned.insert(planned.end(), m, m + p.length);
      }
      EXPECT_EQ(FirstDiff(planned, expect), -1);
    }
    auto image = OpenEnc(name, pass0(), true);
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    Image& img = **image;
    ASSERT_TRUE(img.BeginWrites().ok());
    uint64_t seed = 1;
    for (const Change& c : Changes(compressed)) {
      SCOPED_TRACE(std::to_string(c.kind) + " at " + std::to_string(c.off));
      if (c.kind == Change::kWrite) {
        const std::vector<uint8_t> data = Pattern(seed++, c.len);
        ASSERT_TRUE(img.Write(c.off, data.data(), data.size()).ok());
        std::copy(data.begin(), data.end(), expect.begin() + c.off);
      } else {
        Status st = img.WriteZeroes(c.off, c.len, c.kind == Change::kDiscard);
        ASSERT_TRUE(st.ok()) << st.ToString();
        std::fill(expect.begin() + c.off, expect.begin() + c.off + c.len, 0);
      }
    }
    ExpectImageEquals(img, expect);
    ASSERT_TRUE(img.EndWrites().ok());
    image->reset();
    std::string out;
    EXPECT_EQ(CheckEnc(opts, &out), 0) << out;
    EXPECT_EQ(CompareEnc(opts, expect, &out), 0) << out;
  }
};

// Every LUKS cipher/mode/IV generator/hash combination qemu-img makes that
// OpenSSL computes (AES-192 only in XTS mode, which OpenSSL lacks), with
// other cluster sizes and a v2 image spread over them.
TEST_F(Qcow2Crypto, EveryLuksCombinationReadsAndWritesAsQemu) {
  const std::vector<std::pair<std::string, std::string>> combos = {
      {"default", ""},
      {"xts128", "cipher-alg=aes-128,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha1"},
      {"cbc-plain", "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=plain,hash-alg=sha512"},
      {"cbc-plain64", "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=plain64,hash-alg=sha256"},
      {"cbc-essiv", "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,"
                    "hash-alg=sha1"},
      {"cbc128-essiv", "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,"
                       "ivgen-hash-alg=sha256,hash-alg=sha256"},
      {"ctr", "cipher-alg=aes-256,cipher-mode=ctr,ivgen-alg=plain64,hash-alg=sha256"},
      {"ecb", "cipher-alg=aes-128,cipher-mode=ecb,ivgen-alg=plain,hash-alg=sha512"},
  };
  // Geometry variations: small clusters, a v2 image.
  const std::vector<std::string> extra = {"", "cluster_size=4096", "compat=0.10", "",
                                          "cluster_size=16384", "", "", ""};
  std::vector<std::string> args;
  for (size_t i = 0; i < combos.size(); ++i) {
    std::string o = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10";
    // The cipher options go under encrypt., the geometry as it is.
    std::string cipher = combos[i].second;
    for (size_t at = 0; !cipher.empty() && at != std::string::npos;) {
      const size_t comma = cipher.find(',', at);
      o += ",encrypt." + cipher.substr(at, comma == std::string::npos ? comma : comma - at);
      at = comma == std::string::npos ? comma : comma + 1;
    }
    if (!extra[i].empty()) o += "," + extra[i];
    args.push_back("-f qcow2 -o " + o + " luks-" + combos[i].first + ".qcow2 2M");
  }
  CreateMany(args);
  for (const auto& [label, o] : combos) {
    const std::string name = "luks-" + label + ".qcow2";
    Exercise(name, Opts(name));
    if (HasFatalFailure()) return;
  }
}

TEST_F(Qcow2Crypto, LegacyAesReadsAndWritesAsQemu) {
  CreateMany({"-f qcow2 -o encrypt.format=aes,encrypt.key-secret=sec0 aes3.qcow2 2M",
              "-f qcow2 -o compat=0.10,encrypt.format=aes,encrypt.key-secret=sec0 aes2.qcow2 2M",
              "-f qcow2 -o encrypt.format=aes,encrypt.key-secret=sec0,cluster_size=512 "
              "aes512.qcow2 2M"});
  for (const char* name : {"aes3.qcow2", "aes2.qcow2", "aes512.qcow2"}) {
    Exercise(name, Opts(name));
    if (HasFatalFailure()) return;
  }
}

TEST_F(Qcow2Crypto, ExtendedL2AndExternalDataFiles) {
  const std::string luks = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10";
  CreateMany({"-f qcow2 -o " + luks + ",extended_l2=on xl2.qcow2 2M",
              "-f qcow2 -o encrypt.format=aes,encrypt.key-secret=sec0,extended_l2=on,"
              "cluster_size=32768 xl2-aes.qcow2 2M",
              "-f qcow2 -o " + luks + ",data_file=df.data df.qcow2 2M",
              "-f qcow2 -o " + luks + ",data_file=dfr.data,data_file_raw=on dfr.qcow2 2M"});
  Exercise("xl2.qcow2", Opts("xl2.qcow2"));
  Exercise("xl2-aes.qcow2", Opts("xl2-aes.qcow2"));
  // Compressed clusters and external data files do not go together.
  Exercise("df.qcow2", Opts("df.qcow2"), false);
  Exercise("dfr.qcow2", Opts("dfr.qcow2"), false);
}

TEST_F(Qcow2Crypto, SnapshotsReadAndAreMadeAsQemu) {
  CreateMany({"-f qcow2 -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 "
              "snap.qcow2 2M"});
  const std::string opts = Opts("snap.qcow2");
  IoEnc(opts, {"write -P 0x11 0 256k", "write -P 0x12 1M 4k"});
  Sh("qemu-img snapshot" + Objects() + "-c s1 " + opts);
  IoEnc(opts, {"write -P 0x21 64k 64k", "write -P 0x22 1049088 1k"});
  const std::vector<uint8_t> s1 = QemuRawEnc(opts, "s1");
  {
    auto image = OpenEnc("snap.qcow2", pass0(), true);
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    ExpectImageEquals(**image, QemuRawEnc(opts));
    auto snap = (*image)->OpenSnapshot("1");
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    ExpectImageEquals(**snap, s1);
    // A snapshot made by kvmfs, then writes over clusters both share.
    ASSERT_TRUE((*image)->BeginWrites().ok());
    ASSERT_TRUE((*image)->CreateSnapshot("k1").ok());
    const std::vector<uint8_t> data = Pattern(9, 70000);
    ASSERT_TRUE((*image)->Write(3000, data.data(), data.size()).ok());
    ExpectImageEquals(**snap, s1);
    ASSERT_TRUE((*image)->EndWrites().ok());
  }
  std::string out;
  EXPECT_EQ(CheckEnc(opts, &out), 0) << out;
  std::vector<uint8_t> k1 = QemuRawEnc(opts, "k1");
  std::vector<uint8_t> now = QemuRawEnc(opts);
  ASSERT_EQ(k1.size(), kSize);
  std::vector<uint8_t> expect = k1;
  const std::vector<uint8_t> data = Pattern(9, 70000);
  std::copy(data.begin(), data.end(), expect.begin() + 3000);
  EXPECT_EQ(FirstDiff(now, expect), -1);
  EXPECT_EQ(FirstDiff(QemuRawEnc(opts, "s1"), s1), -1);
}

TEST_F(Qcow2Crypto, ChainOfEncryptedLayersEachWithItsOwnKey) {
  // base: LUKS (sec0) <- mid: AES (sec1) <- top: LUKS (sec2).
  CreateMany({"-f qcow2 -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 "
              "base.qcow2 2M"});
  CreateMany({"-u -f qcow2 -b base.qcow2 -F qcow2 -o encrypt.format=aes,encrypt.key-secret=sec1 "
              "mid.qcow2 2M",
              "-u -f qcow2 -b mid.qcow2 -F qcow2 -o encrypt.format=luks,encrypt.key-secret=sec2,"
              "encrypt.iter-time=10 top.qcow2 2M"});
  const std::string base = "backing.backing.driver=qcow2,backing.backing.encrypt.key-secret=sec0,"
                           "backing.backing.file.filename=base.qcow2";
  const std::string mid_opts =
      "--image-opts 'driver=qcow2,encrypt.key-secret=sec1,file.filename=mid.qcow2,"
      "backing.driver=qcow2,backing.encrypt.key-secret=sec0,backing.file.filename=base.qcow2' ";
  const std::string top_opts =
      Opts("top.qcow2", "qcow2", "sec2",
           "backing.driver=qcow2,backing.encrypt.key-secret=sec1,backing.file.filename=mid.qcow2," +
               base);
  IoEnc(Opts("base.qcow2"), {"write -P 0xb1 0 2M"});
  IoEnc(mid_opts, {"write -P 0xb2 64k 64k", "write -P 0xb3 300k 1k"});
  IoEnc(top_opts, {"write -P 0xb4 128k 4k"});
  std::vector<uint8_t> expect = QemuRawEnc(top_opts);
  const std::map<std::string, std::string> keys = {
      {"base.qcow2", "sec0"}, {"mid.qcow2", "sec1"}, {"top.qcow2", "sec2"}};
  {
    auto chain = OpenChainEnc("top.qcow2", keys, true);
    ASSERT_TRUE(chain.ok()) << chain.status().ToString();
    ASSERT_EQ(chain->layers.size(), 3u);
    for (const Layer& l : chain->layers) EXPECT_TRUE(l.image->DataStatus().ok());
    ExpectImageEquals(*chain->top(), expect);
    ExpectImageEquals(*chain->layers[1].image, QemuRawEnc(mid_opts));
    // Partial clusters over each lower layer: copy-on-write decrypts with
    // the lower layer's key and encrypts with the top's.
    Image& top = *chain->top();
    ASSERT_TRUE(top.BeginWrites().ok());
    for (uint64_t off : {uint64_t{70 * 1024 + 5}, uint64_t{300 * 1024 + 100}, uint64_t{1 << 20}}) {
      const std::vector<uint8_t> data = Pattern(off, 3000);
      ASSERT_TRUE(top.Write(off, data.data(), data.size()).ok());
      std::copy(data.begin(), data.end(), expect.begin() + off);
    }
    ExpectImageEquals(top, expect);
    ASSERT_TRUE(top.EndWrites().ok());
  }
  std::string out;
  EXPECT_EQ(CheckEnc(top_opts, &out), 0) << out;
  EXPECT_EQ(CompareEnc(top_opts, expect, &out), 0) << out;
  // Without the middle layer's key, that layer says so; the chain's data
  // below the top's own clusters is out of reach.
  auto chain = OpenChainEnc("top.qcow2", {{"base.qcow2", "sec0"}, {"top.qcow2", "sec2"}}, false);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  const Status why = chain->layers[1].image->DataStatus();
  EXPECT_EQ(why.code(), Status::Code::kPermission) << why.ToString();
  EXPECT_NE(why.message().find("mid.qcow2"), std::string::npos) << why.ToString();
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(chain->top()->Read(0, buf.data(), buf.size()).code(), Status::Code::kPermission);
}

TEST_F(Qcow2Crypto, DirtyImageRepairKeepsTheLuksArea) {
  CreateMany({"-f qcow2 -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,"
              "lazy_refcounts=on lazy.qcow2 2M"});
  const std::string opts = Opts("lazy.qcow2");
  // qemu-io's abort leaves the dirty bit and unwritten refcounts.
  test::RunCmd("cd " + dir_ + " && qemu-io" + Objects() + opts +
         " -c 'write -P 0x71 0 256k' -c abort >/dev/null 2>&1");
  std::vector<uint8_t> expect(kSize, 0);
  std::fill(expect.begin(), expect.begin() + 256 * 1024, 0x71);
  {
    auto image = OpenEnc("lazy.qcow2", pass0(), true);
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    ASSERT_TRUE((*image)->BeginWrites().ok());  // the repair
    // New clusters must not land on the key slots.
    const std::vector<uint8_t> data = Pattern(5, 1 << 20);
    ASSERT_TRUE((*image)->Write(1 << 20, data.data(), data.size()).ok());
    std::copy(data.begin(), data.end(), expect.begin() + (1 << 20));
    ASSERT_TRUE((*image)->EndWrites().ok());
  }
  std::string out;
  EXPECT_EQ(CheckEnc(opts, &out), 0) << out;
  EXPECT_EQ(CompareEnc(opts, expect, &out), 0) << out;
}

// Threads writing their own bytes of the same sectors (read-modify-write of
// partial sectors, each byte written once) while others allocate: every
// byte survives.
TEST_F(Qcow2Crypto, ConcurrentPartialSectorWritesKeepEveryByte) {
  CreateMany({"-f qcow2 -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 "
              "par.qcow2 2M"});
  const std::string opts = Opts("par.qcow2");
  IoEnc(opts, {"write -P 0 0 64k"});
  std::vector<uint8_t> expect(kSize, 0);
  {
    auto image = OpenEnc("par.qcow2", pass0(), true);
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    Image& img = **image;
    ASSERT_TRUE(img.BeginWrites().ok());
    constexpr int kThreads = 6, kRounds = 2400 / test::kRoundsDivisor;
    // Write k: 3 bytes of thread k % kThreads at 3 * k (cluster 0, sectors
    // shared by all threads).
    auto at = [](int t, int r) { return uint64_t{3} * (uint64_t(r) * kThreads + t); };
    auto value = [](int t, int r) { return static_cast<uint8_t>(1 + (t * 41 + r) % 250); };
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int r = 0; r < kRounds; ++r) {
          const std::vector<uint8_t> b(3, value(t, r));
          if (!img.Write(at(t, r), b.data(), b.size()).ok()) ++failures;
          // Now and then an allocating write of a cluster of its own.
          if (r % 64 != 0) continue;
          const std::vector<uint8_t> a(4096, static_cast<uint8_t>(t + 100));
          const uint64_t off = (1 + t) * 65536 + (r / 64) * 4096 % 65536;
          if (!img.Write(off, a.data(), a.size()).ok()) ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    for (int t = 0; t < kThreads; ++t) {
      for (int r = 0; r < kRounds; ++r) {
        std::fill_n(expect.begin() + at(t, r), 3, value(t, r));
        if (r % 64 == 0)
          std::fill_n(expect.begin() + (1 + t) * 65536 + (r / 64) * 4096 % 65536, 4096,
                      static_cast<uint8_t>(t + 100));
      }
    }
    ExpectImageEquals(img, expect);
    ASSERT_TRUE(img.EndWrites().ok());
  }
  std::string out;
  EXPECT_EQ(CheckEnc(opts, &out), 0) << out;
  EXPECT_EQ(CompareEnc(opts, expect, &out), 0) << out;
}

TEST_F(Qcow2Crypto, KeyProblemsLeaveTheImageDescribed) {
  const std::string luks = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10";
  CreateMany({"-f qcow2 -o " + luks + " k.qcow2 1M",
              "-f qcow2 -o " + luks + ",encrypt.cipher-alg=aes-192,encrypt.cipher-mode=xts "
              "k192.qcow2 1M"});
  auto expect_data_refused = [&](const std::string& name, const std::string& pass,
                                 Status::Code code, const std::string& words) {
    SCOPED_TRACE(name);
    auto image = OpenEnc(name, pass, true);
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    const Status why = (*image)->DataStatus();
    EXPECT_EQ(why.code(), code) << why.ToString();
    EXPECT_NE(why.message().find(words), std::string::npos) << why.ToString();
    EXPECT_NE(why.message().find(name), std::string::npos) << why.ToString();
    if (!pass.empty()) {
      EXPECT_EQ(why.message().find(pass), std::string::npos);
    }
    std::vector<uint8_t> buf(512);
    EXPECT_EQ((*image)->Read(0, buf.data(), buf.size()).code(), code);
    ReadPlan plan;
    EXPECT_EQ((*image)->PlanRead(0, 512, plan).code(), code);
    EXPECT_EQ((*image)->BeginWrites().code(), code);
    EXPECT_FALSE((*image)->writable());
    ExpectInfoLikeQemu(**image, name);
  };
  expect_data_refused("k.qcow2", "", Status::Code::kPermission, "no key configured");
  expect_data_refused("k.qcow2", "not-the-passphrase", Status::Code::kPermission, "wrong key");
  expect_data_refused("k192.qcow2", pass0(), Status::Code::kNotSupported, "aes-192");

  // The LUKS area at the offset the crypto header extension names.
  std::vector<uint8_t> f = test::ReadHostFile(P("k.qcow2"));
  uint64_t area = 0;
  for (size_t p = LoadBE32(f.data() + 100); p + 8 <= f.size();) {
    const uint32_t type = LoadBE32(f.data() + p), len = LoadBE32(f.data() + p + 4);
    if (type == 0) break;
    if (type == 0x0537be77) area = LoadBE64(f.data() + p + 8);
    p += 8 + (len + 7) / 8 * 8;
  }
  ASSERT_GT(area, 0u);
  const uint32_t key_offset = LoadBE32(f.data() + area + 208 + 40);
  auto patched = [&](const std::string& name, uint64_t off, std::vector<uint8_t> bytes) {
    std::vector<uint8_t> g = f;
    std::copy(bytes.begin(), bytes.end(), g.begin() + off);
    test::WriteHostFile(P(name), g);
  };
  patched("material.qcow2", area + key_offset * 512ull, std::vector<uint8_t>(4096, 0xff));
  expect_data_refused("material.qcow2", pass0(), Status::Code::kPermission, "wrong key");
  // Refused at once (not hours of PBKDF2), and so are a bad slot state and
  // a header cut short.
  patched("iters.qcow2", area + 208 + 4, {0xff, 0xff, 0xff, 0xff});
  const auto start = std::chrono::steady_clock::now();
  auto iters = OpenEnc("iters.qcow2", pass0(), false);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  ASSERT_FALSE(iters.ok());
  EXPECT_EQ(iters.status().code(), Status::Code::kNotSupported) << iters.status().ToString();
  patched("state.qcow2", area + 208, {0x12, 0x34, 0x56, 0x78});
  auto state = OpenEnc("state.qcow2", pass0(), false);
  ASSERT_FALSE(state.ok());
  EXPECT_EQ(state.status().code(), Status::Code::kCorruption) << state.status().ToString();
  f.resize(area + 300);
  test::WriteHostFile(P("cut.qcow2"), f);
  auto cut = OpenEnc("cut.qcow2", pass0(), false);
  ASSERT_FALSE(cut.ok());
  EXPECT_EQ(cut.status().code(), Status::Code::kCorruption) << cut.status().ToString();
}

}  // namespace
}  // namespace kvmfs
