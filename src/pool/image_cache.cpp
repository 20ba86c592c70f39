#include "pool/image_cache.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <utility>

#include "pool/info_json.h"
#include "pool/snapshot_names.h"

namespace kvmfs::pool {
namespace {

Status StatusOf(const Result<Chain>& chain) {
  if (!chain.ok()) return chain.status();
  if (chain->layers.empty()) return Status::Corruption("empty chain");
  // A layer opened without access to its data (encryption key missing or
  // wrong, cipher not computable) makes the image unusable but describable.
  for (const Layer& layer : chain->layers)
    if (Status data = layer.image->DataStatus(); !data.ok()) return data;
  return Status::OK();
}

// The OpenImages with write handles, for EndAllWrites() at unmount.
class WritingSet {
 public:
  void Add(OpenImage* image) {
    std::lock_guard lock(mu_);
    images_.insert(image);
  }
  void Remove(OpenImage* image) {
    std::lock_guard lock(mu_);
    images_.erase(image);
  }
  std::vector<OpenImage*> Snapshot() {
    std::lock_guard lock(mu_);
    return {images_.begin(), images_.end()};
  }

 private:
  std::mutex mu_;
  std::set<OpenImage*> images_;  // GUARDED_BY(mu_)
};

WritingSet& Writing() {
  static WritingSet* set = new WritingSet;  // outlives every OpenImage
  return *set;
}

}  // namespace

std::string ViewId::CacheKey() const {
  switch (kind) {
    case Kind::kTop: return "t";
    case Kind::kSnapshot: return "s:" + snapshot_id;
    case Kind::kLayer: return "l:" + std::to_string(layer);
  }
  return "?";
}

OpenImage::OpenImage(std::string path, FileKey key, std::string format, Result<Chain> chain)
    : path_(std::move(path)),
      format_(std::move(format)),
      status_(StatusOf(chain)),
      // Kept when only a layer's data is out of reach (see StatusOf), for info.json.
      chain_(chain.ok() ? std::move(chain).value() : Chain{}),
      encrypted_(std::any_of(chain_.layers.begin(), chain_.layers.end(),
                             [](const Layer& l) { return l.image->Info().encrypted; })),
      key_(key),
      snapshots_(!chain_.layers.empty() ? chain_.top()->Snapshots() : std::vector<SnapshotInfo>{}),
      snapshot_names_(SnapshotDirNames(snapshots_)) {}

OpenImage::~OpenImage() { Writing().Remove(this); }

FileKey OpenImage::key() const {
  std::lock_guard lock(mu_);
  return key_;
}

bool OpenImage::IsCurrentFor(const FileKey& key) const {
  if (pinned_.load(std::memory_order_acquire) > 0) return true;
  std::lock_guard lock(mu_);
  return key_ == key;
}

std::vector<SnapshotInfo> OpenImage::snapshots() const {
  std::lock_guard lock(mu_);
  return snapshots_;
}

std::vector<std::string> OpenImage::snapshot_dir_names() const {
  std::lock_guard lock(mu_);
  return snapshot_names_;
}

std::optional<std::string> OpenImage::SnapshotIdForDir(const std::string& dir_name) const {
  std::lock_guard lock(mu_);
  auto it = std::find(snapshot_names_.begin(), snapshot_names_.end(), dir_name);
  if (it == snapshot_names_.end()) return std::nullopt;
  return snapshots_[size_t(it - snapshot_names_.begin())].id;
}

std::vector<std::string> OpenImage::LayerDirNames() const {
  std::vector<std::string> names;
  for (size_t n = 1; n < chain_.layers.size(); ++n)
    names.push_back(std::to_string(n) + "-" + BaseName(chain_.layers[n].path));
  return names;
}

Result<std::shared_ptr<Image>> OpenImage::ViewImage(const ViewId& view) {
  std::lock_guard lock(mu_);
  return ViewImageLocked(view, views_[view.CacheKey()]);
}

Result<std::shared_ptr<Image>> OpenImage::ViewImageLocked(const ViewId& view, ViewState& state) {
  if (state.image) return *state.image;
  Result<std::shared_ptr<Image>> image = Status::NotFound(path_ + ": no such view");
  if (!status_.ok()) {
    image = status_;
  } else {
    switch (view.kind) {
      case ViewId::Kind::kTop: image = chain_.top(); break;
      case ViewId::Kind::kLayer:
        if (view.layer >= 1 && view.layer < chain_.layers.size())
          image = chain_.layers[view.layer].image;
        break;
      case ViewId::Kind::kSnapshot: {
        auto snap = chain_.top()->OpenSnapshot(view.snapshot_id);
        if (snap.ok()) {
          image = std::shared_ptr<Image>(std::move(snap).value());
        } else {
          image = snap.status();
          spdlog::error("{}: cannot open snapshot {}: {}", path_, view.snapshot_id,
                        snap.status().ToString());
        }
        break;
      }
    }
  }
  state.image = image;
  return image;
}

uint64_t OpenImage::AllocatedBytes(const ViewId& view) {
  std::shared_ptr<Image> image;
  const uint64_t gen = generation_.load(std::memory_order_acquire);
  {
    std::lock_guard lock(mu_);
    ViewState& state = views_[view.CacheKey()];
    if (state.allocated && state.allocated_gen == gen) return *state.allocated;
    auto opened = ViewImageLocked(view, state);
    if (!opened.ok()) {
      state.allocated = 0;
      state.allocated_gen = gen;
      return 0;
    }
    image = *opened;
  }
  // Walked without the lock, so opens and reads of this image do not wait for
  // a large map; two first callers may both walk it, with the same result.
  // Runs are as long as the drivers can tell: for a mostly empty image this is
  // a handful of calls, not one per cluster.
  uint64_t allocated = 0;
  uint64_t size = image->size();
  for (uint64_t off = 0; off < size;) {
    auto bs = ChainBlockStatus(*image, off, size - off);
    if (!bs.ok() || bs->length == 0) {
      if (!bs.ok())
        spdlog::warn("{}: allocation map at offset {}: {}", path_, off, bs.status().ToString());
      break;
    }
    if (bs->kind == Allocation::kData) allocated += bs->length;
    off += bs->length;
  }
  std::lock_guard lock(mu_);
  ViewState& state = views_[view.CacheKey()];
  // A walk that raced with a write is still returned, but not kept.
  if (!state.allocated || state.allocated_gen != gen) {
    state.allocated = allocated;
    state.allocated_gen = gen;
  }
  return allocated;
}

std::string OpenImage::InfoText(const ViewId& view) {
  const uint64_t gen = generation_.load(std::memory_order_acquire);
  std::lock_guard lock(mu_);
  ViewState& state = views_[view.CacheKey()];
  if (!state.info_json || state.info_gen != gen) {
    state.info_json = RenderInfo(view, state);
    state.info_gen = gen;
  }
  return *state.info_json;
}

std::string OpenImage::RenderInfo(const ViewId& view, ViewState& state) {
  if (!status_.ok() && chain_.layers.empty())
    return RenderJson(ErrorJson(path_, format_, status_.ToString()));
  size_t index = view.kind == ViewId::Kind::kLayer ? view.layer : 0;
  if (index >= chain_.layers.size())
    return RenderJson(ErrorJson(path_, format_, "no such backing layer"));
  const Layer& layer = chain_.layers[index];

  InfoSubject subject;
  subject.filename = layer.path;
  subject.info = layer.image->Info();
  auto actual = layer.image->ActualSize();
  if (actual.ok()) subject.actual_size = *actual;
  if (index + 1 < chain_.layers.size()) subject.full_backing_filename = chain_.layers[index + 1].path;
  subject.snapshots = index == 0 ? snapshots_ : layer.image->Snapshots();
  if (view.kind == ViewId::Kind::kTop) {
    // Only where writing was asked for (a read-write pool) and is refused.
    subject.read_only_reason = layer.read_only_reason;
    if (subject.read_only_reason.empty() && layer.writable)
      subject.read_only_reason = layer.image->ReadOnlyReason();
  }

  if (view.kind == ViewId::Kind::kSnapshot) {
    for (const SnapshotInfo& s : snapshots_)
      if (s.id == view.snapshot_id) subject.snapshot = s;
    if (!subject.snapshot)
      return RenderJson(ErrorJson(path_, format_, "no snapshot with id " + view.snapshot_id));
    auto image = ViewImageLocked(view, state);
    if (!image.ok() && status_.ok()) {
      nlohmann::ordered_json j = ErrorJson(path_, format_, image.status().ToString());
      j["snapshot"] = SnapshotJson(*subject.snapshot);
      return RenderJson(j);
    }
  }
  // An image whose data is out of reach (a key problem): described, with why.
  if (!status_.ok()) {
    nlohmann::ordered_json j = pool::InfoJson(subject);
    j["error"] = status_.ToString();
    return RenderJson(j);
  }
  return RenderJson(pool::InfoJson(subject));
}

bool OpenImage::MarkOpened(const ViewId& view, bool info) {
  std::lock_guard lock(mu_);
  ViewState& state = views_[view.CacheKey()];
  return std::exchange(info ? state.info_opened : state.disk_opened, true);
}

// ---- Handles, locks and write sessions ---------------------------------------

Status OpenImage::CanWrite() const {
  if (!status_.ok()) return status_;
  const Layer& top = chain_.layers.front();
  if (!top.writable)
    return Status::ReadOnly(path_ + ": " +
                            (top.read_only_reason.empty() ? "opened read-only" : top.read_only_reason));
  return Status::OK();
}

Status OpenImage::TakeLocks(bool write, const AccessOptions& access) {
  read_locks_ = access.force_share ? kSharedReaderLocks : kReaderLocks;
  std::vector<std::unique_ptr<LockClaim>> claims;
  for (size_t i = 0; i < chain_.layers.size(); ++i) {
    // Backing files are read as QEMU reads them under an overlay: byte 100,
    // not sharing write/resize (201, 203) unless force_share.
    LockSet set = (i == 0 && write) ? kWriterLocks : read_locks_;
    KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<LockClaim> claim,
                           LockClaim::Acquire(chain_.layers[i].path, set));
    claims.push_back(std::move(claim));
  }
  claims_ = std::move(claims);
  return Status::OK();
}

