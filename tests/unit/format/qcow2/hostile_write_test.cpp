// Regression tests for what fuzzing the write path found (issue 15): wrong
// refcounts must never put metadata over metadata or over the header, no
// loop may run unbounded on values read from the image, and tables reached
// twice are refused before anything is written. Images are made by
// qemu-img at test time and corrupted here (or built with MemImage).
#include <chrono>
#include <cstring>

#include "format/qcow2/qcow2.h"
#include "mem_image.h"
#include "write_helpers.h"

namespace kvmfs::test {
namespace {

using Code = Status::Code;
using qcow2::CacheBudget;
using qcow2::kCacheEntryOverhead;

#define ASSERT_OK(expr)                                     \
  do {                                                      \
    ::kvmfs::Status _s = (expr);                            \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s.ToString(); \
  } while (0)

// 64 KiB clusters as qemu-img lays out a fresh image: header 0, refcount
// table 0x10000, refcount block 0x20000, L1 0x30000, then L2 and data.
constexpr uint64_t kRefTable = 0x10000;
constexpr uint64_t kRefBlock = 0x20000;
constexpr uint64_t kL1 = 0x30000;

class Qcow2Hostile : public WriteTest {
 protected:
  std::vector<uint8_t> File(const std::string& name) { return ReadHostFile(P(name)); }
  void Poke64(const std::string& name, uint64_t off, uint64_t v) {
    auto f = File(name);
    ASSERT_GE(f.size(), off + 8);
    StoreBE64(&f[off], v);
    WriteHostFile(P(name), f);
  }
  void Zero(const std::string& name, uint64_t off, uint64_t len) {
    auto f = File(name);
    ASSERT_GE(f.size(), off + len);
    std::fill(f.begin() + static_cast<ptrdiff_t>(off), f.begin() + static_cast<ptrdiff_t>(off + len),
              0);
    WriteHostFile(P(name), f);
  }
  // Every byte but the header's cluster is as before.
  void ExpectOnlyHeaderChanged(const std::vector<uint8_t>& before, const std::string& name) {
    auto after = File(name);
    ASSERT_GE(after.size(), before.size());
    EXPECT_TRUE(std::equal(before.begin() + 0x10000, before.end(), after.begin() + 0x10000))
        << "metadata or data changed";
    EXPECT_EQ(after[79] & 2, 2) << "corrupt bit";
    // The header itself is intact: qemu-img still reads the image.
    std::string out;
    EXPECT_EQ(RunCmd("cd " + dir_ + " && qemu-img info " + name, &out), 0) << out;
    EXPECT_NE(out.find("corrupt: true"), std::string::npos) << out;
  }
};

TEST_F(Qcow2Hostile, WriteOnAZeroedRefcountTableIsRefusedAndMarksCorrupt) {
  // QEMU refuses this write with EIO and sets the corrupt bit; kvmfs used to
  // place the new L2 table over the refcount table and overwrite the header
  // on close.
  Sh("qemu-img create -q -f qcow2 img.qcow2 4M");
  Zero("img.qcow2", kRefTable, 0x10000);
  const auto before = File("img.qcow2");
  {
    auto w = OpenWritable("img.qcow2");
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    Image& img = *w->image;
    ASSERT_OK(img.BeginWrites());
    std::vector<uint8_t> p(4096, 0x5a);
    Status st = img.Write(0, p.data(), p.size());
    EXPECT_EQ(st.code(), Code::kCorruption) << st.ToString();
    EXPECT_FALSE(img.writable());
    EXPECT_EQ(img.Write(0, p.data(), p.size()).code(), Code::kReadOnly);
    EXPECT_FALSE(img.EndWrites().ok());
  }
  ExpectOnlyHeaderChanged(before, "img.qcow2");
}

TEST_F(Qcow2Hostile, RefcountsSayingTheHeaderIsFreeRefuseEveryAllocation) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 4M");
  Poke64("img.qcow2", kRefBlock, 0x0000000100010001ull);  // clusters 0..3: 0, 1, 1, 1
  const auto before = File("img.qcow2");
  {
    auto w = OpenWritable("img.qcow2");
    ASSERT_TRUE(w.ok());
    ASSERT_OK(w->image->BeginWrites());
    std::vector<uint8_t> p(512, 1);
    Status st = w->image->Write(1 << 20, p.data(), p.size());
    EXPECT_EQ(st.code(), Code::kCorruption) << st.ToString();
    EXPECT_NE(st.message().find("cluster 0"), std::string::npos) << st.ToString();
  }
  ExpectOnlyHeaderChanged(before, "img.qcow2");
}

TEST_F(Qcow2Hostile, NewL2TableOverMetadataIsRefusedAndMarksCorrupt) {
  // The refcounts say the refcount table is free: the new L2 table would
  // land on it (the data cluster after it goes past the end, no overlap).
  Sh("qemu-img create -q -f qcow2 img.qcow2 4M");
  Poke64("img.qcow2", kRefBlock, 0x0001000000010001ull);  // clusters 0..3: 1, 0, 1, 1
  const auto before = File("img.qcow2");
  {
    auto w = OpenWritable("img.qcow2");
    ASSERT_TRUE(w.ok());
    ASSERT_OK(w->image->BeginWrites());
    std::vector<uint8_t> p(512, 1);
    Status st = w->image->Write(0, p.data(), p.size());
    EXPECT_EQ(st.code(), Code::kCorruption) << st.ToString();
    EXPECT_NE(st.message().find("overlaps metadata"), std::string::npos) << st.ToString();
    EXPECT_FALSE(w->image->writable());
  }
  ExpectOnlyHeaderChanged(before, "img.qcow2");
}

TEST_F(Qcow2Hostile, SnapshotCreateOnAZeroedRefcountTableEndsAsCorruption) {
  // The refcount block allocation this needs used to loop forever under
  // the exclusive lock (the block landed on cluster 0, i.e. "no block").
  Sh("qemu-img create -q -f qcow2 img.qcow2 4M");
  Sh("qemu-io -c 'write -P 0x21 0 64k' img.qcow2 >/dev/null");
  // Not COPIED (BeginWrites would refuse a COPIED table of refcount 0).
  auto f = File("img.qcow2");
  f[kL1] &= 0x7f;
  WriteHostFile(P("img.qcow2"), f);
  Zero("img.qcow2", kRefTable, 8);
  const auto before = File("img.qcow2");
  {
    auto w = OpenWritable("img.qcow2");
    ASSERT_TRUE(w.ok());
    ASSERT_OK(w->image->BeginWrites());
    const auto t0 = std::chrono::steady_clock::now();
    auto r = w->image->CreateSnapshot("s");
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kCorruption) << r.status().ToString();
    EXPECT_TRUE(w->image->Snapshots().empty());
    EXPECT_FALSE(w->image->writable());
  }
  // What a commit wrote went past the old end of the file only.
  auto after = File("img.qcow2");
  EXPECT_TRUE(std::equal(before.begin() + 0x10000, before.end(), after.begin() + 0x10000));
  EXPECT_EQ(after[79] & 2, 2);
}

