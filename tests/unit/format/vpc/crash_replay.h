// Crash safety of the VHD and VHDX writers, one test for both: the device
// fails at every n-th write and the writes not yet flushed are lost but for
// an ordered prefix (FaultInjector's journal). Afterwards kvmfs and QEMU read
// the same disk, every sector of it old or new, none garbage, and for VHDX
// qemu-img check is clean.
#pragma once

#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "tests/unit/format/vpc/qemu_util.h"

namespace kvmfs::test {

class CrashReplayTest : public QemuDirTest {
 public:
  static constexpr uint64_t kSize = 16u << 20;
  struct W {
    uint64_t off, len;
    uint8_t fill;
  };
  // New blocks (for VHDX, the ZERO and the not-present kind), in-place
  // writes, a write across two blocks; none overlapping.
  const std::vector<W> writes_ = {{5u << 20, 4096, 0x51},          {(1u << 20) + 512, 8192, 0x52},
                                  {(8u << 20) - 1024, 2048, 0x53}, {12u << 20, 65536, 0x54},
                                  {(15u << 20) + 7168, 512, 0x55},  {(2u << 20) + 100, 300, 0x56}};

  // The format, the file suffix, and qemu-img create's -o for a 16 MiB disk.
  CrashReplayTest(std::string format, std::string suffix, std::string create_options)
      : format_(std::move(format)), work_("work." + suffix), pristine_("pristine." + suffix),
        create_options_(std::move(create_options)) {}

  void Prepare() {
    Sh("qemu-img create -q -f " + format_ + " -o " + create_options_ + " " + pristine_ + " 16M");
    Io(pristine_, {"write -P 0x11 1M 2M"}, format_);
    Sh("qemu-img convert -f " + format_ + " -O raw " + pristine_ + " old.raw");
    old_ = ReadFileBytes(P("old.raw"));
    new_ = old_;
    for (const W& w : writes_) std::fill(new_.begin() + w.off, new_.begin() + w.off + w.len, w.fill);
  }

  // Runs the writes with `arm` set; returns the backend writes they issued.
  uint64_t Run(const std::function<void(FaultInjector&)>& arm, uint64_t keep,
               const std::string& what) {
    Sh("cp " + pristine_ + " " + work_);
    auto faults = std::make_shared<FaultInjector>();
    faults->SetJournal(true);
    auto local = OpenLocalFile(P(work_), true);
    EXPECT_TRUE(local.ok());
    if (!local.ok()) return 0;
    auto file = std::shared_ptr<Backend>(NewFaultBackend(std::move(local).value(), faults));
    uint64_t issued = 0;
    {
      OpenContext ctx;
      ctx.name = P(work_);
      ctx.writable = true;
      auto image = FindFormat(format_)->Open(file, ctx);
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
    // kvmfs, as a writable open reads it before any writer (a VHDX log
    // replayed in memory).
    std::vector<uint8_t> mine(kSize);
    {
      Chain chain = Open(work_, true);
      ASSERT_FALSE(chain.layers.empty());
      ASSERT_TRUE(chain.top()->Read(0, mine.data(), mine.size()).ok());
    }
    if (format_ == "vhdx") {  // QEMU replays a dirty log only when repairing
      auto out = ShOut("qemu-img check -r all -f vhdx " + work_, false);
      ASSERT_TRUE(out.has_value()) << "qemu-img check -r all failed";
    }
    Sh("qemu-img convert -f " + format_ + " -O raw " + work_ + " got.raw");
    const auto got = ReadFileBytes(P("got.raw"));
    ASSERT_EQ(got.size(), old_.size());
    EXPECT_TRUE(got == mine) << "kvmfs and QEMU read the crashed image differently";
    for (uint64_t s = 0; s < kSize; s += 512) {
      const bool is_old = std::equal(got.begin() + s, got.begin() + s + 512, old_.begin() + s);
      const bool is_new = std::equal(got.begin() + s, got.begin() + s + 512, new_.begin() + s);
      ASSERT_TRUE(is_old || is_new) << "sector at " << s << " is neither old nor new";
    }
    if (format_ == "vhdx") Sh("qemu-img check -f vhdx " + work_);
  }

  // Runs the writes without a fault, then with the n-th backend write
  // failing for ~25 values of n over all of them, each with a random
  // ordered prefix of the unsynced writes kept.
  void CrashEverywhere() {
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

  const std::string format_, work_, pristine_, create_options_;
  std::vector<uint8_t> old_, new_;
};

}  // namespace kvmfs::test
