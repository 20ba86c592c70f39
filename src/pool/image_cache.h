// ImageCache: the images of a namespace, each opened on first use as a chain
// of shared LayerFiles (pool/layer_file.h) and kept current.
//
// Coherence (issue 10, CONTRACT.md): every file of a chain is one LayerFile
// per mount, so a write through any view is seen at once by every view whose
// chain contains the file. A change from outside kvmfs (qemu-io, a VM,
// qemu-img commit/rebase, mv) is noticed at the next open of any view of the
// image (every file of the chain is stat'ed), and otherwise within
// `recheck` (default 1 s) by stat, listing and force_share readers; the
// chain is then opened anew in place (only the changed files are reopened).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/mutex.h"
#include "kvmfs/chain.h"
#include "kvmfs/image.h"
#include "kvmfs/status.h"
#include "kvmfs/store.h"
#include "pool/detect.h"
#include "pool/file_key.h"
#include "pool/layer_file.h"

namespace kvmfs::pool {

// One virtual disk an image file offers: its flattened chain (kTop), an
// internal snapshot (kSnapshot, by SnapshotInfo::id), or a layer of its chain
// (kLayer, n >= 1: the n-th backing file, read over its own backing).
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

// Builds the chain of one image (its files), for OpenImage.
using ChainBuilder = std::function<LayerChain()>;
// Told the canonical path of each file whose content changed outside kvmfs
// (noticed and opened anew), or of an image whose open result changed; must
// not block (pool/change_listener.h).
using ChangeCallback = std::function<void(const std::string& canonical_path)>;

class OpenImage;

// One open disk.raw: the QEMU locks (and write session) it holds on the files
// of its chain, counted in its OpenImage. Given back when destroyed.
class DiskHandle {
 public:
  ~DiskHandle();
  DiskHandle(const DiskHandle&) = delete;
  DiskHandle& operator=(const DiskHandle&) = delete;

 private:
  friend class OpenImage;
  DiskHandle(std::shared_ptr<OpenImage> owner, ViewId view) : owner_(std::move(owner)), view_(std::move(view)) {}
  const std::shared_ptr<OpenImage> owner_;
  const ViewId view_;
  std::vector<std::pair<std::shared_ptr<LayerFile>, LockUse>> uses_;
  bool counted_ = false;  // in OwnerImage::open_views_
};

// An image file as opened (or failed to open) at one canonical path, with
// the per-view values derived from it (allocation, info.json), kept current
// as its files change. Thread-safe.
class OpenImage : public std::enable_shared_from_this<OpenImage> {
 public:
  // `format`: what the file's name and first bytes say (ProbeCache::FormatOf),
  // for messages while the chain cannot be opened.
  // `store`: where the file lives (null: the host's files).
  OpenImage(std::string path, std::string format, ChainBuilder build, std::chrono::nanoseconds recheck,
            ChangeCallback changed = nullptr, std::shared_ptr<Store> store = nullptr);

  const std::string& path() const { return path_; }  // canonical
  // The store of the top file (kvmfs/store.h).
  Store& store() const { return *store_; }
  std::string format() const EXCLUDES(mu_);           // of the top file (detected before opening)
  Status status() const EXCLUDES(mu_);                // why opening failed, or OK
  bool ok() const { return status().ok(); }
  // Whether a layer of the chain is encrypted (its guest data is then only
  // for the mounting user: disk.raw loses its group/other modes).
  bool encrypted() const;

  // The files of the chain ([0] the top image). Empty when the chain could
  // not be opened; kept when it opened but a layer's data is out of reach
  // (Image::DataStatus(): an encryption key missing or wrong), so that the
  // image can still be described.
  std::vector<std::shared_ptr<LayerFile>> files() const EXCLUDES(mu_);
  size_t depth() const { return files().size(); }
  // The top image (null when !ok()).
  std::shared_ptr<Image> top() const;

  // Makes sure the chain is the one on the host: the top file is compared
  // with `top_st` (a fresh stat) when given, every other file is stat'ed at
  // most once per recheck interval (always when `force`). A changed file, or
  // an open that failed more than an interval ago, makes the chain open
  // anew. Thread-safe.
  void EnsureCurrent(const struct stat* top_st, bool force) EXCLUDES(mu_);

