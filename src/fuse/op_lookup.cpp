// lookup/forget: the inode table (inode_table.h). A lookup resolves one
// child of a known node (no path walk); the reply carries the timeouts that
// match the child's mutability (kernel_cache.h). FORGET gives lookups back.
#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

struct Found {
  pool::SetNode node;
  struct stat st;
};

Result<Found> LookupChild(Filesystem& fs, const pool::SetNode& parent, const std::string& name) {
  auto pools = fs.Pools();
  KVMFS_ASSIGN_OR_RETURN(pool::SetNode node, pools->Lookup(parent, name));
  KVMFS_ASSIGN_OR_RETURN(struct stat st, pools->Stat(node));
  return Found{std::move(node), st};
}

}  // namespace

void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kLookup, parent);
  const uint64_t epoch = fs.cache.epoch();
  auto dir = fs.inodes.Find(parent);
  if (!dir) return ReplyError(req, Status::FromErrno(ESTALE, "unknown inode"));
  auto found = LookupChild(fs, dir->node, name);
  if (!found.ok()) {
    if (found.status().ToErrno() != ENOENT) return ReplyError(req, found.status());
    // A negative entry, remembered as long as the parent's contents are fixed.
    fuse_entry_param e{};
    e.entry_timeout = NegativeTimeout(dir->node);
    fuse_reply_entry(req, &e);
    return;
  }
  std::shared_ptr<Inode> inode = fs.inodes.Add(parent, name, found->node);
  fuse_entry_param e = fs.EntryOf(inode->ino, found->node, found->st);
  // The kernel did not take the entry (the lookup was interrupted): it will
  // never forget it, so the lookup is not counted.
  if (fuse_reply_entry(req, &e) != 0) return fs.inodes.Forget(inode->ino, 1);
  fs.cache.Recheck(*inode, epoch);
}

void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kForget, ino);
  fs.inodes.Forget(ino, nlookup);
  fuse_reply_none(req);
}

void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  Filesystem& fs = Fs(req);
  for (size_t i = 0; i < count; ++i) {
    fs.Count(Op::kForget, forgets[i].ino);
    fs.inodes.Forget(forgets[i].ino, forgets[i].nlookup);
  }
  fuse_reply_none(req);
}

}  // namespace kvmfs::fuse
