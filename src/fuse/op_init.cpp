// init/destroy: connection tuning.
#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {
constexpr unsigned kMaxReadahead = 1u << 20;
}

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
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  spdlog::debug("fuse init: protocol {}.{}, max_read {}, max_readahead {}", conn->proto_major,
                conn->proto_minor, conn->max_read, conn->max_readahead);
  return fuse_get_context()->private_data;  // becomes private_data for every op
}

void Destroy(void*) { spdlog::info("unmounted"); }

}  // namespace kvmfs::fuse
