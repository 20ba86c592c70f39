// The table of contents: every FUSE operation kvmfs answers, one per line.
#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

fuse_lowlevel_ops MakeOperations() {
  fuse_lowlevel_ops ops{};
  ops.init = Init;                  // op_init.cpp
  ops.destroy = Destroy;            // op_init.cpp
  ops.lookup = Lookup;              // op_lookup.cpp
  ops.forget = Forget;              // op_lookup.cpp
  ops.forget_multi = ForgetMulti;   // op_lookup.cpp
  ops.getattr = GetAttr;            // op_getattr.cpp
  ops.opendir = OpenDir;            // op_readdir.cpp (ENOSYS: the kernel stops asking)
  ops.readdir = ReadDir;            // op_readdir.cpp
  ops.readdirplus = ReadDirPlus;    // op_readdir.cpp
  ops.releasedir = ReleaseDir;      // op_readdir.cpp
  ops.open = Open;                  // op_open.cpp
  ops.release = Release;            // op_open.cpp
  ops.read = Read;                  // op_read.cpp
  ops.lseek = Lseek;                // op_lseek.cpp
  ops.statfs = StatFs;              // op_statfs.cpp
  ops.write = Write;                // op_write.cpp
  ops.setattr = SetAttr;            // op_truncate.cpp
  ops.fallocate = Fallocate;        // op_fallocate.cpp
  ops.fsync = Fsync;                // op_fsync.cpp
  ops.flush = Flush;                // op_fsync.cpp
  ops.mkdir = MkDir;                // op_mkdir.cpp
  ops.rmdir = RmDir;                // op_mkdir.cpp
  ops.symlink = Symlink;            // op_symlink.cpp
  ops.rename = Rename;              // op_rename.cpp
  ops.create = Create;              // op_refused.cpp (EPERM from here on)
  ops.mknod = MkNod;                // op_refused.cpp
  ops.unlink = Unlink;              // op_refused.cpp
  ops.link = Link;                  // op_refused.cpp
  ops.setxattr = SetXattr;          // op_refused.cpp
  ops.removexattr = RemoveXattr;    // op_refused.cpp
  return ops;
}

}  // namespace

const fuse_lowlevel_ops& Operations() {
  // Timed and counted when the metrics are on (fuse/metrics.h).
  static const fuse_lowlevel_ops ops = Instrumented(MakeOperations());
  return ops;
}

}  // namespace kvmfs::fuse
