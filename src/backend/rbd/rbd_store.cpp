// The Store of one RBD pool (and namespace): images, their snapshots and
// clone parents, RBD's exclusive lock for writers.
#include "backend/rbd/rbd_store.h"

#include <rados/librados.h>
#include <rbd/librbd.h>
#include <sys/stat.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <cerrno>
#include <ctime>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <vector>

#include "backend/rbd/rbd_internal.h"

namespace kvmfs::rbd {
namespace {

// Read-only handles kept open for stat and reads; each holds a watch on its
// image's header (so sizes and snapshot lists stay current without asking).
constexpr size_t kMaxMetaHandles = 256;

// The cluster connection and the pool's I/O context.
struct Cluster {
  rados_t rados = nullptr;
  rados_ioctx_t io = nullptr;
  ~Cluster() {
    if (io != nullptr) rados_ioctx_destroy(io);
    if (rados != nullptr) rados_shutdown(rados);
  }
};

uint64_t Hash(const std::string& s) { return std::hash<std::string>{}(s); }

// "rbd:POOL[/NS]/NAME[@SNAP]" past the root.
struct Spec {
  std::string name;
  std::string snap;  // empty: the image itself
};

class RbdLock;

class RbdStore final : public Store, public std::enable_shared_from_this<RbdStore> {
 public:
  RbdStore(std::unique_ptr<Cluster> cluster, RbdConfig config)
      : cluster_(std::move(cluster)),
        config_(std::move(config)),
        root_("rbd:" + config_.pool + (config_.ns.empty() ? "" : "/" + config_.ns)),
        dev_(static_cast<dev_t>(Hash(root_) | 1)),
        connected_(::time(nullptr)) {}

  std::string_view kind() const override { return "rbd"; }
  StoreCaps caps() const override {
    StoreCaps caps;
    caps.every_file_an_image = true;
    caps.snapshots = true;
    caps.remote = true;
    caps.unseen_writes = true;
    return caps;
  }
  const std::string& root() const override { return root_; }

  Result<std::vector<StoreEntry>> List(const std::string& dir) override;
  Result<struct stat> Stat(const std::string& path, bool follow) override;
  Result<std::string> Canonical(const std::string& path) override;
  Result<std::string> Resolve(const std::string& base, const std::string& name) override;
  Result<std::unique_ptr<Backend>> Open(const std::string& path, bool writable) override;
  Result<std::unique_ptr<StoreLock>> Lock(const std::string& path, LockSet set) override;
  Result<struct statvfs> StatFs(const std::string& path) override;
  Result<std::vector<StoreSnapshot>> Snapshots(const std::string& path) override;
  Result<std::unique_ptr<Backend>> OpenSnapshot(const std::string& path, const std::string& id) override;
  Result<SnapshotInfo> CreateSnapshot(const std::string& path, const std::string& name) override;
  Status DeleteSnapshot(const std::string& path, const std::string& id) override;
  std::optional<std::string> Parent(const std::string& path) override;
  std::optional<InfoObject> Describe(const std::string& path) override;

  // The read-write handle of image `name`, shared by its backend and lock.
  Result<std::shared_ptr<ImageHandle>> WriteHandle(const std::string& name);

