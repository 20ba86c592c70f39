// The state one mount's handlers share (fuse_req_userdata): the pool root,
// the inode table and the kernel cache rules, and the per-request helpers
// every operation file uses.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/stat.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "base/mutex.h"
#include "fuse/inode_table.h"
#include "fuse/kernel_cache.h"
#include "kvmfs/status.h"
#include "pool/pool_set.h"

namespace kvmfs::fuse {

// The requests kvmfs counts (logged one per line at debug level, and as
// totals at unmount): what ls -R or a second read costs in round trips.
enum class Op {
  kLookup, kForget, kGetAttr, kSetAttr, kOpenDir, kReadDir, kReadDirPlus, kReleaseDir,
  kOpen, kRead, kWrite, kRelease, kFlush, kFsync, kFallocate, kLseek, kStatFs,
  kMkDir, kRmDir, kSymlink, kRename, kRefused, kCount_
};
const char* OpName(Op op);

struct FileHandle;  // ops.h

class Filesystem {
 public:
  // `root_node` becomes the root inode; `root` gives the current pool set.
  Filesystem(pool::PoolRoot& root, pool::SetNode root_node);

  pool::PoolRoot& root;
  InodeTable inodes;
  KernelCache cache;
  // The kernel takes ENOSYS from OPENDIR as "never ask again" (init decides).
  std::atomic<bool> no_opendir{false};

  std::shared_ptr<pool::PoolSet> Pools() const { return root.Get(); }

  // Counts a request and logs it, at debug level (nothing otherwise).
  void Count(Op op, fuse_ino_t ino);
  // "LOOKUP 12, GETATTR 3, ..." for the requests seen so far.
  std::string CountsText() const;

  // The node of `ino` brought up to date with its host file (and, below an
  // image directory, with the image the cache holds now, set in the node).
  // Notices an image file that changed outside kvmfs since the inode was
  // resolved and drops the kernel's caches of everything depending on it.
  // Errors: ESTALE for an unknown inode, the node's own (ENOENT when gone).
  Result<InodeTable::Entry> Fresh(fuse_ino_t ino);

  // The reply to a lookup of `node` as inode `ino` with attributes `st`.
  fuse_entry_param EntryOf(fuse_ino_t ino, const pool::SetNode& node, const struct stat& st) const;

  // The mount path of `ino` (+ "/" + name), for messages.
  std::string PathOf(fuse_ino_t ino, const char* name = nullptr) const;

  // The files open through the mount (added before the open is replied to,
  // removed at RELEASE). The kernel sends no RELEASE for what is still open
  // when the connection ends (an unmount racing a close): Destroy() frees
  // what TakeHandles() returns.
  void AddHandle(FileHandle* handle) EXCLUDES(handles_mu_);
  void RemoveHandle(FileHandle* handle) EXCLUDES(handles_mu_);
  std::vector<FileHandle*> TakeHandles() EXCLUDES(handles_mu_);

 private:
  Mutex handles_mu_;
  std::unordered_set<FileHandle*> handles_ GUARDED_BY(handles_mu_);
  std::array<std::atomic<uint64_t>, static_cast<size_t>(Op::kCount_)> counts_{};
};

// The Filesystem a request belongs to.
inline Filesystem& Fs(fuse_req_t req) { return *static_cast<Filesystem*>(fuse_req_userdata(req)); }

// Notes the errno the current request replies with, for the metrics
// (kvmfs_fuse_errors_total; fuse/metrics.cpp).
void NoteReplyErrno(int err);

// Replies with the errno of `status` (the one place a Status becomes an
// errno for the kernel).
inline void ReplyError(fuse_req_t req, const Status& status) {
  const int err = status.ToErrno();
  NoteReplyErrno(err);
  fuse_reply_err(req, err);
}
// Replies with `err` (0: success), counted as ReplyError does.
inline void ReplyErrno(fuse_req_t req, int err) {
  NoteReplyErrno(err);
  fuse_reply_err(req, err);
}

}  // namespace kvmfs::fuse
