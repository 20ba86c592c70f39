// QcowDriver::Create against `qemu-img create -f qcow` (byte for byte: qcow
// holds nothing random), with and without a backing file; then written
// through kvmfs and judged by qemu-img.
#include <gtest/gtest.h>

#include "../create_oracle.h"

namespace kvmfs {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

class QcowCreateTest : public test::CreateOracleTest {};

TEST_F(QcowCreateTest, SameBytesAsQemuImgCreate) {
  for (uint64_t size : {uint64_t{1}, uint64_t{512}, kMiB, 10 * kMiB + 1, kGiB + 512, 100 * kGiB,
                        uint64_t{1} << 40}) {
    SCOPED_TRACE(size);
    ASSERT_TRUE(KvmfsCreate("qcow", "k.qcow", size).ok());
    Sh("qemu-img create -q -f qcow q.qcow " + std::to_string(size));
    ExpectSameFile("k.qcow", "q.qcow");
    ExpectInfo("k.qcow", "qcow", (size + 511) / 512 * 512);
    ExpectCheckClean("k.qcow", "qcow", false);  // qemu-img checks no qcow (exit 63)
  }
}

TEST_F(QcowCreateTest, OverlaysAreWhatQemuImgCreateMakes) {
  Sh("qemu-img create -q -f vmdk base.vmdk 5M");
  Io("base.vmdk", {"write -P 0x31 0 100k", "write -P 0x32 4M 70000"}, "vmdk");
  for (const std::string& backing :
       std::vector<std::string>{"base.vmdk", "./base.vmdk", "../some/where/" + std::string(300, 'n')}) {
    SCOPED_TRACE(backing);
    CreateOptions o;
    o.size = 5 * kMiB;
    o.backing_file = backing;
    o.backing_format = "vmdk";
    ASSERT_TRUE(KvmfsCreate("qcow", "k.qcow", o).ok());
    Sh("qemu-img create -q -u -f qcow -b '" + backing + "' -F vmdk q.qcow 5M");
    ExpectSameFile("k.qcow", "q.qcow");
  }
  CreateOptions o;
  o.size = 5 * kMiB;
  o.backing_file = "base.vmdk";
  o.backing_format = "vmdk";
  ASSERT_TRUE(KvmfsCreate("qcow", "over.qcow", o).ok());
  auto info = nlohmann::json::parse(Out("qemu-img info --output=json over.qcow"));
  EXPECT_EQ(info["backing-filename"].get<std::string>(), "base.vmdk");
  Sh("qemu-img convert -O raw base.vmdk base.raw");
  WriteReadCompare("over.qcow", "qcow", 5 * kMiB, 4096, test::ReadFileBytes(P("base.raw")));
}

TEST_F(QcowCreateTest, WrittenImagesAreWhatQemuReads) {
  for (uint64_t size : {uint64_t{512}, 3 * kMiB + 4096}) {
    SCOPED_TRACE(size);
    ASSERT_TRUE(KvmfsCreate("qcow", "w.qcow", size).ok());
    WriteReadCompare("w.qcow", "qcow", size, 4096);
  }
}

TEST_F(QcowCreateTest, RefusesWhatQemuRefusesOrCannotOpen) {
  Status st = KvmfsCreate("qcow", "zero.qcow", 0);
  EXPECT_EQ(st.code(), Status::Code::kInvalidArgument) << st.ToString();
  st = KvmfsCreate("qcow", "big.qcow", uint64_t{1} << 50);
  EXPECT_EQ(st.code(), Status::Code::kTooLarge) << st.ToString();
  EXPECT_EQ(test::ReadFileBytes(P("big.qcow")).size(), 0u);
  CreateOptions o;
  o.size = kMiB;
  o.backing_file = std::string(1024, 'a');
  EXPECT_EQ(KvmfsCreate("qcow", "long.qcow", o).code(), Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace kvmfs
