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
  // As Namespace::Truncate/MakeSnapshotDir/RemoveSnapshotDir; anything at
  // or above a pool folder is kReadOnly.
  Status Truncate(const std::string& path, uint64_t size);
  Status MakeDir(const std::string& path);
  Status RemoveDir(const std::string& path);
  // statvfs of the pool holding `path` (read-only); for "/" of a YAML
  // SOURCE and empty pools, an empty read-only file system.
  Result<struct statvfs> StatFs(const std::string& path);

  const std::vector<PoolEntry>& pools() const { return pools_; }
  bool mirrored() const { return root_ != nullptr; }

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
    std::lock_guard lock(mu_);
    return set_;
  }
  void Set(std::shared_ptr<PoolSet> set) {
    std::lock_guard lock(mu_);
    set_.swap(set);
    // The old set is released outside the lock (when `set` goes out of scope).
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<PoolSet> set_;  // GUARDED_BY(mu_)
};

}  // namespace kvmfs::pool
