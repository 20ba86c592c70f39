#include "fuse/kernel_cache.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstring>

namespace kvmfs::fuse {
namespace {

using pool::NodeKind;
using pool::SetNode;
using pool::ViewId;

// How long a writer waits for its invalidations to reach the kernel. They
// take microseconds; the bound only matters if a notification ever waits for
// a page lock held by a read that needs a worker thread this writer holds.
constexpr auto kWriteWaitBound = std::chrono::milliseconds(200);

MutableTimeouts g_timeouts;  // set once before mounting

}  // namespace

void SetMutableTimeouts(const MutableTimeouts& timeouts) { g_timeouts = timeouts; }

namespace {

// Whether other hosts may change the pool's images (StoreCaps::unseen_writes):
// its nodes are then cached as in a read-write pool, read-only or not.
bool WrittenElsewhere(const SetNode& n) {
  if (n.kind != SetNode::Kind::kPool) return false;
  const auto& store = n.ns->options().store;
  return store != nullptr && store->caps().unseen_writes;
}

// Read-only as far as the kernel's caches are concerned: nobody else
// changes the pool's images.
bool ReadOnlyHere(const SetNode& n) { return n.ns->options().readonly && !WrittenElsewhere(n); }

}  // namespace

bool UnseenWrites(const SetNode& n) {
  if (!WrittenElsewhere(n)) return false;
  const pool::Node& node = n.node;
  if (node.kind != NodeKind::kDisk && node.kind != NodeKind::kInfo) return false;
  return node.view.kind == ViewId::Kind::kTop;  // snapshots never change
}

bool Immutable(const SetNode& n) {
  if (n.kind != SetNode::Kind::kPool) return true;  // changes only on reload, which invalidates
  const pool::Node& node = n.node;
  if (node.kind == NodeKind::kFolder) return false;  // mirrors a host folder
  if (ReadOnlyHere(n)) return true;
  switch (node.kind) {
    case NodeKind::kSnapshotDir:
    case NodeKind::kLayerDir:
    case NodeKind::kBackingDir: return true;
    case NodeKind::kDisk:
    case NodeKind::kInfo: return node.view.kind != ViewId::Kind::kTop;
    default: return false;  // the image directory and snapshots/ of a writable image
  }
}

double AttrTimeout(const SetNode& n) {
  if (n.kind == SetNode::Kind::kPool && n.node.kind == NodeKind::kFolder) return g_timeouts.attr;
  return Immutable(n) ? kLongTimeout : g_timeouts.attr;
}

double EntryTimeout(const SetNode& child) {
  if (child.kind != SetNode::Kind::kPool || ReadOnlyHere(child)) return kLongTimeout;
  return Immutable(child) ? kLongTimeout : g_timeouts.entry;
}

double NegativeTimeout(const SetNode& parent) {
  if (parent.kind != SetNode::Kind::kPool) return kLongTimeout;
  // A snapshot or layer directory holds disk.raw and info.json, nothing else, ever.
  if (parent.node.kind == NodeKind::kSnapshotDir || parent.node.kind == NodeKind::kLayerDir)
    return kLongTimeout;
  return g_timeouts.negative;
}

void KernelCache::Start(fuse_session* se) {
  std::lock_guard lock(mu_);
  if (worker_.joinable()) return;
  se_ = se;
  stop_ = false;
  worker_ = std::thread([this] { Run(); });
}

void KernelCache::Stop() {
  {
    std::lock_guard lock(mu_);
    if (!worker_.joinable()) return;
    stop_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  done_cv_.notify_all();
  worker_.join();
  std::lock_guard lock(mu_);
  se_ = nullptr;
}

uint64_t KernelCache::pushed() const {
  std::lock_guard lock(mu_);
  return done_;
}

std::vector<KernelCache::Task> KernelCache::TasksFor(const std::string& path, Why why,
                                                     fuse_ino_t skip) {
  std::vector<Task> tasks;
  const uint64_t epoch = epoch_.fetch_add(1, std::memory_order_acq_rel) + 1;
  for (const InodeTable::Dependent& d : inodes_.DependingOn(path)) {
    if (d.inode->ino == skip) continue;
    const bool own = d.image_path == path;
    if (why == Why::kWrite && own) {
      // Writes into the active layer never change the image's own
      // snapshots, nor its listings; its own directory, snapshots/ and
      // info.json are mutable nodes (short timeouts, info.json read afresh
      // at every open). Its disk.raw under another name (a symlink in the
      // pool) may hold pages: that one goes.
      if (d.node.view.kind == ViewId::Kind::kSnapshot && d.node.kind != NodeKind::kSnapshotsDir) continue;
      if (d.node.kind == NodeKind::kImageDir || d.node.kind == NodeKind::kSnapshotsDir) continue;
      if (d.node.kind == NodeKind::kInfo && d.node.view.kind == ViewId::Kind::kTop) continue;
    }
    // Snapshots come and go without changing any view's bytes: listings and
    // info.json change.
    if (why == Why::kSnapshots && d.node.kind != NodeKind::kImageDir &&
        d.node.kind != NodeKind::kSnapshotsDir && d.node.kind != NodeKind::kInfo)
      continue;
    if (why == Why::kSnapshots && own && d.node.kind == NodeKind::kSnapshotsDir) {
      // Names of deleted snapshots must go; others are looked up again.
      for (auto& [name, ino] : inodes_.Children(d.inode->ino)) tasks.push_back(Task{d.inode->ino, name});
    }
    d.inode->changed_epoch.store(epoch, std::memory_order_release);
    if (!d.inode->kernel_may_cache.exchange(false, std::memory_order_acq_rel)) continue;
    tasks.push_back(Task{d.inode->ino, ""});
  }
  return tasks;
}

void KernelCache::Recheck(Inode& inode, uint64_t epoch_at_start) {
  inode.MarkCached();
  if (inode.changed_epoch.load(std::memory_order_acquire) <= epoch_at_start) return;
  inode.kernel_may_cache.store(false, std::memory_order_release);
  Push({Task{inode.ino, ""}}, false);
}

void KernelCache::ImageChanged(const std::string& canonical_path) {
  Push(TasksFor(canonical_path, Why::kOutside, 0), false);
}

void KernelCache::SnapshotsChanged(const std::string& canonical_path) {
  Push(TasksFor(canonical_path, Why::kSnapshots, 0), false);
}

void KernelCache::Written(const std::string& canonical_path, fuse_ino_t written) {
  Push(TasksFor(canonical_path, Why::kWrite, written), true);
}

void KernelCache::PoolsReplaced(const std::vector<std::string>& names) {
  std::vector<Task> tasks;
  tasks.push_back(Task{FUSE_ROOT_ID, ""});
  for (const std::string& name : names) tasks.push_back(Task{FUSE_ROOT_ID, name});
  // Waited for: once the reload is done (systemd hears READY=1), a listing
  // of the root shows the new pools.
  Push(std::move(tasks), true);
}

void KernelCache::EntriesChanged(const std::vector<std::pair<fuse_ino_t, std::string>>& entries) {
  std::vector<Task> tasks;
  for (const auto& [parent, name] : entries) {
    tasks.push_back(Task{parent, name});
    tasks.push_back(Task{parent, ""});
  }
  epoch_.fetch_add(1, std::memory_order_acq_rel);
  Push(std::move(tasks), true);
}

void KernelCache::Push(std::vector<Task> tasks, bool wait) {
  if (tasks.empty()) return;
  std::unique_lock lock(mu_);
  if (se_ == nullptr || stop_) return;
  for (Task& t : tasks) queue_.push_back(std::move(t));
  queued_ += tasks.size();
  const uint64_t target = queued_;
  cv_.notify_one();
  if (!wait) return;
  if (!done_cv_.wait_for(lock, kWriteWaitBound, [&] { return done_ >= target || stop_; }))
    spdlog::debug("kernel cache: invalidations still pending after {} ms",
                  std::chrono::duration_cast<std::chrono::milliseconds>(kWriteWaitBound).count());
}

void KernelCache::Run() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    std::deque<Task> batch;
    batch.swap(queue_);
    fuse_session* se = se_;
    lock.unlock();
    for (const Task& t : batch) {
      int rc = t.name.empty()
                   ? fuse_lowlevel_notify_inval_inode(se, t.ino, 0, 0)
                   : fuse_lowlevel_notify_inval_entry(se, t.ino, t.name.c_str(), t.name.size());
      // ENOENT: the kernel holds nothing of it (any more); nothing to drop.
      if (rc != 0 && rc != -ENOENT)
        spdlog::debug("kernel cache: invalidating inode {}{}{}: {}", t.ino, t.name.empty() ? "" : " entry ",
                      t.name, std::strerror(-rc));
      else
        spdlog::trace("kernel cache: invalidated inode {}{}{}", t.ino, t.name.empty() ? "" : " entry ", t.name);
    }
    lock.lock();
    done_ += batch.size();
    done_cv_.notify_all();
  }
}

}  // namespace kvmfs::fuse
