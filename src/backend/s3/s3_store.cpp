// The Store of an S3 pool: listing, stat and open through S3Client, local
// qcow2 overlays for writes (s3_store.h has the path scheme).
#include "backend/s3/s3_store.h"

#include <sys/statvfs.h>
#include <time.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <functional>
#include <unordered_map>
#include <vector>

#include "backend/s3/client.h"
#include "backend/s3/overlay.h"
#include "base/mutex.h"

namespace kvmfs::s3 {
namespace {

constexpr const char* kObjectDir = ".kvmfs-object";
constexpr const char* kOverlayDir = ".kvmfs-overlay";
// How long a listing's or HEAD's answer about an object stands before a stat
// asks the server again (so an ETag change is noticed within the recheck
// interval of open images, pool/image_cache.h).
constexpr int64_t kFreshNs = 1'000'000'000;

uint64_t Hash(const std::string& s) { return std::hash<std::string>{}(s); }

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Which name space of the store a path is in (s3_store.h).
enum class Family {
  kPlain,    // ROOT/REL: as listed
  kObject,   // ROOT/.kvmfs-object/REL: the object itself (overlay pools)
  kOverlay,  // ROOT/.kvmfs-overlay/FILE: a local overlay (overlay pools)
};

struct Parsed {
  Family family = Family::kPlain;
  std::string rel;  // "" for the root (of its family); '/'-separated, no dot components
};

// Objects have no locks: a claim that holds nothing.
class NoLock final : public StoreLock {
 public:
  explicit NoLock(LockSet set) : set_(set) {}
  Status Change(LockSet set) override {
    MutexLock lock(mu_);
    set_ = set;
    return Status::OK();
  }
  LockSet set() const override {
    MutexLock lock(mu_);
    return set_;
  }

 private:
  mutable Mutex mu_;
  LockSet set_ GUARDED_BY(mu_);
};

class S3Store final : public Store {
 public:
  S3Store(std::shared_ptr<S3Client> client, std::string overlay_dir)
      : client_(std::move(client)),
        overlay_dir_(std::move(overlay_dir)),
        root_(RootOf(client_->config())),
        dev_(static_cast<dev_t>(Hash(root_) | 1)) {
    ::clock_gettime(CLOCK_REALTIME, &mounted_);
  }

