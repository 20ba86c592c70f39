// getattr: attributes of any node, brought up to date with its host file.
#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

Result<struct stat> AttrOf(Filesystem& fs, fuse_ino_t ino, pool::SetNode* node,
                           std::shared_ptr<Inode>* inode) {
  KVMFS_ASSIGN_OR_RETURN(InodeTable::Entry entry, fs.Fresh(ino));
  KVMFS_ASSIGN_OR_RETURN(struct stat st, fs.Pools()->Stat(entry.node));
  *inode = std::move(entry.inode);
  *node = std::move(entry.node);
  st.st_ino = ino;
  return st;
}

}  // namespace

void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kGetAttr, ino);
  const uint64_t epoch = fs.cache.epoch();
  pool::SetNode node;
  std::shared_ptr<Inode> inode;
  auto st = AttrOf(fs, ino, &node, &inode);
  if (!st.ok()) return ReplyError(req, st.status());
  fuse_reply_attr(req, &*st, AttrTimeout(node));
  fs.cache.Recheck(*inode, epoch);
}

}  // namespace kvmfs::fuse