  // Internal snapshots of the top image (empty when not opened).
  std::vector<SnapshotInfo> snapshots() const;
  // Directory names for snapshots(), see SnapshotDirNames().
  std::vector<std::string> snapshot_dir_names() const;
  // The id of the snapshot shown as directory `dir_name`, if any.
  std::optional<std::string> SnapshotIdForDir(const std::string& dir_name) const;
  // Names "<n>-<file name>" of the backing layers, n = 1.. (index n-1).
  std::vector<std::string> LayerDirNames() const;

  // The image of `view`. Errors: status() when the file failed to open, the
  // driver's error opening a snapshot, kNotFound for an unknown snapshot/layer.
  Result<std::shared_ptr<Image>> ViewImage(const ViewId& view) const;

  // Bytes of `view` held as data anywhere in its chain (sum of kData runs of
  // ChainBlockStatus). Kept per region of the disk: after changes through
  // kvmfs only the regions they touched are walked again. 0 when the view
  // cannot be opened.
  uint64_t AllocatedBytes(const ViewId& view) EXCLUDES(mu_);

  // The rendered info.json of `view`, computed once per version of its files.
  std::string InfoText(const ViewId& view) EXCLUDES(mu_);

  // Records an open() of `view`'s disk.raw (or info.json when `info`); returns
  // whether it had been opened before with the same version of every file of
  // its chain, i.e. the kernel's page cache for it is still valid.
  bool MarkOpened(const ViewId& view, bool info) EXCLUDES(mu_);

  // ---- Open disk.raw handles and writes -------------------------------------

  // Whether the top disk.raw may be opened for writing; otherwise why not
  // (kReadOnly with the reason, or status()).
  Status CanWrite() const;

  // A disk.raw handle of `view` opens: a read lock (kSharedRead with
  // force_share) on every file of the chain, and for a write handle (kTop
  // only) a write lock and the write session on the top file. Errors: kBusy
  // (another program holds conflicting locks), kReadOnly (CanWrite(), or
  // BeginWrites refused), status() of a broken image. Nothing is held on
  // failure.
  Result<std::shared_ptr<DiskHandle>> AcquireHandle(const ViewId& view, bool write,
                                                    const AccessOptions& access) EXCLUDES(mu_);

  // Whether a disk.raw of `view` is open.
  bool ViewOpen(const ViewId& view) const EXCLUDES(mu_);

  // Kept for callers that still signal writes: changes are recorded by the
  // LiveView that made them (see MakeLiveView), so this does nothing.
  void Changed() {}

  // After snapshot create/delete: the top file reads its snapshot list again.
  void SnapshotsChanged();

  // The Image a disk.raw handle of `view` reads and writes through: it
  // records writes in the top file (other views recompute what changed),
  // answers GetBlockStatus for the whole flattened chain, and follows the
  // chain when a file of it is opened anew (force_share readers check for
  // outside changes once per recheck interval while they read).
  std::shared_ptr<Image> MakeLiveView(const ViewId& view, std::shared_ptr<Image> image, bool write,
                                      bool force_share);

 private:
  friend class DiskHandle;
  friend class LiveView;
  struct State {
    Status status;
    std::vector<std::shared_ptr<LayerFile>> files;
    FileKey top_key;          // the top file when this state was built
    int64_t built_ns = 0;     // steady clock
  };
  // (file, generation) of every file a view reads, as of now.
  using Version = std::vector<std::pair<const LayerFile*, uint64_t>>;
  struct AllocMap {
    Version version;
    uint64_t size = 0;
    uint64_t region = 0;
    std::vector<uint64_t> regions;  // data bytes per region
    uint64_t total = 0;
  };
  struct ViewState {
    std::optional<AllocMap> alloc;
    std::optional<std::string> info_json;
    Version info_version;
    std::optional<Version> disk_opened;
    std::optional<Version> info_opened;
  };
  std::shared_ptr<const State> state() const EXCLUDES(mu_);
  void Rebuild(const std::shared_ptr<const State>& seen) EXCLUDES(mu_);
  // The files `view` reads: all for kTop/kSnapshot, [n..] for kLayer n.
  static std::vector<std::shared_ptr<LayerFile>> ViewFiles(const State& state, const ViewId& view);
  static Version VersionOf(const std::vector<std::shared_ptr<LayerFile>>& files);
  std::string RenderInfo(const ViewId& view, const State& state) const;
  void ReleaseHandle(DiskHandle& handle) EXCLUDES(mu_);

