// Crash safety of VHD writes (QEMU's order: bitmap, footer, BAT entry, each
// synced, then the data): the device fails at every n-th write and the
// writes not yet flushed are lost but for an ordered prefix. Afterwards kvmfs
// and QEMU read the same disk, every sector of it old or new, none garbage.
#include <random>

#include "tests/unit/format/vpc/qemu_util.h"

namespace kvmfs {
namespace {

using test::ReadFileBytes;

class VpcCrash : public test::QemuDirTest {
 public:
  static constexpr uint64_t kSize = 16u << 20;
  struct W {
    uint64_t off, len;
    uint8_t fill;
  };
  // New blocks, in-place writes, a write across two blocks; none overlapping.
  const std::vector<W> writes_ = {{5u << 20, 4096, 0x51},          {(1u << 20) + 512, 8192, 0x52},
                                  {(8u << 20) - 1024, 2048, 0x53}, {12u << 20, 65536, 0x54},
                                  {(15u << 20) + 7168, 512, 0x55},  {(2u << 20) + 100, 300, 0x56}};

  void Prepare() {
    Sh("qemu-img create -q -f vpc -o force_size=on pristine.vhd 16M");
    Io("pristine.vhd", {"write -P 0x11 1M 2M"}, "vpc");
    Sh("qemu-img convert -f vpc -O raw pristine.vhd old.raw");
    old_ = ReadFileBytes(P("old.raw"));
    new_ = old_;
    for (const W& w : writes_) std::fill(new_.begin() + w.off, new_.begin() + w.off + w.len, w.fill);
  }

  // Runs the writes with `arm` set; returns the backend writes they issued.
  uint64_t Run(const std::function<void(FaultInjector&)>& arm, uint64_t keep,
               const std::string& what) {
    Sh("cp pristine.vhd work.vhd");
    auto faults = std::make_shared<FaultInjector>();
    faults->SetJournal(true);
    auto local = OpenLocalFile(P("work.vhd"), true);
    EXPECT_TRUE(local.ok());
    if (!local.ok()) return 0;
    auto file = std::shared_ptr<Backend>(NewFaultBackend(std::move(local).value(), faults));
    uint64_t issued = 0;
    {
      OpenContext ctx;
      ctx.name = P("work.vhd");
      ctx.writable = true;
      auto image = FindFormat("vpc")->Open(file, ctx);
      EXPECT_TRUE(image.ok()) << image.status().ToString();
      if (!image.ok()) return 0;
      EXPECT_TRUE((*image)->BeginWrites().ok());
      const uint64_t w0 = faults->writes();
      arm(*faults);
      for (const W& w : writes_) {
        std::vector<uint8_t> buf(w.len, w.fill);
        if (!(*image)->Write(w.off, buf.data(), buf.size()).ok()) break;
      }
      issued = faults->writes() - w0;
    }
    EXPECT_TRUE(DropUnsynced(*file, keep).ok());
    Verify(what);
    return issued;
  }

  void Verify(const std::string& what) {
    SCOPED_TRACE(what);
    std::vector<uint8_t> mine(kSize);
    {
      Chain chain = Open("work.vhd", true);
      ASSERT_FALSE(chain.layers.empty());
      ASSERT_TRUE(chain.top()->Read(0, mine.data(), mine.size()).ok());
    }
    Sh("qemu-img convert -f vpc -O raw work.vhd got.raw");
    const auto got = ReadFileBytes(P("got.raw"));
    ASSERT_EQ(got.size(), old_.size());
    EXPECT_TRUE(got == mine) << "kvmfs and QEMU read the crashed image differently";
    for (uint64_t s = 0; s < kSize; s += 512) {
      const bool is_old = std::equal(got.begin() + s, got.begin() + s + 512, old_.begin() + s);
      const bool is_new = std::equal(got.begin() + s, got.begin() + s + 512, new_.begin() + s);
      ASSERT_TRUE(is_old || is_new) << "sector at " << s << " is neither old nor new";
    }
  }

  std::vector<uint8_t> old_, new_;
};

TEST_F(VpcCrash, EveryCrashPointLeavesOldOrNewDataThatQemuAndKvmfsAgreeOn) {
  Prepare();
  const uint64_t total = Run([](FaultInjector&) {}, 0, "no fault");
  ASSERT_GT(total, 20u);
  std::mt19937 rng(3);
  for (uint64_t k = 1; k <= total; k += 1 + total / 25) {
    Run([&](FaultInjector& f) { f.FailNthWrite(k, EIO); }, rng() % 4,
        "crash at write " + std::to_string(k) + "/" + std::to_string(total));
    if (HasFailure()) return;
  }
}

}  // namespace
}  // namespace kvmfs
