#include "pool/image_cache.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "pool/info_json.h"
#include "pool/snapshot_names.h"

namespace kvmfs::pool {
namespace {

Status StatusOf(const Result<Chain>& chain) {
  if (!chain.ok()) return chain.status();
  if (chain->layers.empty()) return Status::Corruption("empty chain");
  return Status::OK();
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
      key_(key),
      format_(std::move(format)),
      status_(StatusOf(chain)),
      chain_(status_.ok() ? std::move(chain).value() : Chain{}),
      snapshots_(status_.ok() ? chain_.top()->Snapshots() : std::vector<SnapshotInfo>{}),
      snapshot_names_(SnapshotDirNames(snapshots_)) {}

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
  {
    std::lock_guard lock(mu_);
    ViewState& state = views_[view.CacheKey()];
    if (state.allocated) return *state.allocated;
    auto opened = ViewImageLocked(view, state);
    if (!opened.ok()) {
      state.allocated = 0;
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
  if (!state.allocated) state.allocated = allocated;
  return *state.allocated;
}

const std::string& OpenImage::InfoText(const ViewId& view) {
  std::lock_guard lock(mu_);
  ViewState& state = views_[view.CacheKey()];
  if (!state.info_json) state.info_json = RenderInfo(view, state);
  return *state.info_json;
}

std::string OpenImage::RenderInfo(const ViewId& view, ViewState& state) {
  if (!status_.ok()) return RenderJson(ErrorJson(path_, format_, status_.ToString()));
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

  if (view.kind == ViewId::Kind::kSnapshot) {
    for (const SnapshotInfo& s : snapshots_)
      if (s.id == view.snapshot_id) subject.snapshot = s;
    if (!subject.snapshot)
      return RenderJson(ErrorJson(path_, format_, "no snapshot with id " + view.snapshot_id));
    auto image = ViewImageLocked(view, state);
    if (!image.ok()) {
      nlohmann::ordered_json j = ErrorJson(path_, format_, image.status().ToString());
      j["snapshot"] = SnapshotJson(*subject.snapshot);
      return RenderJson(j);
    }
  }
  return RenderJson(pool::InfoJson(subject));
}

bool OpenImage::MarkOpened(const ViewId& view, bool info) {
  std::lock_guard lock(mu_);
  ViewState& state = views_[view.CacheKey()];
  return std::exchange(info ? state.info_opened : state.disk_opened, true);
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
    if (slot->current && slot->current->key() == key) return slot->current;

    std::string format = probe_->FormatOf(canonical, st);
    Result<Chain> chain = opener_(canonical, policy_, format);
    if (!chain.ok()) {
      spdlog::error("cannot open image {}: {}", canonical, chain.status().ToString());
    } else {
      spdlog::debug("opened image {} ({}, {} layer(s))", canonical, format, chain->layers.size());
    }
    slot->current = std::make_shared<OpenImage>(canonical, key, format, std::move(chain));
    entry = slot->current;
  }
  Evict();
  return entry;
}

void ImageCache::Evict() {
  std::lock_guard lock(mu_);
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
