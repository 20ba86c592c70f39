#include "pool/layer_file.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "base/path.h"

namespace kvmfs::pool {
namespace {

// Changes through kvmfs remembered per file; a view that fell further
// behind recomputes everything it derived.
constexpr size_t kMaxLoggedChanges = 4096;

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

FileKey KeyOf(Store& store, const std::string& path) {
  auto st = store.Stat(path, true);
  return st.ok() ? FileKey::FromStat(*st) : FileKey{};
}

Store& StoreOfLayer(const Layer& layer) { return layer.store ? *layer.store : *HostStore(); }

// The LayerFiles with an open write session, for EndAllWrites() at unmount.
class WritingSet {
 public:
  void Add(LayerFile* f) {
    MutexLock lock(mu_);
    files_.insert(f);
  }
  void Remove(LayerFile* f) {
    MutexLock lock(mu_);
    files_.erase(f);
  }
  std::vector<LayerFile*> Snapshot() {
    MutexLock lock(mu_);
    return {files_.begin(), files_.end()};
  }

 private:
  Mutex mu_;
  std::set<LayerFile*> files_ GUARDED_BY(mu_);
};

WritingSet& Writing() {
  static WritingSet* set = new WritingSet;  // outlives every LayerFile
  return *set;
}

constexpr int Index(LockUse use) { return static_cast<int>(use); }

}  // namespace

namespace {
std::atomic<int64_t> g_open_layer_files{0};  // for the metrics
}  // namespace

uint64_t OpenLayerFiles() {
  return static_cast<uint64_t>(std::max<int64_t>(0, g_open_layer_files.load(std::memory_order_relaxed)));
}

Store& LayerFile::store() const { return StoreOfLayer(layer_); }

LayerFile::LayerFile(Layer layer, FileKey key) : layer_(std::move(layer)), key_(key) {
  snapshots_ = ReadSnapshots();
  g_open_layer_files.fetch_add(1, std::memory_order_relaxed);
}
std::vector<SnapshotInfo> LayerFile::ReadSnapshots() const {
  if (!store().caps().snapshots) return layer_.image->Snapshots();
  std::vector<SnapshotInfo> out;
  auto listed = store().Snapshots(path());
  if (!listed.ok()) {
    spdlog::warn("{}: listing snapshots: {}", path(), listed.status().ToString());
    return out;
  }
  for (StoreSnapshot& s : *listed) out.push_back(std::move(s.info));
  return out;
}

Result<SnapshotInfo> LayerFile::CreateStoreSnapshot(const std::string& name) {
  KVMFS_RETURN_IF_ERROR(layer_.image->Flush());
  return store().CreateSnapshot(path(), name);
}

Status LayerFile::DeleteStoreSnapshot(const std::string& id) { return store().DeleteSnapshot(path(), id); }

LayerFile::~LayerFile() {
  Writing().Remove(this);
  g_open_layer_files.fetch_sub(1, std::memory_order_relaxed);
}

FileKey LayerFile::key() const {
  MutexLock lock(mu_);
  return key_;
}

// ---- Versions -------------------------------------------------------------------

void LayerFile::NoteWrite(uint64_t off, uint64_t len) {
  MutexLock lock(mu_);
  const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
  changes_.emplace_back(gen, GuestRange{off, len});
  if (changes_.size() > kMaxLoggedChanges) {
    log_floor_ = changes_.front().first;
    changes_.pop_front();
  }
  generation_.store(gen, std::memory_order_release);
}

void LayerFile::NoteSnapshots() {
  std::vector<SnapshotInfo> now = ReadSnapshots();
  MutexLock lock(mu_);
  for (auto it = snapshot_views_.begin(); it != snapshot_views_.end();) {
    bool kept = std::any_of(now.begin(), now.end(), [&](const SnapshotInfo& s) { return s.id == it->first; });
    it = kept ? std::next(it) : snapshot_views_.erase(it);
  }
  snapshots_ = std::move(now);
  generation_.fetch_add(1, std::memory_order_acq_rel);  // no guest byte changed: nothing logged
}

std::optional<std::vector<GuestRange>> LayerFile::ChangesSince(uint64_t since) const {
  MutexLock lock(mu_);
  if (since < log_floor_) return std::nullopt;
  std::vector<GuestRange> ranges;
  // Newest last: walk back to the first change after `since`.
  for (auto it = changes_.rbegin(); it != changes_.rend() && it->first > since; ++it) {
    if (it->second.second == 0) return std::nullopt;  // everything changed
    ranges.push_back(it->second);
  }
  return ranges;
}

bool LayerFile::IsCurrentFor(const FileKey& key) const {
  if (pinned_.load(std::memory_order_acquire) > 0) return true;
  MutexLock lock(mu_);
  return key_ == key;
}

bool LayerFile::CheckCurrent(std::chrono::nanoseconds interval) {
  if (stale()) return false;
  const int64_t now = SteadyNs();
  if (interval.count() > 0) {
    int64_t last = checked_ns_.load(std::memory_order_relaxed);
    if (now - last < interval.count()) return true;
    // One checker per interval; the others take the answer as it stands.
    if (!checked_ns_.compare_exchange_strong(last, now, std::memory_order_acq_rel)) return !stale();
  } else {
    checked_ns_.store(now, std::memory_order_relaxed);
  }
  auto st = store().Stat(path(), true);
  if (st.ok() && IsCurrentFor(FileKey::FromStat(*st))) return true;
  // Still missing what was missing at open (a layer without a host file),
  // or missing for a moment while kvmfs writes it.
  if (!st.ok() && (pinned_.load(std::memory_order_acquire) > 0 || key() == FileKey{})) return true;
  spdlog::info("{}: changed outside kvmfs ({}): opened anew on next use", path(),
               st.ok() ? "new version" : st.status().ToString());
  MarkStale();
  return false;
}

void LayerFile::RefreshKey() {
  FileKey key = KeyOf(store(), path());
  MutexLock lock(mu_);
  key_ = key;
}

// ---- Locks and write sessions -------------------------------------------------------

LockSet LayerFile::WantedLocks() const {
  LockSet want;
  if (uses_[Index(LockUse::kWrite)] > 0) want = want | kWriterLocks;
  if (uses_[Index(LockUse::kRead)] > 0) want = want | kReaderLocks;
  if (uses_[Index(LockUse::kSharedRead)] > 0) want = want | kSharedReaderLocks;
  return want;
}

Status LayerFile::Acquire(LockUse use) {
  MutexLock lock(handles_mu_);
  ++uses_[Index(use)];
  const LockSet want = WantedLocks();
  Status locked = Status::OK();
  if (!claim_) {
    auto claim = store().Lock(path(), want);
    if (claim.ok()) claim_ = std::move(claim).value();
    else locked = claim.status();
  } else if (claim_->set() != want) {
    locked = claim_->Change(want);
  }
  if (locked.ok() && use == LockUse::kWrite && uses_[Index(use)] == 1) locked = BeginWriting();
  if (!locked.ok()) {
    --uses_[Index(use)];
    if (uses_[0] + uses_[1] + uses_[2] == 0) {
      claim_.reset();
    } else if (claim_ && claim_->set() != WantedLocks()) {
      (void)claim_->Change(WantedLocks());  // back to what it was: a smaller set never conflicts
    }
  }
  return locked;
}

void LayerFile::Release(LockUse use) {
  MutexLock lock(handles_mu_);
  if (uses_[Index(use)] <= 0) return;
  --uses_[Index(use)];
  if (use == LockUse::kWrite && uses_[Index(use)] == 0) EndWriting();
  if (uses_[0] + uses_[1] + uses_[2] == 0) {
    claim_.reset();  // closing the lock descriptor drops every byte
  } else if (claim_ && claim_->set() != WantedLocks()) {
    Status down = claim_->Change(WantedLocks());
    if (!down.ok()) spdlog::warn("{}: releasing locks: {}", path(), down.ToString());
  }
}

int LayerFile::users() const {
  MutexLock lock(handles_mu_);
  return uses_[0] + uses_[1] + uses_[2];
}

Status LayerFile::BeginWriting() {
  if (!layer_.writable)
    return Status::ReadOnly(path() + ": " +
                            (layer_.read_only_reason.empty() ? "opened read-only" : layer_.read_only_reason));
  // Pinned before the first byte changes: our own writes must not make this
  // file look changed from outside.
  pinned_.fetch_add(1, std::memory_order_acq_rel);
  Status begun = layer_.image->BeginWrites();
  if (!begun.ok()) {
    std::string reason = layer_.image->ReadOnlyReason();
    spdlog::error("{}: cannot write: {}{}", path(), begun.ToString(),
                  reason.empty() || begun.message().find(reason) != std::string::npos
                      ? ""
                      : " (" + reason + ")");
    RefreshKey();  // a repair may have written the file
    generation_.fetch_add(1, std::memory_order_acq_rel);
    pinned_.fetch_sub(1, std::memory_order_acq_rel);
    if (begun.code() == Status::Code::kReadOnly && !reason.empty())
      return Status::ReadOnly(path() + ": " + reason);
    return begun.WithContext(path());
  }
  Writing().Add(this);
  return Status::OK();
}

void LayerFile::EndWriting() {
  Status ended = layer_.image->EndWrites();
  if (!ended.ok()) spdlog::error("{}: finishing writes: {}", path(), ended.ToString());
  Writing().Remove(this);
  RefreshKey();
  generation_.fetch_add(1, std::memory_order_acq_rel);  // info.json: dirty flag, actual size
  pinned_.fetch_sub(1, std::memory_order_acq_rel);
}

void LayerFile::EndWritesForShutdown() {
  MutexLock lock(handles_mu_);
  const int writers = uses_[Index(LockUse::kWrite)];
  if (writers == 0) return;
  Status ended = layer_.image->EndWrites();
  if (!ended.ok()) spdlog::error("{}: finishing writes at unmount: {}", path(), ended.ToString());
  else spdlog::info("{}: writes finished at unmount ({} write handle(s) still open)", path(), writers);
}

// ---- Snapshots and backing ------------------------------------------------------------

std::vector<SnapshotInfo> LayerFile::snapshots() const {
  MutexLock lock(mu_);
  return snapshots_;
}

Result<std::shared_ptr<Image>> LayerFile::SnapshotImage(const std::string& id) {
  {
    MutexLock lock(mu_);
    auto it = snapshot_views_.find(id);
    if (it != snapshot_views_.end()) return it->second;
  }
  auto opened = store().caps().snapshots ? OpenStoreSnapshot(id) : layer_.image->OpenSnapshot(id);
  if (!opened.ok()) {
    spdlog::error("{}: cannot open snapshot {}: {}", path(), id, opened.status().ToString());
    return opened.status();
  }
  std::shared_ptr<Image> view(std::move(opened).value());
  MutexLock lock(mu_);
  // The snapshot reads over this file's backing as it is linked now.
  view->SetBacking(backing_file_ ? backing_file_->image() : layer_.image->backing());
  auto [it, inserted] = snapshot_views_.emplace(id, view);
  return it->second;
}

void LayerFile::LinkBacking(std::shared_ptr<LayerFile> below) {
  MutexLock lock(mu_);
  if (backing_file_ == below) return;
  std::shared_ptr<Image> image = below ? below->image() : nullptr;
  backing_file_ = std::move(below);
  layer_.image->SetBacking(image);
  for (auto& [id, view] : snapshot_views_) view->SetBacking(image);
}

Result<std::unique_ptr<Image>> LayerFile::OpenStoreSnapshot(const std::string& id) const {
  KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> file, store().OpenSnapshot(path(), id));
  const FormatDriver* driver = FindFormat(format());
  if (driver == nullptr) return Status::NotSupported(path() + ": format '" + format() + "' is not supported");
  OpenContext ctx;
  ctx.name = file->name();
  ctx.writable = false;
  return driver->Open(std::shared_ptr<Backend>(std::move(file)), ctx);
}

