// Crafted VDI files: every header field and block-map entry the driver
// follows is checked against the file size and QEMU's (and VirtualBox's)
// limits, with an error that names the file and the field.
#include <gtest/gtest.h>

#include "base/endian.h"
#include "kvmfs/backend.h"
#include "kvmfs/format.h"

namespace kvmfs {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// A valid dynamic VDI in memory, laid out as QEMU creates it: header, block
// map at 512, data at 512 + the map rounded up to a sector.
struct MemVdi {
  std::vector<uint8_t> b;
  uint32_t blocks;
  explicit MemVdi(uint32_t blocks_ = 4, uint64_t disk_size = 4 * kMiB) : blocks(blocks_) {
    const uint64_t bmap_bytes = (uint64_t{blocks} * 4 + 511) / 512 * 512;
    b.assign(512 + bmap_bytes, 0);
    const char text[] = "<<< QEMU VM Virtual Disk Image >>>\n";
    std::copy(text, text + sizeof text - 1, b.begin());
    Le32(64, 0xbeda107f);
    Le32(68, 0x00010001);
    Le32(72, 0x180);
    Le32(76, 1);
    Le32(340, 512);
    Le32(344, static_cast<uint32_t>(512 + bmap_bytes));
    Le32(360, 512);
    Le64(368, disk_size);
    Le32(376, 1 << 20);
    Le32(384, blocks);
    for (uint32_t i = 0; i < blocks; ++i) Le32(512 + 4 * i, 0xffffffff);
  }
  uint64_t data() const { return LoadLE32(&b[344]); }
  void Grow(uint64_t end) {
    if (b.size() < end) b.resize(end);
  }
  void Le32(uint64_t off, uint32_t v) {
    Grow(off + 4);
    StoreLE32(&b[off], v);
  }
  void Le64(uint64_t off, uint64_t v) {
    Grow(off + 8);
    StoreLE64(&b[off], v);
  }
  // Guest block `i` -> data block `e` (whose bytes are filled with `fill`).
  void Map(uint32_t i, uint32_t e, uint8_t fill) {
    Le32(512 + 4 * i, e);
    const uint64_t at = data() + uint64_t{e} * kMiB;
    Grow(at + kMiB);
    std::fill(b.begin() + at, b.begin() + at + kMiB, fill);
  }
  void SetAllocated(uint32_t n) { Le32(388, n); }
  Result<std::unique_ptr<Image>> Open(const std::string& name = "crafted.vdi",
                                      bool writable = false) const {
    OpenContext ctx;
    ctx.name = name;
    ctx.writable = writable;
    return FindFormat("vdi")->Open(std::shared_ptr<Backend>(NewMemBackend(name, b, writable)), ctx);
  }
};

void ExpectOpenError(const MemVdi& v, Status::Code code, const std::string& field) {
  auto image = v.Open("bad.vdi");
  ASSERT_FALSE(image.ok()) << "opened although " << field << " is invalid";
  EXPECT_EQ(image.status().code(), code) << image.status().ToString();
  EXPECT_NE(image.status().message().find("bad.vdi"), std::string::npos) << image.status().ToString();
  EXPECT_NE(image.status().message().find(field), std::string::npos) << image.status().ToString();
}

TEST(VdiHeader, ValidImageReadsItsBlocks) {
  MemVdi v;
  v.Map(1, 0, 0x42);
  v.SetAllocated(1);
  auto image = v.Open();
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ((*image)->size(), 4 * kMiB);
  std::vector<uint8_t> buf(8192);
  ASSERT_TRUE((*image)->Read(kMiB - 4096, buf.data(), buf.size()).ok());
  EXPECT_EQ(std::count(buf.begin(), buf.begin() + 4096, 0), 4096);
  EXPECT_EQ(std::count(buf.begin() + 4096, buf.end(), 0x42), 4096);
  auto bs = (*image)->GetBlockStatus(0, 4 * kMiB);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kZero);
  EXPECT_EQ(bs->length, kMiB);
  bs = (*image)->GetBlockStatus(kMiB + 5, 4 * kMiB);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kData);
  EXPECT_EQ(bs->length, kMiB - 5);
  ImageInfo info = (*image)->Info();
  EXPECT_EQ(info.format, "vdi");
  EXPECT_EQ(info.cluster_size, kMiB);
  EXPECT_TRUE(info.backing_filename.empty());
}