  // RBD's exclusive lock as kvmfs' writers hold it. librbd also takes the
  // lock by itself for a read-write handle on a flush, an object-map query or
  // a snapshot operation, and then keeps it, which would refuse every other
  // host's writer: kvmfs never lets that happen. Flushes and allocation
  // queries go to handles that cannot take it (the backend), and a snapshot
  // operation gives it back at once unless a writer of this mount holds it.
  // lock_mu_ orders all of that, so a give-back never drops a writer's lock.
  std::mutex& lock_mu() { return lock_mu_; }
  // Counts a writer claim of this mount on image `name` in or out; returns
  // how many remain.
  int NoteWriter(const std::string& name, int delta) {  // lock_mu() held
    int& n = writers_locked_[name];
    n += delta;
    const int left = n;
    if (n <= 0) writers_locked_.erase(name);
    return left;
  }
  // After librbd took the lock for an operation (a snapshot) on `h`: gives it
  // back unless a writer of this mount holds it.
  void GiveBackLock(ImageHandle& h) {  // lock_mu() held
    if (writers_locked_.count(h.name()) != 0) return;
    int rc = rbd_lock_release(h.get());
    if (rc < 0 && rc != -ENOENT && rc != -EINVAL)
      spdlog::warn("{}: giving back the exclusive lock: {}", PathOf(Spec{h.name(), ""}), std::strerror(-rc));
  }
  std::string PathOf(const Spec& spec) const {
    return root_ + "/" + spec.name + (spec.snap.empty() ? "" : "@" + spec.snap);
  }

 private:
  Result<Spec> Parse(const std::string& path) const;
  // A read-only handle of `spec` (the read-write one when open, unless
  // `own`), cached.
  Result<std::shared_ptr<ImageHandle>> MetaHandle(const Spec& spec, bool own = false);
  Result<std::shared_ptr<ImageHandle>> OpenHandle(const Spec& spec, bool writable);
  struct Snap {
    uint64_t id;
    uint64_t size;
    std::string name;
  };
  Result<std::vector<Snap>> SnapList(ImageHandle& h);
  void Forget(const std::string& name);

  const std::unique_ptr<Cluster> cluster_;
  const RbdConfig config_;
  const std::string root_;
  const dev_t dev_;
  const time_t connected_;

  std::mutex mu_;
  // Most recent use first.
  std::list<std::pair<std::string, std::shared_ptr<ImageHandle>>> meta_;  // GUARDED_BY(mu_)
  std::map<std::string, std::weak_ptr<ImageHandle>> writers_;              // GUARDED_BY(mu_)

  std::mutex lock_mu_;                          // taken before mu_
  std::map<std::string, int> writers_locked_;  // GUARDED_BY(lock_mu_): RbdLocks holding, by image
};

// RBD's exclusive lock for a kvmfs writer; nothing for readers (QEMU's rbd
// driver takes nothing for them either).
class RbdLock final : public StoreLock {
 public:
  RbdLock(std::shared_ptr<RbdStore> store, Spec spec, std::string path)
      : store_(std::move(store)), spec_(std::move(spec)), path_(std::move(path)) {}
  ~RbdLock() override {
    std::lock_guard lock(mu_);
    if (held_) Release();
  }

  Status Change(LockSet set) override {
    std::lock_guard lock(mu_);
    const bool want = (set.perms & kPermWrite) != 0;
    if (want && !held_) KVMFS_RETURN_IF_ERROR(Acquire());
    if (!want && held_) Release();
    set_ = set;
    return Status::OK();
  }

  LockSet set() const override {
    std::lock_guard lock(mu_);
    return set_;
  }

 private:
  // The last writer claim of this mount on the image gives the lock back
  // (all of them share one handle, the lock's owner).
  void Release() {
    std::lock_guard order(store_->lock_mu());
    held_ = false;
    if (store_->NoteWriter(spec_.name, -1) > 0) return;
    int is_owner = 0;
    if (rbd_is_exclusive_lock_owner(handle_->get(), &is_owner) != 0 || !is_owner) return;
    int rc = rbd_lock_release(handle_->get());
    if (rc < 0 && rc != -ENOENT) spdlog::warn("{}: releasing the exclusive lock: {}", path_, std::strerror(-rc));
  }

