// The table of contents: every FUSE operation kvmfs answers, one per line.
#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

fuse_operations MakeOperations() {
  fuse_operations ops{};
  ops.init = Init;              // op_init.cpp
  ops.destroy = Destroy;        // op_init.cpp
  ops.getattr = GetAttr;        // op_getattr.cpp
  ops.opendir = OpenDir;        // op_readdir.cpp
  ops.readdir = ReadDir;        // op_readdir.cpp
  ops.releasedir = ReleaseDir;  // op_readdir.cpp
  ops.open = Open;              // op_open.cpp
  ops.release = Release;        // op_open.cpp
  ops.read_buf = ReadBuf;       // op_read.cpp
  ops.lseek = Lseek;            // op_lseek.cpp
  ops.statfs = StatFs;          // op_statfs.cpp
  ops.write = Write;            // op_write.cpp
  ops.truncate = Truncate;      // op_truncate.cpp
  ops.fallocate = Fallocate;    // op_fallocate.cpp
  ops.fsync = Fsync;            // op_fsync.cpp
  ops.flush = Flush;            // op_fsync.cpp
  ops.mkdir = MkDir;            // op_mkdir.cpp
  ops.rmdir = RmDir;            // op_mkdir.cpp
  ops.create = Create;          // op_refused.cpp (EPERM from here on)
  ops.mknod = MkNod;            // op_refused.cpp
  ops.unlink = Unlink;          // op_refused.cpp
  ops.rename = Rename;          // op_refused.cpp
  ops.symlink = Symlink;        // op_refused.cpp
  ops.link = Link;              // op_refused.cpp
  ops.chmod = Chmod;            // op_refused.cpp
  ops.chown = Chown;            // op_refused.cpp
  ops.utimens = Utimens;        // op_refused.cpp
  ops.setxattr = SetXattr;      // op_refused.cpp
  ops.removexattr = RemoveXattr;  // op_refused.cpp
  return ops;
}

}  // namespace

const fuse_operations& Operations() {
  static const fuse_operations ops = MakeOperations();
  return ops;
}

std::shared_ptr<pool::PoolSet> Pools() {
  return static_cast<pool::PoolRoot*>(fuse_get_context()->private_data)->Get();
}

}  // namespace kvmfs::fuse
