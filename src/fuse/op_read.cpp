// read: through Image::Read, clamped to the size of the view.
#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

Result<size_t> ReadFile(const pool::OpenFile& file, char* buf, size_t size, off_t off) {
  if (off < 0) return Status::InvalidArgument("negative offset");
  uint64_t offset = static_cast<uint64_t>(off);
  if (file.is_info) {
    if (offset >= file.content.size()) return size_t{0};
    size_t n = std::min<uint64_t>(size, file.content.size() - offset);
    std::memcpy(buf, file.content.data() + offset, n);
    return n;
  }
  uint64_t end = file.image->size();
  if (offset >= end) return size_t{0};
  size_t n = std::min<uint64_t>(size, end - offset);
  KVMFS_RETURN_IF_ERROR(file.image->Read(offset, buf, n));
  return n;
}

}  // namespace

int Read(const char* path, char* buf, size_t size, off_t off, fuse_file_info* fi) {
  auto n = ReadFile(Handle(fi)->file, buf, size, off);
  if (!n.ok()) {
    spdlog::warn("read {} at {} (+{}): {}", path ? path : "?", off, size, n.status().ToString());
    return Reply(n.status());
  }
  return static_cast<int>(*n);
}

}  // namespace kvmfs::fuse
