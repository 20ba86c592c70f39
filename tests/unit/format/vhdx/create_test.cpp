// VhdxDriver::Create against `qemu-img create -f vhdx`: the same bytes but
// what QEMU makes random (header sequence numbers and GUIDs, so the header
// checksums; the page 83 GUID) and the creator string; then written through
// kvmfs and judged by qemu-img.
#include <gtest/gtest.h>

#include "../create_oracle.h"
#include "base/endian.h"

namespace kvmfs {
namespace {

using test::ByteRange;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

class VhdxCreateTest : public test::CreateOracleTest {
 public:
  void ExpectLikeQemu(uint64_t size) {
    SCOPED_TRACE(size);
    ASSERT_TRUE(KvmfsCreate("vhdx", "k.vhdx", size).ok());
    Sh("qemu-img create -q -f vhdx q.vhdx " + std::to_string(size));
    const std::vector<uint8_t> q = test::ReadFileBytes(P("q.vhdx"));
    const std::vector<uint8_t> k = test::ReadFileBytes(P("k.vhdx"));
    ASSERT_EQ(k.size(), q.size());
    // The two headers: checksum, sequence, file and data write GUIDs.
    std::vector<ByteRange> skip = {{8, 64 * 1024 - 8}, {64 * 1024 + 4, 44}, {128 * 1024 + 4, 44}};
    // The page 83 GUID: in the metadata region the region table names.
    const uint64_t metadata = LoadLE64(&q[192 * 1024 + 48 + 16]);
    skip.push_back({metadata + 64 * 1024 + 16, 16});
    ExpectSameFile("k.vhdx", "q.vhdx", skip);
    // Header 2 is current: its sequence follows header 1's.
    EXPECT_EQ(LoadLE64(&k[128 * 1024 + 8]), LoadLE64(&k[64 * 1024 + 8]) + 1);
    ExpectInfo("k.vhdx", "vhdx", (size + 511) / 512 * 512);
    ExpectCheckClean("k.vhdx", "vhdx");
  }
};

TEST_F(VhdxCreateTest, SameBytesAsQemuImgCreate) {
  for (uint64_t size : {uint64_t{1}, uint64_t{512}, 8 * kMiB, 64 * kMiB + 512, kGiB, kGiB + 512,
                        100 * kGiB + 512, uint64_t{3} << 40})
    ExpectLikeQemu(size);
}

TEST_F(VhdxCreateTest, SizeZeroAsQemu) {
  // QEMU's 32-bit BAT count wraps: a 64 MiB BAT and a 71 MiB file.
  ExpectLikeQemu(0);
}

TEST_F(VhdxCreateTest, WrittenImagesAreWhatQemuReads) {
  for (uint64_t size : {uint64_t{512}, 3 * kMiB + 4096, 20 * kMiB}) {
    SCOPED_TRACE(size);
    ASSERT_TRUE(KvmfsCreate("vhdx", "w.vhdx", size).ok());
    WriteReadCompare("w.vhdx", "vhdx", size, 8 * kMiB);
    ExpectCheckClean("w.vhdx", "vhdx");
  }
}

TEST_F(VhdxCreateTest, RefusesWhatQemuRefuses) {
  Status st = KvmfsCreate("vhdx", "big.vhdx", (uint64_t{64} << 40) + 512);
  EXPECT_EQ(st.code(), Status::Code::kTooLarge) << st.ToString();
  EXPECT_EQ(test::ReadFileBytes(P("big.vhdx")).size(), 0u);
  ExpectNoBackingFiles("vhdx", "vhdx");
}

}  // namespace
}  // namespace kvmfs
