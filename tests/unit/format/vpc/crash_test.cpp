// Crash safety of VHD writes (QEMU's order: bitmap, footer, BAT entry, each
// synced, then the data): every crash point leaves old or new data that
// kvmfs and QEMU agree on (crash_replay.h).
#include "tests/unit/format/vpc/crash_replay.h"

namespace kvmfs {
namespace {

class VpcCrash : public test::CrashReplayTest {
 public:
  VpcCrash() : CrashReplayTest("vpc", "vhd", "force_size=on") {}
};

TEST_F(VpcCrash, EveryCrashPointLeavesOldOrNewDataThatQemuAndKvmfsAgreeOn) { CrashEverywhere(); }

}  // namespace
}  // namespace kvmfs
