// The inode table of the low-level front end: every node the kernel knows by
// number, with its pool node, lookup count and the image files its content
// depends on. An inode number names one (parent, name) for the life of the
// mount (kept when the kernel forgets it; a new number only when a name turns
// from a directory into a file or back), and numbers are never reused, so the
// generation is always 0.
#pragma once

#include <fuse_lowlevel.h>

#include "base/mutex.h"

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pool/pool_set.h"

namespace kvmfs::fuse {

// One inode: the parts that never change, and the flag the invalidation
// path reads without the table's lock.
struct Inode {
  Inode(fuse_ino_t ino_in, fuse_ino_t parent_in, std::string name_in)
      : ino(ino_in), parent(parent_in), name(std::move(name_in)) {}
  const fuse_ino_t ino;
  const fuse_ino_t parent;
  const std::string name;
  // Set whenever a reply may have put something of this inode into a kernel
  // cache (attributes, pages, its listing); cleared when an invalidation is
  // pushed, so that an inode the kernel holds nothing of costs nothing.
  std::atomic<bool> kernel_may_cache{true};
  // The KernelCache epoch of the last change that made this inode's cached
  // data stale (see KernelCache::Recheck).
  std::atomic<uint64_t> changed_epoch{0};

  // A reply about this inode is on its way. (A load first: reads of one
  // file on many threads do not all write one cache line.)
  void MarkCached() {
    if (!kernel_may_cache.load(std::memory_order_relaxed))
      kernel_may_cache.store(true, std::memory_order_release);
  }
};

// The canonical paths of the image files whose bytes or metadata `node`
// shows: the whole chain for an image's own views, the chain from layer n
// down for backing/<n>-*, the image file alone for an image directory whose
// image is not opened; nothing for folders.
std::vector<std::string> ChainOf(const pool::Node& node);

class InodeTable {
 public:
  // `root` becomes FUSE_ROOT_ID (never forgotten).
  explicit InodeTable(pool::SetNode root);

  // What a request needs of an inode: the inode and its node as last
  // resolved (node.node.image unset: the table holds images weakly, so that
  // inodes the kernel keeps do not keep images open).
  struct Entry {
    std::shared_ptr<Inode> inode;
    pool::SetNode node;
  };
  // nullopt for a number the table does not know (a forgotten inode).
  std::optional<Entry> Find(fuse_ino_t ino) const;

  // A lookup (or READDIRPLUS entry) of `name` in `parent` resolved to
  // `node`: the inode for it, lookup count + 1.
  std::shared_ptr<Inode> Add(fuse_ino_t parent, const std::string& name, const pool::SetNode& node);

  // `node` is the fresh node of `ino` (Refresh()ed). Returns the image the
  // inode was resolved with before when that image is still alive and not
  // the one `node` has now: the file changed outside kvmfs. nullptr otherwise.
  std::shared_ptr<pool::OpenImage> Update(fuse_ino_t ino, const pool::SetNode& node);

  // The image file `old_host_path` of `ns` was renamed to `new_host_path`
  // (mv through the tree): the inodes of its image directory and of
  // everything in it resolve the new path from now on. (The kernel moved
  // its dentry to the new name before kvmfs can drop it: a lookup under the
  // moved directory must find the image at once.) The inodes keep their
  // numbers and names (PathOf() says the old name until they are looked up
  // again).
  void Moved(const pool::Namespace* ns, const std::string& old_host_path,
             const std::string& new_host_path);

  // FORGET: lookup count - n; at 0 the inode is dropped (its number stays
  // reserved for its name). Unknown numbers are ignored.
  void Forget(fuse_ino_t ino, uint64_t n);

  // The number (parent, name) has, or gets from now on: d_ino of listings.
  fuse_ino_t NumberOf(fuse_ino_t parent, const std::string& name);

  // An inode whose content depends on an image file, as DependingOn() returns it.
  struct Dependent {
    std::shared_ptr<Inode> inode;
    pool::Node node;         // kind and view (image unset)
    std::string image_path;  // canonical path of the image whose view it is
  };
  // Live inodes whose ChainOf() contains `canonical_path`.
  std::vector<Dependent> DependingOn(const std::string& canonical_path) const;

  // Live children of `parent`: (name, number).
  std::vector<std::pair<std::string, fuse_ino_t>> Children(fuse_ino_t parent) const;

  // The listing of directory `ino` made at offset 0, kept for the READDIR
  // calls that continue it (no OPENDIR: no handle to keep it in).
  void SetListing(fuse_ino_t ino, std::shared_ptr<const std::vector<pool::DirEntry>> listing);
  std::shared_ptr<const std::vector<pool::DirEntry>> Listing(fuse_ino_t ino) const;

  // The mount path of `ino` ("/a/vm.qcow2/disk.raw"), for messages.
  std::string PathOf(fuse_ino_t ino) const;

  // Live inodes (root included), and the lookup count of one (0: unknown).
  size_t live() const;
  uint64_t lookups(fuse_ino_t ino) const;

 private:
  struct Record {
    std::shared_ptr<Inode> inode;
    pool::SetNode node;  // image unset
    std::weak_ptr<pool::OpenImage> image;
    std::string image_path;
    std::vector<std::string> chain;
    uint64_t nlookup = 0;
    std::shared_ptr<const std::vector<pool::DirEntry>> listing;
  };
  void SetNodeLocked(Record& r, const pool::SetNode& node) REQUIRES(mu_);
  void Unindex(const Record& r) REQUIRES(mu_);

  mutable Mutex mu_;
  std::unordered_map<fuse_ino_t, Record> records_ GUARDED_BY(mu_);
  std::map<std::pair<fuse_ino_t, std::string>, fuse_ino_t> names_ GUARDED_BY(mu_);
  std::unordered_map<std::string, std::set<fuse_ino_t>> by_chain_ GUARDED_BY(mu_);
  fuse_ino_t next_ GUARDED_BY(mu_) = FUSE_ROOT_ID + 1;
};

}  // namespace kvmfs::fuse