  std::string_view kind() const override { return "s3"; }
  StoreCaps caps() const override {
    StoreCaps caps;
    caps.links = overlays();
    caps.immutable_objects = true;
    caps.remote = true;
    caps.read_only = !overlays();
    caps.write_elsewhere = overlays();
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
  std::optional<InfoObject> Describe(const std::string& path) override;
  Status PrepareWrite(const std::string& path, const std::string& format,
                      uint64_t virtual_size) override;

 private:
  static std::string RootOf(const S3Config& c) {
    std::string prefix = c.prefix;
    while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
    return "s3://" + c.bucket + (prefix.empty() ? "" : "/" + prefix);
  }
  bool overlays() const { return !overlay_dir_.empty(); }
  std::string PathOf(Family family, const std::string& rel) const {
    std::string head = family == Family::kObject    ? root_ + "/" + kObjectDir
                       : family == Family::kOverlay ? root_ + "/" + kOverlayDir
                                                    : root_;
    return rel.empty() ? head : head + "/" + rel;
  }
  // The local file of an overlay path's FILE.
  std::string LocalOverlay(const std::string& file) const {
    return overlay_dir_ + "/" + client_->config().bucket + "/" + file;
  }
  Result<Parsed> Parse(const std::string& path) const;
  // The object at `rel`: from the last listing or HEAD when fresh (or when the
  // server cannot be reached: the last answer, with the error logged), else
  // by HEAD. kNotFound when there is none.
  Result<ObjectInfo> Object(const std::string& rel, bool fresh);
  // Whether `rel` is a folder (from listings; else one listing of it).
  bool IsFolder(const std::string& rel);
  struct stat FolderStat(const std::string& rel) const REQUIRES(mu_);
  // Lists folder `rel` anew when its last listing is older than kFreshNs.
  void RefreshFolder(const std::string& rel);
  struct stat ObjectStat(const ObjectInfo& info, bool as_link) const;
  // What the listed image `rel` stands for (overlay pools): its overlay's path
  // when it has one, else its object's.
  Result<std::string> Target(const std::string& rel);
  OverlayTarget TargetOf(const ObjectInfo& info, const std::string& format) const {
    return OverlayTarget{client_->config().bucket, client_->Key(info.path), info.etag, info.size,
                         format};
  }

  const std::shared_ptr<S3Client> client_;
  const std::string overlay_dir_;
  const std::string root_;
  const dev_t dev_;
  struct timespec mounted_ {};

  struct Known {
    ObjectInfo info;
    int64_t seen_ns = 0;
  };
  Mutex mu_;
  std::unordered_map<std::string, Known> objects_ GUARDED_BY(mu_);
  // A folder's version: its mtime changes when a listing differs from the
  // one before, so the kernel drops its cached listing (FUSE compares a
  // directory's mtime) and new objects show.
  struct FolderState {
    uint64_t hash = 0;
    struct timespec mtim {};
    int64_t listed_ns = 0;
  };
  std::unordered_map<std::string, FolderState> folders_ GUARDED_BY(mu_);
};

Result<Parsed> S3Store::Parse(const std::string& path) const {
  Parsed out;
  if (path == root_ || path == root_ + "/") return out;
  if (path.compare(0, root_.size(), root_) != 0 || path.size() <= root_.size() + 1 ||
      path[root_.size()] != '/')
    return Status::NotFound(path + ": not in " + root_);
  std::vector<std::string> parts;
  size_t start = root_.size() + 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    start = end + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      // Never above the root of the path's family (an object's backing name
      // cannot climb out of the objects into the overlays).
      if (parts.empty() || (parts.size() == 1 && overlays() &&
                            (parts[0] == kObjectDir || parts[0] == kOverlayDir)))
        return Status::NotFound(path + ": outside " + root_);
      parts.pop_back();
      continue;
    }
    parts.push_back(std::move(part));
  }
  size_t first = 0;
  if (overlays() && !parts.empty() && parts[0] == kObjectDir) {
    out.family = Family::kObject;
    first = 1;
  } else if (overlays() && !parts.empty() && parts[0] == kOverlayDir) {
    out.family = Family::kOverlay;
    first = 1;
    if (parts.size() != 2) return Status::NotFound(path + ": no such overlay");
  }
  for (size_t i = first; i < parts.size(); ++i) out.rel += (i > first ? "/" : "") + parts[i];
  return out;
}

Result<ObjectInfo> S3Store::Object(const std::string& rel, bool fresh) {
  const int64_t now = SteadyNs();
  std::optional<ObjectInfo> last;
  {
    MutexLock lock(mu_);
    auto it = objects_.find(rel);
    if (it != objects_.end()) {
      if (!fresh || now - it->second.seen_ns < kFreshNs) return it->second.info;
      last = it->second.info;
    }
  }
  auto head = client_->Stat(rel);
  MutexLock lock(mu_);
  if (head.ok()) {
    objects_[rel] = Known{*head, now};
    return head;
  }
  if (head.status().IsNotFound()) {
    objects_.erase(rel);
    return head.status();
  }
  // An outage is not a change: keep answering with the last version seen
  // (its reads fail with EIO until the server is back).
  if (last && head.status().code() == Status::Code::kIOError) return *last;
  return head.status();
}

bool S3Store::IsFolder(const std::string& rel) {
  if (rel.empty()) return true;
  {
    MutexLock lock(mu_);
    if (folders_.count(rel) != 0) return true;
  }
  // Lists it (and so records it) when it holds anything.
  auto listed = List(PathOf(Family::kPlain, rel));
  return listed.ok() && !listed->empty();
}

void S3Store::RefreshFolder(const std::string& rel) {
  {
    MutexLock lock(mu_);
    auto it = folders_.find(rel);
    if (it != folders_.end() && SteadyNs() - it->second.listed_ns < kFreshNs) return;
  }
  (void)List(PathOf(Family::kPlain, rel));  // a failure keeps the last version
}

struct stat S3Store::FolderStat(const std::string& rel) const {
  struct stat st {};
  st.st_dev = dev_;
  st.st_ino = static_cast<ino_t>(Hash("d:" + rel) | 2);
  st.st_mode = S_IFDIR | 0755;
  st.st_nlink = 2;
  st.st_blksize = 4096;
  auto it = folders_.find(rel);
  st.st_atim = st.st_mtim = st.st_ctim = it == folders_.end() ? mounted_ : it->second.mtim;
  return st;
}

struct stat S3Store::ObjectStat(const ObjectInfo& info, bool as_link) const {
  struct stat st {};
  st.st_dev = dev_;
  st.st_ino = static_cast<ino_t>(Hash((as_link ? "l:" : "o:") + info.path) | 2);
  st.st_mode = as_link ? (S_IFLNK | 0777) : (S_IFREG | 0444);
  st.st_nlink = 1;
  st.st_size = static_cast<off_t>(info.size);
  st.st_blocks = static_cast<blkcnt_t>((info.size + 511) / 512);
  st.st_blksize = static_cast<blksize_t>(client_->fetcher().block_size());
  st.st_mtim.tv_sec = st.st_atim.tv_sec = info.mtime_sec;
  st.st_mtim.tv_nsec = st.st_atim.tv_nsec = info.mtime_nsec;
  // The ETag is the version: a rewrite within the same second and size is
  // still a new version (FileKey compares ctime).
  st.st_ctim.tv_sec = info.mtime_sec;
  st.st_ctim.tv_nsec = static_cast<long>(Hash(info.etag) % 1000000000u);
  return st;
}

Result<std::vector<StoreEntry>> S3Store::List(const std::string& dir) {
  KVMFS_ASSIGN_OR_RETURN(Parsed p, Parse(dir));
  if (p.family == Family::kOverlay) return Status::FromErrno(ENOTDIR, dir);
  KVMFS_ASSIGN_OR_RETURN(FolderListing listing, client_->List(p.rel));
  const std::string base = p.rel.empty() ? "" : p.rel + "/";
  const int64_t now = SteadyNs();
  uint64_t hash = listing.entries.size();
  for (const FolderEntry& e : listing.entries)
    hash = hash * 1000003u ^ Hash(e.name + (e.is_folder ? "/" : "\n" + e.etag + ":" + std::to_string(e.size)));
  std::vector<StoreEntry> out;
  MutexLock lock(mu_);
  if (listing.entries.empty() && !p.rel.empty()) {
    // S3 has no empty folders: nothing below it, no folder (any more).
    folders_.erase(p.rel);
    return out;
  }
  auto [state, first] = folders_.try_emplace(p.rel);
  if (first) {
    state->second.mtim = mounted_;
  } else if (state->second.hash != hash) {
    ::clock_gettime(CLOCK_REALTIME, &state->second.mtim);
  }
  state->second.hash = hash;
  // (A stale listing too: during an outage, ask again at most once per
  // interval.)
  state->second.listed_ns = now;
  for (const FolderEntry& e : listing.entries) {
    const std::string rel = base + e.name;
    if (e.is_folder) {
      auto [child, added] = folders_.try_emplace(rel);
      if (added) child->second.mtim = mounted_;
      out.push_back({e.name, FolderStat(rel)});
      continue;
    }
    ObjectInfo info{rel, e.size, e.etag, e.mtime_sec, e.mtime_nsec};
    // A stale listing does not make its objects fresh.
    if (!listing.stale) objects_[rel] = Known{info, now};
    out.push_back({e.name, ObjectStat(info, overlays() && p.family == Family::kPlain)});
  }
  return out;
}

Result<std::string> S3Store::Target(const std::string& rel) {
  KVMFS_ASSIGN_OR_RETURN(ObjectInfo info, Object(rel, true));
  // The format does not take part in finding an overlay.
  auto found = FindOverlay(overlay_dir_, TargetOf(info, ""));
  if (!found.ok()) {
    // Made over another version of the object: leave it alone, show the
    // object (writing then fails with the same reason).
    spdlog::warn("s3: {}: {}", client_->Url(rel), found.status().ToString());
    return PathOf(Family::kObject, rel);
  }
  if (*found) return PathOf(Family::kOverlay, BaseName((*found)->path));
  return PathOf(Family::kObject, rel);
}

Result<struct stat> S3Store::Stat(const std::string& path, bool follow) {
  KVMFS_ASSIGN_OR_RETURN(Parsed p, Parse(path));
  if (p.family == Family::kOverlay) return HostStore()->Stat(LocalOverlay(p.rel), true);
  auto folder = [&]() -> struct stat {
    RefreshFolder(p.rel);
    MutexLock lock(mu_);
    return FolderStat(p.rel);
  };
  if (p.rel.empty()) return folder();
  bool known_folder;
  {
    MutexLock lock(mu_);
    known_folder = folders_.count(p.rel) != 0 && objects_.count(p.rel) == 0;
  }
  if (known_folder) return folder();
  auto obj = Object(p.rel, true);
  if (!obj.ok()) {
    if (obj.status().IsNotFound() && IsFolder(p.rel)) return folder();
    return obj.status();
  }
  if (!overlays() || p.family == Family::kObject) return ObjectStat(*obj, false);
  if (!follow) return ObjectStat(*obj, true);
  KVMFS_ASSIGN_OR_RETURN(std::string target, Target(p.rel));
  return Stat(target, true);
}

Result<std::string> S3Store::Canonical(const std::string& path) {
  KVMFS_ASSIGN_OR_RETURN(Parsed p, Parse(path));
  const std::string canon = PathOf(p.family, p.rel);
  KVMFS_ASSIGN_OR_RETURN(struct stat st, Stat(canon, false));
  if (S_ISLNK(st.st_mode)) return Target(p.rel);
  return canon;
}

Result<std::string> S3Store::Resolve(const std::string& base, const std::string& name) {
  const S3Config& c = client_->config();
  const std::string here = "s3://" + c.bucket + "/" + client_->Key("");
  if (name.rfind(here, 0) == 0 && name.size() > here.size()) {
    // "s3://BUCKET/KEY" (what overlays name): the object, never its overlay.
    return Canonical(PathOf(overlays() ? Family::kObject : Family::kPlain, name.substr(here.size())));
  }
  KVMFS_ASSIGN_OR_RETURN(Parsed from, Parse(base));
  if (name.empty() || name[0] == '/' || name.find("://") != std::string::npos ||
      from.family == Family::kOverlay)
    return Status::NotSupported(base + ": '" + name + "' is not an object of " + root_ +
                                " (an image in an S3 pool may name only objects of its pool, "
                                "relative to itself or as " + here + "KEY)");
  // Relative to the folder of `base`, in base's family (Parse() keeps ".."
  // inside it).
  size_t slash = from.rel.rfind('/');
  std::string folder = slash == std::string::npos ? "" : from.rel.substr(0, slash);
  std::string joined = PathOf(from.family, folder) + "/" + name;
  return Canonical(joined);
}

Result<std::unique_ptr<Backend>> S3Store::Open(const std::string& path, bool writable) {
  KVMFS_ASSIGN_OR_RETURN(Parsed p, Parse(path));
  if (p.family == Family::kOverlay) return HostStore()->Open(LocalOverlay(p.rel), writable);
  if (overlays() && p.family == Family::kPlain && !p.rel.empty()) {
    KVMFS_ASSIGN_OR_RETURN(std::string target, Target(p.rel));
    return Open(target, writable);
  }
  if (p.rel.empty()) return Status::InvalidArgument(path + ": a folder");
  if (writable)
    return Status::ReadOnly(client_->Url(p.rel) + ": S3 objects are not rewritten in place" +
                            (overlays() ? "" : " (set overlay_dir for local writes)"));
  auto info = Object(p.rel, true);
  if (!info.ok() && info.status().IsNotFound() && IsFolder(p.rel))
    return Status::InvalidArgument(path + ": a folder");
  KVMFS_RETURN_IF_ERROR(info.status());
  return client_->OpenObject(*info);
}

Result<std::unique_ptr<StoreLock>> S3Store::Lock(const std::string& path, LockSet set) {
  KVMFS_ASSIGN_OR_RETURN(Parsed p, Parse(path));
  if (p.family == Family::kOverlay) return HostStore()->Lock(LocalOverlay(p.rel), set);
  if (overlays() && p.family == Family::kPlain && !p.rel.empty()) {
    KVMFS_ASSIGN_OR_RETURN(std::string target, Target(p.rel));
    return Lock(target, set);
  }
  if (set.perms & kPermWrite) return Status::ReadOnly(path + ": S3 objects are not rewritten in place");
  return std::unique_ptr<StoreLock>(std::make_unique<NoLock>(set));
}

Result<struct statvfs> S3Store::StatFs(const std::string& /*path*/) {
  struct statvfs sv {};
  if (overlays()) {
    // What can be written is what the overlays' file system holds.
    if (::statvfs(overlay_dir_.c_str(), &sv) == 0) {
      sv.f_flag &= ~static_cast<unsigned long>(ST_RDONLY);
      return sv;
    }
  }
  sv.f_bsize = sv.f_frsize = 4096;
  sv.f_namemax = 1024;
  sv.f_flag = overlays() ? 0 : ST_RDONLY;
  return sv;
}

std::optional<InfoObject> S3Store::Describe(const std::string& path) {
  auto p = Parse(path);
  if (!p.ok()) return std::nullopt;
  const S3Config& c = client_->config();
  InfoObject out;
  out.push_back({"endpoint", c.endpoint.empty() ? std::string("aws") : c.endpoint});
  out.push_back({"bucket", c.bucket});
  if (p->family == Family::kOverlay) {
    const std::string local = LocalOverlay(p->rel);
    out.push_back({"overlay", local});
    // The sidecar says which object version the overlay lies over.
    out.push_back({"overlay-meta", local + ".json"});
    return out;
  }
  auto info = Object(p->rel, false);
  if (!info.ok()) return std::nullopt;
  out.push_back({"key", client_->Key(p->rel)});
  out.push_back({"url", client_->Url(p->rel)});
  out.push_back({"etag", info->etag});
  out.push_back({"size", static_cast<int64_t>(info->size)});
  return out;
}

Status S3Store::PrepareWrite(const std::string& path, const std::string& format,
                             uint64_t virtual_size) {
  if (!overlays())
    return Status::ReadOnly(path + ": the S3 pool is read-only (set overlay_dir for local writes)");
  KVMFS_ASSIGN_OR_RETURN(Parsed p, Parse(path));
  if (p.family == Family::kOverlay) return Status::OK();
  if (p.rel.empty()) return Status::InvalidArgument(path + ": a folder");
  KVMFS_ASSIGN_OR_RETURN(ObjectInfo info, Object(p.rel, true));
  KVMFS_ASSIGN_OR_RETURN(OverlayInfo made,
                         CreateOverlay(overlay_dir_, TargetOf(info, format), virtual_size));
  spdlog::info("s3: {}: writes go to the overlay {}", client_->Url(p.rel), made.path);
  return Status::OK();
}

}  // namespace

