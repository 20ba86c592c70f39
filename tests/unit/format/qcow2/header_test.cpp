// Malformed qcow2 headers (reliability.md §7 A): each is refused with the
// right code and a message naming the image and the problem.
#include <gtest/gtest.h>

#include <limits>

#include "kvmfs/format.h"
#include "mem_image.h"

namespace kvmfs::test {
namespace {

using Code = Status::Code;

// Expects Open() to fail with `code` and a message containing `text`.
void ExpectRefused(const MemImage& img, Code code, const std::string& text) {
  auto r = img.Open();
  ASSERT_FALSE(r.ok()) << "expected refusal: " << text;
  EXPECT_EQ(r.status().code(), code) << r.status().ToString();
  EXPECT_NE(r.status().message().find(text), std::string::npos) << r.status().ToString();
  EXPECT_NE(r.status().message().find("mem.qcow2"), std::string::npos) << r.status().ToString();
}

std::vector<uint8_t> FeatureEntry(uint8_t type, uint8_t bit, const std::string& name) {
  std::vector<uint8_t> e(48, 0);
  e[0] = type;
  e[1] = bit;
  std::copy(name.begin(), name.end(), e.begin() + 2);
  return e;
}

TEST(Qcow2Header, ValidEmptyImagesOpen) {
  for (uint32_t version : {2u, 3u}) {
    MemImage img(16, version, 1 << 20);
    auto r = img.Open();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ((*r)->size(), 1u << 20);
    std::vector<uint8_t> buf(4096, 0xee);
    ASSERT_TRUE((*r)->Read(4096, buf.data(), buf.size()).ok());
    EXPECT_EQ(buf, std::vector<uint8_t>(4096, 0));
    ImageInfo info = (*r)->Info();
    EXPECT_EQ(info.format, "qcow2");
    EXPECT_EQ(*info.cluster_size, 65536u);
  }
}

TEST(Qcow2Header, ProbeWantsTheMagicAndVersion2OrLater) {
  MemImage img;
  EXPECT_EQ(FindFormat("qcow2")->Probe(img.b.data(), 512), 100);
  MemImage v2(16, 2);
  EXPECT_EQ(FindFormat("qcow2")->Probe(v2.b.data(), 512), 100);
  uint8_t qcow1[8] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 1};  // qcow v1 shares the magic
  EXPECT_EQ(FindFormat("qcow2")->Probe(qcow1, 8), 0);
  uint8_t raw[8] = {'Q', 'F', 'I', 0, 0, 0, 0, 3};
  EXPECT_EQ(FindFormat("qcow2")->Probe(raw, 8), 0);
  EXPECT_EQ(FindFormat("qcow2")->Probe(img.b.data(), 7), 0);
}

TEST(Qcow2Header, BadMagicIsRefused) {
  MemImage img;
  img.Be32(kOffMagic, 0x514649fa);
  ExpectRefused(img, Code::kInvalidArgument, "not in qcow2 format");
}

TEST(Qcow2Header, TruncatedHeaderIsRefused) {
  MemImage img;
  img.b.resize(40);
  ExpectRefused(img, Code::kCorruption, "too short");
}

TEST(Qcow2Header, VersionOtherThan2Or3IsRefused) {
  for (uint32_t v : {0u, 1u, 4u, 0xffffffffu}) {
    MemImage img;
    img.Be32(kOffVersion, v);
    ExpectRefused(img, Code::kNotSupported, "Unsupported qcow2 version " + std::to_string(v));
  }
}

TEST(Qcow2Header, ClusterBitsBelow9IsRefused) {
  for (uint32_t bits : {0u, 8u}) {
    MemImage img;
    img.Be32(kOffClusterBits, bits);
    ExpectRefused(img, Code::kCorruption, "Unsupported cluster size: 2^" + std::to_string(bits));
  }
}

TEST(Qcow2Header, ClusterBitsAbove21IsRefused) {
  for (uint32_t bits : {22u, 0x1fu, 0xffffffffu}) {
    MemImage img;
    img.Be32(kOffClusterBits, bits);
    ExpectRefused(img, Code::kNotSupported, "Unsupported cluster size");
  }
}

TEST(Qcow2Header, HugeOrShortHeaderLengthIsRefused) {
  for (uint32_t len : {0xffffffffu, 0x7fffffffu, 65537u}) {
    MemImage img;
    img.Be32(kOffHeaderLength, len);
    ExpectRefused(img, Code::kCorruption, "header exceeds cluster size");
  }
  for (uint32_t len : {0u, 72u, 103u}) {
    MemImage img;
    img.Be32(kOffHeaderLength, len);
    ExpectRefused(img, Code::kCorruption, "header too short");
  }
}

TEST(Qcow2Header, HeaderLength104HasNoCompressionType) {
  MemImage img;
  img.Be32(kOffHeaderLength, 104);
  img.b[kOffCompressionType] = 7;  // not part of the header: ignored
  ASSERT_TRUE(img.Open().ok());
}

TEST(Qcow2Header, HugeExtensionIsRefused) {
  MemImage img;
  img.Be32(112, 0x12345678);
  img.Be32(116, 0x7fffffff);
  ExpectRefused(img, Code::kCorruption, "Header extension too large");
}

TEST(Qcow2Header, ExtensionCrossingTheBackingNameIsRefused) {
  MemImage img;
  img.AddExtension(0x12345678, std::vector<uint8_t>(64, 1));
  img.Be64(kOffBackingOffset, 150);  // inside the extension
  img.Be32(kOffBackingSize, 4);
  ExpectRefused(img, Code::kCorruption, "Header extension too large");
}

TEST(Qcow2Header, UnknownExtensionsAreSkipped) {
  MemImage img;
  img.AddExtension(0x12345678, std::vector<uint8_t>(13, 1));
  img.AddExtension(0xe2792aca, std::string("raw"));
  auto r = img.Open();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->Info().backing_format, "raw");
}