  Status Acquire() {
    if (!spec_.snap.empty()) return Status::ReadOnly(path_ + ": a snapshot is read-only");
    if (!handle_) {
      KVMFS_ASSIGN_OR_RETURN(handle_, store_->WriteHandle(spec_.name));
    }
    std::lock_guard order(store_->lock_mu());
    // Another writer of this mount holds it through the same handle.
    int is_owner = 0;
    if (rbd_is_exclusive_lock_owner(handle_->get(), &is_owner) == 0 && is_owner) {
      store_->NoteWriter(spec_.name, +1);
      held_ = true;
      return Status::OK();
    }
    // A running QEMU holds the lock cooperatively and would hand it over on
    // request: ask who holds it first, and leave it to them.
    rbd_lock_mode_t mode;
    char* owners[8];
    size_t count = 8;
    int rc = rbd_lock_get_owners(handle_->get(), &mode, owners, &count);
    if (rc == 0 && count > 0) {
      std::string who = owners[0];
      rbd_lock_get_owners_cleanup(owners, count);
      return Status::Busy("Failed to get \"write\" lock. Is another process using the image [" + path_ +
                            "]? (RBD exclusive lock held by " + who + ")");
    }
    rc = rbd_lock_acquire(handle_->get(), RBD_LOCK_MODE_EXCLUSIVE);
    if (rc == -EINVAL || rc == -EOPNOTSUPP) {
      // No exclusive-lock feature: nothing to take, as QEMU.
      spdlog::warn("{}: the image has no exclusive-lock feature: other writers are not kept out", path_);
      store_->NoteWriter(spec_.name, +1);
      held_ = true;
      return Status::OK();
    }
    if (rc == -EROFS || rc == -EBUSY || rc == -EAGAIN)
      return Status::Busy("Failed to get \"write\" lock. Is another process using the image [" + path_ +
                          "]? (RBD exclusive lock: " + std::strerror(-rc) + ")");
    if (rc < 0) return RbdError(rc, path_ + ": acquiring the exclusive lock");
    store_->NoteWriter(spec_.name, +1);
    held_ = true;
    return Status::OK();
  }

  const std::shared_ptr<RbdStore> store_;
  const Spec spec_;
  const std::string path_;
  mutable std::mutex mu_;
  std::shared_ptr<ImageHandle> handle_;  // GUARDED_BY(mu_)
  bool held_ = false;                    // GUARDED_BY(mu_): counted in the store's writers_locked_
  LockSet set_;                          // GUARDED_BY(mu_)
};

Result<Spec> RbdStore::Parse(const std::string& path) const {
  if (path.size() <= root_.size() + 1 || path.compare(0, root_.size(), root_) != 0 ||
      path[root_.size()] != '/')
    return Status::NotFound(path + ": not an image of " + root_);
  std::string rest = path.substr(root_.size() + 1);
  Spec spec;
  size_t at = rest.find('@');
  spec.name = rest.substr(0, at);
  if (at != std::string::npos) spec.snap = rest.substr(at + 1);
  if (spec.name.empty() || spec.name.find('/') != std::string::npos ||
      (at != std::string::npos && spec.snap.empty()))
    return Status::NotFound(path + ": not an image of " + root_);
  return spec;
}

Result<std::shared_ptr<ImageHandle>> RbdStore::OpenHandle(const Spec& spec, bool writable) {
  rbd_image_t image = nullptr;
  const char* snap = spec.snap.empty() ? nullptr : spec.snap.c_str();
  int rc = writable ? rbd_open(cluster_->io, spec.name.c_str(), &image, snap)
                    : rbd_open_read_only(cluster_->io, spec.name.c_str(), &image, snap);
  if (rc < 0) return RbdError(rc, PathOf(spec));
  return std::make_shared<ImageHandle>(image, spec.name, spec.snap, writable);
}

Result<std::shared_ptr<ImageHandle>> RbdStore::MetaHandle(const Spec& spec, bool own) {
  const std::string key = spec.name + "@" + spec.snap;
  {
    std::lock_guard lock(mu_);
    if (spec.snap.empty() && !own) {
      auto w = writers_.find(spec.name);
      if (w != writers_.end())
        if (auto h = w->second.lock()) return h;
    }
    for (auto it = meta_.begin(); it != meta_.end(); ++it) {
      if (it->first != key) continue;
      // Its header changed (resized, snapshots made or removed by anyone):
      // opened anew below; users of the old one keep it until they let go.
      if (it->second->changed()) break;
      meta_.splice(meta_.begin(), meta_, it);
      return meta_.front().second;
    }
  }
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<ImageHandle> h, OpenHandle(spec, false));
  if (spec.snap.empty()) {
    // A snapshot never changes; the image's header is watched (ImageHandle).
    char id[64] = {};
    const std::string oid = rbd_get_id(h->get(), id, sizeof id) == 0 ? "rbd_header." + std::string(id)
                                                                     : spec.name + ".rbd";  // format 1
    int rc = h->WatchHeader(cluster_->io, oid);
    if (rc < 0)
      spdlog::warn("{}: cannot watch the image header {} ({}): changes by other clients are seen only "
                   "at the next open", PathOf(spec), oid, std::strerror(-rc));
  }
  std::vector<std::shared_ptr<ImageHandle>> closing;  // closed outside the lock
  std::lock_guard lock(mu_);
  for (auto it = meta_.begin(); it != meta_.end();) {
    auto next = std::next(it);
    if (it->first == key) {
      closing.push_back(std::move(it->second));
      meta_.erase(it);
    }
    it = next;
  }
  meta_.emplace_front(key, h);
  if (meta_.size() > kMaxMetaHandles) {
    closing.push_back(std::move(meta_.back().second));
    meta_.pop_back();
  }
  return h;
}

Result<std::shared_ptr<ImageHandle>> RbdStore::WriteHandle(const std::string& name) {
  std::lock_guard lock(mu_);
  auto& slot = writers_[name];
  if (auto h = slot.lock()) return h;
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<ImageHandle> h, OpenHandle(Spec{name, ""}, true));
  slot = h;
  return h;
}

