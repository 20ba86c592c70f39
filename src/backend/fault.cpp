// A fault-injecting Backend wrapper for tests (after leveldb's
// fault_injection_test): fails chosen writes and flushes with an errno and,
// with a journal, undoes the writes a crash would have lost; and a recorder
// of the write/flush stream (after dm-log-writes) from which the states a
// power loss may leave are built (the model is described in backend.h).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <random>

#include "base/mutex.h"

#include "kvmfs/backend.h"

namespace kvmfs {

struct RecordedStream;

struct FaultInjector::State {
  Mutex mu;
  uint64_t writes GUARDED_BY(mu) = 0;
  uint64_t flushes GUARDED_BY(mu) = 0;
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
  // Power-loss recording.
  bool recording = false;
  uint64_t seq = 0;  // operations recorded, over every stream
  std::function<void(CrashPoint)> hook;
  std::vector<std::shared_ptr<RecordedStream>> streams;  // one per wrapper, in creation order
};

// The log of one wrapper (the power-loss model). Lock order: State::mu may
// be taken while holding RecordedStream::mu, never the other way round.
struct RecordedStream {
  Mutex mu;
  std::string name;
  std::weak_ptr<Backend> base;       // not kept open once the wrapper is gone
  bool started GUARDED_BY(mu) = false;  // durable holds the base's content
  std::vector<uint8_t> durable GUARDED_BY(mu);
  std::vector<LoggedWrite> pending GUARDED_BY(mu);
  std::string error GUARDED_BY(mu);  // the first disagreement with the base

  // Reads the whole base the first time.
  Status Start() REQUIRES(mu) {
    if (started) return Status::OK();
    std::shared_ptr<Backend> b = base.lock();
    if (!b) return Status::NotFound(name + ": closed before it was recorded");
    KVMFS_ASSIGN_OR_RETURN(uint64_t size, b->Size());
    durable.assign(size, 0);
    if (size > 0) KVMFS_RETURN_IF_ERROR(b->ReadAt(0, durable.data(), durable.size()));
    started = true;
    return Status::OK();
  }
};

FaultInjector::FaultInjector() : state_(std::make_shared<State>()) {}
FaultInjector::~FaultInjector() = default;

void FaultInjector::FailNthWrite(uint64_t n, int err) {
  MutexLock lock(state_->mu);
  state_->fail_write_at = n == 0 ? 0 : state_->writes + n;
  state_->fail_write_err = err;
}
void FaultInjector::FailWritesOverlapping(uint64_t off, uint64_t len, int err) {
  MutexLock lock(state_->mu);
  state_->ranges.push_back({off, len, err});
}
void FaultInjector::FailNthFlush(uint64_t n, int err) {
  MutexLock lock(state_->mu);
  state_->fail_flush_at = n == 0 ? 0 : state_->flushes + n;
  state_->fail_flush_err = err;
}
void FaultInjector::SetSticky(bool sticky) {
  MutexLock lock(state_->mu);
  state_->sticky = sticky;
}
void FaultInjector::Clear() {
  MutexLock lock(state_->mu);
  state_->fail_write_at = state_->fail_flush_at = 0;
  state_->ranges.clear();
  state_->dead_err = 0;
}
void FaultInjector::SetJournal(bool on) {
  MutexLock lock(state_->mu);
  state_->journal = on;
}
void FaultInjector::SetRecording(bool on) {
  std::vector<std::shared_ptr<RecordedStream>> streams;
  {
    MutexLock lock(state_->mu);
    state_->recording = on;
    streams = state_->streams;
  }
  if (on) return;
  for (const auto& st : streams) {
    MutexLock lock(st->mu);
    st->started = false;
    st->durable.clear();
    st->pending.clear();
    st->error.clear();
  }
}
void FaultInjector::SetCrashPointHook(std::function<void(CrashPoint)> hook) {
  MutexLock lock(state_->mu);
  state_->hook = std::move(hook);
}
CrashPoint FaultInjector::CapturePoint(const std::string& why) const {
  CrashPoint point;
  point.why = why;
  std::vector<std::shared_ptr<RecordedStream>> streams;
  {
    MutexLock lock(state_->mu);
    if (!state_->recording) return point;
    point.seq = state_->seq;
    streams = state_->streams;
  }
  for (const auto& st : streams) {
    MutexLock lock(st->mu);
    if (!st->started && st->base.expired()) continue;  // never written while recorded
    Status s = st->Start();
    if (!s.ok() && st->error.empty()) st->error = s.ToString();
    point.streams.push_back(StreamState{st->name, st->durable, st->pending});
  }
  return point;
}
std::string FaultInjector::RecordingError() const {
  std::vector<std::shared_ptr<RecordedStream>> streams;
  {
    MutexLock lock(state_->mu);
    streams = state_->streams;
  }
  for (const auto& st : streams) {
    MutexLock lock(st->mu);
    if (!st->error.empty()) return st->error;
  }
  return {};
}
uint64_t FaultInjector::writes() const {
  MutexLock lock(state_->mu);
  return state_->writes;
}
uint64_t FaultInjector::flushes() const {
  MutexLock lock(state_->mu);
  return state_->flushes;
}
uint64_t FaultInjector::injected() const {
  MutexLock lock(state_->mu);
  return state_->injected;
}

namespace {

// The unit a disk writes atomically (the power-loss model).
constexpr uint64_t kSectorSize = 512;

class FaultBackend final : public Backend {
 public:
  FaultBackend(std::shared_ptr<Backend> base, std::shared_ptr<FaultInjector> faults)
      : base_(std::move(base)),
        faults_(std::move(faults)),
        st_(faults_->state()),
        log_(std::make_shared<RecordedStream>()) {
    log_->name = base_->name();
    log_->base = base_;
    MutexLock lock(st_->mu);
    st_->streams.push_back(log_);
  }

