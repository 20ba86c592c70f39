// LayerFile: one host image file, opened once per mount and shared by every
// chain, snapshot view, backing view and writer that uses it (issue 10).
//
// A file has one format driver Image (one metadata cache), one set of QEMU
// locks (the union of what its users need; kvmfs never refuses itself), one
// write session, and one record of what changed in it. Its backing link
// points at the LayerFile of its backing file, so every chain through a file
// reads the same layers below it.
//
// Versions. Changes made through kvmfs bump generation() and log the guest
// ranges they touched (ChangesSince), so views above can recompute only
// those. Changes made outside kvmfs (qemu-io, a VM, qemu-img commit/rebase, a
// file replaced by mv) change the host file's FileKey: CheckCurrent() notices
// them, marks this LayerFile stale, and the registry opens the file anew and
// links every file above it to the new one. While kvmfs itself writes a file
// (a write session is open), its FileKey is expected to change and the file
// is never taken for stale.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backend/image_lock.h"
#include "base/mutex.h"
#include "kvmfs/chain.h"
#include "kvmfs/image.h"
#include "kvmfs/status.h"
#include "kvmfs/store.h"
#include "pool/file_key.h"

namespace kvmfs::pool {

// A guest byte range [first, first + second).
using GuestRange = std::pair<uint64_t, uint64_t>;

// What a user of a file needs of its QEMU locks.
enum class LockUse {
  kRead,        // bytes 100 + 201, 203: reading, others may not write or resize
  kSharedRead,  // byte 100: reading with force_share (qemu-img -U)
  kWrite,       // bytes 100, 101, 103 + 201, 203: writing (and a write session)
};

class LayerFile {
 public:
  LayerFile(Layer layer, FileKey key);
  ~LayerFile();
  LayerFile(const LayerFile&) = delete;
  LayerFile& operator=(const LayerFile&) = delete;

  const std::string& path() const { return layer_.path; }  // canonical, at open
  const std::string& format() const { return layer_.format; }
  const std::shared_ptr<Image>& image() const { return layer_.image; }
  bool writable() const { return layer_.writable; }
  const std::string& read_only_reason() const { return layer_.read_only_reason; }
  // The layer as the chain opener returned it.
  const Layer& layer() const { return layer_; }
  // The store the file lives in (layer().store, or the host's).
  Store& store() const;
  FileKey key() const EXCLUDES(mu_);

  // ---- Versions ---------------------------------------------------------------

  // Bumped by every change made through kvmfs (data, size, snapshots).
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }
  // A change through kvmfs of guest bytes [off, off+len); len 0: the size or
  // every byte may have changed (resize). Thread-safe.
  void NoteWrite(uint64_t off, uint64_t len) EXCLUDES(mu_);
  // A change of metadata only (snapshot created or deleted): no guest byte of
  // the active disk changed. Re-reads the snapshot list.
  void NoteSnapshots() EXCLUDES(mu_);
  // The guest ranges changed since generation `since` (unmerged), or nullopt
  // when the log no longer reaches back that far or a change covered
  // everything.
  std::optional<std::vector<GuestRange>> ChangesSince(uint64_t since) const EXCLUDES(mu_);

  // Superseded: the host file changed outside kvmfs (or was replaced) and a
  // new LayerFile stands for it now. Lock-free.
  bool stale() const { return stale_.load(std::memory_order_acquire); }
  void MarkStale() { stale_.store(true, std::memory_order_release); }
  // Whether this still is the host file at path(): compares a fresh stat with
  // key(), at most once per `interval` (always when it is zero); a changed
  // file that kvmfs is not writing itself is marked stale. Thread-safe.
  bool CheckCurrent(std::chrono::nanoseconds interval) EXCLUDES(mu_);
  // Whether `key` (a fresh stat of path()) is this version of the file, or
  // kvmfs is writing it.
  bool IsCurrentFor(const FileKey& key) const EXCLUDES(mu_);

  // ---- Locks and write sessions ------------------------------------------------

  // A user starts using the file as `use`: QEMU's bytes move to the union of
  // all uses (kBusy when another program holds conflicting ones). The first
  // kWrite user starts the write session (Image::BeginWrites: dirty images
  // are repaired there); the error is logged with the image's reason.
  Status Acquire(LockUse use) EXCLUDES(handles_mu_, mu_);
  // The user is done: the last kWrite user ends the write session
  // (Image::EndWrites: caches written back, file clean), the last user of all
  // drops every lock.
  void Release(LockUse use) EXCLUDES(handles_mu_, mu_);
  // Users right now (any use).
  int users() const EXCLUDES(handles_mu_);
  // Unmount: ends the write session if one is open (the users stay counted).
  void EndWritesForShutdown() EXCLUDES(handles_mu_, mu_);

  // ---- Snapshots and backing ----------------------------------------------------