void RbdStore::Forget(const std::string& name) {
  std::list<std::pair<std::string, std::shared_ptr<ImageHandle>>> closing;
  std::lock_guard lock(mu_);
  for (auto it = meta_.begin(); it != meta_.end();) {
    auto next = std::next(it);
    if (it->second->name() == name) closing.splice(closing.end(), meta_, it);
    it = next;
  }
}

Result<std::vector<StoreEntry>> RbdStore::List(const std::string& dir) {
  if (dir != root_) return Status::FromErrno(ENOTDIR, dir);
  std::vector<rbd_image_spec_t> specs(64);
  size_t max = specs.size();
  int rc;
  while ((rc = rbd_list2(cluster_->io, specs.data(), &max)) == -ERANGE) specs.resize(max);
  if (rc < 0) return RbdError(rc, root_ + ": listing images");
  std::vector<StoreEntry> entries;
  for (size_t i = 0; i < max; ++i) entries.push_back({specs[i].name, std::nullopt});
  rbd_image_spec_list_cleanup(specs.data(), max);
  return entries;
}

Result<std::vector<RbdStore::Snap>> RbdStore::SnapList(ImageHandle& h) {
  std::vector<rbd_snap_info_t> snaps(16);
  int max = static_cast<int>(snaps.size());
  int n;
  while ((n = rbd_snap_list(h.get(), snaps.data(), &max)) == -ERANGE) snaps.resize(size_t(max) + 1);
  if (n < 0) return RbdError(n, PathOf(Spec{h.name(), ""}) + ": listing snapshots");
  std::vector<Snap> out;
  for (int i = 0; i < n; ++i) {
    out.push_back({snaps[size_t(i)].id, snaps[size_t(i)].size, snaps[size_t(i)].name});
    std::free(const_cast<char*>(snaps[size_t(i)].name));  // as rbd_snap_list_end
  }
  return out;
}

