// L1/L2 mapping, compressed clusters and the snapshot table on images built
// in memory, including the corrupt cases of reliability.md §7 B.
#include <gtest/gtest.h>
#include <zlib.h>

#include "format/qcow2/qcow2.h"
#include "mem_image.h"

namespace kvmfs::test {
namespace {

using Code = Status::Code;
constexpr uint64_t kCopied = 1ull << 63;
constexpr uint64_t kCompressed = 1ull << 62;

std::unique_ptr<Image> MustOpen(const MemImage& img, Qcow2Options options = {}) {
  auto r = img.Open({}, options);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : nullptr;
}

void ExpectReadFails(Image& image, uint64_t off, size_t len, Code code, const std::string& text) {
  std::vector<uint8_t> buf(len);
  Status st = image.Read(off, buf.data(), len);
  ASSERT_FALSE(st.ok()) << "expected failure: " << text;
  EXPECT_EQ(st.code(), code) << st.ToString();
  EXPECT_NE(st.message().find(text), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("mem.qcow2"), std::string::npos) << st.ToString();
}

std::vector<uint8_t> ReadAll(Image& image, uint64_t off, size_t len) {
  std::vector<uint8_t> buf(len, 0xee);
  Status st = image.Read(off, buf.data(), len);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return buf;
}

// An image whose L1[0] points to an L2 table at cluster 4, data in cluster 5.
MemImage WithL2(uint32_t version = 3) {
  MemImage img(16, version, 1 << 20);
  img.SetL1(0, img.Cluster(4) | kCopied);
  img.Grow(img.Cluster(5));
  return img;
}

TEST(Qcow2Cluster, NormalZeroAndUnallocatedClustersRead) {
  MemImage img = WithL2();
  img.SetL2(img.Cluster(4), 0, img.Cluster(5) | kCopied);
  img.Fill(img.Cluster(5), img.cs, 0xab);
  img.SetL2(img.Cluster(4), 1, 1);                             // ZERO_PLAIN
  img.SetL2(img.Cluster(4), 2, img.Cluster(5) | kCopied | 1);  // ZERO_ALLOC
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  EXPECT_EQ(ReadAll(*image, 0, 65536), std::vector<uint8_t>(65536, 0xab));
  EXPECT_EQ(ReadAll(*image, 65536, 3 * 65536), std::vector<uint8_t>(3 * 65536, 0));
  auto bs = image->GetBlockStatus(0, 1 << 20);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kData);
  EXPECT_EQ(bs->length, 65536u);
  bs = image->GetBlockStatus(65536, 1 << 20);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kZero);
  EXPECT_EQ(bs->length, 2 * 65536u);
  bs = image->GetBlockStatus(3 * 65536, 1 << 20);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kUnallocated);
  EXPECT_EQ(bs->length, (1u << 20) - 3 * 65536);
}

TEST(Qcow2Cluster, EmptyHugeImageIsOneUnallocatedRun) {
  MemImage img(16, 3, 1ull << 40);  // 1 TiB, 2048 L1 entries
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  auto bs = image->GetBlockStatus(0, 1ull << 40);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kUnallocated);
  EXPECT_EQ(bs->length, 1ull << 40);
  bs = image->GetBlockStatus(12345, 100);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->length, 100u);
}

TEST(Qcow2Cluster, FileMayEndInsideTheLastDataCluster) {
  MemImage img = WithL2();
  img.SetL2(img.Cluster(4), 0, img.Cluster(5) | kCopied);
  img.Fill(img.Cluster(5), 100, 0x5a);  // the file ends 100 bytes into cluster 5
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  auto buf = ReadAll(*image, 0, 4096);
  EXPECT_EQ(buf[99], 0x5a);
  EXPECT_EQ(buf[100], 0);
}

TEST(Qcow2Cluster, ReservedBitsInL1EntryAreCorruption) {
  MemImage img = WithL2();
  img.SetL1(0, img.Cluster(4) | 0x100);
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption, "reserved bits");
}

