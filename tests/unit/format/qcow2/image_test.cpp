// Real images made with qemu-img / qemu-io at test time, opened through the
// chain opener and compared byte for byte (and map for map) with qemu-img.
#include <algorithm>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "format/qcow2/options.h"
#include "format/qcow2/qcow2.h"
#include "kvmfs/backend.h"
#include "kvmfs/chain.h"
#include "kvmfs/format.h"
#include "../../qemu_img_pbkdf.h"
#include "../qemu_scratch.h"

namespace kvmfs {
namespace {

using nlohmann::json;
using test::kQemuImgPbkdf;
using test::ReadFileBytes;
using test::Shell;

class Qcow2Image : public test::QemuScratchTest {
 public:
  // qemu-io commands, each `-c`.
  void Io(const std::string& image, const std::vector<std::string>& cmds,
          const std::string& fmt = "qcow2") {
    QemuScratchTest::Io(image, cmds, fmt);
  }

  Chain Open(const std::string& name) {
    ChainPolicy policy;
    policy.allowed_roots = {dir_};
    auto chain = OpenChain(P(name), policy);
    EXPECT_TRUE(chain.ok()) << chain.status().ToString();
    return chain.ok() ? std::move(chain).value() : Chain{};
  }

  // Compares every byte of `image` with `qemu-img convert -O raw`.
  void ExpectSameBytes(Image& image, const std::string& name, const std::string& snapshot = "") {
    std::string opt = snapshot.empty() ? "" : " -l snapshot.name=" + snapshot;
    Sh("qemu-img convert -U -O raw" + opt + " " + name + " expected.raw");
    auto expected = ReadFileBytes(P("expected.raw"));
    ASSERT_EQ(image.size(), expected.size());
    std::vector<uint8_t> got(expected.size(), 0xee);
    Status st = image.Read(0, got.data(), got.size());
    ASSERT_TRUE(st.ok()) << st.ToString();
    if (got != expected) {
      const auto diff = std::mismatch(got.begin(), got.end(), expected.begin(), expected.end());
      FAIL() << name << " differs at byte " << (diff.first - got.begin());
    }
    // And in odd, unaligned pieces across cluster boundaries.
    std::vector<uint8_t> piece;
    for (uint64_t off = 0; off < expected.size(); off += 497 * 131) {
      size_t n = std::min<uint64_t>(497 * 3, expected.size() - off);
      piece.assign(n, 0xee);
      ASSERT_TRUE(image.Read(off, piece.data(), n).ok());
      ASSERT_TRUE(std::equal(piece.begin(), piece.end(), expected.begin() + off)) << off;
    }
  }

  // Compares the allocation map with `qemu-img map --output=json`.
  void ExpectSameMap(Image& top, const std::string& name) {
    auto out = Shell("cd " + dir_ + " && qemu-img map -U --output=json " + name);
    ASSERT_TRUE(out);
    json map = json::parse(*out);
    for (const json& e : map) {
      uint64_t off = e["start"].get<uint64_t>();
      const uint64_t end = off + e["length"].get<uint64_t>();
      const bool data = e["data"].get<bool>();
      const bool zero = e["zero"].get<bool>();
      while (off < end) {
        auto bs = ChainBlockStatus(top, off, end - off);
        ASSERT_TRUE(bs.ok()) << bs.status().ToString();
        ASSERT_GT(bs->length, 0u);
        EXPECT_EQ(bs->kind == Allocation::kData, data) << name << " at " << off << ": " << e.dump();
        if (!data) {
          EXPECT_TRUE(zero) << e.dump();
        }
        off += bs->length;
      }
    }
  }