TEST(Qcow2Header, BackingFileOffsetPastClusterIsRefused) {
  MemImage img;
  img.Be64(kOffBackingOffset, 65537);
  img.Be32(kOffBackingSize, 4);
  ExpectRefused(img, Code::kCorruption, "Invalid backing file offset");
}

TEST(Qcow2Header, BackingNameTooLongIsRefused) {
  for (uint32_t len : {0xffffffffu, 1024u}) {
    MemImage img;
    img.Be64(kOffBackingOffset, 512);
    img.Be32(kOffBackingSize, len);
    ExpectRefused(img, Code::kCorruption, "Backing file name too long");
  }
  MemImage img;  // crosses the end of cluster 0
  img.Be64(kOffBackingOffset, 65536 - 10);
  img.Be32(kOffBackingSize, 11);
  ExpectRefused(img, Code::kCorruption, "Backing file name too long");
}

TEST(Qcow2Header, BackingNameIsReadAsStored) {
  MemImage img;
  img.Bytes(512, {'b', 'a', 's', 'e', '.', 'i', 'm', 'g'});
  img.Be64(kOffBackingOffset, 512);
  img.Be32(kOffBackingSize, 8);
  auto r = img.Open();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->Info().backing_filename, "base.img");
}

TEST(Qcow2Header, UnknownIncompatibleBitIsNotSupported) {
  MemImage img;
  img.Be64(kOffIncompat, 1ull << 5);
  ExpectRefused(img, Code::kNotSupported,
                "Unsupported qcow2 feature(s): Unknown incompatible feature: 20");
}

TEST(Qcow2Header, UnknownIncompatibleBitIsNamedFromTheFeatureTable) {
  MemImage img;
  std::vector<uint8_t> table = FeatureEntry(0, 0, "dirty bit");
  auto named = FeatureEntry(0, 5, "time travel");
  table.insert(table.end(), named.begin(), named.end());
  img.AddExtension(0x6803f857, table);
  img.Be64(kOffIncompat, (1ull << 5) | (1ull << 9));
  ExpectRefused(img, Code::kNotSupported,
                "Unsupported qcow2 feature(s): time travel, Unknown incompatible feature: 200");
}

TEST(Qcow2Header, UnknownCompatibleAndAutoclearBitsAreIgnored) {
  MemImage img;
  img.Be64(kOffCompat, 0xff00);
  img.Be64(kOffAutoclear, 0xff00);
  EXPECT_TRUE(img.Open().ok());
}