TEST(Qcow2Cluster, UnalignedL2OffsetIsCorruptionOtherRangesStillRead) {
  MemImage img(16, 3, 1ull << 30);  // two L1 entries
  img.SetL1(0, (img.Cluster(4) + 0x200) | kCopied);
  img.Grow(img.Cluster(5));
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption,
                  "L2 table offset 0x40200 unaligned (L1 index: 0");
  EXPECT_EQ(ReadAll(*image, 512ull << 20, 512), std::vector<uint8_t>(512, 0));
}

TEST(Qcow2Cluster, L2TablePastEndOfFileIsCorruption) {
  MemImage img;
  img.SetL1(0, (1ull << 40) | kCopied);
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption, "past the end of the file");
}

TEST(Qcow2Cluster, UnalignedDataOffsetIsCorruption) {
  MemImage img = WithL2();
  img.SetL2(img.Cluster(4), 0, (img.Cluster(5) + 0x200) | kCopied);
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption, "Cluster allocation offset 0x50200 unaligned");
}

TEST(Qcow2Cluster, DataOffsetFarPastEndOfFileIsCorruption) {
  for (uint64_t host : {0x10000000ull, 0xbfff0000ull & 0x00fffffffffffe00ull}) {
    MemImage img = WithL2();
    img.SetL2(img.Cluster(4), 0, host | kCopied);
    auto image = MustOpen(img);
    ASSERT_TRUE(image);
    ExpectReadFails(*image, 0, 512, Code::kCorruption, "past the end of the file");
    auto bs = image->GetBlockStatus(0, 65536);
    EXPECT_FALSE(bs.ok());
  }
}

TEST(Qcow2Cluster, ReservedBitsInL2EntryAreCorruption) {
  MemImage img = WithL2();
  img.SetL2(img.Cluster(4), 0, img.Cluster(5) | kCopied | (1ull << 57));
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption, "reserved bits");
}

TEST(Qcow2Cluster, ZeroClusterInV2ImageIsCorruption) {
  MemImage img = WithL2(2);
  img.SetL2(img.Cluster(4), 0, 1);
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption, "Zero cluster entry found in pre-v3 image");
}

TEST(Qcow2Cluster, ZeroClusterDoesNotReadTheBacking) {
  MemImage base(16, 3, 1 << 20);
  base.SetL1(0, base.Cluster(4) | kCopied);
  base.SetL2(base.Cluster(4), 0, base.Cluster(5) | kCopied);
  base.SetL2(base.Cluster(4), 1, base.Cluster(5) | kCopied);
  base.Fill(base.Cluster(5), base.cs, 0x77);
  MemImage top = WithL2();
  top.SetL2(top.Cluster(4), 0, 1);  // zero over the backing
  auto backing = MustOpen(base);
  auto image = MustOpen(top);
  ASSERT_TRUE(backing && image);
  image->SetBacking(std::shared_ptr<Image>(std::move(backing)));
  EXPECT_EQ(ReadAll(*image, 0, 65536), std::vector<uint8_t>(65536, 0));
  EXPECT_EQ(ReadAll(*image, 65536, 65536), std::vector<uint8_t>(65536, 0x77));
}

// Raw deflate of one cluster of `byte`, placed at `host` with a descriptor;
// `end` (if given) receives the offset just past the stream.
uint64_t PutCompressed(MemImage& img, uint64_t host, const std::vector<uint8_t>& plain,
                       uint64_t* end = nullptr) {
  z_stream z{};
  deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY);
  std::vector<uint8_t> out(deflateBound(&z, plain.size()));
  z.next_in = const_cast<Bytef*>(plain.data());
  z.avail_in = plain.size();
  z.next_out = out.data();
  z.avail_out = out.size();
  deflate(&z, Z_FINISH);
  out.resize(out.size() - z.avail_out);
  deflateEnd(&z);
  img.Bytes(host, out);
  if (end) *end = host + out.size();
  const uint64_t sectors = (host + out.size() - 1) / 512 - host / 512;
  const uint32_t shift = 62 - (img.cluster_bits - 8);
  return kCompressed | (sectors << shift) | host;
}

