// qcow2 compressed writes (the pool's `compress:`, OpenContext::compress):
// whole clusters stored compressed and packed as QEMU's compress filter
// does, partial writes and overwrites falling back to normal clusters, zstd
// and extended-L2 images. qemu-img is the oracle: `check` clean, `compare`
// equal, `map` (7.2 shows no host offset for compressed clusters), and the
// L2 entries read from the file.
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "base/endian.h"
#include "write_helpers.h"

namespace kvmfs::test {
namespace {

using nlohmann::json;

#define ASSERT_OK(expr)                                     \
  do {                                                      \
    ::kvmfs::Status _s = (expr);                            \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s.ToString(); \
  } while (0)

constexpr uint64_t kCluster = 64 * 1024;

// Text-like bytes that deflate well, different for every seed.
std::vector<uint8_t> Text(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  static const char* const kWords[] = {"qcow2 ", "cluster ", "refcount ", "guest ",
                                       "backing ", "snapshot ", "\n", "kvmfs "};
  std::vector<uint8_t> v;
  v.reserve(n);
  while (v.size() < n) {
    const char* w = kWords[rng() % 8];
    for (const char* c = w; *c && v.size() < n; ++c) v.push_back(static_cast<uint8_t>(*c));
  }
  return v;
}

std::vector<uint8_t> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

class Qcow2CompressWrite : public WriteTest {
 protected:
  // The active view of `name` opened for writing with compressed writes.
  Result<std::unique_ptr<Image>> OpenCompressed(const std::string& name,
                                                WriteCompression c = WriteCompression::kZlib) {
    KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> local, OpenLocalFile(P(name), true));
    OpenContext ctx;
    ctx.name = P(name);
    ctx.writable = true;
    ctx.compress = c;
    return OpenQcow2(std::shared_ptr<Backend>(std::move(local)), ctx, Qcow2Options{});
  }

  // Writes `data` at `off` in `chunk`-byte requests through a compressing
  // open, then closes the image.
  void WriteAll(const std::string& name, uint64_t off, const std::vector<uint8_t>& data,
                size_t chunk, WriteCompression c = WriteCompression::kZlib) {
    auto img = OpenCompressed(name, c);
    ASSERT_TRUE(img.ok()) << img.status().ToString();
    ASSERT_OK((*img)->BeginWrites());
    for (size_t at = 0; at < data.size(); at += chunk) {
      const size_t n = std::min(chunk, data.size() - at);
      ASSERT_OK((*img)->Write(off + at, data.data() + at, n));
    }
    EXPECT_EQ(FirstDiff(ReadImage(**img, off, data.size()), data), -1) << "read back";
    ASSERT_OK((*img)->EndWrites());
  }

  // qemu-img check clean (no corruption, no leak) and compare equal to `raw`.
  void ExpectCleanAndEqual(const std::string& name, const std::vector<uint8_t>& raw) {
    std::string out;
    EXPECT_EQ(Check(name, &out), 0) << out;
    WriteHostFile(P("expect.raw"), raw);
    Sh("qemu-img compare -q -f qcow2 -F raw " + name + " expect.raw");
    fs::remove(P("expect.raw"));
  }

  // qemu-img map: the guest clusters (of kCluster bytes) that read data
  // with no host offset (compressed, in QEMU 7.2's output) and with one.
  void MapKinds(const std::string& name, std::vector<uint64_t>* compressed,
                std::vector<uint64_t>* normal) {
    const json map = json::parse(Sh("qemu-img map --output=json " + name));
    for (const json& e : map) {
      if (!e["data"].get<bool>()) continue;
      const uint64_t start = e["start"].get<uint64_t>(), len = e["length"].get<uint64_t>();
      for (uint64_t c = start / kCluster; c * kCluster < start + len; ++c)
        (e.contains("offset") ? normal : compressed)->push_back(c);
    }
  }