TEST(Qcow2Header, RefcountOrderAbove6IsRefused) {
  for (uint32_t order : {7u, 0xffffffffu}) {
    MemImage img;
    img.Be32(kOffRefcountOrder, order);
    ExpectRefused(img, Code::kCorruption, "Reference count entry width too large");
  }
  MemImage one_bit;
  one_bit.Be32(kOffRefcountOrder, 0);
  auto r = one_bit.Open();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(std::get<int64_t>((*r)->Info().format_specific[3].value), 1);
}

TEST(Qcow2Header, MissingRefcountTableIsRefused) {
  MemImage img;
  img.Be32(kOffRefcountTableClusters, 0);
  ExpectRefused(img, Code::kCorruption, "Image does not contain a reference count table");
}

TEST(Qcow2Header, HugeRefcountTableIsTooLarge) {
  for (uint32_t clusters : {0xffffffffu, 0x20001u, 129u}) {
    MemImage img;
    img.Be32(kOffRefcountTableClusters, clusters);
    ExpectRefused(img, Code::kTooLarge, "Reference count table too large");
  }
}

TEST(Qcow2Header, BadRefcountTableOffsetIsRefused) {
  for (uint64_t off : {0x1234567890abcdefull, 0x7fffffffffff0000ull, 0x10200ull}) {
    MemImage img;
    img.Be64(kOffRefcountTableOffset, off);
    ExpectRefused(img, Code::kCorruption, "Reference count table offset invalid");
  }
  MemImage past_eof;
  past_eof.Be64(kOffRefcountTableOffset, 0x100000);
  ExpectRefused(past_eof, Code::kCorruption, "past the end of the file");
}

TEST(Qcow2Header, TooManySnapshotsIsRefused) {
  for (uint32_t n : {0xffffffffu, 0x7fffffffu, 65537u}) {
    MemImage img;
    img.Be32(kOffNbSnapshots, n);
    img.Be64(kOffSnapshotsOffset, 0x40000);
    ExpectRefused(img, Code::kTooLarge, "Snapshot table too large");
  }
}

TEST(Qcow2Header, BadSnapshotTableOffsetIsRefused) {
  for (uint64_t off : {0x40008ull, 0x8000000000000000ull, 0xffffffffffff0000ull}) {
    MemImage img;
    img.Be32(kOffNbSnapshots, 2);
    img.Be64(kOffSnapshotsOffset, off);
    ExpectRefused(img, Code::kCorruption, "Snapshot table offset invalid");
  }
  MemImage past_eof;
  past_eof.Be32(kOffNbSnapshots, 1);
  past_eof.Be64(kOffSnapshotsOffset, 0x100000);
  ExpectRefused(past_eof, Code::kCorruption, "past the end of the file");
}

TEST(Qcow2Header, HugeL1IsTooLarge) {
  for (uint32_t n : {0x7fffffffu, 0xffffffffu, (32u << 20) / 8 + 1}) {
    MemImage img;
    img.Be32(kOffL1Size, n);
    ExpectRefused(img, Code::kTooLarge, "Active L1 table too large");
  }
}

TEST(Qcow2Header, L1SmallerThanTheDiskIsRefused) {
  MemImage img(16, 3, 1ull << 30);  // 2 L1 entries needed
  img.Be32(kOffL1Size, 1);
  ExpectRefused(img, Code::kCorruption, "L1 table is too small");
  MemImage empty;
  empty.Be32(kOffL1Size, 0);
  ExpectRefused(empty, Code::kCorruption, "L1 table is too small");
}

TEST(Qcow2Header, HugeVirtualSizeIsRefused) {
  for (uint64_t size : {std::numeric_limits<uint64_t>::max(), uint64_t{1} << 63}) {
    MemImage img;
    img.Be64(kOffSize, size);
    ExpectRefused(img, Code::kTooLarge, "Image is too big");
  }
  MemImage img;
  img.Be64(kOffSize, (uint64_t{1} << 50));
  ExpectRefused(img, Code::kCorruption, "L1 table is too small");
}

