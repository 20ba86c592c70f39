// Crash safety of the qcow2 write engine with the fault-injecting backend:
// every write (and flush) of a workload fails in turn with EIO and ENOSPC,
// and crashes lose the writes not yet flushed; afterwards `qemu-img check`
// finds at worst leaks and everything flushed before is intact.
#include <cerrno>
#include <functional>

#include "write_helpers.h"

namespace kvmfs::test {
namespace {

constexpr uint64_t kSize = 16 << 20;
constexpr uint64_t kHalf = kSize / 2;

class Qcow2Fault : public WriteTest {
 public:
  void Prepare(const std::string& create_opts) {
    Sh("qemu-img create -q -f qcow2 " + create_opts + " pristine.qcow2 16M");
    Sh("qemu-io -c 'write -P 0x31 0 1M' -c 'write -P 0x32 9M 1M' pristine.qcow2 >/dev/null");
    Sh("qemu-img snapshot -c old pristine.qcow2");
    base_ = QemuRaw("pristine.qcow2");
  }

  // Phase 1: writes in the first half, then Flush. Updates `model`.
  Status Phase1(Image& img, std::vector<uint8_t>& model) {
    std::mt19937_64 rng(1);
    for (int i = 0; i < 20; ++i) {
      const uint64_t len = 1 + rng() % 200000;
      const uint64_t off = rng() % (kHalf - len);
      std::vector<uint8_t> buf(len, static_cast<uint8_t>(0x40 + i));
      KVMFS_RETURN_IF_ERROR(img.Write(off, buf.data(), len));
      std::copy(buf.begin(), buf.end(), model.begin() + off);
    }
    return img.Flush();
  }

  // Phase 2: every kind of operation (snapshot create and delete too), in the
  // second half only; stops at the
  // first error. `touched` marks 512-byte sectors changed since the last
  // successful Flush; `model` follows every successful operation and
  // `durable` is the model at the last successful Flush.
  Status Phase2(Image& img, std::vector<uint8_t>& model, std::vector<uint8_t>& durable,
                std::vector<bool>& touched, int ops) {
    std::mt19937_64 rng(2);
    auto touch = [&](uint64_t off, uint64_t len) {
      for (uint64_t s = off / 512; s <= (off + len - 1) / 512; ++s) touched[s] = true;
    };
    for (int i = 0; i < ops; ++i) {
      const uint64_t len = 1 + rng() % 300000;
      const uint64_t off = kHalf + rng() % (kHalf - len);
      const int r = static_cast<int>(rng() % 10);
      if (i == 5) {
        KVMFS_RETURN_IF_ERROR(img.CreateSnapshot("new").status());
      } else if (i == 15) {
        for (const SnapshotInfo& s : img.Snapshots())
          if (s.name == "old") KVMFS_RETURN_IF_ERROR(img.DeleteSnapshot(s.id));
      } else if (r < 5) {
        std::vector<uint8_t> buf(len, static_cast<uint8_t>(0x80 + i));
        touch(off, len);
        KVMFS_RETURN_IF_ERROR(img.Write(off, buf.data(), len));
        std::copy(buf.begin(), buf.end(), model.begin() + off);
      } else if (r < 7) {
        touch(off, len);
        KVMFS_RETURN_IF_ERROR(img.WriteZeroes(off, len, r == 6));
        std::fill(model.begin() + off, model.begin() + off + len, 0);
      } else {
        KVMFS_RETURN_IF_ERROR(img.Flush());
        durable = model;
        std::fill(touched.begin(), touched.end(), false);
      }
    }
    KVMFS_RETURN_IF_ERROR(img.Flush());
    durable = model;
    std::fill(touched.begin(), touched.end(), false);
    return Status::OK();
  }