TEST(Qcow2Cluster, CompressedClusterReads) {
  MemImage img = WithL2();
  std::vector<uint8_t> plain(65536);
  for (size_t i = 0; i < plain.size(); ++i) plain[i] = uint8_t(i * 7 / 1000);
  img.SetL2(img.Cluster(4), 3, PutCompressed(img, img.Cluster(5) + 123, plain));
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  EXPECT_EQ(ReadAll(*image, 3 * 65536, 65536), plain);
  // Small reads inside the cluster, served by the decompressed cache.
  auto part = ReadAll(*image, 3 * 65536 + 1000, 3000);
  EXPECT_EQ(part, std::vector<uint8_t>(plain.begin() + 1000, plain.begin() + 4000));
  auto bs = image->GetBlockStatus(3 * 65536, 65536);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kData);
}

TEST(Qcow2Cluster, CompressedClusterPastEofIsCorruption) {
  MemImage img = WithL2();
  const uint32_t shift = 62 - (img.cluster_bits - 8);
  img.SetL2(img.Cluster(4), 0, kCompressed | (3ull << shift) | 0x900000);
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption, "past the end of the file");
}

TEST(Qcow2Cluster, CompressedClusterAtOffsetZeroIsCorruption) {
  MemImage img = WithL2();
  img.SetL2(img.Cluster(4), 0, kCompressed);
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption, "invalid offset");
}

TEST(Qcow2Cluster, CompressedGarbageIsCorruption) {
  MemImage img = WithL2();
  img.Fill(img.Cluster(5), 65536, 0xff);
  const uint32_t shift = 62 - (img.cluster_bits - 8);
  // The largest sector count the field holds: two clusters of input.
  img.SetL2(img.Cluster(4), 0, kCompressed | (255ull << shift) | img.Cluster(5));
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption, "compressed cluster at host offset 0x50000");
}

TEST(Qcow2Cluster, TruncatedCompressedStreamIsCorruption) {
  MemImage img = WithL2();
  std::vector<uint8_t> plain(65536);
  for (size_t i = 0; i < plain.size(); ++i) plain[i] = uint8_t(i ^ (i >> 9));
  uint64_t entry = PutCompressed(img, img.Cluster(5), plain);
  img.b.resize(img.Cluster(5) + 200);  // the stream is cut by the end of the file
  img.SetL2(img.Cluster(4), 0, entry);
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption, "compressed cluster");
}

// Plain bytes of cluster `i` for the run tests: compressible, distinct.
std::vector<uint8_t> RunPlain(int i) {
  std::vector<uint8_t> plain(65536);
  for (size_t k = 0; k < plain.size(); ++k) plain[k] = uint8_t((k / (100 + i)) ^ (i * 37));
  return plain;
}

// One read over many compressed clusters (read in batches, decompressed
// concurrently), packed byte after byte as QEMU writes them, with a normal
// cluster in the middle and one compressed cluster stored out of file order.
TEST(Qcow2Cluster, CompressedRunReadsLikeClusterByCluster) {
  MemImage img(16, 3, 1 << 20);
  img.SetL1(0, img.Cluster(4) | kCopied);
  uint64_t host = img.Cluster(5) + 77;
  std::vector<uint8_t> want;
  for (int i = 0; i < 12; ++i) {
    std::vector<uint8_t> plain = RunPlain(i);
    if (i == 6) {  // a normal cluster
      plain.assign(65536, 0x6e);
      img.Fill(img.Cluster(12), img.cs, 0x6e);
      img.SetL2(img.Cluster(4), i, img.Cluster(12) | kCopied);
    } else if (i == 9) {  // after every other one in the file
      img.SetL2(img.Cluster(4), i, PutCompressed(img, img.Cluster(13) + 5, plain));
    } else {
      // The next stream starts right after this one.
      img.SetL2(img.Cluster(4), i, PutCompressed(img, host, plain, &host));
    }
    want.insert(want.end(), plain.begin(), plain.end());
  }
  auto image = MustOpen(img, Qcow2Options{32 << 20, 2 * 65536});
  ASSERT_TRUE(image);
  EXPECT_EQ(ReadAll(*image, 0, want.size()), want);
  // Unaligned, starting on a cached cluster, over a cache too small to hold the run.
  for (uint64_t off : {1000ull, 65536ull * 5 - 3, 65536ull * 8 + 1})
    EXPECT_EQ(ReadAll(*image, off, 3 * 65536 + 11),
              std::vector<uint8_t>(want.begin() + off, want.begin() + off + 3 * 65536 + 11))
        << off;
}