  // The L2 entry of guest cluster `c` as stored in the file (first L2
  // table only; images here are small).
  uint64_t L2Entry(const std::string& name, uint64_t c, bool extended = false) {
    const std::vector<uint8_t> f = ReadHostFile(P(name));
    const uint64_t l1 = LoadBE64(f.data() + 40);
    const uint64_t l2 = LoadBE64(f.data() + l1) & 0x00fffffffffffe00ull;
    if (l2 == 0) return 0;
    return LoadBE64(f.data() + l2 + c * (extended ? 16 : 8));
  }
};

constexpr uint64_t kCompressedBit = 1ull << 62;

TEST_F(Qcow2CompressWrite, WholeClustersAreStoredCompressedAndPacked) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 2M");
  // 32 clusters: text, random (incompressible), zeros, text ...
  std::vector<uint8_t> data;
  for (uint32_t i = 0; i < 32; ++i) {
    std::vector<uint8_t> c = i % 4 == 1 ? Random(kCluster, i) : Text(kCluster, i);
    if (i % 4 == 2) std::fill(c.begin(), c.end(), 0);
    data.insert(data.end(), c.begin(), c.end());
  }
  WriteAll("img.qcow2", 0, data, 128 * 1024);
  ExpectCleanAndEqual("img.qcow2", data);
  std::vector<uint64_t> compressed, normal;
  MapKinds("img.qcow2", &compressed, &normal);
  for (uint64_t i = 0; i < 32; ++i) {
    const bool want_normal = i % 4 == 1;  // random data does not get smaller
    EXPECT_EQ(std::count(normal.begin(), normal.end(), i), want_normal ? 1 : 0) << "cluster " << i;
    EXPECT_EQ(std::count(compressed.begin(), compressed.end(), i), want_normal ? 0 : 1)
        << "cluster " << i;
    const uint64_t entry = L2Entry("img.qcow2", i);
    EXPECT_EQ((entry & kCompressedBit) != 0, !want_normal) << "cluster " << i << " " << entry;
  }
  // Packed: 24 compressed clusters share host clusters; the file holds the
  // 8 random clusters, metadata and far less than 24 clusters besides.
  const uint64_t size = fs::file_size(P("img.qcow2"));
  EXPECT_LT(size, 8 * kCluster + 12 * kCluster) << size;
  // The same data through qemu-img convert -c reads the same.
  WriteHostFile(P("d.raw"), data);
  Sh("qemu-img convert -c -O qcow2 d.raw ref.qcow2");
  Sh("qemu-img compare -q img.qcow2 ref.qcow2");
}

TEST_F(Qcow2CompressWrite, PartialWritesFallBackToNormalClusters) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 1M");
  std::vector<uint8_t> expect(1 << 20, 0);
  auto img = OpenCompressed("img.qcow2");
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  ASSERT_OK((*img)->BeginWrites());
  const auto a = Text(4096, 1), b = Text(kCluster, 2), c = Text(3 * kCluster, 3);
  ASSERT_OK((*img)->Write(0, a.data(), a.size()));          // cluster 0, partial
  ASSERT_OK((*img)->Write(kCluster + 512, b.data(), b.size()));  // clusters 1-2, unaligned
  ASSERT_OK((*img)->Write(4 * kCluster, c.data(), c.size()));     // 4-6 whole
  std::memcpy(expect.data(), a.data(), a.size());
  std::memcpy(expect.data() + kCluster + 512, b.data(), b.size());
  std::memcpy(expect.data() + 4 * kCluster, c.data(), c.size());
  EXPECT_EQ(FirstDiff(ReadImage(**img, 0, expect.size()), expect), -1);
  ASSERT_OK((*img)->EndWrites());
  img->reset();
  ExpectCleanAndEqual("img.qcow2", expect);
  for (uint64_t i : {0, 1, 2}) {
    const uint64_t e = L2Entry("img.qcow2", i);
    EXPECT_NE(e, 0u) << i;
    EXPECT_EQ(e & kCompressedBit, 0u) << "partial cluster " << i;
  }
  for (uint64_t i : {4, 5, 6}) EXPECT_NE(L2Entry("img.qcow2", i) & kCompressedBit, 0u) << i;
}