TEST(Qcow2Header, OddVirtualSizeIsRoundedDownToSectors) {
  MemImage img(16, 3, (1 << 20) + 100);
  auto r = img.Open();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->size(), 1u << 20);
}

TEST(Qcow2Header, BadL1OffsetIsRefused) {
  for (uint64_t off : {0x30200ull, 0x8000000000000000ull, 0xffffffffffff0000ull}) {
    MemImage img;
    img.Be64(kOffL1Offset, off);
    ExpectRefused(img, Code::kCorruption, "Active L1 table offset invalid");
  }
  MemImage past_eof;
  past_eof.Be64(kOffL1Offset, 0x100000);
  ExpectRefused(past_eof, Code::kCorruption, "past the end of the file");
}

TEST(Qcow2Header, LongBackingFormatIsRefused) {
  MemImage img;
  img.AddExtension(0xe2792aca, std::string(16, 'q'));
  ExpectRefused(img, Code::kCorruption, "ext_backing_format");
}

TEST(Qcow2Header, CryptoExtensionWithoutLuksIsRefused) {
  MemImage img;
  std::vector<uint8_t> ext(16, 0);
  StoreBE64(ext.data(), 0x50000);
  StoreBE64(ext.data() + 8, 4096);
  img.AddExtension(0x0537be77, ext);
  ExpectRefused(img, Code::kCorruption, "CRYPTO header extension only expected with LUKS");
}

TEST(Qcow2Header, BadCryptoExtensionIsRefused) {
  MemImage wrong_len;
  wrong_len.Be32(kOffCryptMethod, 2);
  wrong_len.AddExtension(0x0537be77, std::vector<uint8_t>(15, 0));
  ExpectRefused(wrong_len, Code::kCorruption, "CRYPTO header extension size 15");

  MemImage unaligned;
  unaligned.Be32(kOffCryptMethod, 2);
  std::vector<uint8_t> ext(16, 0);
  StoreBE64(ext.data(), 0x50200);
  unaligned.AddExtension(0x0537be77, ext);
  ExpectRefused(unaligned, Code::kCorruption, "is not a multiple of cluster size");

  MemImage missing;
  missing.Be32(kOffCryptMethod, 2);
  ExpectRefused(missing, Code::kCorruption, "Missing CRYPTO header");
}

TEST(Qcow2Header, EncryptedImagesNeedAKey) {
  // Without a key the image is described, its data refused.
  MemImage aes;
  aes.Be32(kOffCryptMethod, 1);
  auto r = aes.Open();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE((*r)->Info().encrypted);
  EXPECT_EQ((*r)->DataStatus().code(), Code::kPermission);
  EXPECT_NE((*r)->DataStatus().message().find("no key configured"), std::string::npos);
  EXPECT_NE((*r)->DataStatus().message().find("mem.qcow2"), std::string::npos);
  uint8_t buf[512];
  EXPECT_EQ((*r)->Read(0, buf, sizeof buf).code(), Code::kPermission);

  MemImage luks;
  luks.Be32(kOffCryptMethod, 2);
  std::vector<uint8_t> ext(16, 0);
  StoreBE64(ext.data(), 0x40000);
  StoreBE64(ext.data() + 8, 4096);
  luks.AddExtension(0x0537be77, ext);
  // The LUKS header is checked before a key is asked for (here: zeros).
  ExpectRefused(luks, Code::kCorruption, "not in LUKS format");
}

TEST(Qcow2Header, UnknownEncryptionMethodIsRefused) {
  MemImage img;
  img.Be32(kOffCryptMethod, 3);
  ExpectRefused(img, Code::kNotSupported, "Unsupported encryption method 3");
}

TEST(Qcow2Header, CompressionTypeMustMatchItsFeatureBit) {
  MemImage zstd_without_bit;
  zstd_without_bit.b[kOffCompressionType] = 1;
  ExpectRefused(zstd_without_bit, Code::kCorruption,
                "Compression type incompatible feature bit must be set");

  MemImage zlib_with_bit;
  zlib_with_bit.Be64(kOffIncompat, 1ull << 3);
  ExpectRefused(zlib_with_bit, Code::kCorruption, "feature bit must not be set");

  MemImage unknown;
  unknown.b[kOffCompressionType] = 2;
  unknown.Be64(kOffIncompat, 1ull << 3);
  ExpectRefused(unknown, Code::kNotSupported, "unknown compression type: 2");

  MemImage zstd;
  zstd.b[kOffCompressionType] = 1;
  zstd.Be64(kOffIncompat, 1ull << 3);
  auto r = zstd.Open();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(std::get<std::string>((*r)->Info().format_specific[1].value), "zstd");
}