  const std::string path_;
  const std::shared_ptr<Store> store_;
  const ChainBuilder build_;
  const std::chrono::nanoseconds recheck_;
  const ChangeCallback changed_;

  mutable Mutex mu_;
  std::string format_ GUARDED_BY(mu_);
  std::shared_ptr<const State> state_ GUARDED_BY(mu_);
  std::map<std::string, ViewState> views_ GUARDED_BY(mu_);  // by ViewId::CacheKey()
  std::map<std::string, int> open_views_ GUARDED_BY(mu_);   // disk.raw handles by view
  Mutex build_mu_ ACQUIRED_BEFORE(mu_);                     // one Rebuild at a time
};

// Unmount: ends the write sessions of every LayerFile that still has write
// handles (EndWrites: caches written back, no dirty bit, no leaks), wherever
// it lives (current pools, or pools replaced by a reload). Thread-safe.
void EndAllWrites();

using ChainOpener = std::function<Result<Chain>(const std::string& path, const ChainPolicy& policy,
                                                const std::string& format)>;

// Canonical path -> OpenImage. An image is opened on first Get() and kept
// current (OpenImage::EnsureCurrent). Thread-safe; opens of one image are
// serialised, different images open in parallel.
class ImageCache {
 public:
  // Opened images kept beyond this many are closed again, least recently used
  // first, once nothing else (an open file) holds them; each holds file
  // descriptors. Failed opens are kept up to the same number.
  static constexpr size_t kDefaultMaxOpen = 256;
  static constexpr std::chrono::milliseconds kDefaultRecheck{1000};

  // `opener` replaces the real chain opener (tests: its chains are not
  // shared through `registry`). `registry`: the mount's LayerRegistry (a
  // private one when null).
  ImageCache(ChainPolicy policy, ProbeCache* probe, ChainOpener opener = nullptr,
             size_t max_open = kDefaultMaxOpen, std::shared_ptr<LayerRegistry> registry = nullptr,
             std::chrono::nanoseconds recheck = kDefaultRecheck);

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
  std::chrono::nanoseconds recheck() const { return recheck_; }
  // The open files of the mount (or of this cache).
  LayerRegistry& registry() const { return *registry_; }
  // Who hears of files changed outside kvmfs (see ChangeCallback). Set once,
  // before use.
  void SetChangeCallback(ChangeCallback changed) { changed_ = std::move(changed); }

 private:
  struct Slot {
    Mutex mu;
    std::shared_ptr<OpenImage> current GUARDED_BY(mu);
    uint64_t last_use = 0;  // GUARDED_BY(ImageCache::mu_)
  };
  // Closes unreferenced images beyond max_open_ (opened or failed), oldest
  // use first, and forgets their slots. Scans only every EvictEvery() new
  // entries, so that walking a pool of many thousand images stays linear.
  void Evict() EXCLUDES(mu_);
  size_t EvictEvery() const { return std::max<size_t>(1, max_open_ / 8); }
  ChainBuilder BuilderFor(const std::string& path, const std::string& format);

  const ChainPolicy policy_;
  ProbeCache* const probe_;
  const ChainOpener opener_;
  const size_t max_open_;
  const std::shared_ptr<LayerRegistry> registry_;
  const std::chrono::nanoseconds recheck_;
  ChangeCallback changed_;
  Mutex mu_;
  std::map<std::string, std::shared_ptr<Slot>> slots_ GUARDED_BY(mu_);
  uint64_t clock_ GUARDED_BY(mu_) = 0;
  size_t opens_since_evict_ GUARDED_BY(mu_) = 0;
};

}  // namespace kvmfs::pool
