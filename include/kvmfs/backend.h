// Backend: the only way any layer above touches bytes on the host.
//
// A backend is one host object (a local file, a block device, later an object
// in a store) addressed by byte offset. Format drivers and codecs never call
// pread/pwrite themselves (after leveldb's Env).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvmfs/image.h"
#include "kvmfs/status.h"

namespace kvmfs {

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

  // Makes completed writes durable (fdatasync). Thread-safe.
  virtual Status Flush() = 0;

  // Current length of the object in bytes. Thread-safe.
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
// writes not yet made durable by a successful Flush().

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
// ==== end of fault injection ===============================================

}  // namespace kvmfs
