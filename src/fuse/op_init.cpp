// init/destroy: connection tuning.
#include <spdlog/spdlog.h>

#include <atomic>
#include <vector>

#include "fuse/ops.h"
#include "pool/image_cache.h"

namespace kvmfs::fuse {
namespace {
constexpr unsigned kMaxReadahead = 1u << 20;
// Writes of up to 1 MiB per request (libfuse's buffer holds 256 pages); the
// kernel caps it at what it supports.
constexpr unsigned kMaxWrite = 1u << 20;
std::atomic<unsigned> g_max_read{kMaxRead};
}  // namespace

void SetMaxRead(unsigned bytes) { g_max_read.store(bytes); }
unsigned MaxRead() { return g_max_read.load(); }

void Init(void* userdata, fuse_conn_info* conn) {
  auto& fs = *static_cast<Filesystem*>(userdata);
  // Large sequential reads (cp, qemu-img convert): let the kernel read ahead
  // up to 1 MiB; the kernel caps it at what it supports.
  conn->max_readahead = kMaxReadahead;
  conn->max_write = kMaxWrite;
  conn->max_read = MaxRead();  // as the mount option (session.cpp)
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  // The kernel sends the max_read pieces of one large O_DIRECT read all at
  // once instead of one after the other (libfuse's default, said here
  // because kMaxRead counts on it: ops.h).
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
  // Read replies may carry ranges of image files (op_read.cpp): libfuse
  // splices them into /dev/fuse instead of copying them through memory.
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
  // Cached pages are dropped when a getattr shows a new mtime or size (an
  // image written from outside); kvmfs's own changes are pushed (kernel_cache.h).
  if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA) conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
  // Every listing comes with the attributes it has (one LOOKUP per entry
  // less), not only its first batch ("auto" would send the rest of a large
  // folder as plain READDIR, and ls -R would look up each of its images).
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  // No OPENDIR/RELEASEDIR round trips: directories need no handle, and the
  // kernel then caches every listing, checked against the directory's mtime
  // and dropped by our invalidations (op_readdir.cpp).
  if (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) {
    conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
    fs.no_opendir = true;
  }
  spdlog::debug("fuse init: protocol {}.{}, max_read {}, max_readahead {}, max_write {}, "
                "splice write {}, no opendir {}",
                conn->proto_major, conn->proto_minor, conn->max_read, conn->max_readahead,
                conn->max_write, (conn->want & FUSE_CAP_SPLICE_WRITE) != 0, fs.no_opendir.load());
}

// Unmount: releases the kernel had not sent yet are lost with the connection,
// so every image still open for writing is finished here (caches written
// back, dirty bit cleared, nothing leaked).
void Destroy(void* userdata) {
  auto& fs = *static_cast<Filesystem*>(userdata);
  pool::EndAllWrites();
  // Files the kernel never released (the connection ended first).
  const std::vector<FileHandle*> left = fs.TakeHandles();
  for (FileHandle* handle : left) {
    AllDoneWithFile(handle);
    delete handle;
  }
  if (!left.empty()) spdlog::debug("{} files still open at unmount closed", left.size());
  spdlog::debug("requests: {}; invalidations pushed: {}; inodes live: {}", fs.CountsText(),
                fs.cache.pushed(), fs.inodes.live());
  spdlog::info("unmounted");
}

}  // namespace kvmfs::fuse
