// What the kernel may cache, for how long, and the invalidations kvmfs pushes
// when something it serves changes (kvmfs(8) "CACHING").
//
// Immutable nodes (snapshot and backing views with their directories and
// info.json, the pools' own folders, and everything in a read-only pool except
// folder attributes) change only when their image file changes: long entry and
// attribute timeouts, their pages kept across opens. Mutable nodes (folders,
// and in a read-write pool an image's directory, snapshots/, its own disk.raw
// and info.json) get short ones. Whatever kvmfs changes itself (writes,
// resizes, snapshots) and whatever change it notices is pushed to the kernel
// as notify_inval_inode / notify_inval_entry, from a worker thread of its own:
// libfuse forbids notifying from the request that holds the inode.
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fuse/inode_table.h"
#include "pool/change_listener.h"
#include "pool/pool_set.h"

namespace kvmfs::fuse {

inline constexpr double kShortTimeout = 1.0;      // seconds: mutable nodes, by default
inline constexpr double kLongTimeout = 86400.0;   // immutable nodes: invalidated when they change

// The timeouts of mutable nodes (-o entry_timeout, attr_timeout,
// negative_timeout; kShortTimeout each by default). Set before mounting.
struct MutableTimeouts {
  double entry = kShortTimeout;
  double attr = kShortTimeout;
  double negative = kShortTimeout;
};
void SetMutableTimeouts(const MutableTimeouts& timeouts);

// Whether the attributes and content of `node` change only with its image
// file (kvmfs then pushes invalidations). A read-only pool whose images
// other hosts write (StoreCaps::unseen_writes) counts as read-write here.
bool Immutable(const pool::SetNode& node);
// Whether `node` is an image's own disk.raw or info.json in a pool whose
// store lets other hosts write files unseen (StoreCaps::unseen_writes, RBD):
// such a disk.raw is never read from pages the kernel kept, unless opened for
// writing (the writer holds the image's exclusive lock, so nobody else
// writes while it is open).
bool UnseenWrites(const pool::SetNode& node);
// Attribute timeout of `node`. Folders always get the short one: their
// mtime is how the kernel notices that a cached listing is stale.
double AttrTimeout(const pool::SetNode& node);
// Entry timeout of `child`'s name in its parent.
double EntryTimeout(const pool::SetNode& child);
// How long the kernel may remember that a name is absent in `parent`.
double NegativeTimeout(const pool::SetNode& parent);

class KernelCache : public pool::ChangeListener {
 public:
  explicit KernelCache(InodeTable& inodes) : inodes_(inodes) {}
  ~KernelCache() override { Stop(); }
  KernelCache(const KernelCache&) = delete;
  KernelCache& operator=(const KernelCache&) = delete;

  // Starts the worker that pushes invalidations into `se`; before Start()
  // and after Stop() invalidations are dropped (there is no kernel cache).
  void Start(fuse_session* se);
  void Stop();

  // pool::ChangeListener: queued, not waited for.
  void ImageChanged(const std::string& canonical_path) override;
  void SnapshotsChanged(const std::string& canonical_path) override;

  // kvmfs wrote (or resized, zeroed) the image file `canonical_path` through
  // inode `written`: drops what the kernel caches of every other inode whose
  // content depends on it (overlays above it, their backing views and
  // info.json), except the image's own snapshot views, which writes do not
  // change. Waits until pushed (at most a short bound, so that a stuck
  // notification never holds a write reply), so that a reader who starts
  // after write() returned reads the new bytes.
  void Written(const std::string& canonical_path, fuse_ino_t written);

  // The pool set was replaced (SIGHUP): the root's listing and the entries
  // `names` (old and new pool names) are dropped. Waits until pushed
  // (bounded), like Written(); never call it from a FUSE request.
  void PoolsReplaced(const std::vector<std::string>& names);

  // Names the tree changed itself (an image made by ln -s, renamed by mv):
  // the kernel drops its entries (parent, name) and the parents' attributes,
  // so that the next lookup finds the node as it is now. Waits until pushed
  // (bounded), like Written(). Call after the reply.
  void EntriesChanged(const std::vector<std::pair<fuse_ino_t, std::string>>& entries);

  // Notifications pushed so far (the debug log reports them).
  uint64_t pushed() const;

  // A request that read an inode began before a change and replied after it
  // may have put what it read before the change into a kernel cache, after
  // the change's invalidation. Requests take the epoch when they begin and
  // call Recheck() once they replied: it invalidates the inode again if a
  // change reached it meanwhile (never for the inode a write went through).
  uint64_t epoch() const { return epoch_.load(std::memory_order_acquire); }
  void Recheck(Inode& inode, uint64_t epoch_at_start);

 private:
  struct Task {
    fuse_ino_t ino = 0;      // notify_inval_inode(ino) when name is empty,
    std::string name;        // else notify_inval_entry(ino, name)
  };
  enum class Why { kWrite, kOutside, kSnapshots };
  std::vector<Task> TasksFor(const std::string& path, Why why, fuse_ino_t skip);
  std::atomic<uint64_t> epoch_{0};
  // Queues `tasks`; with `wait`, returns once they were pushed (bounded).
  void Push(std::vector<Task> tasks, bool wait);
  void Run();

  InodeTable& inodes_;
  mutable std::mutex mu_;
  std::condition_variable cv_;       // work queued, or Stop()
  std::condition_variable done_cv_;  // a batch was pushed
  std::deque<Task> queue_;           // GUARDED_BY(mu_)
  uint64_t queued_ = 0;              // GUARDED_BY(mu_): tasks ever queued
  uint64_t done_ = 0;                // GUARDED_BY(mu_): tasks ever finished
  fuse_session* se_ = nullptr;       // GUARDED_BY(mu_)
  bool stop_ = false;                // GUARDED_BY(mu_)
  std::thread worker_;
};

}  // namespace kvmfs::fuse