  Status ReadAt(uint64_t off, void* buf, size_t len) override {
    return base_->ReadAt(off, buf, len);
  }

  Status WriteAt(uint64_t off, const void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(BeforeWrite(off, len));
    if (!Recording()) return base_->WriteAt(off, buf, len);
    return Record(LoggedWrite::Kind::kWrite, off, len,
                  [&] { return base_->WriteAt(off, buf, len); });
  }
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    KVMFS_RETURN_IF_ERROR(BeforeWrite(off, len));
    if (!Recording()) return base_->WriteZeroes(off, len, unmap);
    return Record(LoggedWrite::Kind::kZeroes, off, len,
                  [&] { return base_->WriteZeroes(off, len, unmap); });
  }
  Status Flush() override {
    std::function<void(CrashPoint)> hook;
    {
      MutexLock lock(st_->mu);
      ++st_->flushes;
      int err = st_->dead_err;
      if (err == 0 && st_->fail_flush_at != 0 && st_->flushes == st_->fail_flush_at)
        err = st_->fail_flush_err;
      if (err != 0) return Inject(err, "flush");
      if (st_->recording) hook = st_->hook;
    }
    // A crash point: the power may fail before this flush completes.
    if (hook) hook(faults_->CapturePoint("flush of " + name()));
    Status s;
    if (Recording()) {
      MutexLock lock(log_->mu);
      const size_t n = log_->pending.size();
      s = base_->Flush();
      if (s.ok()) Durable(n);
    } else {
      s = base_->Flush();
    }
    if (s.ok()) {
      MutexLock lock(mu_);
      journal_.clear();
    }
    return s;
  }
  Result<uint64_t> Size() override { return base_->Size(); }
  Status Truncate(uint64_t size) override {
    if (!Recording()) return base_->Truncate(size);
    return Record(LoggedWrite::Kind::kTruncate, size, 0, [&] { return base_->Truncate(size); });
  }
  Result<uint64_t> AllocatedBytes() override { return base_->AllocatedBytes(); }
  Result<BlockStatus> GetAllocation(uint64_t off, uint64_t len) override {
    return base_->GetAllocation(off, len);
  }
  int fd() const override { return base_->fd(); }
  bool writable() const override { return base_->writable(); }
  const std::string& name() const override { return base_->name(); }