TEST(Qcow2Cluster, CorruptClusterInACompressedRunIsCorruptionNamingIt) {
  MemImage img(16, 3, 1 << 20);
  img.SetL1(0, img.Cluster(4) | kCopied);
  uint64_t host = img.Cluster(5);
  for (int i = 0; i < 6; ++i) {
    const uint64_t start = host;
    img.SetL2(img.Cluster(4), i, PutCompressed(img, host, RunPlain(i), &host));
    // Clobber the middle of stream 3 (the others stay intact).
    if (i == 3)
      for (uint64_t k = start + 40; k < host - 8; ++k) img.b[k] = 0xff;
  }
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 6 * 65536, Code::kCorruption, "guest offset 0x30000");
  ExpectReadFails(*image, 65536 + 5, 4 * 65536, Code::kCorruption, "guest offset 0x30000");
  std::vector<uint8_t> want;
  for (int i = 0; i < 3; ++i) {
    auto plain = RunPlain(i);
    want.insert(want.end(), plain.begin(), plain.end());
  }
  EXPECT_EQ(ReadAll(*image, 0, 3 * 65536), want);
  const auto fourth = RunPlain(4);
  EXPECT_EQ(ReadAll(*image, 4 * 65536 + 100, 65536 - 100),
            std::vector<uint8_t>(fourth.begin() + 100, fourth.end()));
  EXPECT_EQ(ReadAll(*image, 5 * 65536, 65536), RunPlain(5));
}

TEST(Qcow2Cluster, ExtendedL2SubclustersOverBacking) {
  MemImage base(15, 3, 1 << 20);
  base.SetL1(0, base.Cluster(4) | kCopied);
  base.SetL2(base.Cluster(4), 0, base.Cluster(5) | kCopied);
  base.Fill(base.Cluster(5), base.cs, 0x11);
  MemImage top(15, 3, 1 << 20, /*extended_l2=*/true);  // 32 KiB clusters, 1 KiB subclusters
  top.SetL1(0, top.Cluster(4) | kCopied);
  // Subcluster 1 allocated, 2 and 3 zero, the rest from the backing.
  top.SetL2Ext(top.Cluster(4), 0, top.Cluster(5) | kCopied, (1ull << 1) | (3ull << 34));
  top.Fill(top.Cluster(5), top.cs, 0x22);
  auto backing = MustOpen(base);
  auto image = MustOpen(top);
  ASSERT_TRUE(backing && image);
  image->SetBacking(std::shared_ptr<Image>(std::move(backing)));
  auto buf = ReadAll(*image, 0, 8192);
  EXPECT_EQ(buf[0], 0x11);
  EXPECT_EQ(buf[1024], 0x22);
  EXPECT_EQ(buf[2047], 0x22);
  EXPECT_EQ(buf[2048], 0);
  EXPECT_EQ(buf[4095], 0);
  EXPECT_EQ(buf[4096], 0x11);
  auto bs = image->GetBlockStatus(1024, 65536);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kData);
  EXPECT_EQ(bs->length, 1024u);
  bs = image->GetBlockStatus(2048, 65536);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kZero);
  EXPECT_EQ(bs->length, 2048u);
}

TEST(Qcow2Cluster, ExtendedL2InconsistentBitmapsAreCorruption) {
  MemImage both(15, 3, 1 << 20, true);
  both.SetL1(0, both.Cluster(4) | kCopied);
  both.SetL2Ext(both.Cluster(4), 0, both.Cluster(5) | kCopied, (1ull << 3) | (1ull << 35));
  both.Grow(both.Cluster(6));
  auto image = MustOpen(both);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption, "both allocated and zero");

  MemImage unalloc(15, 3, 1 << 20, true);
  unalloc.SetL1(0, unalloc.Cluster(4) | kCopied);
  unalloc.SetL2Ext(unalloc.Cluster(4), 0, 0, 1);
  image = MustOpen(unalloc);
  ASSERT_TRUE(image);
  ExpectReadFails(*image, 0, 512, Code::kCorruption,
                  "Unallocated cluster has non-zero subcluster allocation map");
}

