// VmdkDriver::Create against `qemu-img create -f vmdk` (monolithicSparse):
// the same bytes but the random CID, with and without a parent; then written
// through kvmfs and judged by qemu-img.
#include <gtest/gtest.h>

#include "../create_oracle.h"

namespace kvmfs {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

class VmdkCreateTest : public test::CreateOracleTest {
 public:
  // The descriptor with its CID line (random) taken out.
  std::string DescriptorWithoutCid(const std::string& name) {
    std::vector<uint8_t> all = test::ReadFileBytes(P(name));
    std::string d(all.begin() + 512, all.begin() + 512 * 21);
    d.resize(d.find('\0') == std::string::npos ? d.size() : d.find('\0'));
    const size_t at = d.find("\nCID=");
    EXPECT_NE(at, std::string::npos);
    if (at != std::string::npos) d.erase(at, d.find('\n', at + 1) - at);
    return d;
  }
  // x.vmdk made by qemu-img (kept as q.vmdk) and by kvmfs: everything but
  // the descriptor byte for byte, the descriptor but its CID line.
  void ExpectLikeQemu(const CreateOptions& o, const std::string& qemu_args) {
    Sh("rm -f x.vmdk && qemu-img create -q -f vmdk " + qemu_args + " x.vmdk " + std::to_string(o.size) +
       " && mv x.vmdk q.vmdk");
    ASSERT_TRUE(KvmfsCreate("vmdk", "x.vmdk", o).ok());
    ExpectSameFile("x.vmdk", "q.vmdk", {{512, 20 * 512}});
    EXPECT_EQ(DescriptorWithoutCid("x.vmdk"), DescriptorWithoutCid("q.vmdk"));
    ExpectInfo("x.vmdk", "vmdk", (o.size + 511) / 512 * 512);
    ExpectCheckClean("x.vmdk", "vmdk");
  }
};

TEST_F(VmdkCreateTest, SameBytesAsQemuImgCreate) {
  for (uint64_t size : {uint64_t{1}, uint64_t{512}, kMiB + 512, 10 * kMiB, 32 * kMiB + 4096, kGiB,
                        100 * kGiB}) {
    SCOPED_TRACE(size);
    CreateOptions o;
    o.size = size;
    ExpectLikeQemu(o, "");
  }
}

TEST_F(VmdkCreateTest, OverlaysRecordTheParentAndItsCid) {
  Sh("qemu-img create -q -f vmdk base.vmdk 6M");
  Io("base.vmdk", {"write -P 0x41 0 200k", "write -P 0x42 5M 70000"}, "vmdk");
  Chain base = Open("base.vmdk");
  ASSERT_FALSE(base.layers.empty());
  CreateOptions o;
  o.size = 6 * kMiB;
  o.backing_file = "base.vmdk";
  o.backing_format = "vmdk";
  o.backing_image = base.top().get();
  ExpectLikeQemu(o, "-b base.vmdk -F vmdk");
  auto info = nlohmann::json::parse(Out("qemu-img info --output=json x.vmdk"));
  EXPECT_EQ(info["backing-filename"].get<std::string>(), "base.vmdk");
  Sh("qemu-img convert -O raw base.vmdk base.raw");
  WriteReadCompare("x.vmdk", "vmdk", 6 * kMiB, 64 * 1024, test::ReadFileBytes(P("base.raw")));
  ExpectCheckClean("x.vmdk", "vmdk");
}

TEST_F(VmdkCreateTest, WrittenImagesAreWhatQemuReads) {
  for (uint64_t size : {uint64_t{512}, 3 * kMiB + 4096, 40 * kMiB}) {
    SCOPED_TRACE(size);
    ASSERT_TRUE(KvmfsCreate("vmdk", "w.vmdk", size).ok());
    WriteReadCompare("w.vmdk", "vmdk", size, 64 * 1024);
    ExpectCheckClean("w.vmdk", "vmdk");
  }
}

TEST_F(VmdkCreateTest, RefusesWhatQemuRefusesOrCannotOpen) {
  EXPECT_EQ(KvmfsCreate("vmdk", "zero.vmdk", 0).code(), Status::Code::kInvalidArgument);
  Status st = KvmfsCreate("vmdk", "big.vmdk", uint64_t{256} << 40);
  EXPECT_EQ(st.code(), Status::Code::kTooLarge) << st.ToString();
  EXPECT_EQ(test::ReadFileBytes(P("big.vmdk")).size(), 0u);
  Sh("qemu-img create -q -f qcow2 base.qcow2 1M");
  Chain base = Open("base.qcow2");
  CreateOptions o;
  o.size = kMiB;
  o.backing_file = "base.qcow2";
  o.backing_format = "qcow2";
  o.backing_image = base.top().get();
  EXPECT_EQ(KvmfsCreate("vmdk", "o.vmdk", o).code(), Status::Code::kNotSupported);
  o.backing_format = "vmdk";
  o.backing_image = nullptr;
  EXPECT_EQ(KvmfsCreate("vmdk", "o.vmdk", o).code(), Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace kvmfs
