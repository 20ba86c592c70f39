// Crash safety of VHDX writes (QEMU's order: data, flush, BAT entry through
// the log): every crash point leaves old or new data that kvmfs (replaying a
// pending log in memory) and QEMU (`qemu-img check -r all`) agree on, and
// nothing else touched (crash_replay.h).
#include "tests/unit/format/vpc/crash_replay.h"

namespace kvmfs {
namespace {

class VhdxCrash : public test::CrashReplayTest {
 public:
  VhdxCrash() : CrashReplayTest("vhdx", "vhdx", "block_size=1M") {}
};

TEST_F(VhdxCrash, EveryCrashPointLeavesOldOrNewDataThatQemuAndKvmfsAgreeOn) { CrashEverywhere(); }

}  // namespace
}  // namespace kvmfs
