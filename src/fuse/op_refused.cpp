// Modifying operations kvmfs does not offer: the tree mirrors SOURCE and
// images (files cannot be created, removed, hard-linked or re-moded; images
// are made, cloned and renamed by mkdir, ln -s and mv, never deleted). In a
// read-only mount the kernel answers EROFS before these are called; in a
// read-write one they fail with EPERM ("Operation not permitted").
// (chmod, chown and utimes arrive as setattr: op_truncate.cpp.)
#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {
void NotPermitted(fuse_req_t req, fuse_ino_t ino) {
  Fs(req).Count(Op::kRefused, ino);
  ReplyErrno(req, EPERM);
}
}  // namespace

void Create(fuse_req_t req, fuse_ino_t parent, const char*, mode_t, fuse_file_info*) { NotPermitted(req, parent); }
void MkNod(fuse_req_t req, fuse_ino_t parent, const char*, mode_t, dev_t) { NotPermitted(req, parent); }
void Unlink(fuse_req_t req, fuse_ino_t parent, const char*) { NotPermitted(req, parent); }
void Link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t, const char*) { NotPermitted(req, ino); }
void SetXattr(fuse_req_t req, fuse_ino_t ino, const char*, const char*, size_t, int) { NotPermitted(req, ino); }
void RemoveXattr(fuse_req_t req, fuse_ino_t ino, const char*) { NotPermitted(req, ino); }

}  // namespace kvmfs::fuse