TEST(Qcow2Cluster, TinyL2CacheStillReadsEverything) {
  MemImage img(9, 3, 1 << 20);  // 512-byte clusters: 64 entries per L2, many tables
  const uint64_t per_l1 = 512 * 64;
  const uint64_t tables = (1 << 20) / per_l1;
  uint64_t next = 4;
  for (uint64_t i = 0; i < tables; ++i) {
    uint64_t l2 = img.Cluster(next++);
    img.SetL1(i, l2 | kCopied);
    uint64_t data = img.Cluster(next++);
    img.SetL2(l2, i % 64, data | kCopied);
    img.Fill(data, 512, uint8_t(i + 1));
  }
  Qcow2Options options;
  options.budget = std::make_shared<qcow2::CacheBudget>(1);  // one table at a time
  auto image = MustOpen(img, options);
  ASSERT_TRUE(image);
  auto all = ReadAll(*image, 0, 1 << 20);
  for (uint64_t i = 0; i < tables; ++i) {
    const uint64_t at = i * per_l1 + (i % 64) * 512;
    EXPECT_EQ(all[at], uint8_t(i + 1)) << i;
    EXPECT_EQ(all[at + 512], 0) << i;
  }
}

// ---- Snapshot table ----------------------------------------------------------

// Writes one snapshot entry at `at`; returns the position after it.
uint64_t PutSnapshot(MemImage& img, uint64_t at, uint64_t l1_offset, uint32_t l1_size,
                     const std::string& id, const std::string& name, uint32_t extra_size,
                     uint64_t disk_size) {
  img.Be64(at, l1_offset);
  img.Be32(at + 8, l1_size);
  img.Be16(at + 12, static_cast<uint16_t>(id.size()));
  img.Be16(at + 14, static_cast<uint16_t>(name.size()));
  img.Be32(at + 16, 1700000000);
  img.Be32(at + 20, 5);
  img.Be64(at + 24, 42);
  img.Be32(at + 32, 0);
  img.Be32(at + 36, extra_size);
  uint64_t p = at + 40;
  if (extra_size >= 16) img.Be64(p + 8, disk_size);
  img.Grow(p + extra_size);
  p += extra_size;
  img.Bytes(p, std::vector<uint8_t>(id.begin(), id.end()));
  p += id.size();
  img.Bytes(p, std::vector<uint8_t>(name.begin(), name.end()));
  p += name.size();
  return (p + 7) & ~uint64_t{7};
}

TEST(Qcow2Snapshot, TableIsParsed) {
  MemImage img = WithL2();
  img.SetL2(img.Cluster(4), 0, img.Cluster(5) | kCopied);
  img.Fill(img.Cluster(5), img.cs, 0x44);
  // The snapshot's L1 (cluster 6) shares the L2 table.
  img.Be64(img.Cluster(6), img.Cluster(4));
  uint64_t p = PutSnapshot(img, img.Cluster(7), img.Cluster(6), 1, "1", "first", 24, 1 << 19);
  img.b.resize(p);
  img.Be32(kOffNbSnapshots, 1);
  img.Be64(kOffSnapshotsOffset, img.Cluster(7));
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  auto snaps = image->Snapshots();
  ASSERT_EQ(snaps.size(), 1u);
  EXPECT_EQ(snaps[0].id, "1");
  EXPECT_EQ(snaps[0].name, "first");
  EXPECT_EQ(snaps[0].date_sec, 1700000000u);
  EXPECT_EQ(snaps[0].vm_clock_nsec, 42u);
  EXPECT_TRUE(snaps[0].has_icount);
  EXPECT_EQ(snaps[0].disk_size, 1u << 19);
  auto snap = image->OpenSnapshot("1");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ((*snap)->size(), 1u << 19);
  EXPECT_EQ(ReadAll(**snap, 0, 512), std::vector<uint8_t>(512, 0x44));
  EXPECT_EQ(image->OpenSnapshot("2").status().code(), Code::kNotFound);
}

