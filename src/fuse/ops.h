// The FUSE handlers (libfuse high-level, path-based API). One file per
// operation; ops.cpp puts them in the table.
#pragma once

#include <fuse.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "kvmfs/status.h"
#include "pool/namespace.h"
#include "pool/pool_set.h"

namespace kvmfs::fuse {

// The pool set served by this mount now (the fuse private_data is its
// pool::PoolRoot; a config reload replaces the set).
std::shared_ptr<pool::PoolSet> Pools();

// What fi->fh points to for an open disk.raw or info.json: keeps the opened
// chain alive for the life of the open file.
struct FileHandle {
  std::shared_ptr<pool::PoolSet> pools;  // the set it was opened in, kept across reloads
  pool::OpenFile file;
};
inline FileHandle* Handle(const fuse_file_info* fi) {
  return reinterpret_cast<FileHandle*>(static_cast<uintptr_t>(fi->fh));
}

// Status -> the negative errno libfuse expects. The one place a Status
// becomes an errno.
inline int Reply(const Status& status) { return -status.ToErrno(); }

// Reads of at most 1 MiB per request (the max_read mount option, and the
// same in init as libfuse requires). libfuse splices a read reply
// (op_read.cpp) only when all of it fits its pipe with a page of slack per
// piece, and a pipe may not grow past /proc/sys/fs/pipe-max-size (1 MiB by
// default, for root too without CAP_SYS_RESOURCE): a 1 MiB reply never fits
// and is read into one buffer instead; smaller replies are spliced. Measured
// on the 2-core machine (bench/results/, medians of 3): 896 KiB, where every
// fio 1 MiB read becomes two requests but both splice, was slower than 1 MiB
// copied (plain qcow2 2277 vs 2678 MiB/s; raw 2453 vs 3012). A user's
// -o max_read=N wins.
inline constexpr unsigned kMaxRead = 1u << 20;
// The max_read of this mount (session.cpp sets it before mounting; init
// must announce the same value as the mount option, or libfuse fails it).
void SetMaxRead(unsigned bytes);
unsigned MaxRead();

// The operations table.
const fuse_operations& Operations();

// op_init.cpp
void* Init(fuse_conn_info* conn, fuse_config* cfg);
void Destroy(void* private_data);
// op_getattr.cpp
int GetAttr(const char* path, struct stat* st, fuse_file_info* fi);
// op_readdir.cpp
int OpenDir(const char* path, fuse_file_info* fi);
int ReleaseDir(const char* path, fuse_file_info* fi);
int ReadDir(const char* path, void* buf, fuse_fill_dir_t filler, off_t off, fuse_file_info* fi,
            fuse_readdir_flags flags);
// op_open.cpp
int Open(const char* path, fuse_file_info* fi);
int Release(const char* path, fuse_file_info* fi);
// op_read.cpp
int ReadBuf(const char* path, fuse_bufvec** bufp, size_t size, off_t off, fuse_file_info* fi);
// op_lseek.cpp
off_t Lseek(const char* path, off_t off, int whence, fuse_file_info* fi);
// op_statfs.cpp
int StatFs(const char* path, struct statvfs* sv);
// op_write.cpp
int Write(const char* path, const char* buf, size_t size, off_t off, fuse_file_info* fi);
// op_truncate.cpp
int Truncate(const char* path, off_t size, fuse_file_info* fi);
// op_fallocate.cpp
int Fallocate(const char* path, int mode, off_t off, off_t len, fuse_file_info* fi);
// op_fsync.cpp
int Fsync(const char* path, int datasync, fuse_file_info* fi);
int Flush(const char* path, fuse_file_info* fi);
// op_mkdir.cpp: snapshots/NAME
int MkDir(const char* path, mode_t mode);
int RmDir(const char* path);
// op_refused.cpp: what kvmfs does not offer (EPERM; EROFS from the kernel when ro)
int Create(const char* path, mode_t mode, fuse_file_info* fi);
int MkNod(const char* path, mode_t mode, dev_t dev);
int Unlink(const char* path);
int Rename(const char* from, const char* to, unsigned int flags);
int Symlink(const char* target, const char* path);
int Link(const char* from, const char* to);
int Chmod(const char* path, mode_t mode, fuse_file_info* fi);
int Chown(const char* path, uid_t uid, gid_t gid, fuse_file_info* fi);
int Utimens(const char* path, const struct timespec tv[2], fuse_file_info* fi);
int SetXattr(const char* path, const char* name, const char* value, size_t size, int flags);
int RemoveXattr(const char* path, const char* name);

}  // namespace kvmfs::fuse
