// truncate/ftruncate: Image::Resize (growing; shrinking is EINVAL unless the
// format does it safely).
#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

Status TruncateOpen(const pool::OpenFile& file, uint64_t size) {
  if (!file.writable || file.is_info) return Status::ReadOnly("not open for writing");
  if (size == file.image->size()) return Status::OK();
  Status resized = file.image->Resize(size);
  file.owner->Changed();
  return resized;
}

}  // namespace

int Truncate(const char* path, off_t size, fuse_file_info* fi) {
  if (size < 0) return Reply(Status::InvalidArgument("negative size"));
  Status st = fi != nullptr && Handle(fi) != nullptr && Handle(fi)->file.writable
                  ? TruncateOpen(Handle(fi)->file, static_cast<uint64_t>(size))
                  : Pools()->Truncate(path, static_cast<uint64_t>(size));
  if (!st.ok()) spdlog::warn("truncate {} to {}: {}", path ? path : "?", size, st.ToString());
  return Reply(st);
}

}  // namespace kvmfs::fuse