TEST(VdiHeader, TruncatedHeaderIsCorruption) {
  MemVdi v;
  v.b.resize(400);
  ExpectOpenError(v, Status::Code::kCorruption, "header");
}

TEST(VdiHeader, BadSignatureIsCorruption) {
  MemVdi v;
  v.Le32(64, 0xbeda107e);
  ExpectOpenError(v, Status::Code::kCorruption, "signature");
}

TEST(VdiHeader, OtherVersionsAreNotSupported) {
  for (uint32_t version : {0x00010000u, 0x00020001u, 0u}) {
    MemVdi v;
    v.Le32(68, version);
    ExpectOpenError(v, Status::Code::kNotSupported, "version");
  }
}

TEST(VdiHeader, HeaderSizeOutsideVdiHeader1IsCorruption) {
  for (uint32_t size : {0u, 0x17fu, 441u, 0xffffffffu}) {
    MemVdi v;
    v.Le32(72, size);
    ExpectOpenError(v, Status::Code::kCorruption, "header_size");
  }
  MemVdi plus;  // VirtualBox's VDIHEADER1PLUS (400 bytes) is fine
  plus.Le32(72, 400);
  EXPECT_TRUE(plus.Open().ok());
}

TEST(VdiHeader, UnalignedOffsetsAreCorruption) {
  {
    MemVdi v;
    v.Le32(340, 513);
    ExpectOpenError(v, Status::Code::kCorruption, "block map offset");
  }
  {
    MemVdi v;
    v.Le32(344, 1025);
    ExpectOpenError(v, Status::Code::kCorruption, "data offset");
  }
}

TEST(VdiHeader, SectorAndBlockSizesOtherThanQemusAreNotSupported) {
  {
    MemVdi v;
    v.Le32(360, 4096);
    ExpectOpenError(v, Status::Code::kNotSupported, "sector size");
  }
  for (uint32_t bs : {4096u, 2u << 20, 0u}) {
    MemVdi v;
    v.Le32(376, bs);
    ExpectOpenError(v, Status::Code::kNotSupported, "block size");
  }
}

TEST(VdiHeader, SizeLimits) {
  {
    MemVdi v;  // more than QEMU's maximum disk size
    v.Le64(368, (uint64_t{0x1fffffe0} << 20) + 1);
    ExpectOpenError(v, Status::Code::kTooLarge, "size");
  }
  {
    MemVdi v;  // more blocks than QEMU accepts
    v.Le32(384, 0x7fffffff);
    ExpectOpenError(v, Status::Code::kTooLarge, "too many blocks");
  }
  {
    MemVdi v;  // disk larger than the block map covers
    v.Le64(368, 4 * kMiB + 1);
    ExpectOpenError(v, Status::Code::kCorruption, "disk size");
  }
  {
    MemVdi v;  // an odd size is rounded up to a sector, as QEMU does
    v.Le64(368, 3 * kMiB + 1);
    auto image = v.Open();
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    EXPECT_EQ((*image)->size(), 3 * kMiB + 512);
  }
}

TEST(VdiHeader, EmptyDiskHasNoBlockMap) {
  // qemu-img create -f vdi x.vdi 0 writes blocks_in_image = 0 (the fuzzer
  // found the driver reading a 0-byte map into a null buffer).
  MemVdi v(0, 0);
  auto image = v.Open();
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ((*image)->size(), 0u);
  EXPECT_TRUE((*image)->Read(0, nullptr, 0).ok());
}

TEST(VdiHeader, DifferencingImagesAreNotSupported) {
  {
    MemVdi v;
    v.b[424] = 1;
    ExpectOpenError(v, Status::Code::kNotSupported, "link UUID");
  }
  {
    MemVdi v;
    v.b[455] = 1;
    ExpectOpenError(v, Status::Code::kNotSupported, "parent UUID");
  }
}