TEST_F(Qcow2Hostile, TwoL1EntriesSharingAnL2TableAreRefused) {
  // A write through one of them would land on the other's guest offset too.
  Sh("qemu-img create -q -f qcow2 img.qcow2 2G");
  Sh("qemu-io -c 'write -P 0x21 0 64k' img.qcow2 >/dev/null");
  auto f = File("img.qcow2");
  std::memcpy(&f[kL1 + 8], &f[kL1], 8);  // L1[1] = L1[0] (COPIED, refcount 1)
  WriteHostFile(P("img.qcow2"), f);
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok());
  Status st = w->image->BeginWrites();
  EXPECT_EQ(st.code(), Code::kReadOnly) << st.ToString();
  EXPECT_NE(st.message().find("reached twice"), std::string::npos) << st.ToString();
  EXPECT_FALSE(w->image->writable());
  std::vector<uint8_t> p(512, 1);
  EXPECT_EQ(w->image->Write(512u << 20, p.data(), p.size()).code(), Code::kReadOnly);
  // Still readable, as QEMU reads it.
  EXPECT_EQ(ReadImage(*w->image, 512u << 20, 1)[0], 0x21);
  w->image.reset();
  EXPECT_EQ(File("img.qcow2")[79] & 2, 2);
}

TEST_F(Qcow2Hostile, CopiedL2TableSharedWithASnapshotIsRefused) {
  // COPIED on a shared table: an in-place write would change the snapshot.
  Sh("qemu-img create -q -f qcow2 img.qcow2 4M");
  Sh("qemu-io -c 'write -P 0x21 0 64k' img.qcow2 >/dev/null");
  Sh("qemu-img snapshot -c s img.qcow2");
  const uint64_t l1_off = [&] {
    auto f = File("img.qcow2");
    return LoadBE64(&f[kOffL1Offset]);
  }();
  auto f = File("img.qcow2");
  f[l1_off] |= 0x80;
  WriteHostFile(P("img.qcow2"), f);
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok());
  Status st = w->image->BeginWrites();
  EXPECT_EQ(st.code(), Code::kReadOnly) << st.ToString();
  EXPECT_NE(st.message().find("COPIED"), std::string::npos) << st.ToString();
}

