// QEMU's image locks (reference: formats.md §6.1, QEMU 7.2 block/file-posix.c).
//
// QEMU marks what it does with an image file by taking shared OFD read locks
// on single bytes of that file: byte 100 + i while it holds permission bit i,
// byte 200 + i while it does not let others hold bit i. Before holding a
// permission it checks that nobody locks its "not shared" byte, and before
// refusing to share one that nobody locks its "held" byte. kvmfs takes the
// same bytes, so QEMU and kvmfs see each other.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "base/unique_fd.h"
#include "kvmfs/status.h"
#include "kvmfs/store.h"

namespace kvmfs {

// LockSet and the QEMU permission bits are declared in kvmfs/store.h.

// The OFD locks that one open file description holds on one file. Not
// thread-safe (FileLockTable serialises its use).
class FileLock {
 public:
  // Opens `path` read-only for locking only (no I/O goes through it).
  // Errors: those of open(2) as Status.
  static Result<std::unique_ptr<FileLock>> Open(const std::string& path);

  // Moves the held bytes to `want`, as QEMU's raw_handle_perm_lock: first locks
  // held ∪ want, then tests every new byte against the locks of other open
  // file descriptions (F_OFD_GETLK), then unlocks what `want` does not need.
  // On conflict it returns to the previous set and fails with kBusy and
  // QEMU's words: `Failed to get "write" lock` / `Failed to get shared
  // "write" lock`, naming the file and asking whether another process is
  // using the image. kIOError when the host refuses OFD locks.
  Status Set(LockSet want);

  LockSet held() const { return held_; }
  const std::string& path() const { return path_; }
  int fd() const { return fd_.get(); }

 private:
  FileLock(std::string path, UniqueFd fd) : path_(std::move(path)), fd_(std::move(fd)) {}
  Status LockBytes(LockSet set);
  void UnlockBytes(LockSet set);
  Status CheckConflicts(LockSet want, LockSet before);

  const std::string path_;
  const UniqueFd fd_;
  LockSet held_;
};

// One kvmfs user's claim on a file's locks. All claims on one host file
// (same device and inode) share one FileLock, because OFD locks of two
// descriptors conflict even inside one process; the file holds the union of
// the claims. Claims never refuse each other: every user of a file inside
// kvmfs shares one engine per file (pool/layer_file.h), so a writer and a
// reader of kvmfs see the same bytes; QEMU's locks keep other programs out,
// not kvmfs itself. Destroying a claim gives its bytes back. Thread-safe.
class LockClaim {
 public:
  // Claims `set` on `path`. Errors: kBusy (another program holds
  // conflicting locks), the errors of FileLock::Open.
  static Result<std::unique_ptr<LockClaim>> Acquire(const std::string& path, LockSet set);
  ~LockClaim();
  LockClaim(const LockClaim&) = delete;
  LockClaim& operator=(const LockClaim&) = delete;

  // Moves this claim to `set` (upgrade or downgrade). On failure (kBusy) the
  // claim keeps its previous set.
  Status Change(LockSet set);
  LockSet set() const;
  const std::string& path() const { return path_; }

 private:
  struct Key {
    dev_t dev;
    ino_t ino;
    auto operator<=>(const Key&) const = default;
  };
  LockClaim(std::string path, Key key) : path_(std::move(path)), key_(key) {}

  const std::string path_;
  const Key key_;
};

// How many times another program's locks refused kvmfs (FileLock::Set
// failing with kBusy) in this process, for the metrics. Lock-free.
uint64_t ImageLockConflicts();

}  // namespace kvmfs
