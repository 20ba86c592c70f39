// A fault-injecting Backend wrapper for tests (after leveldb's
// fault_injection_test): fails chosen writes and flushes with an errno and,
// with a journal, undoes the writes a crash would have lost.
#include <algorithm>
#include <cerrno>
#include <mutex>

#include "kvmfs/backend.h"

namespace kvmfs {

struct FaultInjector::State {
  std::mutex mu;
  uint64_t writes = 0;   // GUARDED_BY(mu)
  uint64_t flushes = 0;  // GUARDED_BY(mu)
  uint64_t injected = 0;
  uint64_t fail_write_at = 0;  // absolute write number; 0: none
  int fail_write_err = 0;
  uint64_t fail_flush_at = 0;
  int fail_flush_err = 0;
  struct Range {
    uint64_t off, len;
    int err;
  };
  std::vector<Range> ranges;
  bool sticky = true;
  int dead_err = 0;  // != 0: every write/flush fails (sticky after a fault)
  bool journal = false;
};

FaultInjector::FaultInjector() : state_(std::make_shared<State>()) {}
FaultInjector::~FaultInjector() = default;

void FaultInjector::FailNthWrite(uint64_t n, int err) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->fail_write_at = n == 0 ? 0 : state_->writes + n;
  state_->fail_write_err = err;
}
void FaultInjector::FailWritesOverlapping(uint64_t off, uint64_t len, int err) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->ranges.push_back({off, len, err});
}
void FaultInjector::FailNthFlush(uint64_t n, int err) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->fail_flush_at = n == 0 ? 0 : state_->flushes + n;
  state_->fail_flush_err = err;
}
void FaultInjector::SetSticky(bool sticky) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->sticky = sticky;
}
void FaultInjector::Clear() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->fail_write_at = state_->fail_flush_at = 0;
  state_->ranges.clear();
  state_->dead_err = 0;
}
void FaultInjector::SetJournal(bool on) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->journal = on;
}
uint64_t FaultInjector::writes() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->writes;
}
uint64_t FaultInjector::flushes() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->flushes;
}
uint64_t FaultInjector::injected() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->injected;
}

namespace {

class FaultBackend final : public Backend {
 public:
  FaultBackend(std::shared_ptr<Backend> base, std::shared_ptr<FaultInjector> faults)
      : base_(std::move(base)), faults_(std::move(faults)), st_(faults_->state()) {}

  Status ReadAt(uint64_t off, void* buf, size_t len) override { return base_->ReadAt(off, buf, len); }

  Status WriteAt(uint64_t off, const void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(BeforeWrite(off, len));
    return base_->WriteAt(off, buf, len);
  }
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    KVMFS_RETURN_IF_ERROR(BeforeWrite(off, len));
    return base_->WriteZeroes(off, len, unmap);
  }
  Status Flush() override {
    {
      std::lock_guard<std::mutex> lock(st_->mu);
      ++st_->flushes;
      int err = st_->dead_err;
      if (err == 0 && st_->fail_flush_at != 0 && st_->flushes == st_->fail_flush_at)
        err = st_->fail_flush_err;
      if (err != 0) return Inject(err, "flush");
    }
    Status s = base_->Flush();
    if (s.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      journal_.clear();
    }
    return s;
  }
  Result<uint64_t> Size() override { return base_->Size(); }
  Status Truncate(uint64_t size) override { return base_->Truncate(size); }
  Result<uint64_t> AllocatedBytes() override { return base_->AllocatedBytes(); }
  Result<BlockStatus> GetAllocation(uint64_t off, uint64_t len) override {
    return base_->GetAllocation(off, len);
  }
  int fd() const override { return base_->fd(); }
  bool writable() const override { return base_->writable(); }
  const std::string& name() const override { return base_->name(); }

  Status Drop(uint64_t keep) {
    std::lock_guard<std::mutex> lock(mu_);
    while (journal_.size() > keep) {
      const Undo& u = journal_.back();
      KVMFS_RETURN_IF_ERROR(base_->WriteAt(u.off, u.old.data(), u.old.size()));
      journal_.pop_back();
    }
    journal_.clear();
    return Status::OK();
  }

 private:
  struct Undo {
    uint64_t off;
    std::vector<uint8_t> old;
  };

  // Requires st_->mu held.
  Status Inject(int err, const char* what) {
    ++st_->injected;
    if (st_->sticky) st_->dead_err = err;
    return Status::FromErrno(err, name() + ": injected " + what + " fault");
  }

  Status BeforeWrite(uint64_t off, uint64_t len) {
    bool journal;
    {
      std::lock_guard<std::mutex> lock(st_->mu);
      ++st_->writes;
      int err = st_->dead_err;
      if (err == 0 && st_->fail_write_at != 0 && st_->writes == st_->fail_write_at)
        err = st_->fail_write_err;
      for (const auto& r : st_->ranges)
        if (err == 0 && off < r.off + r.len && r.off < off + len) err = r.err;
      if (err != 0) return Inject(err, "write");
      journal = st_->journal;
    }
    if (journal) {
      Undo u{off, std::vector<uint8_t>(len)};
      KVMFS_RETURN_IF_ERROR(base_->ReadAt(off, u.old.data(), u.old.size()));
      std::lock_guard<std::mutex> lock(mu_);
      journal_.push_back(std::move(u));
    }
    return Status::OK();
  }

  const std::shared_ptr<Backend> base_;
  const std::shared_ptr<FaultInjector> faults_;
  const std::shared_ptr<FaultInjector::State> st_;
  std::mutex mu_;
  std::vector<Undo> journal_;  // GUARDED_BY(mu_), oldest first
};

}  // namespace

std::unique_ptr<Backend> NewFaultBackend(std::shared_ptr<Backend> base,
                                         std::shared_ptr<FaultInjector> faults) {
  return std::make_unique<FaultBackend>(std::move(base), std::move(faults));
}

Status DropUnsynced(Backend& fault_backend, uint64_t keep) {
  auto* fb = dynamic_cast<FaultBackend*>(&fault_backend);
  if (fb == nullptr) return Status::InvalidArgument("DropUnsynced: not a fault backend");
  return fb->Drop(keep);
}

}  // namespace kvmfs