  Status Drop(uint64_t keep) {
    MutexLock lock(mu_);
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

  bool Recording() const {
    MutexLock lock(st_->mu);
    return st_->recording;
  }

  // Logs one operation and runs it (`op`) under the log's lock, so that the
  // bytes and its place in the stream are exact. A write is logged as the
  // block layer sees it: widened to the 512-byte sectors it touches, with
  // their content after it (the page cache merges writes inside a sector).
  template <typename Op>
  Status Record(LoggedWrite::Kind kind, uint64_t off, uint64_t len, Op op) {
    MutexLock lock(log_->mu);
    KVMFS_RETURN_IF_ERROR(log_->Start());
    LoggedWrite w;
    w.kind = kind;
    KVMFS_ASSIGN_OR_RETURN(w.old_size, base_->Size());
    uint64_t from = off, to = w.old_size;  // kTruncate: the part cut off
    if (kind != LoggedWrite::Kind::kTruncate) {
      from = off / kSectorSize * kSectorSize;
      to = (off + len + kSectorSize - 1) / kSectorSize * kSectorSize;
    }
    if (from < std::min(to, w.old_size)) {
      w.old.resize(std::min(to, w.old_size) - from);
      KVMFS_RETURN_IF_ERROR(base_->ReadAt(from, w.old.data(), w.old.size()));
    }
    // Logged even when it fails: it may have changed part of the range.
    const Status result = op();
    w.off = kind == LoggedWrite::Kind::kTruncate ? off : from;
    if (kind != LoggedWrite::Kind::kTruncate) {
      KVMFS_ASSIGN_OR_RETURN(uint64_t size, base_->Size());
      if (from < std::min(to, size)) {
        w.data.resize(std::min(to, size) - from);
        KVMFS_RETURN_IF_ERROR(base_->ReadAt(from, w.data.data(), w.data.size()));
      }
      w.len = w.data.size();
    }
    {
      MutexLock slock(st_->mu);
      w.seq = st_->seq++;
    }
    if (result.ok() || kind != LoggedWrite::Kind::kTruncate) log_->pending.push_back(std::move(w));
    return result;
  }

  // The first `n` pending operations are durable: they join the durable
  // content, which must now be the base's content.
  void Durable(size_t n) REQUIRES(log_->mu) {
    n = std::min(n, log_->pending.size());
    CrashPoint one;
    one.streams.push_back(StreamState{name(), std::move(log_->durable), {}});
    one.streams[0].pending.assign(std::make_move_iterator(log_->pending.begin()),
                                  std::make_move_iterator(log_->pending.begin() + n));
    log_->pending.erase(log_->pending.begin(), log_->pending.begin() + n);
    CrashState all;
    all.fate.assign(n, 1);
    Result<std::vector<std::vector<uint8_t>>> now = MaterializeCrash(one, all);
    log_->durable = now.ok() ? std::move((*now)[0]) : std::vector<uint8_t>{};
    if (!log_->error.empty()) return;
    Result<uint64_t> size = base_->Size();
    std::vector<uint8_t> real(size.ok() ? *size : 0);
    Status st = size.status();
    if (st.ok() && !real.empty()) st = base_->ReadAt(0, real.data(), real.size());
    if (!st.ok()) {
      log_->error = name() + ": recording: " + st.ToString();
    } else if (real.size() != log_->durable.size()) {
      log_->error = name() + ": recording: the log says " + std::to_string(log_->durable.size()) +
                    " bytes are durable, the file has " + std::to_string(real.size());
    } else if (real != log_->durable) {
      const auto d = std::mismatch(real.begin(), real.end(), log_->durable.begin());
      log_->error = name() + ": recording: byte " + std::to_string(d.first - real.begin()) +
                    " differs from the log (a write bypassed the wrapper?)";
    }
  }

  // Requires st_->mu held.
  Status Inject(int err, const char* what) {
    ++st_->injected;
    if (st_->sticky) st_->dead_err = err;
    return Status::FromErrno(err, name() + ": injected " + what + " fault");
  }

  Status BeforeWrite(uint64_t off, uint64_t len) {
    bool journal;
    {
      MutexLock lock(st_->mu);
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
      MutexLock lock(mu_);
      journal_.push_back(std::move(u));
    }
    return Status::OK();
  }

  const std::shared_ptr<Backend> base_;
  const std::shared_ptr<FaultInjector> faults_;
  const std::shared_ptr<FaultInjector::State> st_;
  const std::shared_ptr<RecordedStream> log_;
  Mutex mu_;
  std::vector<Undo> journal_ GUARDED_BY(mu_);  // oldest first
};

// ---- Crash states ------------------------------------------------------------

// Whether sector `sector` of torn operation `op` reached the disk.
bool SectorSurvives(uint64_t seed, size_t op, uint64_t sector) {
  uint64_t x = seed ^ (uint64_t{op} * 0x9e3779b97f4a7c15ull) ^ (sector * 0xbf58476d1ce4e5b9ull);
  x ^= x >> 31;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 29;
  return x & 1;
}

void Put(std::vector<uint8_t>& content, uint64_t off, const uint8_t* p, uint64_t n) {
  if (content.size() < off + n) content.resize(off + n, 0);
  std::memcpy(content.data() + off, p, n);
}

// Applies one operation (fate 1: whole, 2: torn) to `content`.
void Apply(std::vector<uint8_t>& content, const LoggedWrite& w, uint8_t fate, uint64_t seed,
           size_t op) {
  if (w.kind == LoggedWrite::Kind::kTruncate) {
    content.resize(w.off, 0);
    return;
  }
  // Zeroing never grows the object, not even one a lost write left shorter.
  uint64_t end = w.off + w.data.size();
  if (w.kind == LoggedWrite::Kind::kZeroes) end = std::min<uint64_t>(end, content.size());
  auto piece = [&](uint64_t from, uint64_t to) {
    if (from < to) Put(content, from, w.data.data() + (from - w.off), to - from);
  };
  if (fate == 1) {
    piece(w.off, end);
    return;
  }
  for (uint64_t s = w.off / kSectorSize; s * kSectorSize < end; ++s)
    if (SectorSurvives(seed, op, s))
      piece(std::max(w.off, s * kSectorSize), std::min(end, (s + 1) * kSectorSize));
}

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

size_t CrashPoint::pending() const {
  size_t n = 0;
  for (const StreamState& s : streams) n += s.pending.size();
  return n;
}

std::vector<CrashState> PlanCrashStates(size_t n, const CrashPlan& plan, uint64_t seed) {
  std::vector<CrashState> out;
  std::mt19937_64 rng(seed);
  if (n == 0) {
    out.push_back(CrashState{{}, 0, "all-subsets"});
    return out;
  }
  if (n <= plan.exhaustive_max && n < 20) {
    for (uint64_t mask = 0; mask < (uint64_t{1} << n); ++mask) {
      CrashState c{std::vector<uint8_t>(n, 0), 0, "all-subsets"};
      for (size_t i = 0; i < n; ++i) c.fate[i] = (mask >> i) & 1;
      out.push_back(std::move(c));
    }
  } else {
    std::vector<CrashState> sys;
    for (size_t k = 0; k <= n; ++k) {  // an ordered prefix reached the disk
      CrashState c{std::vector<uint8_t>(n, 0), 0, "prefix"};
      std::fill(c.fate.begin(), c.fate.begin() + k, 1);
      sys.push_back(std::move(c));
    }
    for (size_t i = 0; i < n; ++i) {
      CrashState lost{std::vector<uint8_t>(n, 1), 0, "one-lost"};
      lost.fate[i] = 0;
      sys.push_back(std::move(lost));
      CrashState kept{std::vector<uint8_t>(n, 0), 0, "one-kept"};
      kept.fate[i] = 1;
      sys.push_back(std::move(kept));
    }
    if (sys.size() > plan.max_systematic) {
      // Keep nothing and everything (the first and (n+1)-th), sample the rest.
      std::vector<CrashState> kept;
      kept.push_back(std::move(sys[0]));
      kept.push_back(std::move(sys[n]));
      std::vector<CrashState> rest;
      for (size_t i = 1; i < sys.size(); ++i)
        if (i != n) rest.push_back(std::move(sys[i]));
      std::shuffle(rest.begin(), rest.end(), rng);
      for (size_t i = 0; i < rest.size() && kept.size() < std::max<size_t>(2, plan.max_systematic);
           ++i)
        kept.push_back(std::move(rest[i]));
      sys = std::move(kept);
    }
    for (auto& c : sys) out.push_back(std::move(c));
    for (size_t r = 0; r < plan.random; ++r) {
      CrashState c{std::vector<uint8_t>(n, 0), 0, "random"};
      for (auto& f : c.fate) f = rng() & 1;
      out.push_back(std::move(c));
    }
  }
  for (size_t r = 0; r < plan.torn; ++r) {
    CrashState c{std::vector<uint8_t>(n, 0), rng(), "torn"};
    for (auto& f : c.fate) f = static_cast<uint8_t>(rng() % 3);
    out.push_back(std::move(c));
  }
  return out;
}

Result<std::vector<std::vector<uint8_t>>> MaterializeCrash(const CrashPoint& point,
                                                           const CrashState& state) {
  if (state.fate.size() != point.pending())
    return Status::InvalidArgument("crash state of " + std::to_string(state.fate.size()) +
                                   " operations for a crash point with " +
                                   std::to_string(point.pending()));
  std::vector<std::vector<uint8_t>> out;
  size_t op = 0;
  for (const StreamState& s : point.streams) {
    std::vector<uint8_t> content = s.durable;
    for (const LoggedWrite& w : s.pending) {
      const uint8_t fate = state.fate[op];
      if (fate != 0) Apply(content, w, fate, state.tear_seed, op);
      ++op;
    }
    out.push_back(std::move(content));
  }
  return out;
}

}  // namespace kvmfs
