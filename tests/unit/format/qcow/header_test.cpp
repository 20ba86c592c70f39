// Crafted qcow files: every header field and table entry the driver follows
// is checked against the file size and QEMU's limits, with an error that
// names the file and the field.
#include <gtest/gtest.h>

#include "base/endian.h"
#include "kvmfs/backend.h"
#include "kvmfs/format.h"

namespace kvmfs {
namespace {

// A valid qcow file in memory: 48-byte header, L1 right after it (QEMU's
// layout without backing), cluster_bits 12, l2_bits 9.
struct MemQcow {
  std::vector<uint8_t> b;
  uint32_t cluster_bits = 12;
  uint32_t l2_bits = 9;
  explicit MemQcow(uint64_t size = 4 << 20) {
    b.assign(512, 0);
    Be32(0, 0x514649fb);
    Be32(4, 1);
    Be64(24, size);
    b[32] = uint8_t(cluster_bits);
    b[33] = uint8_t(l2_bits);
    Be64(40, 48);  // L1: 2 entries for 4 MiB
  }
  void Grow(uint64_t end) {
    if (b.size() < end) b.resize(end);
  }
  void Be32(uint64_t off, uint32_t v) {
    Grow(off + 4);
    StoreBE32(&b[off], v);
  }
  void Be64(uint64_t off, uint64_t v) {
    Grow(off + 8);
    StoreBE64(&b[off], v);
  }
  // L1[i] -> an L2 table at `l2`, which gets entry j = `entry`.
  void Map(uint64_t l1_index, uint64_t l2, uint64_t l2_index, uint64_t entry) {
    Be64(48 + 8 * l1_index, l2);
    Grow(l2 + (8u << l2_bits));
    Be64(l2 + 8 * l2_index, entry);
  }
  Result<std::unique_ptr<Image>> Open(const std::string& name = "crafted.qcow") const {
    OpenContext ctx;
    ctx.name = name;
    return FindFormat("qcow")->Open(std::shared_ptr<Backend>(NewMemBackend(name, b, false)), ctx);
  }
};

// Opening fails with `code` and a message naming the file and `field`.
void ExpectOpenError(const MemQcow& q, Status::Code code, const std::string& field) {
  auto image = q.Open("bad.qcow");
  ASSERT_FALSE(image.ok()) << "opened although " << field << " is invalid";
  EXPECT_EQ(image.status().code(), code) << image.status().ToString();
  EXPECT_NE(image.status().message().find("bad.qcow"), std::string::npos) << image.status().ToString();
  EXPECT_NE(image.status().message().find(field), std::string::npos) << image.status().ToString();
}

// Reading the first cluster fails with kCorruption naming `what`.
void ExpectReadCorruption(const MemQcow& q, const std::string& what, uint64_t off = 0,
                          bool in_map = true) {
  auto image = q.Open("bad.qcow");
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  std::vector<uint8_t> buf(4096);
  Status st = (*image)->Read(off, buf.data(), buf.size());
  ASSERT_FALSE(st.ok()) << "read although " << what;
  EXPECT_TRUE(st.IsCorruption()) << st.ToString();
  EXPECT_NE(st.message().find("bad.qcow"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find(what), std::string::npos) << st.ToString();
  // Block status walks the same entries (it does not decompress).
  if (in_map) {
    EXPECT_FALSE((*image)->GetBlockStatus(off, 4096).ok());
  }
}

TEST(QcowHeader, ValidEmptyImageReadsZeros) {
  MemQcow q;
  auto image = q.Open();
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ((*image)->size(), 4u << 20);
  std::vector<uint8_t> buf(8192, 0xee);
  ASSERT_TRUE((*image)->Read(4096, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, std::vector<uint8_t>(8192, 0));
  ImageInfo info = (*image)->Info();
  EXPECT_EQ(info.format, "qcow");
  EXPECT_EQ(info.cluster_size, 4096u);
  EXPECT_TRUE(info.backing_filename.empty());
  EXPECT_TRUE(info.format_specific_type.empty());
}

TEST(QcowHeader, TruncatedHeaderIsCorruption) {
  MemQcow q;
  q.b.resize(40);
  ExpectOpenError(q, Status::Code::kCorruption, "header");
}

TEST(QcowHeader, OtherVersionIsNotSupported) {
  MemQcow q;
  q.Be32(4, 2);
  ExpectOpenError(q, Status::Code::kNotSupported, "version 2");
}

TEST(QcowHeader, BadMagicIsCorruption) {
  MemQcow q;
  q.Be32(0, 0x514649fa);
  ExpectOpenError(q, Status::Code::kCorruption, "magic");
}

TEST(QcowHeader, SizeBelowTwoBytesIsCorruption) {
  for (uint64_t size : {0u, 1u}) {
    MemQcow q;
    q.Be64(24, size);
    ExpectOpenError(q, Status::Code::kCorruption, "size");
  }
}

TEST(QcowHeader, ClusterBitsOutOfRangeIsCorruption) {
  // iotest 092's values.
  for (uint8_t bits : {0xff, 0x1f, 0x08, 0x11}) {
    MemQcow q;
    q.b[32] = bits;
    ExpectOpenError(q, Status::Code::kCorruption, "cluster_bits");
  }
}

TEST(QcowHeader, L2BitsOutOfRangeIsCorruption) {
  for (uint8_t bits : {0xff, 0x05, 0x0e, 0x1b}) {
    MemQcow q;
    q.b[33] = bits;
    ExpectOpenError(q, Status::Code::kCorruption, "l2_bits");
  }
}

TEST(QcowHeader, HugeSizesAreTooLarge) {
  {
    MemQcow q;
    q.Be64(24, 0xeeeeeeeeeeeeeeeeull);  // size + 2^shift overflows
    ExpectOpenError(q, Status::Code::kTooLarge, "size");
  }
  {
    MemQcow q;
    q.Be64(24, 0x7fffffffffffffffull);  // L1 of 2^42 entries
    ExpectOpenError(q, Status::Code::kTooLarge, "L1");
  }
}

TEST(QcowHeader, UnknownCryptMethodIsCorruption) {
  MemQcow q;
  q.Be32(36, 2);
  ExpectOpenError(q, Status::Code::kCorruption, "crypt_method");
}

TEST(QcowHeader, AesImageWithoutKeyIsDescribedButItsDataRefused) {
  MemQcow q;
  q.Be32(36, 1);
  auto image = q.Open("nokey.qcow");
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_TRUE((*image)->Info().encrypted);
  const Status why = (*image)->DataStatus();
  EXPECT_EQ(why.code(), Status::Code::kPermission) << why.ToString();
  EXPECT_NE(why.message().find("no key configured"), std::string::npos) << why.ToString();
  EXPECT_NE(why.message().find("nokey.qcow"), std::string::npos) << why.ToString();
  uint8_t buf[512];
  EXPECT_EQ((*image)->Read(0, buf, sizeof buf).code(), Status::Code::kPermission);
  ReadPlan plan;
  EXPECT_EQ((*image)->PlanRead(0, sizeof buf, plan).code(), Status::Code::kPermission);
  EXPECT_EQ((*image)->BeginWrites().code(), Status::Code::kPermission);
}

TEST(QcowHeader, L1TableOutsideFileIsCorruption) {
  {
    MemQcow q;
    q.Be64(40, 1 << 20);  // past the end
    ExpectOpenError(q, Status::Code::kCorruption, "l1_table_offset");
  }
  {
    MemQcow q;
    q.Be64(40, 16);  // over the header
    ExpectOpenError(q, Status::Code::kCorruption, "l1_table_offset");
  }
  {
    MemQcow q(1ull << 40);  // 512 KiB of L1 in a 512-byte file
    ExpectOpenError(q, Status::Code::kCorruption, "l1_table_offset");
  }
  {
    MemQcow q;
    q.Be64(40, UINT64_MAX - 7);  // offset + length overflows
    ExpectOpenError(q, Status::Code::kCorruption, "l1_table_offset");
  }
}

TEST(QcowHeader, BackingNameLimits) {
  for (uint32_t len : {1024u, 0x7fffffffu, 0xffffffffu}) {
    MemQcow q;
    q.Be64(8, 48);
    q.Be32(16, len);
    q.Be64(40, 48 + 1024);
    q.Grow(48 + 1024 + 16);
    ExpectOpenError(q, Status::Code::kCorruption, "backing_file_size");
  }
  MemQcow q;
  q.Be64(8, 400);
  q.Be32(16, 200);  // ends past the 512-byte file
  ExpectOpenError(q, Status::Code::kCorruption, "backing_file_offset");
}

TEST(QcowHeader, BackingNameEndsAtNul) {
  MemQcow q;
  const std::string name = "base.qcow2";
  q.Be64(8, 48);
  q.Be32(16, 16);
  std::copy(name.begin(), name.end(), q.b.begin() + 48);  // then NULs
  q.Be64(40, 64);
  auto image = q.Open();
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ((*image)->Info().backing_filename, "base.qcow2");
  const FormatDriver* d = FindFormat("qcow");
  FormatPeek peek = d->Peek(q.b.data(), q.b.size());
  EXPECT_TRUE(peek.known);
  EXPECT_TRUE(peek.has_backing);
  EXPECT_EQ(peek.snapshots, 0u);
  // An empty name is no backing file, for Peek and Open alike.
  std::fill(q.b.begin() + 48, q.b.begin() + 64, 0);
  EXPECT_FALSE(d->Peek(q.b.data(), q.b.size()).has_backing);
  auto plain = q.Open();
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE((*plain)->Info().backing_filename.empty());
}

TEST(QcowHeader, ProbeClaimsOnlyVersionOne) {
  MemQcow q;
  const FormatDriver* d = FindFormat("qcow");
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->Probe(q.b.data(), q.b.size()), 100);
  EXPECT_EQ(d->Probe(q.b.data(), 20), 51);  // truncated: still ours to explain
  EXPECT_EQ(std::string(ProbeFormat(q.b.data(), q.b.size())->name()), "qcow");
  EXPECT_EQ(FormatFor("x", q.b.data(), q.b.size()), "qcow");
  q.Be32(4, 2);
  EXPECT_EQ(d->Probe(q.b.data(), q.b.size()), 0);
  EXPECT_EQ(std::string(ProbeFormat(q.b.data(), q.b.size())->name()), "qcow2");
  EXPECT_EQ(std::string(FormatForName("vm.QCOW")->name()), "qcow");
}

TEST(QcowL2, TablePastEndOfFileIsCorruption) {
  MemQcow q;
  q.Be64(48, 1 << 20);
  ExpectReadCorruption(q, "L1 entry 0");
}

// Fuzzer finding: an L2 offset near 2^64 wrapped offset + table size
// around, passed the end-of-file check, and Flush() wrote the table there.
TEST(QcowL2, TableOffsetNearTopOfAddressSpaceIsCorruption) {
  for (uint64_t offset : {~uint64_t{0} - 100, ~uint64_t{0} - 4095, uint64_t{1} << 63}) {
    MemQcow q;
    q.Be64(48, offset);
    ExpectReadCorruption(q, "past the end of the file");
  }
}

TEST(QcowL2, TableEndingPastEndOfFileIsCorruption) {
  MemQcow q;
  q.Be64(48, 4096);
  q.Grow(4096 + 100);  // the 4 KiB table is cut short
  ExpectReadCorruption(q, "past the end of the file");
}

TEST(QcowL2, TableOverHeaderOrL1IsCorruption) {
  MemQcow q;
  q.Be64(48, 8);
  q.Grow(8192);
  ExpectReadCorruption(q, "inside the header");
}

TEST(QcowL2, UnalignedClusterIsCorruption) {
  MemQcow q;
  q.Map(0, 4096, 0, 8192 + 100);
  q.Grow(16384);
  ExpectReadCorruption(q, "not 512-byte aligned");
}

TEST(QcowL2, ClusterPastEndOfFileIsCorruption) {
  MemQcow q;
  q.Map(0, 4096, 0, 0x10000000);
  ExpectReadCorruption(q, "past the end of the file");
}

TEST(QcowL2, ClusterOverMetadataIsCorruption) {
  MemQcow q(64ull << 21);  // 64 L1 entries of 2 MiB: the L1 table is [48, 560)
  q.Map(0, 4096, 0, 512);
  q.Grow(16384);
  ExpectReadCorruption(q, "inside the header");
}

TEST(QcowL2, CompressedClusterChecks) {
  const uint64_t kCompressed = 1ull << 63;
  const uint32_t size_shift = 63 - 12;
  {
    MemQcow q;  // size field 0
    q.Map(0, 4096, 0, kCompressed | 8192);
    q.Grow(12288);
    ExpectReadCorruption(q, "size of 0");
  }
  {
    MemQcow q;  // bytes past the end of the file
    q.Map(0, 4096, 0, kCompressed | (uint64_t{4000} << size_shift) | 8192);
    q.Grow(9000);
    ExpectReadCorruption(q, "past the end of the file");
  }
  {
    MemQcow q;  // not a deflate stream
    q.Map(0, 4096, 0, kCompressed | (uint64_t{100} << size_shift) | 8192);
    q.Grow(12288);
    std::fill(q.b.begin() + 8192, q.b.begin() + 8292, 0xff);
    ExpectReadCorruption(q, "compressed cluster", 0, false);
  }
  {
    MemQcow q;  // over the header
    q.Map(0, 4096, 0, kCompressed | (uint64_t{100} << size_shift) | 4);
    ExpectReadCorruption(q, "inside the header");
  }
}

TEST(QcowL2, ErrorsStayLocalToTheirCluster) {
  MemQcow q;
  q.Map(0, 4096, 1, 0x10000000);  // cluster 1 is bad
  q.Be64(4096, 8192);              // cluster 0 is fine
  q.Grow(12288);
  std::fill(q.b.begin() + 8192, q.b.begin() + 12288, 0x5a);
  auto image = q.Open();
  ASSERT_TRUE(image.ok());
  std::vector<uint8_t> buf(4096);
  ASSERT_TRUE((*image)->Read(0, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, std::vector<uint8_t>(4096, 0x5a));
  EXPECT_FALSE((*image)->Read(4096, buf.data(), buf.size()).ok());
  ASSERT_TRUE((*image)->Read(8192, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, std::vector<uint8_t>(4096, 0));
}

TEST(QcowL2, ClusterEndingPastEndOfFileReadsZerosThere) {
  MemQcow q;
  q.Map(0, 4096, 0, 8192);
  q.Grow(8192 + 1000);
  std::fill(q.b.begin() + 8192, q.b.end(), 0x77);
  auto image = q.Open();
  ASSERT_TRUE(image.ok());
  std::vector<uint8_t> buf(4096);
  ASSERT_TRUE((*image)->Read(0, buf.data(), buf.size()).ok());
  EXPECT_EQ(std::count(buf.begin(), buf.end(), 0x77), 1000);
  EXPECT_EQ(std::count(buf.begin(), buf.end(), 0), 4096 - 1000);
}

}  // namespace
}  // namespace kvmfs