std::shared_ptr<LayerFile> LayerFile::backing_file() const {
  MutexLock lock(mu_);
  return backing_file_;
}

// ---- LayerRegistry ----------------------------------------------------------------------

std::shared_ptr<LayerFile> LayerRegistry::Find(const std::string& path) const {
  MutexLock lock(mu_);
  auto it = files_.find(path);
  return it == files_.end() ? nullptr : it->second.lock();
}

Result<std::shared_ptr<LayerFile>> LayerRegistry::GetLocked(
    const LayerRequest& request, const LayerOpener& open,
    std::vector<std::shared_ptr<LayerFile>>* fresh) {
  std::shared_ptr<LayerFile> current = Find(request.path);
  // The key is taken before opening: a change while the file opens is seen
  // at the next check.
  FileKey key = KeyOf(request.policy ? StoreOf(*request.policy) : *HostStore(), request.path);
  if (current && !current->stale() && current->IsCurrentFor(key)) {
    // One engine per file: a use that asks for another format (a backing
    // format naming "qcow2" for a raw image of the pool) is refused, as a
    // fresh open would refuse content of the wrong format, never served with
    // the engine of the other format.
    if (current->format() != request.format)
      return Status::InvalidArgument(request.path + ": asked for as " + request.format +
                                     ", but it is open as a " + current->format() + " image");
    // Opened anew when nothing uses it and it was opened for reading only
    // while writing is asked for now, or without its data (a key was missing
    // or wrong: the keys may have been reloaded since).
    const bool idle = current->users() == 0;
    const bool upgrade = request.writable && !current->writable() && current->read_only_reason().empty();
    const bool locked = !current->image()->DataStatus().ok();
    if (!idle || (!upgrade && !locked)) return current;
    spdlog::debug("{}: opening it anew ({})", request.path, upgrade ? "for writing" : "its data was out of reach");
  }
  KVMFS_ASSIGN_OR_RETURN(Layer layer, open ? open(request) : OpenLayerFile(request));
  auto file = std::make_shared<LayerFile>(std::move(layer), key);
  fresh->push_back(file);
  return file;
}

