#include "pool/pool_set.h"

#include <spdlog/spdlog.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/path.h"

namespace kvmfs::pool {
namespace {

Status NoPool(const std::string& path) { return Status::NotFound(path + ": no such pool"); }

}  // namespace

std::vector<crypto::KeyRule> KeyRules(const std::string& file,
                                      const std::vector<config::KeyConfig>& keys) {
  std::vector<crypto::KeyRule> rules;
  for (const config::KeyConfig& k : keys)
    rules.push_back({k.match, k.file, (k.source.empty() ? file : k.source) + ":" + std::to_string(k.line)});
  for (const std::string& warning : crypto::KeyFileWarnings(rules)) spdlog::warn("{}", warning);
  return rules;
}

PoolSet::PoolSet(std::shared_ptr<Namespace> root) : root_(std::move(root)) {}

PoolSet::PoolSet(std::vector<PoolEntry> pools, uid_t uid, gid_t gid)
    : pools_(std::move(pools)), uid_(uid), gid_(gid) {
  ::clock_gettime(CLOCK_REALTIME, &created_);
}

struct stat PoolSet::FolderStat() const {
  struct stat st {};
  st.st_mode = S_IFDIR | 0555;
  st.st_nlink = 2;
  st.st_uid = uid_;
  st.st_gid = gid_;
  st.st_atim = st.st_mtim = st.st_ctim = created_;
  return st;
}

Result<const PoolEntry*> PoolSet::Route(const std::string& path, std::string* rest) const {
  size_t start = path.find_first_not_of('/');
  if (start == std::string::npos) return static_cast<const PoolEntry*>(nullptr);
  size_t end = path.find('/', start);
  std::string name = path.substr(start, end == std::string::npos ? std::string::npos : end - start);
  *rest = end == std::string::npos ? "/" : path.substr(end);
  for (const PoolEntry& pool : pools_)
    if (pool.name == name) return &pool;
  return NoPool(path);
}

Result<struct stat> PoolSet::Stat(const std::string& path) {
  if (root_) return root_->Stat(path);
  std::string rest;
  KVMFS_ASSIGN_OR_RETURN(const PoolEntry* pool, Route(path, &rest));
  if (pool == nullptr) return FolderStat();
  if (!pool->ns) {
    if (rest == "/") return FolderStat();
    return Status::NotFound(path);
  }
  return pool->ns->Stat(rest);
}

Result<std::vector<DirEntry>> PoolSet::List(const std::string& path) {
  if (root_) return root_->List(path);
  std::string rest;
  KVMFS_ASSIGN_OR_RETURN(const PoolEntry* pool, Route(path, &rest));
  if (pool == nullptr) {
    std::vector<DirEntry> out;
    for (const PoolEntry& p : pools_) out.push_back(DirEntry{p.name, true, std::nullopt, std::nullopt});
    return out;
  }
  if (!pool->ns) {
    if (rest == "/") return std::vector<DirEntry>{};
    return Status::NotFound(path);
  }
  return pool->ns->List(rest);
}

Result<OpenFile> PoolSet::Open(const std::string& path, int flags) {
  if (root_) return root_->Open(path, flags);
  std::string rest;
  KVMFS_ASSIGN_OR_RETURN(const PoolEntry* pool, Route(path, &rest));
  if (pool == nullptr || (!pool->ns && rest == "/")) return Status::FromErrno(EISDIR, path);
  if (!pool->ns) return Status::NotFound(path);
  return pool->ns->Open(rest, flags);
}

Status PoolSet::Truncate(const std::string& path, uint64_t size) {
  if (root_) return root_->Truncate(path, size);
  std::string rest;
  KVMFS_ASSIGN_OR_RETURN(const PoolEntry* pool, Route(path, &rest));
  if (pool == nullptr || (!pool->ns && rest == "/")) return Status::FromErrno(EISDIR, path);
  if (!pool->ns) return Status::NotFound(path);
  return pool->ns->Truncate(rest, size);
}

Status PoolSet::MakeDir(const std::string& path) {
  if (root_) return root_->MakeDir(path);
  std::string rest;
  auto routed = Route(path, &rest);
  if (!routed.ok() && rest == "/") return Status::ReadOnly(path + ": pool folders come from the config");
  KVMFS_ASSIGN_OR_RETURN(const PoolEntry* pool, std::move(routed));
  if (pool == nullptr || rest == "/") return Status::AlreadyExists(path + ": exists");
  if (!pool->ns) return Status::ReadOnly(path + ": the pool is empty");
  return pool->ns->MakeDir(rest);
}

Status PoolSet::RemoveDir(const std::string& path) {
  if (root_) return root_->RemoveDir(path);
  std::string rest;
  KVMFS_ASSIGN_OR_RETURN(const PoolEntry* pool, Route(path, &rest));
  if (pool == nullptr || rest == "/" || !pool->ns)
    return Status::ReadOnly(path + ": pool folders cannot be removed");
  return pool->ns->RemoveDir(rest);
}

Result<struct statvfs> PoolSet::StatFs(const std::string& path) {
  if (root_) return root_->StatFs();
  std::string rest;
  auto pool = Route(path, &rest);
  if (pool.ok() && *pool != nullptr && (*pool)->ns) return (*pool)->ns->StatFs();
  struct statvfs sv {};
  sv.f_bsize = sv.f_frsize = 4096;
  sv.f_namemax = 255;
  sv.f_flag = ST_RDONLY;  // nothing can be written above the pools
  return sv;
}

// ---- By node ------------------------------------------------------------------

namespace {

SetNode InPool(std::shared_ptr<Namespace> ns, Node node) {
  SetNode out;
  out.kind = SetNode::Kind::kPool;
  out.ns = std::move(ns);
  out.node = std::move(node);
  return out;
}

SetNode Folder(SetNode::Kind kind) {
  SetNode out;
  out.kind = kind;
  return out;
}

}  // namespace

Result<SetNode> PoolSet::Root() {
  if (!root_) return Folder(SetNode::Kind::kSetRoot);
  KVMFS_ASSIGN_OR_RETURN(Node node, root_->Root());
  return InPool(root_, std::move(node));
}

Result<SetNode> PoolSet::Lookup(const SetNode& parent, const std::string& name) {
  switch (parent.kind) {
    case SetNode::Kind::kSetRoot:
      for (const PoolEntry& pool : pools_) {
        if (pool.name != name) continue;
        if (!pool.ns) return Folder(SetNode::Kind::kEmptyPool);
        KVMFS_ASSIGN_OR_RETURN(Node node, pool.ns->Root());
        return InPool(pool.ns, std::move(node));
      }
      return NoPool("/" + name);
    case SetNode::Kind::kEmptyPool:
      return Status::NotFound(name + ": no such file or directory");
    case SetNode::Kind::kPool: break;
  }
  KVMFS_ASSIGN_OR_RETURN(Node node, parent.ns->Lookup(parent.node, name));
  return InPool(parent.ns, std::move(node));
}

Status PoolSet::Refresh(SetNode& node) {
  if (node.kind != SetNode::Kind::kPool) return Status::OK();
  return node.ns->Refresh(node.node);
}

Result<struct stat> PoolSet::Stat(const SetNode& node) {
  if (node.kind != SetNode::Kind::kPool) return FolderStat();
  return node.ns->Stat(node.node);
}

Result<std::vector<DirEntry>> PoolSet::List(const SetNode& node, const std::string& path) {
  switch (node.kind) {
    case SetNode::Kind::kSetRoot: {
      std::vector<DirEntry> out;
      for (const PoolEntry& p : pools_) out.push_back(DirEntry{p.name, true, std::nullopt, std::nullopt});
      return out;
    }
    case SetNode::Kind::kEmptyPool: return std::vector<DirEntry>{};
    case SetNode::Kind::kPool: break;
  }
  return node.ns->List(node.node, path);
}

Result<OpenFile> PoolSet::Open(const SetNode& node, const std::string& path, int flags) {
  if (node.kind != SetNode::Kind::kPool) return Status::FromErrno(EISDIR, path);
  return node.ns->Open(node.node, path, flags);
}

Status PoolSet::Truncate(const SetNode& node, const std::string& path, uint64_t size) {
  if (node.kind != SetNode::Kind::kPool) return Status::FromErrno(EISDIR, path);
  return node.ns->Truncate(node.node, path, size);
}

Status PoolSet::MakeDir(const SetNode& parent, const std::string& path, const std::string& name) {
  switch (parent.kind) {
    case SetNode::Kind::kSetRoot:
      for (const PoolEntry& p : pools_)
        if (p.name == name) return Status::AlreadyExists(path + ": exists");
      return Status::ReadOnly(path + ": pool folders come from the config");
    case SetNode::Kind::kEmptyPool: return Status::ReadOnly(path + ": the pool is empty");
    case SetNode::Kind::kPool: break;
  }
  return parent.ns->MakeDir(parent.node, path, name);
}

Status PoolSet::RemoveDir(const SetNode& node, const std::string& path) {
  if (node.kind != SetNode::Kind::kPool || (node.node.kind == NodeKind::kFolder && !root_ &&
                                            node.node.host_path == node.ns->options().source))
    return Status::ReadOnly(path + ": pool folders cannot be removed");
  return node.ns->RemoveDir(node.node, path);
}

Status PoolSet::MakeLink(const SetNode& parent, const std::string& path, const std::string& name,
                         const std::string& target) {
  if (parent.kind != SetNode::Kind::kPool)
    return Status::NotPermitted(path + ": nothing can be made above the pools' folders");
  return parent.ns->CloneImage(parent.node, path, name, target);
}

Status PoolSet::Rename(const SetNode& node, const std::string& path, const SetNode& new_parent,
                       const std::string& new_name) {
  if (node.kind != SetNode::Kind::kPool || new_parent.kind != SetNode::Kind::kPool)
    return Status::NotPermitted(path + ": pool folders cannot be renamed");
  if (node.ns != new_parent.ns)
    return Status::NotPermitted(path + ": images move only within their pool");
  return node.ns->RenameImage(node.node, path, new_parent.node, new_name);
}

Result<struct statvfs> PoolSet::StatFs(const SetNode& node) {
  if (node.kind == SetNode::Kind::kPool) return node.ns->StatFs();
  struct statvfs sv {};
  sv.f_bsize = sv.f_frsize = 4096;
  sv.f_namemax = 255;
  sv.f_flag = ST_RDONLY;  // nothing can be written above the pools
  return sv;
}

void PoolSet::SetChangeListener(ChangeListener* listener) {
  if (root_) root_->SetChangeListener(listener);
  for (PoolEntry& p : pools_)
    if (p.ns) p.ns->SetChangeListener(listener);
}

namespace {

// A pool whose files are not local (rbd, s3): its namespace over the store
// the registry opens for its backend (kvmfs/store.h OpenStore). A store that
// cannot be reached or refuses the keys fails the mount (or the reload), in
// one line naming the config file and the pool.
Result<PoolEntry> StorePool(const config::Config& config, const config::PoolConfig& p,
                            const PoolSetOptions& options, const std::shared_ptr<LayerRegistry>& registry,
                            const std::vector<crypto::KeyRule>& keys) {
  auto store = OpenStore(StoreConfig{p.store_backend, p.name, p.store_options});
  if (!store.ok())
    return store.status().WithContext(config.file + ":" + std::to_string(p.line) + ": pool " + p.name);
  PoolEntry entry;
  entry.name = p.name;
  entry.path = (*store)->root();
  const StoreCaps caps = (*store)->caps();
  entry.readonly = p.readonly || options.readonly || caps.read_only;
  NamespaceOptions ns;
  ns.source = (*store)->root();
  ns.pool_name = p.name;
  ns.store = std::move(store).value();
  ns.uid = options.uid;
  ns.gid = options.gid;
  ns.extensions = p.extensions.empty() ? config.extensions : p.extensions;
  ns.readonly = entry.readonly;
  ns.force_share = options.force_share;
  ns.registry = registry;
  ns.keys = keys;
  entry.ns = std::make_shared<Namespace>(std::move(ns));
  spdlog::info("pool {}: {} store {} ({})", p.name, p.store_backend, entry.path,
               entry.readonly ? "read-only" : "read-write");
  return entry;
}

}  // namespace

Result<std::shared_ptr<PoolSet>> BuildPoolSet(const config::Config& config,
                                              const PoolSetOptions& options) {
  static const auto process_registry = std::make_shared<LayerRegistry>();
  const std::shared_ptr<LayerRegistry> registry = options.registry ? options.registry : process_registry;
  config::OsRelease os;
  bool need_os = false;
  for (const config::PoolConfig& p : config.pools) need_os |= !p.layout.empty();
  if (need_os) {
    auto loaded = config::LoadOsRelease(config.os_release);
    if (!loaded.ok())
      return Status::InvalidArgument(config.file + ": " + loaded.status().message());
    os = std::move(loaded).value();
  }
  const std::vector<crypto::KeyRule> keys = KeyRules(config.file, config.keys);
  std::vector<PoolEntry> pools;
  for (const config::PoolConfig& p : config.pools) {
    if (!p.store_backend.empty()) {
      KVMFS_ASSIGN_OR_RETURN(PoolEntry entry, StorePool(config, p, options, registry, keys));
      pools.push_back(std::move(entry));
      continue;
    }
    KVMFS_ASSIGN_OR_RETURN(std::string path, config::PoolPath(config, p, os));
    PoolEntry entry;
    entry.name = p.name;
    entry.path = path;
    entry.readonly = p.readonly || options.readonly;
    auto canonical = CanonicalPath(path);
    struct stat st;
    if (!canonical.ok()) {
      spdlog::warn("pool {}: {}: {}; shown empty", p.name, path,
                   std::strerror(canonical.status().ToErrno()));
    } else if (::stat(canonical->c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      spdlog::warn("pool {}: {}: not a directory; shown empty", p.name, path);
    } else if (::access(canonical->c_str(), R_OK | X_OK) != 0) {
      spdlog::warn("pool {}: {}: {}; shown empty", p.name, path, std::strerror(errno));
    } else {
      NamespaceOptions ns;
      ns.source = *canonical;
      ns.pool_name = p.name;
      for (const std::string& root : p.backing_roots) {
        auto r = CanonicalPath(root);
        if (r.ok())
          ns.backing_roots.push_back(*r);
        else
          spdlog::warn("pool {}: backing root {}: {}", p.name, root,
                       std::strerror(r.status().ToErrno()));
      }
      ns.uid = options.uid;
      ns.gid = options.gid;
      for (const std::string& h : options.hidden)
        if (IsUnder(h, ns.source)) ns.hidden.push_back(h);
      ns.extensions = p.extensions.empty() ? config.extensions : p.extensions;
      ns.blockdev = p.backend == config::Backend::kBlockdev;
      ns.readonly = entry.readonly;
      ns.compress = p.compress == config::Compress::kZlib   ? WriteCompression::kZlib
                    : p.compress == config::Compress::kZstd ? WriteCompression::kZstd
                                                            : WriteCompression::kNone;
      ns.force_share = options.force_share;
      ns.registry = registry;
      ns.keys = keys;
      ns.create_mode = static_cast<mode_t>(p.create_mode);
      if (p.create_uid) ns.create_uid = static_cast<uid_t>(*p.create_uid);
      if (p.create_gid) ns.create_gid = static_cast<gid_t>(*p.create_gid);
      entry.ns = std::make_shared<Namespace>(std::move(ns));
    }
    pools.push_back(std::move(entry));
  }
  return std::make_shared<PoolSet>(std::move(pools), options.uid, options.gid);
}

}  // namespace kvmfs::pool