TEST(VdiHeader, BlockMapLayoutIsChecked) {
  {
    MemVdi v;  // the map inside the header
    v.Le32(340, 0);
    ExpectOpenError(v, Status::Code::kCorruption, "inside the header");
  }
  {
    MemVdi v;  // the map past the end of the file
    v.Le32(340, 1 << 20);
    v.Le32(344, 2 << 20);
    ExpectOpenError(v, Status::Code::kCorruption, "passes the end of the file");
  }
  {
    MemVdi v(1000, 1000 * kMiB);  // data area over the 4000-byte map
    v.Le32(344, 1024);
    ExpectOpenError(v, Status::Code::kCorruption, "inside the block map");
  }
  {
    MemVdi v;
    v.SetAllocated(5);  // more than blocks_in_image
    ExpectOpenError(v, Status::Code::kCorruption, "blocks_allocated");
  }
}

TEST(VdiBlockMap, EntryPastBlocksInImageIsCorruption) {
  MemVdi v;
  v.Le32(512 + 4 * 2, 0x7fff0000);
  v.SetAllocated(1);
  auto image = v.Open("bad.vdi");
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  std::vector<uint8_t> buf(512);
  Status st = (*image)->Read(2 * kMiB, buf.data(), buf.size());
  EXPECT_TRUE(st.IsCorruption()) << st.ToString();
  EXPECT_NE(st.message().find("block map entry 2"), std::string::npos) << st.ToString();
  EXPECT_FALSE((*image)->GetBlockStatus(2 * kMiB, 512).ok());
  // Other blocks still read.
  EXPECT_TRUE((*image)->Read(0, buf.data(), buf.size()).ok());
}

TEST(VdiBlockMap, BlockPastEndOfFileIsCorruption) {
  MemVdi v;
  v.Le32(512 + 4 * 3, 2);  // data block 2 was never written
  v.SetAllocated(1);
  auto image = v.Open("bad.vdi");
  ASSERT_TRUE(image.ok());
  std::vector<uint8_t> buf(512);
  Status st = (*image)->Read(3 * kMiB, buf.data(), buf.size());
  EXPECT_TRUE(st.IsCorruption()) << st.ToString();
  EXPECT_NE(st.message().find("past the end of the file"), std::string::npos) << st.ToString();
}

