// VpcDriver::Create against `qemu-img create -f vpc`: the same bytes but the
// footers' timestamp, checksum and random UUID, for sizes that take each of
// the CHS rules and the maximal geometry; then written through kvmfs and
// judged by qemu-img.
#include <gtest/gtest.h>

#include "../create_oracle.h"

namespace kvmfs {
namespace {

using test::ByteRange;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// Timestamp (24), checksum (64) and UUID (68..83) of the footer at `at`.
std::vector<ByteRange> FooterTimeAndId(uint64_t at) { return {{at + 24, 4}, {at + 64, 20}}; }

class VpcCreateTest : public test::CreateOracleTest {
 public:
  void ExpectLikeQemu(uint64_t size) {
    SCOPED_TRACE(size);
    ASSERT_TRUE(KvmfsCreate("vpc", "k.vhd", size).ok());
    Sh("qemu-img create -q -f vpc q.vhd " + std::to_string(size));
    const uint64_t len = test::ReadFileBytes(P("q.vhd")).size();
    std::vector<ByteRange> skip = FooterTimeAndId(0);
    for (ByteRange r : FooterTimeAndId(len - 512)) skip.push_back(r);
    ExpectSameFile("k.vhd", "q.vhd", skip);
    auto want = nlohmann::json::parse(Out("qemu-img info --output=json -f vpc q.vhd"));
    ExpectInfo("k.vhd", "vpc", want["virtual-size"].get<uint64_t>());
    ExpectCheckClean("k.vhd", "vpc", false);  // qemu-img checks no VHD (exit 63)
  }
};

TEST_F(VpcCreateTest, SameBytesAsQemuImgCreate) {
  for (uint64_t size : {uint64_t{0}, uint64_t{1}, uint64_t{512}, kMiB, 10 * kMiB, 63 * kMiB + 512,
                        100 * kMiB, kGiB + 1, 4 * kGiB, 128 * kGiB, 2040 * kGiB})
    ExpectLikeQemu(size);
}

TEST_F(VpcCreateTest, WrittenImagesAreWhatQemuReads) {
  for (uint64_t size : {3 * kMiB, 9 * kMiB + 512}) {
    SCOPED_TRACE(size);
    ASSERT_TRUE(KvmfsCreate("vpc", "w.vhd", size).ok());
    auto info = nlohmann::json::parse(Out("qemu-img info --output=json -f vpc w.vhd"));
    WriteReadCompare("w.vhd", "vpc", info["virtual-size"].get<uint64_t>(), 2 * kMiB);
  }
}

TEST_F(VpcCreateTest, RefusesWhatQemuRefuses) {
  Status st = KvmfsCreate("vpc", "big.vhd", 2040 * kGiB + 512);
  EXPECT_EQ(st.code(), Status::Code::kTooLarge) << st.ToString();
  EXPECT_EQ(test::ReadFileBytes(P("big.vhd")).size(), 0u);
  ExpectNoBackingFiles("vpc", "vhd");
}

}  // namespace
}  // namespace kvmfs
