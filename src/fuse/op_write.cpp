// write: through Image::Write into the top image, within the virtual size.
#include <algorithm>

#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

Result<size_t> WriteFile(const pool::OpenFile& file, const char* buf, size_t size, off_t off) {
  if (!file.writable || file.is_info) return Status::FromErrno(EBADF, "not open for writing");
  if (off < 0) return Status::InvalidArgument("negative offset");
  uint64_t offset = static_cast<uint64_t>(off);
  uint64_t end = file.image->size();
  // A disk does not grow by writing past its end (as a block device):
  // a short write up to the end, then ENOSPC.
  if (size > 0 && offset >= end) return Status::NoSpace("write past the end of the disk");
  size_t n = std::min<uint64_t>(size, end - offset);
  Status written = file.image->Write(offset, buf, n);
  file.owner->Changed();
  KVMFS_RETURN_IF_ERROR(written);
  if (file.sync) KVMFS_RETURN_IF_ERROR(file.image->Flush());
  return n;
}

}  // namespace

int Write(const char* path, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  auto n = WriteFile(Handle(fi)->file, buf, size, off);
  if (!n.ok()) {
    spdlog::warn("write {} at {} (+{}): {}", path ? path : "?", off, size, n.status().ToString());
    return Reply(n.status());
  }
  return static_cast<int>(*n);
}

}  // namespace kvmfs::fuse
