// ImageCache: image files opened on first use, with their backing chains,
// kept while the file is unchanged.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

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

// An image file as opened (or failed to open) for one FileKey. Immutable apart
// from lazily computed, cached per-view values. Thread-safe.
class OpenImage {
 public:
  OpenImage(std::string path, FileKey key, std::string format, Result<Chain> chain);

  const std::string& path() const { return path_; }  // canonical
  const FileKey& key() const { return key_; }
  const std::string& format() const { return format_; }  // detected before opening
  const Status& status() const { return status_; }       // why opening failed, or OK
  bool ok() const { return status_.ok(); }
  const Chain& chain() const { return chain_; }  // requires ok()

  // Internal snapshots of the top image (empty when not opened).
  const std::vector<SnapshotInfo>& snapshots() const { return snapshots_; }
  // Directory names for snapshots(), see SnapshotDirNames().
  const std::vector<std::string>& snapshot_dir_names() const { return snapshot_names_; }
  // Names "<n>-<file name>" of the backing layers, n = 1.. (index n-1).
  std::vector<std::string> LayerDirNames() const;

  // The image of `view`. Errors: status() when the file failed to open, or the
  // driver's error opening a snapshot; kNotFound for an unknown snapshot/layer.
  Result<std::shared_ptr<Image>> ViewImage(const ViewId& view);

  // Bytes of `view` held as data anywhere in its chain (sum of kData runs of
  // ChainBlockStatus), computed once. 0 when the view cannot be opened.
  uint64_t AllocatedBytes(const ViewId& view);

  // The rendered info.json of `view`, computed once.
  const std::string& InfoText(const ViewId& view);

  // Records an open() of `view`'s disk.raw (or info.json when `info`); returns
  // whether it had been opened before, i.e. the kernel's page cache for it is
  // still valid.
  bool MarkOpened(const ViewId& view, bool info);

 private:
  struct ViewState {
    std::optional<Result<std::shared_ptr<Image>>> image;
    std::optional<uint64_t> allocated;
    std::optional<std::string> info_json;
    bool disk_opened = false;
    bool info_opened = false;
  };
  Result<std::shared_ptr<Image>> ViewImageLocked(const ViewId& view, ViewState& state);
  std::string RenderInfo(const ViewId& view, ViewState& state);

  const std::string path_;
  const FileKey key_;
  const std::string format_;
  const Status status_;
  const Chain chain_;
  const std::vector<SnapshotInfo> snapshots_;
  const std::vector<std::string> snapshot_names_;

  std::mutex mu_;
  std::map<std::string, ViewState> views_;  // GUARDED_BY(mu_), by ViewId::CacheKey()
};

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
  void Evict();

  const ChainPolicy policy_;
  ProbeCache* const probe_;
  const ChainOpener opener_;
  const size_t max_open_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Slot>> slots_;  // GUARDED_BY(mu_)
  uint64_t clock_ = 0;                                  // GUARDED_BY(mu_)
};

}  // namespace kvmfs::pool
