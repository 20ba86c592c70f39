// Backend: the only way any layer above touches bytes on the host.
//
// A backend is one host object (a local file, a block device, later an object
// in a store) addressed by byte offset. Format drivers and codecs never call
// pread/pwrite themselves (after leveldb's Env).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvmfs/image.h"
#include "kvmfs/status.h"

namespace kvmfs {

// What a backend can do beyond ReadAt/WriteAt (issue 13), so that the layers
// above pick their road: splice from fd(), zero without writing zeros, ask
// the allocation map, size their requests.
struct BackendCaps {
  bool splice = false;          // fd() is a host file descriptor usable for splice
  bool zeroing = false;         // WriteZeroes() is cheaper than writing zeros
  bool allocation_map = false;  // GetAllocation() tells holes from data
  bool remote = false;          // each request costs a network round trip: batch them (ReadV)
  uint32_t io_size = 4096;      // preferred request size in bytes (RBD: the object size)
};

// One range of a multi-range read.
struct ReadRange {
  uint64_t off = 0;
  void* buf = nullptr;
  size_t len = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // Reads exactly `len` bytes at `off` into `buf`. Bytes at or past the end of
  // the object read as zeros (qcow2 files may end inside a cluster). Fails with
  // kIOError on a host error. Thread-safe: may be called concurrently.
  virtual Status ReadAt(uint64_t off, void* buf, size_t len) = 0;

  // Writes `len` bytes at `off`, extending the object if needed. Fails with
  // kReadOnly when the backend was opened read-only. Thread-safe.
  virtual Status WriteAt(uint64_t off, const void* buf, size_t len) = 0;

  // Makes [off, off+len) read as zeros. `unmap`: release the storage
  // (fallocate PUNCH_HOLE|KEEP_SIZE; BLKDISCARD-like), else zero it in place
  // (FALLOC_FL_ZERO_RANGE). Never changes the size. Falls back to writing
  // zeros where the host cannot. Default: writes zeros. Thread-safe.
  virtual Status WriteZeroes(uint64_t off, uint64_t len, bool unmap);

  // Reads several ranges at once, each as ReadAt() would; a remote backend
  // issues them in parallel. Fails with the first range's error (the other
  // buffers are then unspecified). Default: one by one. Thread-safe.
  virtual Status ReadV(const std::vector<ReadRange>& ranges);

  // Makes completed writes durable (fdatasync). Thread-safe.
  virtual Status Flush() = 0;

  // Current length of the object in bytes. Never a network round trip: a
  // remote backend answers from what it knows (kept current by its own
  // resizes and the store's change notifications). Thread-safe.
  virtual Result<uint64_t> Size() = 0;

  // Sets the length of the object. Fails with kReadOnly when read-only.
  virtual Status Truncate(uint64_t size) = 0;

  // Bytes the host really stores for this object (st_blocks * 512), as
  // `qemu-img info` reports in "actual-size".
  virtual Result<uint64_t> AllocatedBytes() = 0;

  // Whether the host stores data for the run starting at `off` (at most `len`
  // bytes): kData, or kZero for a hole (SEEK_DATA/SEEK_HOLE). Default: all data.
  virtual Result<BlockStatus> GetAllocation(uint64_t /*off*/, uint64_t len) {
    return BlockStatus{Allocation::kData, len};
  }

  // The host file descriptor, or -1 when there is none (memory, object store).
  // For splice and for QEMU-compatible image locks; never for plain I/O.
  virtual int fd() const { return -1; }

  virtual bool writable() const = 0;

  // What this backend can do. Default: a plain local object (no fd, zeroing
  // by writing zeros, no allocation map).
  virtual BackendCaps caps() const { return BackendCaps{}; }

  // Path or name used in every message about this object.
  virtual const std::string& name() const = 0;
};

// Opens a regular file or block device. `writable` opens O_RDWR, else O_RDONLY.
// Errors: kNotFound when the path does not exist, kPermission, kIOError.
Result<std::unique_ptr<Backend>> OpenLocalFile(const std::string& path, bool writable);

// An in-memory backend (tests, fuzzing). Grows on write; shares nothing.
std::unique_ptr<Backend> NewMemBackend(std::string name, std::vector<uint8_t> data = {},
                                       bool writable = true);

// ==== Fault injection (tests) =============================================
// Owned by the qcow2 write engine's tests; nobody else edits this block.
// After leveldb's fault_injection_test: a Backend wrapper that fails chosen
// writes or flushes with an errno, and can simulate a crash by dropping the
// writes not yet made durable by a successful Flush(); and after Linux's
// dm-log-writes: it can record the write/flush stream so that a test
// replays the states a power loss may leave (see "Power-loss model").

// ---- Power-loss model (after dm-log-writes) --------------------------------
// With FaultInjector::SetRecording(true), every wrapper sharing the injector
// logs its stream: each WriteAt/WriteZeroes/Truncate (with the bytes it
// wrote and the bytes it replaced) and each Flush boundary. The log keeps,
// per backend, the content that was durable at its last completed Flush and
// the operations issued since ("pending"). Writes are logged as the block
// layer sees them: widened to the 512-byte sectors they touch, holding those
// sectors' content after the write (the page cache merges writes inside a
// sector, so a disk never sees a later sub-sector write without an earlier
// one to the same sector).
//
// The crash model: power fails at some instant. For each backend, what is on
// the disk afterwards is its durable content plus ANY subset of its pending
// operations, applied in issue order (so of two overlapping writes the later
// one wins only when it is in the subset); backends (the image file and an
// external data file) are independent, as two files' page caches are. A
// write either reached the disk whole or is torn: only some of its 512-byte
// sectors did (a sector is atomic). WriteZeroes never changes the size (as
// the local file backend); Truncate is atomic; a write past the end grows
// the object to the end of what of it reached the disk. Every Flush issued
// is a crash point: the states of every instant since the previous flush
// are subsets of the pending operations at the next one, so checking the
// crash points (and the end of a workload) checks every instant.

// One logged operation of one backend.
struct LoggedWrite {
  enum class Kind { kWrite, kZeroes, kTruncate };
  Kind kind = Kind::kWrite;
  uint64_t seq = 0;           // issue order over every recorded backend
  uint64_t off = 0;           // first sector's offset; kTruncate: the new size
  uint64_t len = 0;           // data.size(); kTruncate: 0
  std::vector<uint8_t> data;  // the sectors after the write (up to the size then)
  std::vector<uint8_t> old;   // the same sectors before (up to the old size);
                              // kTruncate: the part cut off
  uint64_t old_size = 0;      // the object's size when it was issued
};

// One backend at a crash point.
struct StreamState {
  std::string name;
  std::vector<uint8_t> durable;      // the content at its last completed Flush
  std::vector<LoggedWrite> pending;  // issued since, oldest first
};

// Every recorded backend at one instant.
struct CrashPoint {
  uint64_t seq = 0;   // operations issued before it
  std::string why;    // "flush of NAME", or the caller's label
  std::vector<StreamState> streams;
  // Pending operations of all streams together (the length of a fate).
  size_t pending() const;
};

// What to fail; shared between the test and its wrappers. Thread-safe.
class FaultInjector {
 public:
  FaultInjector();
  ~FaultInjector();
  FaultInjector(const FaultInjector&) = delete;
  FaultInjector& operator=(const FaultInjector&) = delete;