TEST_F(Qcow2CompressWrite, OverwritesOfCompressedClustersBecomeNormalWithoutLeaks) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 1M");
  std::vector<uint8_t> data = Text(1 << 20, 9);
  WriteAll("img.qcow2", 0, data, 1 << 20);
  for (uint64_t i = 0; i < 16; ++i) ASSERT_NE(L2Entry("img.qcow2", i) & kCompressedBit, 0u) << i;
  // Whole and partial overwrites of compressed clusters, in the same
  // session as new compressed writes elsewhere and a discard.
  auto img = OpenCompressed("img.qcow2");
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  ASSERT_OK((*img)->BeginWrites());
  const auto whole = Text(kCluster, 20), part = Random(1000, 21);
  ASSERT_OK((*img)->Write(3 * kCluster, whole.data(), whole.size()));
  ASSERT_OK((*img)->Write(5 * kCluster + 100, part.data(), part.size()));
  ASSERT_OK((*img)->WriteZeroes(8 * kCluster, 2 * kCluster, true));
  std::memcpy(data.data() + 3 * kCluster, whole.data(), whole.size());
  std::memcpy(data.data() + 5 * kCluster + 100, part.data(), part.size());
  std::fill(data.begin() + 8 * kCluster, data.begin() + 10 * kCluster, 0);
  // Zeroed clusters are written whole again: compressed again.
  const auto again = Text(kCluster, 22);
  ASSERT_OK((*img)->Write(9 * kCluster, again.data(), again.size()));
  std::memcpy(data.data() + 9 * kCluster, again.data(), again.size());
  EXPECT_EQ(FirstDiff(ReadImage(**img, 0, data.size()), data), -1);
  ASSERT_OK((*img)->EndWrites());
  img->reset();
  ExpectCleanAndEqual("img.qcow2", data);
  EXPECT_EQ(L2Entry("img.qcow2", 3) & kCompressedBit, 0u);  // overwrite: normal
  EXPECT_EQ(L2Entry("img.qcow2", 5) & kCompressedBit, 0u);
  EXPECT_NE(L2Entry("img.qcow2", 9) & kCompressedBit, 0u);  // was zero: compressed
  EXPECT_NE(L2Entry("img.qcow2", 4) & kCompressedBit, 0u);  // untouched
}

TEST_F(Qcow2CompressWrite, FreedCompressedBytesAreNotReadFromTheCache) {
  // Every compressed cluster of a host cluster released, the host cluster
  // reused for new compressed data at the same descriptor: the decoded
  // cluster cache must not answer with the old bytes.
  Sh("qemu-img create -q -f qcow2 img.qcow2 1M");
  auto img = OpenCompressed("img.qcow2");
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  ASSERT_OK((*img)->BeginWrites());
  std::vector<uint8_t> expect(1 << 20, 0);
  for (uint32_t round = 0; round < 4; ++round) {
    const auto a = Text(kCluster, 100 + round);
    ASSERT_OK((*img)->Write(0, a.data(), a.size()));
    std::memcpy(expect.data(), a.data(), a.size());
    EXPECT_EQ(FirstDiff(ReadImage(**img, 0, kCluster), a), -1) << "round " << round;
    ASSERT_OK((*img)->WriteZeroes(0, kCluster, true));
    ASSERT_OK((*img)->Flush());  // the freed clusters may be reused now
    std::fill(expect.begin(), expect.begin() + kCluster, 0);
  }
  ASSERT_OK((*img)->EndWrites());
  img->reset();
  ExpectCleanAndEqual("img.qcow2", expect);
}

TEST_F(Qcow2CompressWrite, ZstdImageUsesZstd) {
  Sh("qemu-img create -q -f qcow2 -o compression_type=zstd img.qcow2 1M");
  std::vector<uint8_t> data = Text(1 << 20, 5);
  // `compress: zlib` on a zstd image: the image's type decides, as QEMU.
  WriteAll("img.qcow2", 0, data, 256 * 1024, WriteCompression::kZlib);
  ExpectCleanAndEqual("img.qcow2", data);
  for (uint64_t i = 0; i < 16; ++i) EXPECT_NE(L2Entry("img.qcow2", i) & kCompressedBit, 0u) << i;
  // A zstd frame starts with its magic 28 b5 2f fd; raw deflate does not.
  const uint64_t e = L2Entry("img.qcow2", 0);
  const uint64_t csize_shift = 62 - (16 - 8);
  const uint64_t host = e & ((1ull << csize_shift) - 1);
  const std::vector<uint8_t> f = ReadHostFile(P("img.qcow2"));
  ASSERT_LT(host + 4, f.size());
  EXPECT_EQ(LoadBE32(f.data() + host), 0x28b52ffdu);
}