Result<struct stat> RbdStore::Stat(const std::string& path, bool /*follow*/) {
  struct stat st {};
  st.st_dev = dev_;
  st.st_nlink = 1;
  st.st_blksize = 4096;
  if (path == root_) {
    st.st_mode = S_IFDIR | 0755;
    st.st_ino = 1;
    st.st_mtim.tv_sec = st.st_ctim.tv_sec = st.st_atim.tv_sec = connected_;
    return st;
  }
  KVMFS_ASSIGN_OR_RETURN(Spec spec, Parse(path));
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<ImageHandle> h, MetaHandle(spec));
  uint64_t size = 0;
  int rc = rbd_get_size(h->get(), &size);
  if (rc < 0) {
    Forget(spec.name);  // removed meanwhile: do not keep its handle
    return RbdError(rc, path);
  }
  char id[64] = {};
  rbd_get_id(h->get(), id, sizeof id);
  st.st_mode = S_IFREG | (spec.snap.empty() ? 0644 : 0444);
  st.st_size = static_cast<off_t>(size);
  st.st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  st.st_ino = static_cast<ino_t>(Hash(std::string(id) + "@" + spec.snap) | 2);
  struct timespec ts {};
  if (rbd_get_modify_timestamp(h->get(), &ts) == 0) st.st_mtim = st.st_atim = ts;
  if (rbd_get_create_timestamp(h->get(), &ts) == 0) st.st_ctim = ts;
  // The version also changes when snapshots come or go (header updates
  // reach the open handle through its watch).
  auto snaps = SnapList(*h);
  if (snaps.ok()) {
    uint64_t mix = snaps->size();
    for (const Snap& s : *snaps) mix = mix * 1000003u + s.id;
    st.st_ctim.tv_nsec = static_cast<long>(mix % 1000000000u);
  }
  return st;
}

Result<std::string> RbdStore::Canonical(const std::string& path) {
  if (path == root_ || path == root_ + "/") return root_;
  KVMFS_ASSIGN_OR_RETURN(struct stat st, Stat(path, true));
  (void)st;
  return path;
}

Result<std::string> RbdStore::Resolve(const std::string& base, const std::string& name) {
  // QEMU's "rbd:POOL/IMAGE[@SNAP][:opt=...]" names, or an image name of this pool.
  if (name.rfind("rbd:", 0) == 0) {
    std::string spec = name.substr(4);
    spec = spec.substr(0, spec.find(':'));
    return Canonical("rbd:" + spec);
  }
  if (name.empty() || name.find('/') != std::string::npos)
    return Status::NotSupported(base + ": '" + name +
                                "' is not an image name of " + root_ + " (an image in an RBD pool "
                                "may name only images of its pool)");
  return Canonical(root_ + "/" + name);
}

Result<std::unique_ptr<Backend>> RbdStore::Open(const std::string& path, bool writable) {
  KVMFS_ASSIGN_OR_RETURN(Spec spec, Parse(path));
  if (writable && !spec.snap.empty()) return Status::ReadOnly(path + ": an RBD snapshot is read-only");
  std::shared_ptr<ImageHandle> h;
  if (writable) {
    KVMFS_ASSIGN_OR_RETURN(h, WriteHandle(spec.name));
  } else {
    KVMFS_ASSIGN_OR_RETURN(h, MetaHandle(spec));  // the writer's handle while one is open
  }
  if (!h->writable()) return NewRbdBackend(std::move(h), nullptr, path);
  // Allocation queries on a read-write handle go to a read-only one: librbd
  // would take the exclusive lock for them. (The backend keeps the store, and
  // so the cluster, alive.)
  ReaderSource reader = [store = shared_from_this(), spec] { return store->MetaHandle(spec, /*own=*/true); };
  return NewRbdBackend(std::move(h), std::move(reader), path);
}

Result<std::unique_ptr<StoreLock>> RbdStore::Lock(const std::string& path, LockSet set) {
  KVMFS_ASSIGN_OR_RETURN(Spec spec, Parse(path));
  auto lock = std::make_unique<RbdLock>(shared_from_this(), spec, path);
  KVMFS_RETURN_IF_ERROR(lock->Change(set));
  return std::unique_ptr<StoreLock>(std::move(lock));
}