  // The n-th WriteAt/WriteZeroes from now (1-based) fails with `err`.
  void FailNthWrite(uint64_t n, int err);
  // Every write overlapping [off, off+len) fails with `err`.
  void FailWritesOverlapping(uint64_t off, uint64_t len, int err);
  // The n-th Flush from now (1-based) fails with `err`.
  void FailNthFlush(uint64_t n, int err);
  // After the first injected fault every later write and flush fails too
  // (the device is gone, as in a crash). Default: true.
  void SetSticky(bool sticky);
  // Removes every rule and the sticky failure state; counters keep going.
  void Clear();
  // Records the old bytes of every write, so DropUnsynced() can undo the
  // writes after the last successful Flush() (a crash losing the page cache).
  void SetJournal(bool on);
  // Power-loss recording (see "Power-loss model" above): from now on every
  // wrapper logs its operations and flushes; a wrapper's log starts with
  // the content of its base when it first records. Turning it off drops
  // the logs. After each completed Flush the log checks that what it
  // thinks is durable is the base's content (a write that bypassed the
  // wrapper shows up in RecordingError()).
  void SetRecording(bool on);
  // Called at every Flush issued through a wrapper, before it reaches the
  // base, with every recorded backend's state, from the flushing thread
  // with no lock held. Empty: none.
  void SetCrashPointHook(std::function<void(CrashPoint)> hook);
  // The recorded state now (e.g. at the end of a workload, whose last
  // writes no flush may follow). Consistent across backends when nothing
  // writes meanwhile.
  CrashPoint CapturePoint(const std::string& why) const;
  // Empty, or why the log and a base disagree after a Flush.
  std::string RecordingError() const;
  // Counters since construction.
  uint64_t writes() const;
  uint64_t flushes() const;
  uint64_t injected() const;

  struct State;                     // in src/backend/fault.cpp
  std::shared_ptr<State> state() const { return state_; }

 private:
  std::shared_ptr<State> state_;
};

// A backend passing everything to `base` but the faults `faults` asks for
// (those return Status::FromErrno(err), writing nothing).
std::unique_ptr<Backend> NewFaultBackend(std::shared_ptr<Backend> base,
                                         std::shared_ptr<FaultInjector> faults);

// Undoes, newest first, the writes the wrapper `fault_backend` made since its
// last successful Flush(), keeping the first `keep` of them (a crash where an
// ordered prefix reached the disk). Requires FaultInjector::SetJournal(true).
Status DropUnsynced(Backend& fault_backend, uint64_t keep = 0);

// One crash state of a crash point: per pending operation (streams in order,
// each oldest first) 0 = lost, 1 = reached the disk, 2 = torn (the sectors
// that reached the disk are chosen by `tear_seed`).
struct CrashState {
  std::vector<uint8_t> fate;
  uint64_t tear_seed = 0;
  const char* kind = "";  // "all-subsets", "prefix", "one-lost", "one-kept", "random", "torn"
};

// How many crash states to take of a crash point with n pending operations:
// all 2^n subsets when n <= exhaustive_max; else the systematic ones (every
// prefix, each single operation lost, each single one kept; sampled down to
// max_systematic when there are more) plus `random` random subsets; plus
// `torn` random states with torn writes in any case (when n > 0).
struct CrashPlan {
  size_t exhaustive_max = 6;
  size_t max_systematic = 48;
  size_t random = 12;
  size_t torn = 4;
};

// The crash states of a crash point with `pending` operations (deterministic
// for a seed; duplicates possible, callers may deduplicate the contents).
std::vector<CrashState> PlanCrashStates(size_t pending, const CrashPlan& plan, uint64_t seed);

// The content of every stream of `point` in crash state `state` (one vector
// per stream, in order). kInvalidArgument when the fate has the wrong length.
Result<std::vector<std::vector<uint8_t>>> MaterializeCrash(const CrashPoint& point,
                                                           const CrashState& state);
// ==== end of fault injection ===============================================

}  // namespace kvmfs