TEST_F(Qcow2CompressWrite, ExtendedL2ImageAsQemu) {
  Sh("qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 1M");
  std::vector<uint8_t> data = Text(1 << 20, 6);
  WriteAll("img.qcow2", 0, data, 128 * 1024);
  ExpectCleanAndEqual("img.qcow2", data);
  const std::vector<uint8_t> f = ReadHostFile(P("img.qcow2"));
  for (uint64_t i = 0; i < 16; ++i) {
    EXPECT_NE(L2Entry("img.qcow2", i, true) & kCompressedBit, 0u) << i;
  }
  // A partial overwrite of a compressed cluster: a normal cluster with its
  // subclusters allocated.
  auto img = OpenCompressed("img.qcow2");
  ASSERT_TRUE(img.ok());
  ASSERT_OK((*img)->BeginWrites());
  const auto part = Random(5000, 7);
  ASSERT_OK((*img)->Write(2 * kCluster + 3000, part.data(), part.size()));
  std::memcpy(data.data() + 2 * kCluster + 3000, part.data(), part.size());
  ASSERT_OK((*img)->EndWrites());
  img->reset();
  ExpectCleanAndEqual("img.qcow2", data);
  EXPECT_EQ(L2Entry("img.qcow2", 2, true) & kCompressedBit, 0u);
}

TEST_F(Qcow2CompressWrite, LastClusterPastTheVirtualSizeIsPadded) {
  // 100 KiB: the second cluster ends past the disk (QEMU pads it with zeros).
  Sh("qemu-img create -q -f qcow2 img.qcow2 100K");
  std::vector<uint8_t> data = Text(100 * 1024, 8);
  WriteAll("img.qcow2", 0, data, 100 * 1024);
  ExpectCleanAndEqual("img.qcow2", data);
  EXPECT_NE(L2Entry("img.qcow2", 0) & kCompressedBit, 0u);
  EXPECT_NE(L2Entry("img.qcow2", 1) & kCompressedBit, 0u);
}

TEST_F(Qcow2CompressWrite, NoCompressionWithoutTheOption) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 1M");
  std::vector<uint8_t> data = Text(1 << 20, 10);
  WriteAll("img.qcow2", 0, data, 1 << 20, WriteCompression::kNone);
  ExpectCleanAndEqual("img.qcow2", data);
  for (uint64_t i = 0; i < 16; ++i) EXPECT_EQ(L2Entry("img.qcow2", i) & kCompressedBit, 0u) << i;
}

TEST_F(Qcow2CompressWrite, OneBitRefcountsGiveEveryCompressedClusterItsOwnHostCluster) {
  // refcount_bits=1: a host cluster cannot be shared, so nothing is packed.
  Sh("qemu-img create -q -f qcow2 -o refcount_bits=1 img.qcow2 512K");
  std::vector<uint8_t> data = Text(512 * 1024, 11);
  WriteAll("img.qcow2", 0, data, 512 * 1024);
  ExpectCleanAndEqual("img.qcow2", data);
  for (uint64_t i = 0; i < 8; ++i) EXPECT_NE(L2Entry("img.qcow2", i) & kCompressedBit, 0u) << i;
}

