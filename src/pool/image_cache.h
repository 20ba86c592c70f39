// ImageCache: image files opened on first use, with their backing chains,
// kept while the file is unchanged.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "backend/image_lock.h"
#include "kvmfs/chain.h"
#include "kvmfs/image.h"
#include "kvmfs/status.h"
#include "pool/detect.h"
#include "pool/file_key.h"

namespace kvmfs::pool {

// One virtual disk an image file offers: its flattened chain (kTop), an
// internal snapshot (kSnapshot, by SnapshotInfo::id), or a layer of its chain
// (kLayer, n >= 1: Chain::layers[n], read over its own backing).
struct ViewId {
  enum class Kind { kTop, kSnapshot, kLayer };
  Kind kind = Kind::kTop;
  std::string snapshot_id;
  size_t layer = 0;

  static ViewId Top() { return {}; }
  static ViewId Snapshot(std::string id) { return {Kind::kSnapshot, std::move(id), 0}; }
  static ViewId Layer(size_t n) { return {Kind::kLayer, "", n}; }
  std::string CacheKey() const;
};

// How open disk.raw handles lock the image files (CONTRACT.md "Writes").
struct AccessOptions {
  bool force_share = false;  // readers take no "not shared" bytes (qemu-img -U)
};

// An image file as opened (or failed to open) for one FileKey, with the
// cached per-view values derived from it and the state of open disk.raw
// handles: QEMU's locks are held only while handles are open (read locks on
// every file of the chain; write locks on the top file while a write handle
// is open), never for metadata (stat, listing, info.json). Thread-safe.
class OpenImage {
 public:
  OpenImage(std::string path, FileKey key, std::string format, Result<Chain> chain);
  ~OpenImage();

  const std::string& path() const { return path_; }  // canonical
  FileKey key() const;
  const std::string& format() const { return format_; }  // detected before opening
  const Status& status() const { return status_; }       // why opening failed, or OK
  bool ok() const { return status_.ok(); }
  const Chain& chain() const { return chain_; }  // requires ok()
  // Whether a layer of the chain is encrypted (its guest data is then only
  // for the mounting user: disk.raw loses its group/other modes).
  bool encrypted() const { return encrypted_; }

  // Whether this entry still stands for the file with `key`: the key matches,
  // or kvmfs itself is writing the file (its own writes change mtime and
  // size; the entry is then never replaced).
  bool IsCurrentFor(const FileKey& key) const;

  // Internal snapshots of the top image (empty when not opened).
  std::vector<SnapshotInfo> snapshots() const;
  // Directory names for snapshots(), see SnapshotDirNames().
  std::vector<std::string> snapshot_dir_names() const;
  // The id of the snapshot shown as directory `dir_name`, if any.
  std::optional<std::string> SnapshotIdForDir(const std::string& dir_name) const;
  // Names "<n>-<file name>" of the backing layers, n = 1.. (index n-1).
  std::vector<std::string> LayerDirNames() const;

  // The image of `view`. Errors: status() when the file failed to open, or the
  // driver's error opening a snapshot; kNotFound for an unknown snapshot/layer.
  Result<std::shared_ptr<Image>> ViewImage(const ViewId& view);

  // Bytes of `view` held as data anywhere in its chain (sum of kData runs of
  // ChainBlockStatus), computed once per version of the image (see Changed()).
  // 0 when the view cannot be opened.
  uint64_t AllocatedBytes(const ViewId& view);

  // The rendered info.json of `view`, computed once per version.
  std::string InfoText(const ViewId& view);

  // Records an open() of `view`'s disk.raw (or info.json when `info`); returns
  // whether it had been opened before, i.e. the kernel's page cache for it is
  // still valid.
  bool MarkOpened(const ViewId& view, bool info);

  // ---- Open disk.raw handles and writes -------------------------------------

  // Whether the top disk.raw may be opened for writing (the top file was
  // opened for writing); otherwise why not.
  Status CanWrite() const;

  // A disk.raw handle of `view` opens. The first handle takes QEMU's read
  // locks on every file of the chain; the first write handle (kTop only)
  // moves the top file to the write locks and calls Image::BeginWrites().
  // Errors: kBusy (another program, or another open image of kvmfs, holds
  // conflicting locks), kReadOnly (CanWrite(), or BeginWrites refused:
  // logged with the image's ReadOnlyReason()), status() of a broken image.
  // Nothing is held on failure.
  Status AcquireHandle(const ViewId& view, bool write, const AccessOptions& access);

  // A handle from AcquireHandle() closes. The last write handle calls
  // Image::EndWrites() (logged on failure) and goes back to the read locks;
  // the last handle releases every lock.
  void ReleaseHandle(const ViewId& view, bool write);

  // Whether a disk.raw of `view` is open.
  bool ViewOpen(const ViewId& view) const;

  // The image changed through kvmfs (write, zeroes, resize): cached
  // allocation and info.json are computed again.
  void Changed() { generation_.fetch_add(1, std::memory_order_acq_rel); }

  // After snapshot create/delete: reads the snapshot list again and forgets
  // the views of snapshots that are gone.
  void SnapshotsChanged();

