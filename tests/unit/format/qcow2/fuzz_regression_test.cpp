// Regression tests for what the libFuzzer targets of tests/fuzz/ found in
// the qcow2 engine (issue 15; README "Fuzzing"). Each test is named after the
// behaviour; images are made by qemu-img at test time and damaged here, and
// QEMU's answer on the same image is the expected one.
#include <cstring>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"
#include "write_helpers.h"

namespace kvmfs::test {
namespace {

using Code = Status::Code;

#define ASSERT_OK(expr)                                     \
  do {                                                      \
    ::kvmfs::Status _s = (expr);                            \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s.ToString(); \
  } while (0)

class Qcow2FuzzRegression : public WriteTest {
 protected:
  std::vector<uint8_t> File(const std::string& name) { return ReadHostFile(P(name)); }
  // The L2 table of L1 entry 0 of a fresh qemu-img image (L1 at 0x30000).
  uint64_t L2Of(const std::vector<uint8_t>& f) { return LoadBE64(&f[0x30000]) & qcow2::kL1OffsetMask; }
};

// qcow2_refcount target: an extended-L2 entry whose bitmap marks a
// subcluster both allocated and zero. Map() refuses to read it; the write
// path took it as a COPIED cluster and wrote in place, acknowledging a write
// that then did not read back. QEMU refuses the write with EIO and marks the
// image corrupt; so does kvmfs now, before writing anything.
TEST_F(Qcow2FuzzRegression, WriteToSubclusterBothAllocatedAndZeroIsRefusedAndMarksCorrupt) {
  Sh("qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 4M");
  Sh("qemu-io -c 'write -P 0x21 0 64k' img.qcow2 >/dev/null");
  auto f = File("img.qcow2");
  const uint64_t l2 = L2Of(f);
  ASSERT_NE(l2, 0u);
  // Subcluster 1: allocated (bit 1) and zero (bit 33).
  StoreBE64(&f[l2 + 8], 0xffffffffull | (1ull << 33));
  WriteHostFile(P("img.qcow2"), f);
  const uint64_t data = LoadBE64(&f[l2]) & qcow2::kL2OffsetMask;
  ASSERT_NE(data, 0u);
  {
    auto w = OpenWritable("img.qcow2");
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    ASSERT_OK(w->image->BeginWrites());
    std::vector<uint8_t> p(4093, 0x5a);
    Status st = w->image->Write(3, p.data(), p.size());  // subcluster 0 only
    EXPECT_EQ(st.code(), Code::kCorruption) << st.ToString();
    EXPECT_NE(st.message().find("both allocated and zero"), std::string::npos) << st.ToString();
    EXPECT_FALSE(w->image->writable());
  }
  auto after = File("img.qcow2");
  EXPECT_EQ(after[79] & 2, 2) << "corrupt bit";
  EXPECT_EQ(after[data + 3], 0x21) << "the guest data was written";
  std::string out;
  EXPECT_EQ(RunCmd("cd " + dir_ + " && qemu-img info img.qcow2", &out), 0) << out;
  EXPECT_NE(out.find("corrupt: true"), std::string::npos) << out;
}

// qcow2_write target: entries past the virtual size, which QEMU never
// leaves (a shrink clears them), became the guest's after a grow: one past
// the end of the file made the grown part unreadable ("Data cluster offset
// 0x514649fb000000 is past the end"), one onto the L1 table would have taken
// a write in place. The grow clears them (not releasing what they name: it
// was never the guest's), and the image checks clean.
TEST_F(Qcow2FuzzRegression, GrowClearsMappingsLeftPastTheOldSize) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 1M");
  Sh("qemu-io -c 'write -P 0x21 0 64k' img.qcow2 >/dev/null");
  auto f = File("img.qcow2");
  const uint64_t l2 = L2Of(f);
  ASSERT_NE(l2, 0u);
  StoreBE64(&f[l2 + 8 * 32], qcow2::kOflagCopied | 0x30000);    // guest 2 MiB: the L1 table
  StoreBE64(&f[l2 + 8 * 40], 0x00514649fb000000ull);            // guest 2.5 MiB: past the end
  StoreBE64(&f[0x30000 + 8 * 1], qcow2::kOflagCopied | l2);     // guest 512 MiB..: a table again
  WriteHostFile(P("img.qcow2"), f);
  {
    auto w = OpenWritable("img.qcow2");
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    ASSERT_OK(w->image->BeginWrites());
    ASSERT_OK(w->image->Resize(600u << 20));
    for (uint64_t at : {1ull << 20, 2ull << 20, 5ull << 19, 512ull << 20}) {
      std::vector<uint8_t> got(1 << 20, 0xee);
      ASSERT_OK(w->image->Read(at, got.data(), got.size()));
      EXPECT_EQ(std::count(got.begin(), got.end(), 0), static_cast<ptrdiff_t>(got.size())) << at;
    }
    std::vector<uint8_t> p(4096, 0x5a);
    ASSERT_OK(w->image->Write(2u << 20, p.data(), p.size()));
    ASSERT_OK(w->image->EndWrites());
  }
  std::string out;
  EXPECT_EQ(RunCmd("cd " + dir_ + " && qemu-img check img.qcow2 2>&1", &out), 0) << out;
  Sh("qemu-img create -q -f raw want.raw 600M");
  Sh("qemu-io -f raw -c 'write -P 0x21 0 64k' -c 'write -P 0x5a 2M 4k' want.raw >/dev/null");
  EXPECT_EQ(RunCmd("cd " + dir_ + " && qemu-img compare -f qcow2 -F raw img.qcow2 want.raw 2>&1", &out), 0)
      << out;
}

// qcow2_write target: with an external data file, QEMU puts each data
// cluster at its own guest offset, and so does an allocating write here. An
// entry that mapped a guest cluster onto another one's offset was read and
// written in place; the next write of the session that allocated the other
// cluster overwrote what the first one read. QEMU refuses such an entry with
// EIO on read and write ("does not match guest cluster offset") and marks
// the image corrupt; so does kvmfs now, before writing anything, and the
// rest of the image stays readable and writable as in QEMU.
TEST_F(Qcow2FuzzRegression, DataFileClusterOffItsGuestOffsetIsRefusedAsQemuRefusesIt) {
  Sh("qemu-img create -q -f qcow2 -o data_file=img.data img.qcow2 1M");
  Sh("qemu-io -c 'write -P 0x21 0 64k' -c 'write -P 0x22 128k 64k' img.qcow2 >/dev/null");
  auto f = File("img.qcow2");
  const uint64_t l2 = L2Of(f);
  ASSERT_NE(l2, 0u);
  ASSERT_EQ(LoadBE64(&f[l2 + 8 * 2]) & qcow2::kL2OffsetMask, 128u << 10);  // as QEMU maps it
  StoreBE64(&f[l2 + 8 * 3], qcow2::kOflagCopied | (128u << 10));  // guest 192k -> guest 128k's
  WriteHostFile(P("img.qcow2"), f);
  std::string out;
  ASSERT_NE(RunCmd("cd " + dir_ + " && qemu-io -r -c 'read 192k 4k' img.qcow2 2>&1", &out), 0) << out;
  ASSERT_NE(out.find("does not match guest cluster offset"), std::string::npos) << out;
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_OK(w->image->BeginWrites());
  std::vector<uint8_t> got(4096);
  Status st = w->image->Read(192 << 10, got.data(), got.size());
  EXPECT_EQ(st.code(), Code::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("does not match guest cluster offset"), std::string::npos)
      << st.ToString();
  std::vector<uint8_t> p(4096, 0x5a);
  st = w->image->Write(192 << 10, p.data(), p.size());
  EXPECT_EQ(st.code(), Code::kCorruption) << st.ToString();
  ASSERT_OK(w->image->Read(128 << 10, got.data(), got.size()));
  EXPECT_EQ(std::count(got.begin(), got.end(), 0x22), static_cast<ptrdiff_t>(got.size()));
}

}  // namespace
}  // namespace kvmfs::test