Status OpenImage::AcquireHandle(const ViewId& view, bool write, const AccessOptions& access) {
  if (!status_.ok()) return status_;
  if (write) {
    if (view.kind != ViewId::Kind::kTop)
      return Status::ReadOnly(path_ + ": snapshot and backing views are read-only");
    KVMFS_RETURN_IF_ERROR(CanWrite());
  }
  std::lock_guard lock(handles_mu_);
  const bool first = handles_ == 0;
  if (first) {
    KVMFS_RETURN_IF_ERROR(TakeLocks(write, access));
  } else if (write && writers_ == 0) {
    KVMFS_RETURN_IF_ERROR(claims_.front()->Change(kWriterLocks));
  }
  if (write && writers_ == 0) {
    // Pinned before the first byte changes: our own writes must not make the
    // cache take this entry for a changed file.
    pinned_.fetch_add(1, std::memory_order_acq_rel);
    const std::shared_ptr<Image>& top = chain_.top();
    Status begun = top->BeginWrites();
    if (!begun.ok()) {
      std::string reason = top->ReadOnlyReason();
      spdlog::error("{}: cannot write: {}{}", path_, begun.ToString(),
                    reason.empty() || begun.message().find(reason) != std::string::npos
                        ? ""
                        : " (" + reason + ")");
      RefreshKey();
      Changed();
      pinned_.fetch_sub(1, std::memory_order_acq_rel);
      if (first) {
        claims_.clear();
      } else {
        (void)claims_.front()->Change(read_locks_);
      }
      if (begun.code() == Status::Code::kReadOnly && !reason.empty())
        return Status::ReadOnly(path_ + ": " + reason);
      return begun.WithContext(path_);
    }
    Writing().Add(this);
  }
  ++handles_;
  if (write) ++writers_;
  ++open_views_[view.CacheKey()];
  return Status::OK();
}

