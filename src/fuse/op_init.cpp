// init/destroy: connection tuning.
#include <spdlog/spdlog.h>

#include <atomic>

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

void* Init(fuse_conn_info* conn, fuse_config* cfg) {
  // Paths are resolved on every call (no inode numbers of our own).
  cfg->use_ino = 0;
  cfg->nullpath_ok = 0;
  // Images may change under us: attributes are trusted for a second, and the
  // page cache is kept only while an image is unchanged (op_open.cpp).
  cfg->kernel_cache = 0;
  cfg->entry_timeout = 1.0;
  cfg->attr_timeout = 1.0;
  cfg->negative_timeout = 1.0;
  // Large sequential reads (cp, qemu-img convert): let the kernel read ahead
  // up to 1 MiB; the kernel caps it at what it supports.
  conn->max_readahead = kMaxReadahead;
  conn->max_write = kMaxWrite;
  conn->max_read = MaxRead();  // as the mount option (session.cpp)
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  // Read replies may carry ranges of image files (op_read.cpp): libfuse
  // splices them into /dev/fuse instead of copying them through memory.
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
  spdlog::debug("fuse init: protocol {}.{}, max_read {}, max_readahead {}, max_write {}, "
                "splice write {}",
                conn->proto_major, conn->proto_minor, conn->max_read, conn->max_readahead,
                conn->max_write, (conn->want & FUSE_CAP_SPLICE_WRITE) != 0);
  return fuse_get_context()->private_data;  // becomes private_data for every op
}

// Unmount: releases the kernel had not sent yet are lost with the connection,
// so every image still open for writing is finished here (caches written
// back, dirty bit cleared, nothing leaked).
void Destroy(void*) {
  pool::EndAllWrites();
  spdlog::info("unmounted");
}

}  // namespace kvmfs::fuse