  // The snapshot list as last read (at open, or after NoteSnapshots()): the
  // store's own snapshots of the file when it keeps them (RBD,
  // StoreCaps::snapshots), else the image's internal ones.
  std::vector<SnapshotInfo> snapshots() const EXCLUDES(mu_);
  // A store-level snapshot of the file as it is now (writes through kvmfs
  // flushed first). Errors: the store's (kAlreadyExists, kBusy, ...).
  Result<SnapshotInfo> CreateStoreSnapshot(const std::string& name);
  // Removes store-level snapshot `id` (kBusy for a protected one).
  Status DeleteStoreSnapshot(const std::string& id);
  // The read-only view of snapshot `id`, opened once and shared.
  Result<std::shared_ptr<Image>> SnapshotImage(const std::string& id) EXCLUDES(mu_);
  // Links `below` as this file's backing file (idempotent): the image and
  // its open snapshot views read through below's image from now on.
  void LinkBacking(std::shared_ptr<LayerFile> below) EXCLUDES(mu_);
  std::shared_ptr<LayerFile> backing_file() const EXCLUDES(mu_);

 private:
  LockSet WantedLocks() const REQUIRES(handles_mu_);
  Status BeginWriting() REQUIRES(handles_mu_);
  void EndWriting() REQUIRES(handles_mu_);
  void RefreshKey() EXCLUDES(mu_);
  // The snapshots as the store or the image says now.
  std::vector<SnapshotInfo> ReadSnapshots() const;
  // Store-level snapshot `id` opened with this file's format, read-only.
  Result<std::unique_ptr<Image>> OpenStoreSnapshot(const std::string& id) const;

  const Layer layer_;
  std::atomic<uint64_t> generation_{1};
  std::atomic<bool> stale_{false};
  std::atomic<int64_t> checked_ns_{0};  // last CheckCurrent stat (steady clock)
  // > 0 while kvmfs writes the file or is about to: see IsCurrentFor().
  std::atomic<int> pinned_{0};

  mutable Mutex mu_;
  FileKey key_ GUARDED_BY(mu_);
  // Changes through kvmfs: (generation after the change, range; len 0 = all).
  std::deque<std::pair<uint64_t, GuestRange>> changes_ GUARDED_BY(mu_);
  uint64_t log_floor_ GUARDED_BY(mu_) = 1;  // ChangesSince() answers for since >= this
  std::vector<SnapshotInfo> snapshots_ GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Image>> snapshot_views_ GUARDED_BY(mu_);
  std::shared_ptr<LayerFile> backing_file_ GUARDED_BY(mu_);

  // Taken before mu_ when both are needed; held across BeginWrites/EndWrites
  // so users come and go one at a time.
  mutable Mutex handles_mu_ ACQUIRED_BEFORE(mu_);
  int uses_[3] GUARDED_BY(handles_mu_) = {0, 0, 0};  // by LockUse
  std::unique_ptr<StoreLock> claim_ GUARDED_BY(handles_mu_);
};

// Host image files open in this process right now (LayerFiles alive: every
// top image and backing file in use, each counted once), for the metrics.
uint64_t OpenLayerFiles();

// A chain as LayerFiles: [0] the top image, [1] its backing file, ...
struct LayerChain {
  Status status;  // why the chain cannot be opened, or OK
  std::vector<std::shared_ptr<LayerFile>> files;  // empty unless status is OK
};

// The LayerFiles of a mount, by canonical path: one per host file, reused by
// every chain that needs it while it is current. Holds them weakly: a file
// closes when no chain uses it any more. Thread-safe.
class LayerRegistry {
 public:
  LayerRegistry() = default;
  LayerRegistry(const LayerRegistry&) = delete;
  LayerRegistry& operator=(const LayerRegistry&) = delete;

  // Opens the chain of canonical `path` as OpenChain() does, with one
  // LayerFile per file: a registered file that is current is shared (one
  // that is not writable while `policy` asks for writing is opened anew once
  // nothing uses it), any other is opened with policy.opener (default
  // OpenLayerFile). The new files are linked to their backing files first,
  // then registered: each one they replace is marked stale, and every file
  // linked to a replaced one as its backing is linked to the new one. Chain
  // opens of one registry are serialised (they are rare: first use, and
  // after a change from outside), so no file is opened twice.
  LayerChain Open(const std::string& path, const ChainPolicy& policy, const std::string& format)
      EXCLUDES(build_mu_, mu_);

  // The registered file at `path`, if any (never opens).
  std::shared_ptr<LayerFile> Find(const std::string& path) const EXCLUDES(mu_);

  // LayerFiles for a chain another opener made (tests): linked, not registered.
  static LayerChain Adopt(Result<Chain> chain);

  // Unmount: ends the open write session of every LayerFile of the process.
  static void EndAllWrites();

 private:
  // The current registered file for `request`, or a new one (not registered
  // yet) appended to `fresh`.
  Result<std::shared_ptr<LayerFile>> GetLocked(const LayerRequest& request,
                                               const LayerOpener& open,
                                               std::vector<std::shared_ptr<LayerFile>>* fresh)
      REQUIRES(build_mu_) EXCLUDES(mu_);
  void PublishLocked(const std::vector<std::shared_ptr<LayerFile>>& fresh) REQUIRES(build_mu_)
      EXCLUDES(mu_);

  Mutex build_mu_ ACQUIRED_BEFORE(mu_);
  mutable Mutex mu_;
  std::map<std::string, std::weak_ptr<LayerFile>> files_ GUARDED_BY(mu_);
  size_t sweep_at_ GUARDED_BY(mu_) = 1024;
};

}  // namespace kvmfs::pool
