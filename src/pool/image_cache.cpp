#include "pool/image_cache.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "pool/info_json.h"
#include "pool/snapshot_names.h"

namespace kvmfs::pool {
namespace {

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Allocation is kept per region: at most kMaxRegions of at least
// kMinRegionBytes (a 1 TiB disk: 16384 regions of 64 MiB, 128 KiB of counts).
constexpr uint64_t kMinRegionBytes = 64ull << 20;
constexpr uint64_t kMaxRegions = 65536;

uint64_t RegionSize(uint64_t size) {
  uint64_t region = kMinRegionBytes;
  while (size / region >= kMaxRegions) region *= 2;
  return region;
}

// Data bytes of the flattened chain of `image` in [off, end).
uint64_t DataBytes(Image& image, uint64_t off, uint64_t end, const std::string& path) {
  uint64_t data = 0;
  while (off < end) {
    auto bs = ChainBlockStatus(image, off, end - off);
    if (!bs.ok() || bs->length == 0) {
      if (!bs.ok()) spdlog::warn("{}: allocation map at offset {}: {}", path, off, bs.status().ToString());
      break;
    }
    if (bs->kind == Allocation::kData) data += bs->length;
    off += bs->length;
  }
  return data;
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

// ---- OpenImage ------------------------------------------------------------------

OpenImage::OpenImage(std::string path, std::string format, ChainBuilder build,
                     std::chrono::nanoseconds recheck, ChangeCallback changed,
                     std::shared_ptr<Store> store)
    : path_(std::move(path)),
      store_(store ? std::move(store) : HostStore()),
      build_(std::move(build)),
      recheck_(recheck),
      changed_(std::move(changed)),
      format_(std::move(format)) {
  Rebuild(nullptr);
}

std::shared_ptr<const OpenImage::State> OpenImage::state() const {
  MutexLock lock(mu_);
  return state_;
}

std::string OpenImage::format() const {
  MutexLock lock(mu_);
  return format_;
}

Status OpenImage::status() const { return state()->status; }

std::vector<std::shared_ptr<LayerFile>> OpenImage::files() const { return state()->files; }

bool OpenImage::encrypted() const {
  auto s = state();
  return std::any_of(s->files.begin(), s->files.end(),
                     [](const std::shared_ptr<LayerFile>& f) { return f->image()->Info().encrypted; });
}

std::shared_ptr<Image> OpenImage::top() const {
  auto s = state();
  return s->files.empty() ? nullptr : s->files.front()->image();
}

void OpenImage::Rebuild(const std::shared_ptr<const State>& seen) {
  MutexLock build(build_mu_);
  if (seen != nullptr && state() != seen) return;  // another thread rebuilt it meanwhile
  auto next = std::make_shared<State>();
  auto st = store_->Stat(path_, true);
  if (st.ok()) next->top_key = FileKey::FromStat(*st);
  LayerChain chain = build_();
  next->status = chain.status;
  next->files = std::move(chain.files);
  // A layer opened without access to its data (encryption key missing or
  // wrong, cipher not computable) makes the image unusable but describable.
  for (const auto& f : next->files)
    if (Status data = f->image()->DataStatus(); !data.ok() && next->status.ok()) next->status = data;
  next->built_ns = SteadyNs();
  if (!next->status.ok()) {
    spdlog::error("cannot open image {}: {}", path_, next->status.ToString());
  } else {
    spdlog::debug("opened image {} ({}, {} layer(s))", path_, next->files.front()->format(),
                  next->files.size());
  }
  // Who caches what the views showed hears of every file that is not the
  // same open file any more (changed outside kvmfs, replaced, newly found),
  // and of the image itself when it opens differently.
  std::vector<std::string> changed;
  if (seen != nullptr && changed_) {
    if (seen->status.ok() != next->status.ok()) changed.push_back(path_);
    for (const auto& f : next->files)
      if (std::none_of(seen->files.begin(), seen->files.end(),
                       [&](const std::shared_ptr<LayerFile>& old) { return old == f; }))
        changed.push_back(f->path());
    for (const auto& old : seen->files)
      if (std::none_of(next->files.begin(), next->files.end(),
                       [&](const std::shared_ptr<LayerFile>& f) { return f->path() == old->path(); }))
        changed.push_back(old->path());
  }
  {
    MutexLock lock(mu_);
    if (next->status.ok()) format_ = next->files.front()->format();
    state_ = std::move(next);
  }
  for (const std::string& path : changed) changed_(path);
}

void OpenImage::EnsureCurrent(const struct stat* top_st, bool force) {
  auto s = state();
  bool current = true;
  if (!s->status.ok()) {
    // A failed open is retried when the file changed, or once an interval
    // has passed (a missing backing file may have appeared); not at every
    // open of a view, which would log the failure each time.
    FileKey now = top_st ? FileKey::FromStat(*top_st) : FileKey{};
    if (!top_st) {
      auto st = store_->Stat(path_, true);
      if (st.ok()) now = FileKey::FromStat(*st);
    }
    current = now == s->top_key && SteadyNs() - s->built_ns < recheck_.count();
  } else {
    const auto interval = force ? std::chrono::nanoseconds(0) : recheck_;
    for (size_t i = 0; i < s->files.size() && current; ++i) {
      LayerFile& f = *s->files[i];
      if (i == 0 && top_st != nullptr) {
        if (!f.stale() && !f.IsCurrentFor(FileKey::FromStat(*top_st))) {
          spdlog::info("{}: changed outside kvmfs: opened anew", f.path());
          f.MarkStale();
        }
        current = !f.stale() && (!force || f.CheckCurrent(interval));
      } else {
        current = f.CheckCurrent(interval);
      }
    }
  }
  if (!current) Rebuild(s);
}

std::vector<SnapshotInfo> OpenImage::snapshots() const {
  auto s = state();
  return s->files.empty() ? std::vector<SnapshotInfo>{} : s->files.front()->snapshots();
}

std::vector<std::string> OpenImage::snapshot_dir_names() const { return SnapshotDirNames(snapshots()); }

std::optional<std::string> OpenImage::SnapshotIdForDir(const std::string& dir_name) const {
  std::vector<SnapshotInfo> list = snapshots();
  std::vector<std::string> names = SnapshotDirNames(list);
  auto it = std::find(names.begin(), names.end(), dir_name);
  if (it == names.end()) return std::nullopt;
  return list[size_t(it - names.begin())].id;
}

std::vector<std::string> OpenImage::LayerDirNames() const {
  auto s = state();
  std::vector<std::string> names;
  for (size_t n = 1; n < s->files.size(); ++n)
    names.push_back(std::to_string(n) + "-" + BaseName(s->files[n]->path()));
  return names;
}

std::vector<std::shared_ptr<LayerFile>> OpenImage::ViewFiles(const State& state, const ViewId& view) {
  if (view.kind != ViewId::Kind::kLayer) return state.files;
  if (view.layer >= state.files.size()) return {};
  return {state.files.begin() + static_cast<ptrdiff_t>(view.layer), state.files.end()};
}

OpenImage::Version OpenImage::VersionOf(const std::vector<std::shared_ptr<LayerFile>>& files) {
  Version v;
  v.reserve(files.size());
  for (const auto& f : files) v.emplace_back(f.get(), f->generation());
  return v;
}

Result<std::shared_ptr<Image>> OpenImage::ViewImage(const ViewId& view) const {
  auto s = state();
  if (!s->status.ok()) return s->status;
  switch (view.kind) {
    case ViewId::Kind::kTop: return s->files.front()->image();
    case ViewId::Kind::kLayer:
      if (view.layer >= 1 && view.layer < s->files.size()) return s->files[view.layer]->image();
      break;
    case ViewId::Kind::kSnapshot:
      for (const SnapshotInfo& info : s->files.front()->snapshots())
        if (info.id == view.snapshot_id) return s->files.front()->SnapshotImage(view.snapshot_id);
      break;
  }
  return Status::NotFound(path_ + ": no such view");
}

uint64_t OpenImage::AllocatedBytes(const ViewId& view) {
  auto s = state();
  auto image = ViewImage(view);
  if (!image.ok()) return 0;
  const std::vector<std::shared_ptr<LayerFile>> files = ViewFiles(*s, view);
  // Taken before walking: a change that races with the walk is walked again
  // next time.
  const Version version = VersionOf(files);
  std::optional<AllocMap> old;
  {
    MutexLock lock(mu_);
    ViewState& vs = views_[view.CacheKey()];
    if (vs.alloc && vs.alloc->version == version) return vs.alloc->total;
    old = vs.alloc;
  }
  const uint64_t size = (*image)->size();
  // Regions to walk again: those the logged changes touched, when every
  // file is the same object and can say what changed since.
  std::optional<std::vector<bool>> dirty;
  if (old && old->size == size && old->version.size() == version.size()) {
    dirty.emplace(old->regions.size(), false);
    for (size_t i = 0; i < version.size() && dirty; ++i) {
      if (old->version[i].first != version[i].first) {
        dirty.reset();
        break;
      }
      auto changes = files[i]->ChangesSince(old->version[i].second);
      if (!changes) {
        dirty.reset();
        break;
      }
      for (auto [off, len] : *changes) {
        if (off >= size) continue;
        const uint64_t last = std::min(size - 1, off + len - 1);
        for (uint64_t r = off / old->region; r <= last / old->region; ++r) (*dirty)[r] = true;
      }
    }
  }
  AllocMap map;
  if (dirty) {
    map = std::move(*old);
  } else {
    map.size = size;
    map.region = RegionSize(size);
    map.regions.assign(size == 0 ? 0 : (size - 1) / map.region + 1, 0);
    dirty.emplace(map.regions.size(), true);
  }
  map.version = version;
  for (size_t r = 0; r < map.regions.size(); ++r) {
    if (!(*dirty)[r]) continue;
    const uint64_t begin = r * map.region;
    map.regions[r] = DataBytes(**image, begin, std::min(size, begin + map.region), path_);
  }
  map.total = 0;
  for (uint64_t bytes : map.regions) map.total += bytes;
  const uint64_t total = map.total;
  MutexLock lock(mu_);
  views_[view.CacheKey()].alloc = std::move(map);
  return total;
}

std::string OpenImage::InfoText(const ViewId& view) {
  auto s = state();
  const Version version = VersionOf(ViewFiles(*s, view));
  {
    MutexLock lock(mu_);
    ViewState& vs = views_[view.CacheKey()];
    if (vs.info_json && vs.info_version == version) return *vs.info_json;
  }
  std::string text = RenderInfo(view, *s);
  MutexLock lock(mu_);
  ViewState& vs = views_[view.CacheKey()];
  vs.info_json = text;
  vs.info_version = version;
  return text;
}

std::string OpenImage::RenderInfo(const ViewId& view, const State& state) const {
  if (!state.status.ok() && state.files.empty())
    return RenderJson(ErrorJson(path_, format(), state.status.ToString()));
  size_t index = view.kind == ViewId::Kind::kLayer ? view.layer : 0;
  if (index >= state.files.size())
    return RenderJson(ErrorJson(path_, format(), "no such backing layer"));
  const LayerFile& layer = *state.files[index];

  InfoSubject subject;
  subject.filename = layer.path();
  subject.info = layer.image()->Info();
  auto actual = layer.image()->ActualSize();
  if (actual.ok()) subject.actual_size = *actual;
  if (index + 1 < state.files.size()) subject.full_backing_filename = state.files[index + 1]->path();
  subject.snapshots = layer.snapshots();
  subject.store_kind = layer.store().kind();
  subject.store_info = layer.store().Describe(layer.path());
  if (view.kind == ViewId::Kind::kTop && layer.writable()) {
    // Only where writing was asked for (a read-write pool) and is refused.
    subject.read_only_reason = layer.read_only_reason();
    if (subject.read_only_reason.empty()) subject.read_only_reason = layer.image()->ReadOnlyReason();
  } else if (view.kind == ViewId::Kind::kTop) {
    subject.read_only_reason = layer.read_only_reason();
  }

  if (view.kind == ViewId::Kind::kSnapshot) {
    for (const SnapshotInfo& s : subject.snapshots)
      if (s.id == view.snapshot_id) subject.snapshot = s;
    if (!subject.snapshot)
      return RenderJson(ErrorJson(path_, format(), "no snapshot with id " + view.snapshot_id));
    auto image = ViewImage(view);
    if (!image.ok() && state.status.ok()) {
      nlohmann::ordered_json j = ErrorJson(path_, format(), image.status().ToString());
      j["snapshot"] = SnapshotJson(*subject.snapshot);
      return RenderJson(j);
    }
  }
  // An image whose data is out of reach (a key problem): described, with why.
  if (!state.status.ok()) {
    nlohmann::ordered_json j = pool::InfoJson(subject);
    j["error"] = state.status.ToString();
    return RenderJson(j);
  }
  return RenderJson(pool::InfoJson(subject));
}

bool OpenImage::MarkOpened(const ViewId& view, bool info) {
  auto s = state();
  Version version = VersionOf(ViewFiles(*s, view));
  MutexLock lock(mu_);
  ViewState& vs = views_[view.CacheKey()];
  std::optional<Version>& seen = info ? vs.info_opened : vs.disk_opened;
  const bool unchanged = seen && *seen == version;
  seen = std::move(version);
  return unchanged;
}

// ---- Handles, locks and write sessions ---------------------------------------

Status OpenImage::CanWrite() const {
  auto s = state();
  if (!s->status.ok()) return s->status;
  const LayerFile& top = *s->files.front();
  if (!top.writable())
    return Status::ReadOnly(path_ + ": " +
                            (top.read_only_reason().empty() ? "opened read-only" : top.read_only_reason()));
  std::string reason = top.image()->ReadOnlyReason();
  if (!reason.empty()) return Status::ReadOnly(path_ + ": " + reason);
  return Status::OK();
}

Result<std::shared_ptr<DiskHandle>> OpenImage::AcquireHandle(const ViewId& view, bool write,
                                                             const AccessOptions& access) {
  auto s = state();
  if (!s->status.ok()) return s->status;
  if (write) {
    if (view.kind != ViewId::Kind::kTop)
      return Status::ReadOnly(path_ + ": snapshot and backing views are read-only");
    const LayerFile& top = *s->files.front();
    if (!top.writable())
      return Status::ReadOnly(path_ + ": " + (top.read_only_reason().empty() ? "opened read-only"
                                                                              : top.read_only_reason()));
  }
  std::shared_ptr<DiskHandle> handle(new DiskHandle(shared_from_this(), view));
  // Read locks on every file of the chain (QEMU takes them on backing files
  // of a view too), then the top file's write lock and write session.
  const LockUse read = access.force_share ? LockUse::kSharedRead : LockUse::kRead;
  std::vector<std::pair<std::shared_ptr<LayerFile>, LockUse>> wanted;
  for (const auto& f : s->files) wanted.emplace_back(f, read);
  if (write) wanted.emplace_back(s->files.front(), LockUse::kWrite);
  for (auto& [file, use] : wanted) {
    Status got = file->Acquire(use);
    if (!got.ok()) return got;  // the handle gives back what it holds
    handle->uses_.emplace_back(file, use);
  }
  MutexLock lock(mu_);
  ++open_views_[view.CacheKey()];
  handle->counted_ = true;
  return handle;
}

void OpenImage::ReleaseHandle(DiskHandle& handle) {
  for (auto it = handle.uses_.rbegin(); it != handle.uses_.rend(); ++it) it->first->Release(it->second);
}

DiskHandle::~DiskHandle() {
  owner_->ReleaseHandle(*this);
  if (!counted_) return;  // acquiring failed
  MutexLock lock(owner_->mu_);
  auto it = owner_->open_views_.find(view_.CacheKey());
  if (it != owner_->open_views_.end() && --it->second <= 0) owner_->open_views_.erase(it);
}

bool OpenImage::ViewOpen(const ViewId& view) const {
  MutexLock lock(mu_);
  return open_views_.count(view.CacheKey()) > 0;
}

void OpenImage::SnapshotsChanged() {
  auto s = state();
  if (!s->files.empty()) s->files.front()->NoteSnapshots();
}

void EndAllWrites() { LayerRegistry::EndAllWrites(); }

// ---- ImageCache -------------------------------------------------------------------

ImageCache::ImageCache(ChainPolicy policy, ProbeCache* probe, ChainOpener opener, size_t max_open,
                       std::shared_ptr<LayerRegistry> registry, std::chrono::nanoseconds recheck)
    : policy_(std::move(policy)),
      probe_(probe),
      opener_(std::move(opener)),
      max_open_(max_open),
      registry_(registry ? std::move(registry) : std::make_shared<LayerRegistry>()),
      recheck_(recheck) {}

ChainBuilder ImageCache::BuilderFor(const std::string& path, const std::string& format) {
  // A chain opens with the format the path's name and content say now (the
  // file may have been replaced by another format).
  return [this, path, format]() -> LayerChain {
    std::string now = format;
    if (auto st = StoreOf(policy_).Stat(path, true); st.ok()) now = probe_->FormatOf(path, *st);
    if (opener_) return LayerRegistry::Adopt(opener_(path, policy_, now));
    return registry_->Open(path, policy_, now);
  };
}

Result<std::shared_ptr<OpenImage>> ImageCache::Get(const std::string& path) {
  Store& store = StoreOf(policy_);
  KVMFS_ASSIGN_OR_RETURN(std::string canonical, store.Canonical(path));
  KVMFS_ASSIGN_OR_RETURN(struct stat st, store.Stat(canonical, true));
  return GetCanonical(canonical, st);
}

Result<std::shared_ptr<OpenImage>> ImageCache::GetCanonical(const std::string& canonical,
                                                            const struct stat& st) {
  std::shared_ptr<Slot> slot;
  {
    MutexLock lock(mu_);
    auto& s = slots_[canonical];
    if (!s) s = std::make_shared<Slot>();
    s->last_use = ++clock_;
    slot = s;
  }
  std::shared_ptr<OpenImage> entry;
  bool created = false;
  {
    MutexLock lock(slot->mu);
    if (!slot->current) {
      slot->current = std::make_shared<OpenImage>(
          canonical, probe_->FormatOf(canonical, st), BuilderFor(canonical, ""), recheck_,
          [this](const std::string& path) {
            if (changed_) changed_(path);
          },
          policy_.store);
      created = true;
    }
    entry = slot->current;
  }
  if (!created) entry->EnsureCurrent(&st, false);
  else Evict();
  return entry;
}

std::shared_ptr<OpenImage> ImageCache::Cached(const std::string& path, const struct stat& st) {
  std::shared_ptr<Slot> slot;
  {
    MutexLock lock(mu_);
    auto it = slots_.find(path);
    if (it == slots_.end()) return nullptr;
    slot = it->second;
  }
  std::shared_ptr<OpenImage> entry;
  {
    MutexLock lock(slot->mu);
    entry = slot->current;
  }
  if (!entry) return nullptr;
  auto files = entry->files();
  if (files.empty() || files.front()->stale() || !files.front()->IsCurrentFor(FileKey::FromStat(st)))
    return nullptr;
  return entry;
}

void ImageCache::Evict() {
  MutexLock lock(mu_);
  // A scan costs one try_lock per slot: with thousands of images (ls -R of a
  // large pool opens each once) scanning after every open would make the
  // walk quadratic. Up to EvictEvery() images beyond the limit stay open
  // until the next scan.
  if (++opens_since_evict_ < EvictEvery()) return;
  opens_since_evict_ = 0;
  if (slots_.size() <= max_open_) return;
  // Candidates: entries (opened or failed) that only the cache holds. A slot
  // busy opening is skipped (try_lock), so this never waits under mu_.
  std::vector<std::pair<uint64_t, std::string>> idle;
  for (auto& [path, slot] : slots_) {
    if (!slot->mu.TryLock()) continue;
    if (!slot->current || slot->current.use_count() == 1) idle.emplace_back(slot->last_use, path);
    slot->mu.Unlock();
  }
  std::sort(idle.begin(), idle.end());
  size_t count = slots_.size();
  for (auto& [last_use, path] : idle) {
    if (count <= max_open_) break;
    auto it = slots_.find(path);
    Slot& slot = *it->second;
    if (!slot.mu.TryLock()) continue;
    const bool unused = !slot.current || slot.current.use_count() == 1;
    std::shared_ptr<OpenImage> closing;
    if (unused) closing = std::move(slot.current);
    slot.mu.Unlock();
    if (!unused) continue;
    spdlog::debug("closing idle image {}", path);
    slots_.erase(it);  // a Get() holding the slot still gets a working (empty) slot
    --count;
  }
}

}  // namespace kvmfs::pool