void OpenImage::EndWriting() {
  Status ended = chain_.top()->EndWrites();
  if (!ended.ok()) spdlog::error("{}: finishing writes: {}", path_, ended.ToString());
  Writing().Remove(this);
  RefreshKey();
  Changed();
  pinned_.fetch_sub(1, std::memory_order_acq_rel);
}

void OpenImage::ReleaseHandle(const ViewId& view, bool write) {
  std::lock_guard lock(handles_mu_);
  auto it = open_views_.find(view.CacheKey());
  if (it != open_views_.end() && --it->second <= 0) open_views_.erase(it);
  if (write && writers_ > 0 && --writers_ == 0) {
    EndWriting();
    if (handles_ > 1) {
      Status down = claims_.front()->Change(read_locks_);
      if (!down.ok()) spdlog::warn("{}: back to read locks: {}", path_, down.ToString());
    }
  }
  if (handles_ > 0 && --handles_ == 0) claims_.clear();
}

bool OpenImage::ViewOpen(const ViewId& view) const {
  std::lock_guard lock(handles_mu_);
  return open_views_.count(view.CacheKey()) > 0;
}

void OpenImage::RefreshKey() {
  auto st = StatPath(path_);
  if (!st.ok()) return;
  std::lock_guard lock(mu_);
  key_ = FileKey::FromStat(*st);
}

void OpenImage::SnapshotsChanged() {
  std::lock_guard lock(mu_);
  snapshots_ = chain_.top()->Snapshots();
  snapshot_names_ = SnapshotDirNames(snapshots_);
  for (auto it = views_.begin(); it != views_.end();) {
    bool gone = it->first.rfind("s:", 0) == 0 &&
                std::none_of(snapshots_.begin(), snapshots_.end(),
                             [&](const SnapshotInfo& s) { return "s:" + s.id == it->first; });
    it = gone ? views_.erase(it) : std::next(it);
  }
  Changed();
}