TEST(Qcow2Header, ExtendedL2NeedsClustersOf16K) {
  MemImage img(13, 3, 1 << 20, /*extended_l2=*/true);
  ExpectRefused(img, Code::kCorruption, "subcluster size");
  MemImage ok(14, 3, 1 << 20, true);
  EXPECT_TRUE(ok.Open().ok());
}

TEST(Qcow2Header, BadBitmapsExtensionIsRefused) {
  auto ext = [](uint32_t nb, uint32_t reserved, uint64_t size, uint64_t off) {
    std::vector<uint8_t> e(24);
    StoreBE32(e.data(), nb);
    StoreBE32(e.data() + 4, reserved);
    StoreBE64(e.data() + 8, size);
    StoreBE64(e.data() + 16, off);
    return e;
  };
  struct Case {
    std::vector<uint8_t> data;
    const char* text;
  } cases[] = {
      {ext(0, 0, 64, 0x40000), "zero bitmaps"},
      {ext(65536, 0, 64, 0x40000), "exceeding the QEMU supported maximum"},
      {ext(1, 1, 64, 0x40000), "Reserved field is not zero"},
      {ext(1, 0, 64, 0x40100), "invalid bitmap directory offset"},
      {ext(1, 0, 1024ull * 65535 + 1, 0x40000), "bitmap directory size"},
      {std::vector<uint8_t>(16, 0), "Invalid extension length"},
  };
  for (const Case& c : cases) {
    MemImage img;
    img.Be64(kOffAutoclear, 1);
    img.AddExtension(0x23852875, c.data);
    ExpectRefused(img, Code::kCorruption, c.text);
  }
  // Without autoclear bit 0 the bitmaps are stale and ignored.
  MemImage stale;
  stale.AddExtension(0x23852875, ext(0, 0, 64, 0x40000));
  EXPECT_TRUE(stale.Open().ok());
}

TEST(Qcow2Header, DataFileBitWithoutNameIsRefused) {
  MemImage img;
  img.Be64(kOffIncompat, 1ull << 2);
  ExpectRefused(img, Code::kInvalidArgument, "'data-file' is required for this image");
}

TEST(Qcow2Header, DataFileRawWithoutDataFileIsRefused) {
  MemImage img;
  img.Be64(kOffAutoclear, 1ull << 1);
  ExpectRefused(img, Code::kCorruption, "data-file-raw requires a data file");
}

TEST(Qcow2Header, DataFileWithoutOpenerIsNotSupported) {
  MemImage img;
  img.Be64(kOffIncompat, 1ull << 2);
  img.AddExtension(0x44415441, std::string("data.raw"));
  ExpectRefused(img, Code::kNotSupported, "data.raw");
}

TEST(Qcow2Header, CorruptBitServesWritableOpenReadOnly) {
  MemImage img;
  img.Be64(kOffIncompat, 1ull << 1);
  ASSERT_TRUE(img.Open().ok());
  OpenContext ctx;
  ctx.writable = true;
  auto r = img.Open(ctx);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE((*r)->writable());
  EXPECT_NE((*r)->ReadOnlyReason().find("corrupt"), std::string::npos);
  Status st = (*r)->BeginWrites();
  EXPECT_EQ(st.code(), Code::kReadOnly);
  EXPECT_NE(st.message().find("corrupt"), std::string::npos) << st.ToString();
  uint8_t b[512] = {};
  EXPECT_TRUE((*r)->Read(0, b, sizeof b).ok());
}

TEST(Qcow2Header, DirtyBitIsReported) {
  MemImage img;
  img.Be64(kOffIncompat, 1);
  auto r = img.Open();
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE((*r)->Info().dirty);
}

}  // namespace
}  // namespace kvmfs::test