TEST(Qcow2Snapshot, TooMuchExtraDataIsRefused) {
  MemImage img;
  uint64_t p = PutSnapshot(img, img.Cluster(4), img.Cluster(3), 1, "1", "s", 1025, 0);
  img.b.resize(p);
  img.Be32(kOffNbSnapshots, 1);
  img.Be64(kOffSnapshotsOffset, img.Cluster(4));
  auto r = img.Open();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kTooLarge);
  EXPECT_NE(r.status().message().find("Too much extra metadata in snapshot table entry 0"),
            std::string::npos);
}

TEST(Qcow2Snapshot, NamePastTheFileIsRefused) {
  MemImage img;
  uint64_t p = PutSnapshot(img, img.Cluster(4), img.Cluster(3), 1, "1", "snapshot-name", 16, 0);
  img.b.resize(p - 10);
  img.Be16(img.Cluster(4) + 14, 0xffff);
  img.Be32(kOffNbSnapshots, 1);
  img.Be64(kOffSnapshotsOffset, img.Cluster(4));
  auto r = img.Open();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find("snapshot table entry 0 name"), std::string::npos)
      << r.status().ToString();
}

TEST(Qcow2Snapshot, MoreEntriesThanTheFileHoldsIsRefused) {
  MemImage img;
  uint64_t p = PutSnapshot(img, img.Cluster(4), img.Cluster(3), 1, "1", "a", 16, 0);
  img.b.resize(p);
  img.Be32(kOffNbSnapshots, 65536);
  img.Be64(kOffSnapshotsOffset, img.Cluster(4));
  auto r = img.Open();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find("snapshot table entry 1"), std::string::npos)
      << r.status().ToString();
}

TEST(Qcow2Snapshot, TableOver64MiBIsRefused) {
  MemImage img;
  const std::string name(65535, 'n');
  uint64_t p = img.Cluster(4);
  const uint32_t count = 1030;  // 1030 x 64 KiB > 64 MiB
  img.b.reserve(p + uint64_t{count} * 65600);
  for (uint32_t i = 0; i < count; ++i)
    p = PutSnapshot(img, p, img.Cluster(3), 1, std::to_string(i + 1), name, 16, 0);
  img.Be32(kOffNbSnapshots, count);
  img.Be64(kOffSnapshotsOffset, img.Cluster(4));
  auto r = img.Open();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kTooLarge);
  EXPECT_NE(r.status().message().find("Snapshot table is too big"), std::string::npos)
      << r.status().ToString();
}

TEST(Qcow2Snapshot, BadSnapshotL1FailsOnlyThatSnapshot) {
  MemImage img;
  uint64_t p =
      PutSnapshot(img, img.Cluster(4), img.Cluster(3) + 8, 1, "1", "unaligned", 16, 1 << 20);
  p = PutSnapshot(img, p, img.Cluster(3), 0x10000000, "2", "huge", 16, 1 << 20);
  p = PutSnapshot(img, p, img.Cluster(3), 1, "3", "incomplete", 8, 0);
  p = PutSnapshot(img, p, img.Cluster(3), 1, "4", "good", 16, 1 << 20);
  img.b.resize(p);
  img.Be32(kOffNbSnapshots, 4);
  img.Be64(kOffSnapshotsOffset, img.Cluster(4));
  auto image = MustOpen(img);
  ASSERT_TRUE(image);
  EXPECT_EQ(image->Snapshots().size(), 4u);
  auto r = image->OpenSnapshot("1");
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find("offset invalid"), std::string::npos)
      << r.status().ToString();
  r = image->OpenSnapshot("2");
  EXPECT_EQ(r.status().code(), Code::kTooLarge);
  r = image->OpenSnapshot("3");
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find("incomplete"), std::string::npos) << r.status().ToString();
  EXPECT_TRUE(image->OpenSnapshot("4").ok());
  EXPECT_EQ(ReadAll(*image, 0, 512), std::vector<uint8_t>(512, 0));
}

}  // namespace
}  // namespace kvmfs::test
