// The pools of a mount and the router above their namespaces
// (CONTRACT.md "The tree"):
//   a directory SOURCE: its Namespace mirrored at the root;
//   a YAML SOURCE: MNT/<pool name>/... one folder per pool, each pool being
//   the directory namespace of its path.
// A PoolSet is immutable once built; a config reload builds a new one and
// swaps it in PoolRoot, while open files keep the old one alive.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include "base/mutex.h"

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config/config.h"
#include "kvmfs/status.h"
#include "pool/namespace.h"

namespace kvmfs::pool {

struct PoolEntry {
  std::string name;
  std::string path;               // the resolved host path
  std::shared_ptr<Namespace> ns;  // null: path missing or unreadable, shown as an empty folder
  bool readonly = false;          // config `readonly: true` (or a -o ro mount)
};

// A node of a pool set, for callers that keep nodes instead of paths (the
// FUSE inode table): the set's own root (a YAML SOURCE), the folder of a pool
// whose path is missing (empty), or a node of a pool's namespace.
struct SetNode {
  enum class Kind { kSetRoot, kEmptyPool, kPool };
  Kind kind = Kind::kPool;
  std::shared_ptr<Namespace> ns;  // kPool: the pool's namespace (kept alive across reloads)
  Node node;                      // kPool: the node in ns

  bool IsDir() const { return kind != Kind::kPool || node.IsDir(); }
  // Whether the pool it belongs to is read-only (the set's own folders are).
  bool ReadOnly() const { return kind != Kind::kPool || ns->options().readonly; }
};

class PoolSet {
 public:
  // A directory SOURCE: `root` is the whole tree.
  explicit PoolSet(std::shared_ptr<Namespace> root);
  // A YAML SOURCE: one folder per pool, owned by uid/gid.
  PoolSet(std::vector<PoolEntry> pools, uid_t uid, gid_t gid);

  // As Namespace::Stat/List/Open for absolute mount paths. "/" lists the pool
  // names (0555 folders); unknown pool names are kNotFound. Thread-safe.
  Result<struct stat> Stat(const std::string& path);
  Result<std::vector<DirEntry>> List(const std::string& path);
  Result<OpenFile> Open(const std::string& path, int flags);
  // As Namespace::Truncate/MakeDir/RemoveDir; anything at
  // or above a pool folder is kReadOnly.
  Status Truncate(const std::string& path, uint64_t size);
  Status MakeDir(const std::string& path);
  Status RemoveDir(const std::string& path);
  // statvfs of the pool holding `path` (read-only); for "/" of a YAML
  // SOURCE and empty pools, an empty read-only file system.
  Result<struct statvfs> StatFs(const std::string& path);

  // ---- By node (see SetNode and Namespace's node versions). A set root
  // lists the pools, an empty pool nothing; both are 0555 folders, and
  // everything at or above a pool folder refuses changes as the path
  // versions do. `path` only names the node in errors. Thread-safe.
  Result<SetNode> Root();
  Result<SetNode> Lookup(const SetNode& parent, const std::string& name);
  Status Refresh(SetNode& node);
  Result<struct stat> Stat(const SetNode& node);
  Result<std::vector<DirEntry>> List(const SetNode& node, const std::string& path);
  Result<OpenFile> Open(const SetNode& node, const std::string& path, int flags);
  Status Truncate(const SetNode& node, const std::string& path, uint64_t size);
  // mkdir `name` in `parent` (`path` is the new directory's).
  Status MakeDir(const SetNode& parent, const std::string& path, const std::string& name);
  Status RemoveDir(const SetNode& node, const std::string& path);
  // ln -s `target` `name` in `parent` (Namespace::CloneImage); NotPermitted
  // above the pools' folders.
  Status MakeLink(const SetNode& parent, const std::string& path, const std::string& name,
                  const std::string& target);
  // mv of `node` to `new_name` in `new_parent` (Namespace::RenameImage);
  // NotPermitted for pool folders and between pools.
  Status Rename(const SetNode& node, const std::string& path, const SetNode& new_parent,
                const std::string& new_name);
  Result<struct statvfs> StatFs(const SetNode& node);

  // Registers `listener` with every pool's namespace (nullptr: none).
  void SetChangeListener(ChangeListener* listener);

  const std::vector<PoolEntry>& pools() const { return pools_; }
  bool mirrored() const { return root_ != nullptr; }
  // The namespace of a directory SOURCE (null for a YAML SOURCE).
  const std::shared_ptr<Namespace>& root() const { return root_; }

 private:
  // "/name/rest" -> the pool and "/rest". kNotFound for an unknown name.
  Result<const PoolEntry*> Route(const std::string& path, std::string* rest) const;
  struct stat FolderStat() const;

  std::shared_ptr<Namespace> root_;
  std::vector<PoolEntry> pools_;
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  struct timespec created_ {};
};

struct PoolSetOptions {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<std::string> hidden;  // canonical paths never shown (the mount point)
  bool readonly = false;             // -o ro: every pool read-only
  bool force_share = false;          // -o force_share (NamespaceOptions::force_share)
  // The mount's open files, shared by its pools and kept across config
  // reloads; null: the process-wide one (a process serves one mount).
  std::shared_ptr<LayerRegistry> registry;
};

// The pools of `config`: each pool's path (layouts resolved with the config's
// os-release), its backing roots and extensions. A pool whose path is missing
// or unreadable is logged (warn) and left empty. Errors (kInvalidArgument,
// naming file, line and key): os-release unreadable while a layout is used,
// a layout without a matching entry, an unknown {field}.
Result<std::shared_ptr<PoolSet>> BuildPoolSet(const config::Config& config,
                                              const PoolSetOptions& options);

// The `keys:` of config `file` as KeyRing rules (origin "FILE:LINE"); logs a
// warning for each key file that group or others may read.
std::vector<crypto::KeyRule> KeyRules(const std::string& file,
                                      const std::vector<config::KeyConfig>& keys);

// The current pool set of a mount, replaced atomically on reload. Thread-safe.
class PoolRoot {
 public:
  explicit PoolRoot(std::shared_ptr<PoolSet> set) : set_(std::move(set)) {}
  std::shared_ptr<PoolSet> Get() const {
    MutexLock lock(mu_);
    return set_;
  }
  void Set(std::shared_ptr<PoolSet> set) {
    std::function<void()> on_set;
    {
      MutexLock lock(mu_);
      if (set) set->SetChangeListener(listener_);
      set_.swap(set);
      on_set = on_set_;
    }
    // The old set is released outside the lock (when `set` goes out of scope).
    if (on_set) on_set();
  }
  // The listener of the current set and of every set Set() later (nullptr: none).
  void SetChangeListener(ChangeListener* listener) {
    MutexLock lock(mu_);
    listener_ = listener;
    if (set_) set_->SetChangeListener(listener);
  }
  // Called after every Set() (outside the lock): the FUSE front end drops
  // what the kernel caches of the pool folders.
  void OnSet(std::function<void()> fn) {
    MutexLock lock(mu_);
    on_set_ = std::move(fn);
  }

 private:
  mutable Mutex mu_;
  std::shared_ptr<PoolSet> set_ GUARDED_BY(mu_);
  ChangeListener* listener_ GUARDED_BY(mu_) = nullptr;
  std::function<void()> on_set_ GUARDED_BY(mu_);
};

}  // namespace kvmfs::pool
