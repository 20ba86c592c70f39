// Modifying operations kvmfs does not offer: the tree mirrors SOURCE and
// images (files cannot be created, removed, renamed or re-moded). In a
// read-only mount the kernel answers EROFS before these are called; in a
// read-write one they fail with EPERM ("Operation not permitted").
#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {
int NotPermitted() { return -EPERM; }
}  // namespace

int Create(const char*, mode_t, fuse_file_info*) { return NotPermitted(); }
int MkNod(const char*, mode_t, dev_t) { return NotPermitted(); }
int Unlink(const char*) { return NotPermitted(); }
int Rename(const char*, const char*, unsigned int) { return NotPermitted(); }
int Symlink(const char*, const char*) { return NotPermitted(); }
int Link(const char*, const char*) { return NotPermitted(); }
int Chmod(const char*, mode_t, fuse_file_info*) { return NotPermitted(); }
int Chown(const char*, uid_t, gid_t, fuse_file_info*) { return NotPermitted(); }
int Utimens(const char*, const struct timespec[2], fuse_file_info*) { return NotPermitted(); }
int SetXattr(const char*, const char*, const char*, size_t, int) { return NotPermitted(); }
int RemoveXattr(const char*, const char*) { return NotPermitted(); }

}  // namespace kvmfs::fuse