TEST_F(Qcow2Hostile, CraftedRefcountLayoutEndsTheFreeClusterScanWithinTheBudget) {
  // Every refcount table entry names one block that says every cluster is
  // in use: the free-cluster scan used to run for a minute while the block
  // cache grew without bound.
  Sh("qemu-img create -q -f qcow2 img.qcow2 4M");
  auto f = File("img.qcow2");
  std::fill(f.begin() + kRefBlock, f.begin() + kRefBlock + 0x10000, 0xff);
  for (uint64_t i = 0; i < 0x10000 / 8; ++i) StoreBE64(&f[kRefTable + 8 * i], kRefBlock);
  WriteHostFile(P("img.qcow2"), f);
  auto budget = std::make_shared<CacheBudget>(1 << 20);
  Qcow2Options options;
  options.budget = budget;
  auto w = OpenWritable("img.qcow2", nullptr, options);
  ASSERT_TRUE(w.ok());
  ASSERT_OK(w->image->BeginWrites());
  budget->ResetPeak();
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<uint8_t> p(4096, 1);
  Status st = w->image->Write(0, p.data(), p.size());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  EXPECT_EQ(st.code(), Code::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("past the end of the file"), std::string::npos) << st.ToString();
  // The block cache stays within its quarter of the budget (plus the
  // refcount table and L1, charged too).
  EXPECT_LE(budget->peak(), budget->limit() / 4 + 0x10000 + 8 + (0x10000 + kCacheEntryOverhead));
}

TEST(Qcow2HostileMap, SnapshotClaimingAHugeDiskMapsItsUnallocatedTailAtOnce) {
  // A snapshot may record any disk size up to 2^31 L1 entries; its
  // unallocated tail used to be walked one L1 entry at a time (2^31 steps
  // with 512-byte clusters) for every SEEK_DATA or st_blocks.
  MemImage m(9, 3, 1 << 20);
  const uint64_t table = m.Cluster(64), snap_l1 = m.Cluster(65);
  const uint64_t huge = ((uint64_t{1} << 31) - 1) << 15;  // 2^31-1 L1 entries of 32 KiB
  m.Be32(kOffNbSnapshots, 1);
  m.Be64(kOffSnapshotsOffset, table);
  m.Be64(table + 0, snap_l1);  // l1_table_offset
  m.Be32(table + 8, 1);        // l1_size
  m.Be16(table + 12, 1);       // id_str_size
  m.Be16(table + 14, 1);       // name_size
  m.Be32(table + 36, 16);      // extra_data_size
  m.Be64(table + 40, 0);       // vm_state_size_large
  m.Be64(table + 48, huge);    // disk_size
  m.Bytes(table + 56, {'1', 's'});
  m.Be64(snap_l1, 0);
  m.Grow(m.Cluster(66));
  auto img = m.Open();
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  auto snap = (*img)->OpenSnapshot("1");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  ASSERT_EQ((*snap)->size(), huge);
  const auto t0 = std::chrono::steady_clock::now();
  auto bs = (*snap)->GetBlockStatus(4096, huge - 4096);
  ASSERT_TRUE(bs.ok()) << bs.status().ToString();
  EXPECT_EQ(bs->kind, Allocation::kUnallocated);
  EXPECT_EQ(bs->length, huge - 4096);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
}

}  // namespace
}  // namespace kvmfs::test