void OpenImage::EndWritesForShutdown() {
  std::lock_guard lock(handles_mu_);
  if (writers_ == 0) return;
  Status ended = chain_.top()->EndWrites();
  if (!ended.ok()) spdlog::error("{}: finishing writes at unmount: {}", path_, ended.ToString());
  else spdlog::info("{}: writes finished at unmount ({} write handle(s) still open)", path_, writers_);
}

void EndAllWrites() {
  for (OpenImage* image : Writing().Snapshot()) image->EndWritesForShutdown();
}

ImageCache::ImageCache(ChainPolicy policy, ProbeCache* probe, ChainOpener opener,
                       size_t max_open)
    : policy_(std::move(policy)),
      probe_(probe),
      opener_(opener ? std::move(opener)
                     : ChainOpener([](const std::string& path, const ChainPolicy& p,
                                      const std::string& format) {
                         return OpenChain(path, p, format);
                       })),
      max_open_(max_open) {}

Result<std::shared_ptr<OpenImage>> ImageCache::Get(const std::string& path) {
  KVMFS_ASSIGN_OR_RETURN(std::string canonical, CanonicalPath(path));
  KVMFS_ASSIGN_OR_RETURN(struct stat st, StatPath(canonical));
  return GetCanonical(canonical, st);
}

Result<std::shared_ptr<OpenImage>> ImageCache::GetCanonical(const std::string& canonical,
                                                            const struct stat& known) {
  struct stat st = known;
  FileKey key = FileKey::FromStat(st);

  std::shared_ptr<Slot> slot;
  {
    std::lock_guard lock(mu_);
    auto& s = slots_[canonical];
    if (!s) s = std::make_shared<Slot>();
    s->last_use = ++clock_;
    slot = s;
  }
  std::shared_ptr<OpenImage> entry;
  {
    std::lock_guard lock(slot->mu);
    if (slot->current && slot->current->IsCurrentFor(key)) return slot->current;
    if (slot->current) {
      // The stat above may predate the end of our own write session (which
      // refreshes the entry's key): look again before reopening.
      auto again = StatPath(canonical);
      if (again.ok()) {
        st = *again;
        key = FileKey::FromStat(st);
        if (slot->current->IsCurrentFor(key)) return slot->current;
      }
    }

    std::string format = probe_->FormatOf(canonical, st);
    Result<Chain> chain = opener_(canonical, policy_, format);
    if (!chain.ok()) {
      spdlog::error("cannot open image {}: {}", canonical, chain.status().ToString());
    } else if (Status data = StatusOf(chain); !data.ok()) {
      spdlog::error("cannot open image {}: {}", canonical, data.ToString());
    } else {
      spdlog::debug("opened image {} ({}, {} layer(s))", canonical, format, chain->layers.size());
    }
    slot->current = std::make_shared<OpenImage>(canonical, key, format, std::move(chain));
    entry = slot->current;
  }
  Evict();
  return entry;
}

std::shared_ptr<OpenImage> ImageCache::Cached(const std::string& path, const struct stat& st) {
  std::shared_ptr<Slot> slot;
  {
    std::lock_guard lock(mu_);
    auto it = slots_.find(path);
    if (it == slots_.end()) return nullptr;
    slot = it->second;
  }
  std::lock_guard lock(slot->mu);
  if (slot->current && slot->current->IsCurrentFor(FileKey::FromStat(st))) return slot->current;
  return nullptr;
}

void ImageCache::Evict() {
  std::lock_guard lock(mu_);
  // A scan costs one try_lock per slot ever seen: with thousands of images
  // (ls -R of a large pool opens each once) scanning after every open would
  // make the walk quadratic. Up to EvictEvery() images beyond the limit stay
  // open until the next scan.
  if (++opens_since_evict_ < EvictEvery()) return;
  opens_since_evict_ = 0;
  // Candidates: opened (not failed) images that only the cache holds. A slot
  // busy opening is skipped (try_lock), so this never waits under mu_.
  std::vector<std::pair<uint64_t, Slot*>> idle;
  size_t open = 0;
  for (auto& [path, slot] : slots_) {
    std::unique_lock slot_lock(slot->mu, std::try_to_lock);
    if (!slot_lock.owns_lock() || !slot->current || !slot->current->ok()) continue;
    ++open;
    if (slot->current.use_count() == 1) idle.emplace_back(slot->last_use, slot.get());
  }
  if (open <= max_open_) return;
  std::sort(idle.begin(), idle.end());
  for (auto& [last_use, slot] : idle) {
    if (open <= max_open_) break;
    std::unique_lock slot_lock(slot->mu, std::try_to_lock);
    if (!slot_lock.owns_lock() || !slot->current || slot->current.use_count() != 1) continue;
    spdlog::debug("closing idle image {}", slot->current->path());
    slot->current.reset();
    --open;
  }
}

}  // namespace kvmfs::pool
