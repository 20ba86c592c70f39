// Every modifying operation: this version of kvmfs is read-only (EROFS).
// The kernel already refuses most of them on the "ro" mount; these answer
// whatever still reaches us.
#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {
int ReadOnly() { return Reply(Status::ReadOnly("kvmfs is mounted read-only")); }
}  // namespace

int Write(const char*, const char*, size_t, off_t, fuse_file_info*) { return ReadOnly(); }
int Truncate(const char*, off_t, fuse_file_info*) { return ReadOnly(); }
int Create(const char*, mode_t, fuse_file_info*) { return ReadOnly(); }
int MkNod(const char*, mode_t, dev_t) { return ReadOnly(); }
int MkDir(const char*, mode_t) { return ReadOnly(); }
int RmDir(const char*) { return ReadOnly(); }
int Unlink(const char*) { return ReadOnly(); }
int Rename(const char*, const char*, unsigned int) { return ReadOnly(); }
int Symlink(const char*, const char*) { return ReadOnly(); }
int Link(const char*, const char*) { return ReadOnly(); }
int Chmod(const char*, mode_t, fuse_file_info*) { return ReadOnly(); }
int Chown(const char*, uid_t, gid_t, fuse_file_info*) { return ReadOnly(); }
int Utimens(const char*, const struct timespec[2], fuse_file_info*) { return ReadOnly(); }
int SetXattr(const char*, const char*, const char*, size_t, int) { return ReadOnly(); }
int RemoveXattr(const char*, const char*) { return ReadOnly(); }
int Fallocate(const char*, int, off_t, off_t, fuse_file_info*) { return ReadOnly(); }

}  // namespace kvmfs::fuse