  void ExpectSame(const std::string& name) {
    Chain chain = Open(name);
    ASSERT_FALSE(chain.layers.empty());
    ExpectSameBytes(*chain.top(), name);
    ExpectSameMap(*chain.top(), name);
  }

};

// Writes, zero writes and discards of every size class over a v2/v3 image.
void Scribble(Qcow2Image* t, const std::string& img, uint64_t cs, bool v3) {
  std::vector<std::string> cmds = {
      "write -P 0x11 0 " + std::to_string(cs),
      "write -P 0x22 " + std::to_string(3 * cs + 512) + " 1536",
      "write -P 0x33 " + std::to_string(5 * cs) + " " + std::to_string(4 * cs),
      "write -P 0x44 1048576 65536",
      "write -P 0x55 3145216 512",
  };
  if (v3) {
    cmds.push_back("write -z " + std::to_string(6 * cs) + " " + std::to_string(cs));
    cmds.push_back("discard " + std::to_string(7 * cs) + " " + std::to_string(cs));
  }
  t->Io(img, cmds);
}

TEST_F(Qcow2Image, ClusterSizesAndVersionsMatchQemu) {
  for (uint64_t cs : {512u, 4096u, 65536u, 2u << 20}) {
    for (bool v3 : {false, true}) {
      SCOPED_TRACE("cluster " + std::to_string(cs) + (v3 ? " v3" : " v2"));
      const std::string name = "c" + std::to_string(cs) + (v3 ? "v3" : "v2") + ".qcow2";
      const uint64_t size = cs == (2u << 20) ? (24u << 20) : (4u << 20);
      Sh("qemu-img create -q -f qcow2 -o cluster_size=" + std::to_string(cs) +
         ",compat=" + (v3 ? "1.1" : "0.10") + " " + name + " " + std::to_string(size));
      Scribble(this, name, cs, v3);
      ExpectSame(name);
    }
  }
}

TEST_F(Qcow2Image, BackingChainReadsThroughUnallocatedRanges) {
  Sh("qemu-img create -q -f raw base.raw 3M");
  Io("base.raw", {"write -P 0x61 0 3M"}, "raw");
  Sh("qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 4M");
  Io("mid.qcow2", {"write -P 0x62 1M 64k", "write -z 2M 128k"});
  Sh("qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 4M");
  Io("top.qcow2", {"write -P 0x63 1056768 4096", "discard 0 64k"});
  ExpectSame("top.qcow2");
  Chain chain = Open("top.qcow2");
  ASSERT_EQ(chain.layers.size(), 3u);
  EXPECT_EQ(chain.top()->Info().backing_filename, "mid.qcow2");
  EXPECT_EQ(chain.top()->Info().backing_format, "qcow2");
}

TEST_F(Qcow2Image, ExtendedL2SubclustersOverBackingMatchQemu) {
  Sh("qemu-img create -q -f qcow2 base.qcow2 2M");
  Io("base.qcow2", {"write -P 0x11 0 2M"});
  Sh("qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k -b base.qcow2 -F qcow2 "
     "el2.qcow2 2M");
  Io("el2.qcow2",
     {"write -P 0x22 4096 4096", "write -z 65536 8192", "write -P 0x33 200k 5k",
      "write -z 512k 128k", "write -P 0x44 1M 128k", "discard 1M 16k", "write -z 1536k 4k"});
  ExpectSame("el2.qcow2");
}

TEST_F(Qcow2Image, CompressedZlibAndZstdMatchQemu) {
  // A size that leaves a final partial cluster.
  Sh("qemu-img create -q -f raw src.raw 1060864");
  Io("src.raw", {"write -P 0x71 0 100k", "write -P 0x72 300k 64k", "write -P 0x73 1000k 36k"},
     "raw");
  for (const char* type : {"zlib", "zstd"}) {
    SCOPED_TRACE(type);
    const std::string name = std::string("c-") + type + ".qcow2";
    Sh(std::string("qemu-img convert -c -O qcow2 -o compression_type=") + type + " src.raw " +
       name);
    ExpectSame(name);
    // Compressed writes with qemu-io too, over a small cluster size.
    const std::string small = std::string("w-") + type + ".qcow2";
    Sh(std::string("qemu-img create -q -f qcow2 -o cluster_size=4096,compression_type=") + type +
       " " + small + " 1M");
    Io(small, {"write -c -P 0x5a 0 4096", "write -c -P 0x5b 8192 8192", "write -P 0x5c 12288 512"});
    ExpectSame(small);
  }
}

// `bytes` of guest data that compress unevenly, as a real disk: 4 KiB blocks
// of random bytes, text-like runs and zeros, so that qemu-img leaves some
// clusters uncompressed and streams have every length.
void WriteMixedRaw(const std::string& path, size_t bytes, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(bytes);
  for (size_t block = 0; block < bytes; block += 4096) {
    const uint32_t kind = rng() % 4;
    for (size_t i = block; i < std::min(bytes, block + 4096); ++i)
      v[i] = kind == 0   ? uint8_t(rng())
             : kind == 1 ? uint8_t('a' + (i * 7 + block / 4096) % 23)
             : kind == 2 ? 0
                         : uint8_t(i / 97 + rng() % 3);
  }
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(v.data()), v.size());
}

// The decoders (libdeflate with zlib behind it, zstd) over every cluster size
// qemu-img compresses, read whole (one batch of many clusters), in 1 MiB
// requests as FUSE sends them, and in odd pieces.
TEST_F(Qcow2Image, CompressedEveryClusterSizeMatchesQemu) {
  // A size that leaves a final partial 2 MiB cluster.
  WriteMixedRaw(P("mixed.raw"), (5 << 20) + 12288, 21);
  for (const char* type : {"zlib", "zstd"}) {
    for (const char* cs : {"512", "4k", "64k", "2M"}) {
      SCOPED_TRACE(std::string(type) + " " + cs);
      const std::string name = std::string("m-") + type + "-" + cs + ".qcow2";
      Sh(std::string("qemu-img convert -c -O qcow2 -o compression_type=") + type +
         ",cluster_size=" + cs + " mixed.raw " + name);
      Chain chain = Open(name);
      ASSERT_FALSE(chain.layers.empty());
      ExpectSameBytes(*chain.top(), name);
      const auto expected = ReadFileBytes(P("expected.raw"));
      std::vector<uint8_t> got(1 << 20);
      for (uint64_t off = 4096 + 512; off < expected.size(); off += got.size()) {
        const size_t n = std::min<uint64_t>(got.size(), expected.size() - off);
        ASSERT_TRUE(chain.top()->Read(off, got.data(), n).ok()) << off;
        ASSERT_TRUE(std::equal(got.begin(), got.begin() + n, expected.begin() + off)) << off;
      }
    }
  }
}

// Many readers of long compressed runs at once, over a decompressed-cluster
// cache far smaller than one request: batches of different readers share
// the pool and the cache and must each get their own bytes.
TEST_F(Qcow2Image, ConcurrentCompressedRunsSeeTheRightBytes) {
  WriteMixedRaw(P("cr.raw"), 6 << 20, 5);
  Sh("qemu-img convert -c -O qcow2 -o cluster_size=16k cr.raw cr.qcow2");
  const auto expected = ReadFileBytes(P("cr.raw"));
  ChainPolicy policy;
  policy.allowed_roots = {dir_};
  Qcow2Options options;
  options.decompressed_cache_bytes = 2 * 16384;
  SetQcow2DefaultOptions(options);
  auto chain = OpenChain(P("cr.qcow2"), policy);
  SetQcow2DefaultOptions(Qcow2Options{});
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  Image& image = *chain->top();
  std::atomic<int> mismatches{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 r(t + 7);
      std::vector<uint8_t> buf;
      for (int i = 0; i < 60; ++i) {
        const uint64_t off = r() % expected.size();
        const size_t len = 1 + r() % std::min<uint64_t>(1 << 20, expected.size() - off);
        buf.assign(len, 0xee);
        if (!image.Read(off, buf.data(), len).ok())
          ++errors;
        else if (!std::equal(buf.begin(), buf.end(), expected.begin() + off))
          ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_F(Qcow2Image, ExternalDataFileMatchesQemu) {
  for (bool raw : {false, true}) {
    SCOPED_TRACE(raw ? "data_file_raw" : "data file");
    const std::string name = raw ? "dfr.qcow2" : "df.qcow2";
    const std::string data = raw ? "dfr.data" : "df.data";
    Sh("qemu-img create -q -f qcow2 -o data_file=" + data + (raw ? ",data_file_raw=on" : "") + " " +
       name + " 2M");
    Io(name, {"write -P 0x81 0 64k", "write -P 0x82 1M 4k", "write -z 1536k 64k"});
    ExpectSame(name);
    Chain chain = Open(name);
    ASSERT_FALSE(chain.layers.empty());
    const auto& fs_fields = chain.top()->Info().format_specific;
    bool found_raw = false;
    for (const auto& f : fs_fields)
      if (f.key == "data-file-raw") found_raw = std::get<bool>(f.value) == raw;
    EXPECT_TRUE(found_raw);
  }
}

TEST_F(Qcow2Image, RefcountWidthsDoNotMatterForReads) {
  for (int bits : {1, 64}) {
    const std::string name = "r" + std::to_string(bits) + ".qcow2";
    Sh("qemu-img create -q -f qcow2 -o refcount_bits=" + std::to_string(bits) + " " + name + " 1M");
    Io(name, {"write -P 0x91 4096 64k"});
    ExpectSame(name);
  }
}

TEST_F(Qcow2Image, SnapshotTakenBetweenWritesMatchesQemu) {
  Sh("qemu-img create -q -f raw base.raw 2M");
  Io("base.raw", {"write -P 0x10 0 2M"}, "raw");
  Sh("qemu-img create -q -f qcow2 -b base.raw -F raw s.qcow2 2M");
  Io("s.qcow2", {"write -P 0xa1 0 128k"});
  Sh("qemu-img snapshot -c before s.qcow2");
  Io("s.qcow2", {"write -P 0xa2 64k 128k", "write -z 1M 64k"});
  Sh("qemu-img snapshot -c after s.qcow2");
  Io("s.qcow2", {"write -P 0xa3 0 4k"});
  ExpectSame("s.qcow2");

  Chain chain = Open("s.qcow2");
  ASSERT_FALSE(chain.layers.empty());
  auto snaps = chain.top()->Snapshots();
  ASSERT_EQ(snaps.size(), 2u);
  auto info = json::parse(*Shell("cd " + dir_ + " && qemu-img info -U --output=json s.qcow2"));
  for (size_t i = 0; i < snaps.size(); ++i) {
    const json& q = info["snapshots"][i];
    EXPECT_EQ(snaps[i].id, q["id"].get<std::string>());
    EXPECT_EQ(snaps[i].name, q["name"].get<std::string>());
    EXPECT_EQ(snaps[i].vm_state_size, q["vm-state-size"].get<uint64_t>());
    EXPECT_EQ(snaps[i].date_sec, q["date-sec"].get<uint32_t>());
    EXPECT_EQ(snaps[i].date_nsec, q["date-nsec"].get<uint32_t>());
    EXPECT_EQ(snaps[i].vm_clock_nsec,
              q["vm-clock-sec"].get<uint64_t>() * 1000000000 + q["vm-clock-nsec"].get<uint64_t>());
    EXPECT_EQ(snaps[i].has_icount, q.contains("icount"));
    if (q.contains("icount")) {
      EXPECT_EQ(snaps[i].icount, q["icount"].get<uint64_t>());
    }
    auto view = chain.top()->OpenSnapshot(snaps[i].id);
    ASSERT_TRUE(view.ok()) << view.status().ToString();
    ExpectSameBytes(**view, "s.qcow2", snaps[i].name);
  }
}

// format-specific keys and values, in qemu-img's order.
TEST_F(Qcow2Image, InfoMatchesQemuImgInfo) {
  const std::vector<std::string> variants = {"-o compat=0.10",
                                             "",
                                             "-o lazy_refcounts=on",
                                             "-o extended_l2=on,cluster_size=128k",
                                             "-o compression_type=zstd",
                                             "-o data_file=i5.data",
                                             "-o data_file=i6.data,data_file_raw=on",
                                             "-o refcount_bits=1",
                                             "-o refcount_bits=64,cluster_size=4k"};
  for (size_t i = 0; i < variants.size(); ++i) {
    SCOPED_TRACE(variants[i]);
    const std::string name = "i" + std::to_string(i) + ".qcow2";
    Sh("qemu-img create -q -f qcow2 " + variants[i] + " " + name + " 3M");
    Chain chain = Open(name);
    ASSERT_FALSE(chain.layers.empty());
    ImageInfo info = chain.top()->Info();
    json q = json::parse(*Shell("cd " + dir_ + " && qemu-img info -U --output=json " + name));
    EXPECT_EQ(info.format, q["format"].get<std::string>());
    EXPECT_EQ(info.virtual_size, q["virtual-size"].get<uint64_t>());
    EXPECT_EQ(*info.cluster_size, q["cluster-size"].get<uint64_t>());
    EXPECT_EQ(info.dirty, q["dirty-flag"].get<bool>());
    EXPECT_EQ(info.format_specific_type, q["format-specific"]["type"].get<std::string>());
    json mine = json::object();
    std::vector<std::string> my_keys, their_keys;
    for (const auto& f : info.format_specific) {
      my_keys.push_back(f.key);
      std::visit(
          [&](const auto& v) {
            using T = std::decay_t<decltype(v)>;
            if constexpr (!std::is_same_v<T, InfoObject> && !std::is_same_v<T, std::vector<InfoObject>>)
              mine[f.key] = v;
          },
          f.value);
    }
    const json& data = q["format-specific"]["data"];
    for (auto it = data.begin(); it != data.end(); ++it) their_keys.push_back(it.key());
    EXPECT_EQ(mine, data);
    // nlohmann::json sorts keys; the raw text keeps qemu-img's order.
    std::string text = *Shell("cd " + dir_ + " && qemu-img info -U --output=json " + name);
    size_t last = 0;
    for (const auto& k : my_keys) {
      size_t at = text.find("\"" + k + "\"", last);
      EXPECT_NE(at, std::string::npos) << k;
      if (at != std::string::npos) last = at;
    }
    auto actual = chain.top()->ActualSize();
    ASSERT_TRUE(actual.ok());
    EXPECT_EQ(*actual, q["actual-size"].get<uint64_t>());
  }
}

TEST_F(Qcow2Image, ConcurrentRandomReadsSeeTheRightBytes) {
  Sh("qemu-img create -q -f raw base.raw 8M");
  Io("base.raw", {"write -P 0x01 0 8M"}, "raw");
  Sh("qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.raw -F raw cc.qcow2 8M");
  std::vector<std::string> cmds;
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    uint64_t off = (rng() % (8 << 20)) & ~uint64_t{511};
    uint64_t len = std::min<uint64_t>(512 * (1 + rng() % 40), (8 << 20) - off);
    int kind = rng() % 4;
    if (kind == 0)
      cmds.push_back("write -z " + std::to_string(off) + " " + std::to_string(len));
    else if (kind == 1 && off % 4096 == 0 && len >= 4096)
      cmds.push_back("write -c -P " + std::to_string(i % 250 + 2) + " " + std::to_string(off) +
                     " 4096");
    else
      cmds.push_back("write -P " + std::to_string(i % 250 + 2) + " " + std::to_string(off) + " " +
                     std::to_string(len));
  }
  Io("cc.qcow2", cmds);
  Sh("qemu-img convert -O raw cc.qcow2 expected.raw");
  const auto expected = ReadFileBytes(P("expected.raw"));
  ASSERT_EQ(expected.size(), 8u << 20);

  // Open with tiny caches so that threads evict each other's tables.
  ChainPolicy policy;
  policy.allowed_roots = {dir_};
  Qcow2Options options;
  options.budget = std::make_shared<qcow2::CacheBudget>(5 * (4096 + qcow2::kCacheEntryOverhead));
  options.decompressed_cache_bytes = 2 * 4096;
  SetQcow2DefaultOptions(options);
  auto chain = OpenChain(P("cc.qcow2"), policy);
  SetQcow2DefaultOptions(Qcow2Options{});
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  Image& image = *chain->top();

  std::atomic<int> mismatches{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 r(t + 100);
      std::vector<uint8_t> buf;
      for (int i = 0; i < 400; ++i) {
        uint64_t off = r() % expected.size();
        size_t len = 1 + r() % std::min<uint64_t>(200000, expected.size() - off);
        buf.assign(len, 0xee);
        if (!image.Read(off, buf.data(), len).ok())
          ++errors;
        else if (!std::equal(buf.begin(), buf.end(), expected.begin() + off))
          ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_F(Qcow2Image, PetabyteSparseImageIsScannedQuickly) {
  Sh("qemu-img create -q -f qcow2 big.qcow2 1P");
  Io("big.qcow2", {"write -P 0x42 512G 64k"});
  Chain chain = Open("big.qcow2");
  ASSERT_FALSE(chain.layers.empty());
  Image& image = *chain.top();
  ASSERT_EQ(image.size(), 1ull << 50);
  int runs = 0;
  uint64_t data = 0;
  for (uint64_t off = 0; off < image.size();) {
    auto bs = image.GetBlockStatus(off, image.size() - off);
    ASSERT_TRUE(bs.ok()) << bs.status().ToString();
    if (bs->kind == Allocation::kData) data += bs->length;
    off += bs->length;
    ASSERT_LT(++runs, 100);
  }
  EXPECT_EQ(data, 65536u);
  std::vector<uint8_t> buf(65536);
  ASSERT_TRUE(image.Read(512ull << 30, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, std::vector<uint8_t>(65536, 0x42));
}

TEST_F(Qcow2Image, PreallocatedMetadataMatchesQemu) {
  Sh("qemu-img create -q -f qcow2 -o preallocation=metadata pm.qcow2 3M");
  Io("pm.qcow2", {"write -P 0x31 64k 64k", "write -z 1M 64k"});
  ExpectSame("pm.qcow2");
  Sh("qemu-img create -q -f qcow2 -o preallocation=metadata,data_file=pmd.data,data_file_raw=on "
     "pmd.qcow2 3M");
  Io("pmd.qcow2", {"write -P 0x32 0 4k"});
  ExpectSame("pmd.qcow2");
}

TEST_F(Qcow2Image, CompressedClustersOverBackingMatchQemu) {
  Sh("qemu-img create -q -f raw base.raw 1M");
  Io("base.raw", {"write -P 0x21 0 1M"}, "raw");
  Sh("qemu-img create -q -f qcow2 -b base.raw -F raw -o compression_type=zstd zb.qcow2 1M");
  Io("zb.qcow2", {"write -c -P 0x22 64k 64k", "write -c -P 0x23 960k 64k", "write -z 128k 64k"});
  ExpectSame("zb.qcow2");
}

TEST_F(Qcow2Image, MissingDataFileIsNotFound) {
  Sh("qemu-img create -q -f qcow2 -o data_file=gone.data gone.qcow2 1M");
  Sh("rm gone.data");
  ChainPolicy policy;
  policy.allowed_roots = {dir_};
  auto chain = OpenChain(P("gone.qcow2"), policy);
  ASSERT_FALSE(chain.ok());
  EXPECT_TRUE(chain.status().IsNotFound()) << chain.status().ToString();
}

TEST_F(Qcow2Image, SnapshotKeepsItsOwnDiskSizeAfterResize) {
  Sh("qemu-img create -q -f qcow2 rs.qcow2 1M");
  Io("rs.qcow2", {"write -P 0x51 0 1M"});
  Sh("qemu-img snapshot -c small rs.qcow2");
  Sh("qemu-img resize -q rs.qcow2 3M");
  Io("rs.qcow2", {"write -P 0x52 512k 2M"});
  ExpectSame("rs.qcow2");
  Chain chain = Open("rs.qcow2");
  ASSERT_FALSE(chain.layers.empty());
  auto snaps = chain.top()->Snapshots();
  ASSERT_EQ(snaps.size(), 1u);
  EXPECT_EQ(snaps[0].disk_size, 1u << 20);
  auto view = chain.top()->OpenSnapshot(snaps[0].id);
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  ASSERT_EQ((*view)->size(), 1u << 20);
  std::vector<uint8_t> buf(1 << 20);
  ASSERT_TRUE((*view)->Read(0, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, std::vector<uint8_t>(1 << 20, 0x51));
  EXPECT_EQ((*view)->Info().virtual_size, 1u << 20);
  EXPECT_EQ((*view)->Write(0, buf.data(), 512).code(), Status::Code::kReadOnly);
}

// Random byte damage to the metadata of real images: every open and read
// either works or fails with a Status; never a crash, hang or huge allocation.
TEST_F(Qcow2Image, RandomMetadataDamageNeverCrashes) {
  Sh("qemu-img create -q -f qcow2 -o cluster_size=4096 d.qcow2 2M");
  Io("d.qcow2", {"write -P 0x11 0 256k", "write -c -P 0x12 512k 64k", "write -z 1M 64k"});
  Sh("qemu-img snapshot -c s1 d.qcow2");
  Io("d.qcow2", {"write -P 0x13 64k 64k"});
  Sh("qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=32k e.qcow2 2M");
  Io("e.qcow2", {"write -P 0x21 4k 8k", "write -z 64k 4k", "write -c -P 0x22 128k 32k"});
  std::mt19937 rng(1234);
  int opened = 0;
  for (const char* name : {"d.qcow2", "e.qcow2"}) {
    const auto pristine = ReadFileBytes(P(name));
    const uint64_t metadata = std::min<uint64_t>(pristine.size(), 8 * 32768);
    for (int round = 0; round < 300; ++round) {
      auto damaged = pristine;
      const int flips = 1 + rng() % 8;
      for (int i = 0; i < flips; ++i) {
        // Mostly the header cluster, sometimes anywhere in the tables.
        uint64_t at = rng() % 4 == 0 ? rng() % metadata : rng() % 128;
        damaged[at] = rng() % 2 ? uint8_t(rng()) : uint8_t(damaged[at] ^ (1u << (rng() % 8)));
      }
      OpenContext ctx;
      ctx.name = name;
      auto image =
          OpenQcow2(std::shared_ptr<Backend>(NewMemBackend(name, damaged, false)), ctx, {});
      if (!image.ok()) {
        EXPECT_FALSE(image.status().message().empty());
        continue;
      }
      ++opened;
      Image& img = **image;
      std::vector<uint8_t> buf(65536);
      for (uint64_t off = 0; off < std::min<uint64_t>(img.size(), 4 << 20); off += buf.size()) {
        size_t n = std::min<uint64_t>(buf.size(), img.size() - off);
        (void)img.Read(off, buf.data(), n);
        (void)img.GetBlockStatus(off, img.size() - off);
      }
      for (const SnapshotInfo& s : img.Snapshots()) {
        auto view = img.OpenSnapshot(s.id);
        if (view.ok() && (*view)->size() > 0)
          (void)(*view)->Read(0, buf.data(), std::min<uint64_t>(buf.size(), (*view)->size()));
      }
    }
  }
  EXPECT_GT(opened, 0);
}

TEST_F(Qcow2Image, PersistentBitmapsDoNotDisturbReads) {
  Sh("qemu-img create -q -f qcow2 bm.qcow2 1M");
  Sh("qemu-img bitmap --add bm.qcow2 b0");
  Io("bm.qcow2", {"write -P 0x61 0 128k"});
  ExpectSame("bm.qcow2");
}

TEST_F(Qcow2Image, EncryptedImagesWithoutAKeyAreDescribedButTheirDataRefused) {
  for (const char* format : {"luks", "aes"}) {
    SCOPED_TRACE(format);
    const std::string name = std::string("enc-") + format + ".qcow2";
    Sh(kQemuImgPbkdf + " create -q -f qcow2 --object secret,id=sec0,data=abc -o encrypt.format=" +
       format + ",encrypt.key-secret=sec0 " + name + " 1M");
    ChainPolicy policy;
    policy.allowed_roots = {dir_};
    auto chain = OpenChain(P(name), policy);
    ASSERT_TRUE(chain.ok()) << chain.status().ToString();
    const Status why = chain->top()->DataStatus();
    EXPECT_EQ(why.code(), Status::Code::kPermission) << why.ToString();
    EXPECT_NE(why.message().find(std::string(format) == "luks" ? "(LUKS)" : "(AES)"),
              std::string::npos)
        << why.ToString();
    EXPECT_NE(why.message().find(name), std::string::npos);
    EXPECT_TRUE(chain->top()->Info().encrypted);
    std::vector<uint8_t> buf(4096);
    EXPECT_EQ(chain->top()->Read(0, buf.data(), buf.size()).code(), Status::Code::kPermission);
  }
}

}  // namespace
}  // namespace kvmfs