  // Ends every write session still open (unmount): EndWrites on the top
  // image; the handles themselves stay counted.
  void EndWritesForShutdown();

 private:
  struct ViewState {
    std::optional<Result<std::shared_ptr<Image>>> image;
    std::optional<uint64_t> allocated;
    uint64_t allocated_gen = 0;
    std::optional<std::string> info_json;
    uint64_t info_gen = 0;
    bool disk_opened = false;
    bool info_opened = false;
  };
  Result<std::shared_ptr<Image>> ViewImageLocked(const ViewId& view, ViewState& state);
  std::string RenderInfo(const ViewId& view, ViewState& state);
  Status TakeLocks(bool write, const AccessOptions& access);
  void EndWriting();
  void RefreshKey();

  const std::string path_;
  const std::string format_;
  const Status status_;
  const Chain chain_;
  const bool encrypted_;

  mutable std::mutex mu_;
  FileKey key_;                                // GUARDED_BY(mu_)
  std::vector<SnapshotInfo> snapshots_;        // GUARDED_BY(mu_)
  std::vector<std::string> snapshot_names_;    // GUARDED_BY(mu_)
  std::map<std::string, ViewState> views_;     // GUARDED_BY(mu_), by ViewId::CacheKey()
  std::atomic<uint64_t> generation_{0};

  // Handles and locks. Taken before mu_ when both are needed; held across
  // BeginWrites/EndWrites so handles open and close one at a time.
  mutable std::mutex handles_mu_;
  int handles_ = 0;                                   // GUARDED_BY(handles_mu_)
  int writers_ = 0;                                   // GUARDED_BY(handles_mu_)
  LockSet read_locks_;                                // GUARDED_BY(handles_mu_)
  std::vector<std::unique_ptr<LockClaim>> claims_;    // GUARDED_BY(handles_mu_); [0]: top
  std::map<std::string, int> open_views_;             // GUARDED_BY(handles_mu_): handles by view
  // > 0 while kvmfs writes the file or is about to: see IsCurrentFor().
  std::atomic<int> pinned_{0};
};

// Unmount: ends the write sessions of every OpenImage that still has write
// handles (EndWrites: caches written back, no dirty bit, no leaks), wherever
// it lives (current pools, or pools replaced by a reload). Thread-safe.
void EndAllWrites();

using ChainOpener = std::function<Result<Chain>(const std::string& path, const ChainPolicy& policy,
                                                const std::string& format)>;

// Canonical path -> OpenImage. An image is opened on first Get() and opened
// again when its FileKey changes; failures are cached under the same key (and
// logged once). Only the top file's key is watched: a changed backing file is
// seen after the top file changes, or after remounting. Thread-safe; opens of
// one image are serialised, different images open in parallel.
class ImageCache {
 public:
  // Opened images kept beyond this many are closed again, least recently used
  // first, once nothing else (an open file) holds them; each holds file
  // descriptors. Failed opens hold none and stay cached.
  static constexpr size_t kDefaultMaxOpen = 256;

  ImageCache(ChainPolicy policy, ProbeCache* probe, ChainOpener opener = nullptr,
             size_t max_open = kDefaultMaxOpen);

  // The entry for the image file at `path` (canonicalized here). Fails only
  // when the file itself cannot be found or stat'ed; open failures are in the
  // entry's status().
  Result<std::shared_ptr<OpenImage>> Get(const std::string& path);
  // The same for a `path` the caller knows to be canonical, with its fresh
  // stat (the namespace resolved and stat'ed it a moment ago): saves the
  // realpath and stat calls on every request below an image directory.
  Result<std::shared_ptr<OpenImage>> GetCanonical(const std::string& path, const struct stat& st);

  // The entry for canonical `path` if the image is open and current for
  // `st`; nullptr otherwise (never opens).
  std::shared_ptr<OpenImage> Cached(const std::string& path, const struct stat& st);

  // The format Get() would use for `path`, without opening it.
  std::string FormatOf(const std::string& path, const struct stat& st) {
    return probe_->FormatOf(path, st);
  }

  const ChainPolicy& policy() const { return policy_; }

 private:
  struct Slot {
    std::mutex mu;
    std::shared_ptr<OpenImage> current;  // GUARDED_BY(mu)
    uint64_t last_use = 0;               // GUARDED_BY(ImageCache::mu_)
  };
  // Closes unreferenced opened images beyond max_open_, oldest use first.
  // Called after each new open; scans the slots only every EvictEvery()
  // opens, so that walking a pool of many thousand images stays linear.
  void Evict();
  size_t EvictEvery() const { return std::max<size_t>(1, max_open_ / 8); }

  const ChainPolicy policy_;
  ProbeCache* const probe_;
  const ChainOpener opener_;
  const size_t max_open_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Slot>> slots_;  // GUARDED_BY(mu_)
  uint64_t clock_ = 0;                                  // GUARDED_BY(mu_)
  size_t opens_since_evict_ = 0;                        // GUARDED_BY(mu_)
};

}  // namespace kvmfs::pool
