// open/release: a FileHandle per open file, holding the opened chain.
#include <fcntl.h>

#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {

int Open(const char* path, fuse_file_info* fi) {
  auto pools = Pools();
  auto file = pools->Open(path, fi->flags);
  if (!file.ok()) {
    // Refusals an administrator needs to see (locked by QEMU, read-only
    // image) are logged; lookups of missing files are not.
    const auto code = file.status().code();
    if (code == Status::Code::kBusy || code == Status::Code::kReadOnly)
      spdlog::info("open {}: {}", path, file.status().ToString());
    else
      spdlog::debug("open {}: {}", path, file.status().ToString());
    return Reply(file.status());
  }
  auto handle = std::make_unique<FileHandle>();
  handle->pools = std::move(pools);
  handle->file = std::move(file).value();
  if (fi->flags & O_DIRECT) {
    fi->direct_io = 1;  // O_DIRECT: bypass the page cache, as the caller asked
  } else {
    fi->keep_cache = handle->file.unchanged ? 1 : 0;
  }
  fi->fh = reinterpret_cast<uintptr_t>(handle.release());
  return 0;
}

int Release(const char*, fuse_file_info* fi) {
  delete Handle(fi);
  fi->fh = 0;
  return 0;
}

}  // namespace kvmfs::fuse