Result<struct statvfs> RbdStore::StatFs(const std::string& /*path*/) {
  struct rados_cluster_stat_t cs {};
  int rc = rados_cluster_stat(cluster_->rados, &cs);
  if (rc < 0) return RbdError(rc, root_ + ": cluster stat");
  struct statvfs sv {};
  sv.f_bsize = sv.f_frsize = 4096;
  sv.f_blocks = cs.kb / 4;
  sv.f_bfree = sv.f_bavail = cs.kb_avail / 4;
  sv.f_files = sv.f_ffree = sv.f_favail = 1u << 20;
  sv.f_namemax = 255;
  return sv;
}

Result<std::vector<StoreSnapshot>> RbdStore::Snapshots(const std::string& path) {
  KVMFS_ASSIGN_OR_RETURN(Spec spec, Parse(path));
  if (!spec.snap.empty()) return std::vector<StoreSnapshot>{};
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<ImageHandle> h, MetaHandle(spec));
  KVMFS_ASSIGN_OR_RETURN(std::vector<Snap> snaps, SnapList(*h));
  std::vector<StoreSnapshot> out;
  for (const Snap& s : snaps) {
    StoreSnapshot snap;
    snap.info.id = std::to_string(s.id);
    snap.info.name = s.name;
    snap.info.disk_size = s.size;
    struct timespec ts {};
    if (rbd_snap_get_timestamp(h->get(), s.id, &ts) == 0) {
      snap.info.date_sec = static_cast<uint32_t>(ts.tv_sec);
      snap.info.date_nsec = static_cast<uint32_t>(ts.tv_nsec);
    }
    int prot = 0;
    if (rbd_snap_is_protected(h->get(), s.name.c_str(), &prot) == 0) snap.is_protected = prot != 0;
    out.push_back(std::move(snap));
  }
  return out;
}

Result<std::unique_ptr<Backend>> RbdStore::OpenSnapshot(const std::string& path, const std::string& id) {
  KVMFS_ASSIGN_OR_RETURN(std::vector<StoreSnapshot> snaps, Snapshots(path));
  KVMFS_ASSIGN_OR_RETURN(Spec spec, Parse(path));
  for (const StoreSnapshot& s : snaps)
    if (s.info.id == id) return Open(PathOf(Spec{spec.name, s.info.name}), false);
  return Status::NotFound(path + ": no snapshot with id " + id);
}

Result<SnapshotInfo> RbdStore::CreateSnapshot(const std::string& path, const std::string& name) {
  KVMFS_ASSIGN_OR_RETURN(Spec spec, Parse(path));
  if (name.empty() || name.find('@') != std::string::npos || name.find('/') != std::string::npos)
    return Status::InvalidArgument(path + ": '" + name + "' is not an RBD snapshot name");
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<ImageHandle> h, WriteHandle(spec.name));
  int rc;
  {
    std::lock_guard order(lock_mu_);
    rc = rbd_snap_create(h->get(), name.c_str());
    GiveBackLock(*h);
  }
  if (rc == -EEXIST) return Status::AlreadyExists(path + ": a snapshot named '" + name + "' exists");
  if (rc < 0) return RbdError(rc, path + ": creating snapshot '" + name + "'");
  KVMFS_ASSIGN_OR_RETURN(std::vector<StoreSnapshot> snaps, Snapshots(path));
  for (const StoreSnapshot& s : snaps)
    if (s.info.name == name) return s.info;
  return Status::NotFound(path + ": snapshot '" + name + "' vanished after creation");
}

Status RbdStore::DeleteSnapshot(const std::string& path, const std::string& id) {
  KVMFS_ASSIGN_OR_RETURN(std::vector<StoreSnapshot> snaps, Snapshots(path));
  KVMFS_ASSIGN_OR_RETURN(Spec spec, Parse(path));
  for (const StoreSnapshot& s : snaps) {
    if (s.info.id != id) continue;
    if (s.is_protected)
      return Status::Busy(path + ": snapshot '" + s.info.name + "' is protected (rbd snap unprotect)");
    KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<ImageHandle> h, WriteHandle(spec.name));
    int rc;
    {
      std::lock_guard order(lock_mu_);
      rc = rbd_snap_remove(h->get(), s.info.name.c_str());
      GiveBackLock(*h);
    }
    if (rc == -EBUSY) return Status::Busy(path + ": snapshot '" + s.info.name + "' has clones");
    return RbdError(rc, path + ": removing snapshot '" + s.info.name + "'");
  }
  return Status::NotFound(path + ": no snapshot with id " + id);
}