void LayerRegistry::PublishLocked(const std::vector<std::shared_ptr<LayerFile>>& fresh) {
  std::vector<std::pair<std::shared_ptr<LayerFile>, std::shared_ptr<LayerFile>>> replaced;
  std::vector<std::shared_ptr<LayerFile>> live;
  {
    MutexLock lock(mu_);
    for (const auto& file : fresh) {
      std::weak_ptr<LayerFile>& slot = files_[file->path()];
      if (auto old = slot.lock()) replaced.emplace_back(old, file);
      slot = file;
    }
    if (!replaced.empty()) {
      for (auto& [path, weak] : files_)
        if (auto f = weak.lock()) live.push_back(std::move(f));
    }
    if (files_.size() >= sweep_at_) {
      for (auto it = files_.begin(); it != files_.end();)
        it = it->second.expired() ? files_.erase(it) : std::next(it);
      sweep_at_ = std::max<size_t>(1024, files_.size() * 2);
    }
  }
  // Every file that reads through a replaced one reads through its successor
  // from now on (the successor is fully linked already).
  for (auto& [old_file, new_file] : replaced) {
    old_file->MarkStale();
    for (const auto& f : live)
      if (f != new_file && f->backing_file() == old_file) f->LinkBacking(new_file);
  }
}

LayerChain LayerRegistry::Open(const std::string& path, const ChainPolicy& policy,
                               const std::string& format) {
  MutexLock build(build_mu_);
  std::vector<std::shared_ptr<LayerFile>> files;
  std::vector<std::shared_ptr<LayerFile>> fresh;
  ChainPolicy shared = policy;
  shared.opener = [&](const LayerRequest& request) -> Result<Layer> {
    build_mu_.AssertHeld();  // OpenChain calls this back from below, under `build`
    KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<LayerFile> file, GetLocked(request, policy.opener, &fresh));
    files.push_back(file);
    return file->layer();
  };
  Result<Chain> chain = OpenChain(path, shared, format);
  LayerChain result;
  if (!chain.ok()) {
    result.status = chain.status();
    return result;  // the fresh files close again; nothing was registered
  }
  // Bottom up, so that no file is reachable before what is below it is linked.
  for (size_t i = files.size(); i-- > 0;)
    files[i]->LinkBacking(i + 1 < files.size() ? files[i + 1] : nullptr);
  PublishLocked(fresh);
  result.files = std::move(files);
  return result;
}

LayerChain LayerRegistry::Adopt(Result<Chain> chain) {
  LayerChain result;
  if (!chain.ok()) {
    result.status = chain.status();
    return result;
  }
  if (chain->layers.empty()) {
    result.status = Status::Corruption("empty chain");
    return result;
  }
  for (Layer& layer : chain->layers) {
    FileKey key = KeyOf(StoreOfLayer(layer), layer.path);
    result.files.push_back(std::make_shared<LayerFile>(std::move(layer), key));
  }
  for (size_t i = result.files.size(); i-- > 0;)
    result.files[i]->LinkBacking(i + 1 < result.files.size() ? result.files[i + 1] : nullptr);
  return result;
}

void LayerRegistry::EndAllWrites() {
  for (LayerFile* f : Writing().Snapshot()) f->EndWritesForShutdown();
}

}  // namespace kvmfs::pool