TEST(VdiBlockMap, InconsistentMapIsServedReadOnly) {
  struct Case {
    const char* what;
    void (*make)(MemVdi&);
  } cases[] = {
      {"more than one guest block",
       [](MemVdi& v) {
         v.Map(0, 0, 1);
         v.Le32(512 + 4, 0);  // guest blocks 0 and 1 share data block 0
         v.SetAllocated(2);
       }},
      {"not below blocks_in_image",
       [](MemVdi& v) {
         v.Map(0, 0, 1);
         v.Le32(512 + 4, 9);
         v.SetAllocated(2);
       }},
      {"the header says",
       [](MemVdi& v) {
         v.Map(0, 0, 1);
         v.SetAllocated(0);
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    MemVdi v;
    c.make(v);
    auto image = v.Open("bad.vdi", true);
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    EXPECT_NE((*image)->ReadOnlyReason().find(c.what), std::string::npos) << (*image)->ReadOnlyReason();
    Status st = (*image)->BeginWrites();
    EXPECT_EQ(st.code(), Status::Code::kReadOnly) << st.ToString();
    EXPECT_FALSE((*image)->writable());
    // Reading is still possible.
    std::vector<uint8_t> buf(512);
    EXPECT_TRUE((*image)->Read(0, buf.data(), buf.size()).ok());
  }
}

// Image::Check counts as QEMU's vdi_co_check (the integration test
// it-check-formats compares with qemu-img check on images qemu-img made).
TEST(VdiBlockMap, CheckCountsCorruptionsAsQemu) {
  struct Case {
    const char* what;
    void (*make)(MemVdi&);
    uint64_t corruptions;
  } cases[] = {
      {"clean", [](MemVdi& v) {
         v.Map(0, 0, 1);
         v.Map(2, 1, 2);
         v.SetAllocated(2);
       }, 0},
      {"two guest blocks share data block 0", [](MemVdi& v) {
         v.Map(0, 0, 1);
         v.Le32(512 + 4, 0);
         v.Le32(512 + 8, 0);
         v.SetAllocated(3);
       }, 2},
      {"an entry past blocks_in_image, and the count off", [](MemVdi& v) {
         v.Map(0, 0, 1);
         v.Le32(512 + 4, 9);
         v.SetAllocated(2);
       }, 2},
      {"discarded entries are not allocated", [](MemVdi& v) {
         v.Map(0, 0, 1);
         v.Le32(512 + 4, 0xfffffffe);
         v.SetAllocated(1);
       }, 0},
      {"blocks_allocated too low", [](MemVdi& v) {
         v.Map(0, 0, 1);
         v.SetAllocated(0);
       }, 1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    MemVdi v;
    c.make(v);
    auto image = v.Open("c.vdi");
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    uint64_t last_done = 0, calls = 0;
    CheckOptions options;
    options.progress = [&](uint64_t done, uint64_t total) {
      EXPECT_LE(done, total);
      EXPECT_GE(done, last_done);
      last_done = done;
      ++calls;
    };
    auto r = (*image)->Check(options);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->corruptions, c.corruptions);
    EXPECT_EQ(r->check_errors, 0u);
    EXPECT_EQ(r->leaks, 0u);
    EXPECT_EQ(r->image_end_offset, 0u);  // qemu-img prints none for VDI
    EXPECT_EQ(r->total_clusters, 0u);
    EXPECT_TRUE(r->failure.empty());
    EXPECT_GT(calls, 0u);
    EXPECT_EQ(last_done, v.blocks);
  }
}

// Fuzzer finding: a data offset of ~4 GiB in a 1 KiB file made the first
// allocating write grow the file by 4 GiB (out of memory on the fuzzer's
// in-memory file). Such an image reads, but is not written.
TEST(VdiBlockMap, DataAreaPastEndOfFileIsServedReadOnly) {
  MemVdi v;
  v.Le32(344, 0xff000400);
  auto image = v.Open("bad.vdi", true);
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_NE((*image)->ReadOnlyReason().find("passes the end of the file"), std::string::npos)
      << (*image)->ReadOnlyReason();
  EXPECT_EQ((*image)->BeginWrites().code(), Status::Code::kReadOnly);
  std::vector<uint8_t> buf(4096, 0xee);
  ASSERT_TRUE((*image)->Read(0, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, std::vector<uint8_t>(4096, 0));

  // The same for a file cut short inside its data area.
  MemVdi cut;
  cut.Map(0, 0, 1);
  cut.Map(1, 1, 2);
  cut.SetAllocated(2);
  cut.b.resize(cut.data() + 100);  // block 1 is gone
  auto cut_image = cut.Open("cut.vdi", true);
  ASSERT_TRUE(cut_image.ok()) << cut_image.status().ToString();
  EXPECT_NE((*cut_image)->ReadOnlyReason().find("passes the end of the file"), std::string::npos)
      << (*cut_image)->ReadOnlyReason();
}

TEST(VdiHeader, ProbeAndPeek) {
  MemVdi v;
  const FormatDriver* d = FindFormat("vdi");
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->Probe(v.b.data(), 512), 100);
  EXPECT_EQ(d->Probe(v.b.data(), 100), 51);
  EXPECT_EQ(d->Probe(v.b.data(), 60), 0);
  EXPECT_EQ(FormatFor("disk", v.b.data(), 512), "vdi");
  EXPECT_EQ(std::string(FormatForName("a.VDI")->name()), "vdi");
  FormatPeek peek = d->Peek(nullptr, 0);  // needs no bytes
  EXPECT_TRUE(peek.known);
  EXPECT_FALSE(peek.has_backing);
  EXPECT_EQ(peek.snapshots, 0u);
}

}  // namespace
}  // namespace kvmfs