Result<std::shared_ptr<Store>> NewS3Store(const S3StoreConfig& config) {
  std::shared_ptr<BlockCache> cache;
  if (!config.cache_dir.empty()) {
    KVMFS_ASSIGN_OR_RETURN(cache, BlockCache::Open(config.cache_dir, config.cache_max));
  }
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<S3Client> client, S3Client::Create(config.s3, cache));
  KVMFS_RETURN_IF_ERROR(client->Verify());
  return std::shared_ptr<Store>(std::make_shared<S3Store>(std::move(client), config.overlay_dir));
}

Result<std::shared_ptr<Store>> OpenS3Store(const StoreConfig& config) {
  auto get = [&](const char* key) -> std::string {
    auto it = config.options.find(key);
    return it == config.options.end() ? std::string() : it->second;
  };
  S3StoreConfig c;
  c.s3.pool = config.pool;
  c.s3.endpoint = get("endpoint");
  if (!get("region").empty()) c.s3.region = get("region");
  c.s3.bucket = get("bucket");
  c.s3.prefix = get("prefix");
  if (!get("path_style").empty()) c.s3.path_style = get("path_style") == "true";
  c.s3.ca_file = get("ca_file");
  KVMFS_ASSIGN_OR_RETURN(c.s3.credentials, LoadCredentials(get("credentials"), get("profile")));
  c.cache_dir = get("cache_dir");
  if (!get("cache_max").empty()) c.cache_max = std::stoull(get("cache_max"));
  c.overlay_dir = get("overlay_dir");
  return NewS3Store(c);
}

}  // namespace kvmfs::s3