  // After a crash: check finds no corruption, and every byte that was
  // durable reads back (through kvmfs's reader and qemu-img).
  void VerifyAfterCrash(const std::vector<uint8_t>& durable, const std::vector<bool>& touched,
                        const std::string& what) {
    std::string out;
    const int rc = Check("work.qcow2", &out);
    ASSERT_TRUE(rc == 0 || rc == 3) << what << ": qemu-img check exit " << rc << "\n" << out;
    // Read back through kvmfs's own (read-only) reader: cheaper than a
    // qemu-img convert per crash; the model tests compare with qemu-img.
    std::vector<uint8_t> got;
    {
      auto file = OpenLocalFile(P("work.qcow2"), false);
      ASSERT_TRUE(file.ok()) << file.status().ToString();
      OpenContext ctx;
      ctx.name = P("work.qcow2");
      auto img = OpenQcow2(std::shared_ptr<Backend>(std::move(file).value()), ctx, {});
      ASSERT_TRUE(img.ok()) << what << ": " << img.status().ToString();
      got = ReadImage(**img, 0, (*img)->size());
    }
    ASSERT_EQ(got.size(), durable.size()) << what;
    for (uint64_t i = 0; i < got.size(); ++i)
      if (!touched[i / 512] && got[i] != durable[i])
        FAIL() << what << ": durable byte " << i << " is " << int(got[i]) << ", expected "
               << int(durable[i]);
    // QEMU can repair what is left and the image stays usable.
    if (rc == 3) {
      EXPECT_EQ(RunCmd("cd " + dir_ + " && qemu-img check -q -r leaks work.qcow2", &out), 0) << out;
    }
  }

  // Runs the workload with `arm` called after phase 1; returns how many
  // backend writes phase 2 issued.
  uint64_t RunOnce(const std::function<void(FaultInjector&)>& arm, bool journal, uint64_t keep,
                   const std::string& what) {
    Sh("cp pristine.qcow2 work.qcow2");
    auto faults = std::make_shared<FaultInjector>();
    faults->SetJournal(journal);
    std::vector<uint8_t> model = base_, durable;
    std::vector<bool> touched(kSize / 512, false);
    uint64_t phase2_writes = 0;
    {
      auto w = OpenWritable("work.qcow2", faults);
      EXPECT_TRUE(w.ok()) << w.status().ToString();
      if (!w.ok()) return 0;
      Image& img = *w->image;
      EXPECT_TRUE(img.BeginWrites().ok());
      Status st = Phase1(img, model);
      EXPECT_TRUE(st.ok()) << st.ToString();
      durable = model;
      const uint64_t w0 = faults->writes();
      arm(*faults);
      st = Phase2(img, model, durable, touched, 40);
      phase2_writes = faults->writes() - w0;
      if (!st.ok()) {
        EXPECT_TRUE(st.code() == Status::Code::kIOError || st.code() == Status::Code::kNoSpace)
            << what << ": " << st.ToString();
      }
      w->image.reset();  // the process dies: nothing more is written
      if (journal) {
        EXPECT_TRUE(DropUnsynced(*w->file, keep).ok());
      }
    }
    VerifyAfterCrash(durable, touched, what);
    return phase2_writes;
  }

  std::vector<uint8_t> base_;
};

TEST_F(Qcow2Fault, EveryFailedWriteLeavesAConsistentImage) {
  Prepare("-o cluster_size=4k");
  const uint64_t total = RunOnce([](FaultInjector&) {}, false, 0, "no fault");
  ASSERT_GT(total, 10u);
  const uint64_t step = std::max<uint64_t>(1, total * kRoundsDivisor / 12);
  for (int err : {EIO, ENOSPC})
    for (uint64_t k = 1 + step / 2; k <= total; k += step) {
      const std::string what = "write " + std::to_string(k) + "/" + std::to_string(total) +
                                (err == EIO ? " EIO" : " ENOSPC");
      RunOnce([&](FaultInjector& f) { f.FailNthWrite(k, err); }, false, 0, what);
      if (HasFatalFailure() || HasFailure()) return;
    }
}

TEST_F(Qcow2Fault, EveryFailedFlushLeavesAConsistentImage) {
  Prepare("-o cluster_size=16k,refcount_bits=8");
  for (uint64_t k = 1; k <= 24; k += 3 * kRoundsDivisor) {
    RunOnce([&](FaultInjector& f) { f.FailNthFlush(k, EIO); }, false, 0,
            "flush " + std::to_string(k));
    if (HasFailure()) return;
  }
}

TEST_F(Qcow2Fault, CrashesLosingUnflushedWritesLeaveAtWorstLeaks) {
  Prepare("-o cluster_size=4k");
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 14 / kRoundsDivisor; ++trial) {
    // Stop at a random write (the device dies), then lose every write
    // after the last flush but an ordered prefix of them.
    const uint64_t k = 1 + rng() % 400;
    const uint64_t keep = rng() % 60;
    RunOnce([&](FaultInjector& f) { f.FailNthWrite(k, EIO); }, true, keep,
            "crash at write " + std::to_string(k) + " keeping " + std::to_string(keep));
    if (HasFailure()) return;
  }
}

}  // namespace
}  // namespace kvmfs::test
