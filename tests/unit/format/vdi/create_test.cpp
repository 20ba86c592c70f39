// VdiDriver::Create against `qemu-img create -f vdi`: the same bytes but the
// two random UUIDs, then written through kvmfs and judged by qemu-img.
#include <gtest/gtest.h>

#include "../create_oracle.h"
#include "base/endian.h"

namespace kvmfs {
namespace {

using test::ByteRange;

constexpr uint64_t kMiB = 1 << 20;
// uuid_image and uuid_last_snap: random in QEMU's images too.
const std::vector<ByteRange> kRandom = {{392, 32}};

class VdiCreateTest : public test::CreateOracleTest {};

TEST_F(VdiCreateTest, SameBytesAsQemuImgCreate) {
  for (uint64_t size : {uint64_t{0}, uint64_t{1}, uint64_t{512}, kMiB, 10 * kMiB + 1, 128 * kMiB - 512,
                        uint64_t{1} << 30, uint64_t{1} << 40}) {
    SCOPED_TRACE(size);
    ASSERT_TRUE(KvmfsCreate("vdi", "k.vdi", size).ok());
    Sh("qemu-img create -q -f vdi q.vdi " + std::to_string(size));
    ExpectSameFile("k.vdi", "q.vdi", kRandom);
    ExpectInfo("k.vdi", "vdi", (size + 511) / 512 * 512);
    ExpectCheckClean("k.vdi", "vdi");
  }
}

TEST_F(VdiCreateTest, UuidsAreRandomVersion4) {
  ASSERT_TRUE(KvmfsCreate("vdi", "a.vdi", kMiB).ok());
  ASSERT_TRUE(KvmfsCreate("vdi", "b.vdi", kMiB).ok());
  auto a = test::ReadFileBytes(P("a.vdi"));
  auto b = test::ReadFileBytes(P("b.vdi"));
  EXPECT_FALSE(std::equal(a.begin() + 392, a.begin() + 408, b.begin() + 392));
  EXPECT_FALSE(std::equal(a.begin() + 392, a.begin() + 408, a.begin() + 408));
  // Stored with data3 little-endian: its version nibble is in byte 7.
  EXPECT_EQ(a[392 + 7] >> 4, 4);
  EXPECT_EQ(a[392 + 8] >> 6, 2);
}

TEST_F(VdiCreateTest, WrittenImagesAreWhatQemuReads) {
  for (uint64_t size : {uint64_t{512}, 3 * kMiB + 4096, 9 * kMiB}) {
    SCOPED_TRACE(size);
    ASSERT_TRUE(KvmfsCreate("vdi", "w.vdi", size).ok());
    WriteReadCompare("w.vdi", "vdi", size, kMiB);
    ExpectCheckClean("w.vdi", "vdi");
  }
}

TEST_F(VdiCreateTest, RefusesWhatQemuRefuses) {
  const uint64_t max = uint64_t{0x1fffff80} << 20;  // QEMU's VDI_DISK_SIZE_MAX
  Status st = KvmfsCreate("vdi", "big.vdi", max + 1);
  EXPECT_EQ(st.code(), Status::Code::kTooLarge) << st.ToString();
  EXPECT_EQ(test::ReadFileBytes(P("big.vdi")).size(), 0u);
  ExpectNoBackingFiles("vdi", "vdi");
}

}  // namespace
}  // namespace kvmfs