TEST_F(Qcow2CompressWrite, ConcurrentWritersShareThePackedClusters) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 8M");
  auto img = OpenCompressed("img.qcow2");
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  ASSERT_OK((*img)->BeginWrites());
  const std::vector<uint8_t> data = Text(8 << 20, 30);
  // Four writers over interleaved 256 KiB stripes (whole clusters) and
  // partial writes, a reader going over what is written meanwhile.
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int w = 0; w < 4; ++w)
    threads.emplace_back([&, w] {
      for (uint64_t at = w * 262144ull; at < data.size(); at += 4 * 262144ull) {
        if (!(*img)->Write(at, data.data() + at, 262144).ok()) ++errors;
        std::vector<uint8_t> back(65536);
        if (!(*img)->Read(at, back.data(), back.size()).ok() ||
            std::memcmp(back.data(), data.data() + at, back.size()) != 0)
          ++errors;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(FirstDiff(ReadImage(**img, 0, data.size()), data), -1);
  ASSERT_OK((*img)->EndWrites());
  img->reset();
  ExpectCleanAndEqual("img.qcow2", data);
  EXPECT_LT(fs::file_size(P("img.qcow2")), 4u << 20);  // compressed and packed
}

TEST_F(Qcow2CompressWrite, SnapshotsShareThePackedClusters) {
  // A snapshot raises the refcount of the packed host clusters; compressed
  // writes after it go on packing into the same (now shared) cluster, and
  // deleting the snapshot gives the references back.
  Sh("qemu-img create -q -f qcow2 img.qcow2 1M");
  auto img = OpenCompressed("img.qcow2");
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  ASSERT_OK((*img)->BeginWrites());
  std::vector<uint8_t> data(1 << 20, 0);
  const auto a = Text(3 * kCluster, 40);
  ASSERT_OK((*img)->Write(0, a.data(), a.size()));
  std::memcpy(data.data(), a.data(), a.size());
  const std::vector<uint8_t> at_snap = data;
  auto snap = (*img)->CreateSnapshot("s1");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  const auto b = Text(2 * kCluster, 41), c = Text(kCluster, 42);
  ASSERT_OK((*img)->Write(4 * kCluster, b.data(), b.size()));  // new: packed after a
  ASSERT_OK((*img)->Write(kCluster, c.data(), c.size()));      // over a shared compressed one
  std::memcpy(data.data() + 4 * kCluster, b.data(), b.size());
  std::memcpy(data.data() + kCluster, c.data(), c.size());
  ASSERT_OK((*img)->Flush());
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2", "s1"), at_snap), -1);
  ASSERT_OK((*img)->DeleteSnapshot(snap->id));
  EXPECT_EQ(FirstDiff(ReadImage(**img, 0, data.size()), data), -1);
  ASSERT_OK((*img)->EndWrites());
  img->reset();
  ExpectCleanAndEqual("img.qcow2", data);
}

TEST_F(Qcow2CompressWrite, WholeClustersOverABackingFileNeedNoCopy) {
  Sh("qemu-img create -q -f qcow2 base.qcow2 1M");
  Sh("qemu-io -c 'write -P 0x5a 0 1M' base.qcow2 >/dev/null");
  Sh("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 1M");
  auto top = OpenCompressed("top.qcow2");
  ASSERT_TRUE(top.ok()) << top.status().ToString();
  ChainPolicy policy;
  policy.allowed_roots = {dir_};
  auto chain = OpenChain(P("base.qcow2"), policy, "qcow2");
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  (*top)->SetBacking(chain->top());
  ASSERT_OK((*top)->BeginWrites());
  std::vector<uint8_t> data(1 << 20, 0x5a);
  const auto a = Text(2 * kCluster, 50), b = Text(5000, 51);
  ASSERT_OK((*top)->Write(2 * kCluster, a.data(), a.size()));
  ASSERT_OK((*top)->Write(6 * kCluster + 10, b.data(), b.size()));  // partial: COW from base
  std::memcpy(data.data() + 2 * kCluster, a.data(), a.size());
  std::memcpy(data.data() + 6 * kCluster + 10, b.data(), b.size());
  EXPECT_EQ(FirstDiff(ReadImage(**top, 0, data.size()), data), -1);
  ASSERT_OK((*top)->EndWrites());
  top->reset();
  ExpectCleanAndEqual("top.qcow2", data);
  EXPECT_NE(L2Entry("top.qcow2", 2) & kCompressedBit, 0u);
  EXPECT_NE(L2Entry("top.qcow2", 3) & kCompressedBit, 0u);
  EXPECT_EQ(L2Entry("top.qcow2", 6) & kCompressedBit, 0u);
  EXPECT_EQ(L2Entry("top.qcow2", 0), 0u);  // untouched: still the base's
}

}  // namespace
}  // namespace kvmfs::test