std::optional<std::string> RbdStore::Parent(const std::string& path) {
  auto spec = Parse(path);
  if (!spec.ok()) return std::nullopt;
  auto h = MetaHandle(*spec);
  if (!h.ok()) return std::nullopt;
  rbd_linked_image_spec_t parent{};
  rbd_snap_spec_t snap{};
  if (rbd_get_parent((*h)->get(), &parent, &snap) != 0) return std::nullopt;
  std::optional<std::string> out;
  const std::string ns = parent.pool_namespace ? parent.pool_namespace : "";
  if (parent.pool_name != nullptr && config_.pool == parent.pool_name && ns == config_.ns &&
      parent.image_name != nullptr && snap.name != nullptr && !parent.trash) {
    out = PathOf(Spec{parent.image_name, snap.name});
  } else {
    spdlog::debug("{}: parent {}/{} outside {}: not shown under backing/", path,
                  parent.pool_name ? parent.pool_name : "?", parent.image_name ? parent.image_name : "?", root_);
  }
  rbd_linked_image_spec_cleanup(&parent);
  rbd_snap_spec_cleanup(&snap);
  return out;
}

std::optional<InfoObject> RbdStore::Describe(const std::string& path) {
  auto spec = Parse(path);
  if (!spec.ok()) return std::nullopt;
  auto h = MetaHandle(*spec);
  if (!h.ok()) return std::nullopt;
  rbd_image_t img = (*h)->get();
  InfoObject o;
  o.push_back({"pool", config_.pool});
  if (!config_.ns.empty()) o.push_back({"namespace", config_.ns});
  o.push_back({"image", spec->name});
  if (!spec->snap.empty()) o.push_back({"snapshot", spec->snap});
  char id[64] = {};
  if (rbd_get_id(img, id, sizeof id) == 0) o.push_back({"id", std::string(id)});
  rbd_image_info_t info{};
  if (rbd_stat(img, &info, sizeof info) == 0) {
    o.push_back({"size", static_cast<int64_t>(info.size)});
    o.push_back({"object-size", static_cast<int64_t>(info.obj_size)});
    o.push_back({"order", static_cast<int64_t>(info.order)});
    o.push_back({"objects", static_cast<int64_t>(info.num_objs)});
  }
  char prefix[64] = {};
  if (rbd_get_block_name_prefix(img, prefix, sizeof prefix) == 0)
    o.push_back({"block-name-prefix", std::string(prefix)});
  uint64_t features = 0;
  if (rbd_get_features(img, &features) == 0) {
    char text[512] = {};
    size_t len = sizeof text;
    if (rbd_features_to_string(features, text, &len) == 0) o.push_back({"features", std::string(text)});
  }
  if (auto parent = Parent(path)) o.push_back({"parent", parent->substr(4)});
  uint64_t overlap = 0;
  if (rbd_get_overlap(img, &overlap) == 0 && overlap > 0)
    o.push_back({"overlap", static_cast<int64_t>(overlap)});
  auto snaps = Snapshots(PathOf(Spec{spec->name, ""}));
  if (snaps.ok()) o.push_back({"snapshot-count", static_cast<int64_t>(snaps->size())});
  struct timespec ts {};
  if (rbd_get_create_timestamp(img, &ts) == 0) o.push_back({"create-timestamp", int64_t(ts.tv_sec)});
  if (rbd_get_modify_timestamp(img, &ts) == 0) o.push_back({"modify-timestamp", int64_t(ts.tv_sec)});
  return o;
}

