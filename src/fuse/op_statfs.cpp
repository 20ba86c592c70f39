// statfs: the numbers of the file system holding the pool, read-only.
#include "fuse/ops.h"

namespace kvmfs::fuse {

void StatFs(fuse_req_t req, fuse_ino_t ino) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kStatFs, ino);
  auto entry = fs.inodes.Find(ino);
  if (!entry) return ReplyError(req, Status::FromErrno(ESTALE, "unknown inode"));
  auto sv = fs.Pools()->StatFs(entry->node);
  if (!sv.ok()) return ReplyError(req, sv.status());
  fuse_reply_statfs(req, &*sv);
}

}  // namespace kvmfs::fuse
