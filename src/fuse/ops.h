// The FUSE handlers (libfuse low-level API: requests name inodes, see
// inode_table.h). One file per operation, each with its logic returning a
// Status/Result and a thin handler that replies exactly once; ops.cpp puts
// them in the table.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <memory>

#include "fuse/filesystem.h"
#include "fuse/kernel_order.h"
#include "fuse/metrics.h"
#include "kvmfs/status.h"
#include "pool/namespace.h"
#include "pool/pool_set.h"

namespace kvmfs::fuse {

// What fi->fh points to for an open disk.raw or info.json: keeps the opened
// chain (and the pool's namespace) alive for the life of the open file.
struct FileHandle {
  std::shared_ptr<pool::Namespace> ns;
  std::shared_ptr<Inode> inode;
  pool::OpenFile file;
  ImageIo* io = nullptr;  // the image's read/write counters (null: no metrics, or info.json)
  OpenFileCount counted;
};
inline FileHandle* Handle(const fuse_file_info* fi) {
  return reinterpret_cast<FileHandle*>(static_cast<uintptr_t>(fi->fh));
}

// Reads of at most 512 KiB per request (the max_read mount option, and the
// same in init as libfuse requires). libfuse splices a read reply
// (op_read.cpp) only when all of it fits its pipe with a page of slack per
// piece, and a pipe may not grow past /proc/sys/fs/pipe-max-size (1 MiB by
// default, for root too without CAP_SYS_RESOURCE): a 1 MiB reply never fits
// and is read into memory first (pread, then writev: two copies). With
// 512 KiB, the kernel sends a 1 MiB O_DIRECT read as two requests at once
// (FUSE_CAP_ASYNC_DIO, libfuse's default), two threads serve them on two
// cores, and both are spliced (one copy). Measured with
// bench/fuse_uring_bench.py (A/B in one run, plain qcow2, 1 MiB O_DIRECT,
// 2 cores, loaded machine): medians 1.75x (5 rounds) and 1.89x (3 rounds) of
// 1 MiB, kvmfs CPU per MiB 232 vs 349 us; 896 KiB measured the same. (An
// older quiet run had found 896 KiB slower than 1 MiB copied.) A user's
// -o max_read=N wins.
inline constexpr unsigned kMaxRead = 512u << 10;
// The max_read of this mount (session.cpp sets it before mounting; init
// must announce the same value as the mount option, or libfuse fails it).
void SetMaxRead(unsigned bytes);
unsigned MaxRead();

// The operations table.
const fuse_lowlevel_ops& Operations();

// op_init.cpp
void Init(void* userdata, fuse_conn_info* conn);
void Destroy(void* userdata);
// op_lookup.cpp
void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets);
// op_getattr.cpp
void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
// op_readdir.cpp
void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
void ReadDirPlus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
void ReleaseDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
// op_open.cpp
void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
void Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
// op_read.cpp
void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
// op_lseek.cpp
void Lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi);
// op_statfs.cpp
void StatFs(fuse_req_t req, fuse_ino_t ino);
// op_write.cpp
void Write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, fuse_file_info* fi);
// op_truncate.cpp: setattr (only the size can be set: truncate/ftruncate)
void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi);
// op_fallocate.cpp
void Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, fuse_file_info* fi);
// op_fsync.cpp
void Fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi);
void Flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
// op_mkdir.cpp: images (NAME.qcow2), folders and snapshots/NAME
void MkDir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode);
void RmDir(fuse_req_t req, fuse_ino_t parent, const char* name);
// op_symlink.cpp: ln -s BASE NAME.qcow2 makes an overlay (a linked clone)
void Symlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name);
// op_rename.cpp: mv of an image nothing uses
void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
            const char* newname, unsigned int flags);
// op_refused.cpp: what kvmfs does not offer (EPERM; EROFS from the kernel when ro)
void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi);
void MkNod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev);
void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name);
void Link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname);
void SetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
              int flags);
void RemoveXattr(fuse_req_t req, fuse_ino_t ino, const char* name);

// Shared by op_write/op_truncate/op_fallocate: the image `file` was changed
// by kvmfs through inode `ino`; the kernel's caches of views above it go.
void Changed(fuse_req_t req, const pool::OpenFile& file, fuse_ino_t ino);

}  // namespace kvmfs::fuse