// Settings kvmfs needs of librados/librbd whatever ceph.conf says.
Status Configure(rados_t r, const RbdConfig& config, const std::string& who) {
  const std::pair<const char*, std::string> settings[] = {
      {"client_mount_timeout", "15"},  // a dead cluster fails the mount, not hangs it
      {"rados_mon_op_timeout", "30"},
      // No client-side cache: every read asks the OSDs, so a reader on
      // another host sees what a writer flushed (writes are not cached by
      // kvmfs above this either).
      {"rbd_cache", "false"},
      // Discard must read back as zeros (Backend::WriteZeroes with unmap).
      {"rbd_skip_partial_discard", "false"},
      {"log_to_stderr", "false"},
      {"err_to_stderr", "false"},
  };
  if (!config.keyring.empty()) {
    int rc = rados_conf_set(r, "keyring", config.keyring.c_str());
    if (rc < 0) return RbdError(rc, who + ": keyring " + config.keyring);
  }
  for (const auto& [key, value] : settings) {
    int rc = rados_conf_set(r, key, value.c_str());
    if (rc < 0 && rc != -ENOENT) return RbdError(rc, who + ": setting " + key);
  }
  return Status::OK();
}

}  // namespace

Result<std::shared_ptr<Store>> NewRbdStore(const RbdConfig& config) {
  const std::string client = config.client.empty() ? "admin" : config.client;
  const std::string who = "rbd pool " + config.pool + " (client." + client + ")";
  auto cluster = std::make_unique<Cluster>();
  int rc = rados_create(&cluster->rados, client.c_str());
  if (rc < 0) return RbdError(rc, who + ": rados_create");
  rc = rados_conf_read_file(cluster->rados, config.ceph_conf.empty() ? nullptr : config.ceph_conf.c_str());
  if (rc < 0)
    return RbdError(rc, who + ": reading " + (config.ceph_conf.empty() ? "the default ceph.conf" : config.ceph_conf));
  KVMFS_RETURN_IF_ERROR(Configure(cluster->rados, config, who));
  rc = rados_connect(cluster->rados);
  if (rc == -EACCES || rc == -EPERM || rc == -EKEYREJECTED)
    return Status::Permission(who + ": the cluster refused the key" +
                              (config.keyring.empty() ? "" : " in " + config.keyring) + " (" +
                              std::strerror(-rc) + ")");
  if (rc == -ETIMEDOUT || rc == -ENOTCONN)
    return Status::FromErrno(-rc, who + ": no monitor answered (mon host in " +
                                      (config.ceph_conf.empty() ? "ceph.conf" : config.ceph_conf) + ")");
  if (rc < 0) return RbdError(rc, who + ": connecting");
  rc = rados_ioctx_create(cluster->rados, config.pool.c_str(), &cluster->io);
  if (rc == -ENOENT) return Status::NotFound(who + ": no such pool");
  if (rc < 0) return RbdError(rc, who + ": opening the pool");
  if (!config.ns.empty()) rados_ioctx_set_namespace(cluster->io, config.ns.c_str());
  // Listing proves the caps (and the namespace) before the mount is up.
  std::vector<rbd_image_spec_t> specs(1);
  size_t max = specs.size();
  rc = rbd_list2(cluster->io, specs.data(), &max);
  if (rc >= 0) rbd_image_spec_list_cleanup(specs.data(), max);
  if (rc == -EPERM || rc == -EACCES)
    return Status::Permission(who + ": not allowed to list the images (caps: mon 'profile rbd', osd 'profile rbd')");
  if (rc == -ENOENT && !config.ns.empty()) return Status::NotFound(who + ": no namespace " + config.ns);
  if (rc < 0 && rc != -ERANGE) return RbdError(rc, who + ": listing images");
  return std::shared_ptr<Store>(std::make_shared<RbdStore>(std::move(cluster), config));
}

bool RbdAvailable() { return true; }

}  // namespace kvmfs::rbd
