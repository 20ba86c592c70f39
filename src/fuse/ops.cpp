// The table of contents: every FUSE operation kvmfs answers, one per line.
#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

fuse_operations MakeOperations() {
  fuse_operations ops{};
  ops.init = Init;              // op_init.cpp
  ops.destroy = Destroy;        // op_init.cpp
  ops.getattr = GetAttr;        // op_getattr.cpp
  ops.readdir = ReadDir;        // op_readdir.cpp
  ops.open = Open;              // op_open.cpp
  ops.release = Release;        // op_open.cpp
  ops.read = Read;              // op_read.cpp
  ops.lseek = Lseek;            // op_lseek.cpp
  ops.statfs = StatFs;          // op_statfs.cpp
  ops.write = Write;            // op_write.cpp (EROFS from here on)
  ops.truncate = Truncate;      // op_write.cpp
  ops.create = Create;          // op_write.cpp
  ops.mknod = MkNod;            // op_write.cpp
  ops.mkdir = MkDir;            // op_write.cpp
  ops.rmdir = RmDir;            // op_write.cpp
  ops.unlink = Unlink;          // op_write.cpp
  ops.rename = Rename;          // op_write.cpp
  ops.symlink = Symlink;        // op_write.cpp
  ops.link = Link;              // op_write.cpp
  ops.chmod = Chmod;            // op_write.cpp
  ops.chown = Chown;            // op_write.cpp
  ops.utimens = Utimens;        // op_write.cpp
  ops.setxattr = SetXattr;      // op_write.cpp
  ops.removexattr = RemoveXattr;  // op_write.cpp
  ops.fallocate = Fallocate;    // op_write.cpp
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
