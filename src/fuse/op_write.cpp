// write: through Image::Write into the top image, within the virtual size.
// Afterwards the kernel's caches of views above the image (overlays whose
// backing it is) are dropped before the reply (Changed()).
#include <algorithm>

#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

// `touched`: the image may have changed (the write reached it).
Result<size_t> WriteFile(const pool::OpenFile& file, const char* buf, size_t size, off_t off,
                         bool* touched) {
  if (!file.writable || file.is_info) return Status::FromErrno(EBADF, "not open for writing");
  if (off < 0) return Status::InvalidArgument("negative offset");
  uint64_t offset = static_cast<uint64_t>(off);
  uint64_t end = file.image->size();
  // A disk does not grow by writing past its end (as a block device):
  // a short write up to the end, then ENOSPC.
  if (size > 0 && offset >= end) return Status::NoSpace("write past the end of the disk");
  size_t n = std::min<uint64_t>(size, end - offset);
  *touched = n > 0;
  Status written = file.image->Write(offset, buf, n);
  file.owner->Changed();
  KVMFS_RETURN_IF_ERROR(written);
  if (file.sync) KVMFS_RETURN_IF_ERROR(file.image->Flush());
  return n;
}

}  // namespace

void Changed(fuse_req_t req, const pool::OpenFile& file, fuse_ino_t ino) {
  Fs(req).cache.Written(file.owner->path(), ino);
}

void Write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kWrite, ino);
  const pool::OpenFile& file = Handle(fi)->file;
  bool touched = false;
  auto n = WriteFile(file, buf, size, off, &touched);
  if (touched) Changed(req, file, ino);
  if (n.ok() && Handle(fi)->io != nullptr) Handle(fi)->io->Wrote(*n);
  DoneWithFile(Handle(fi));
  if (!n.ok()) {
    spdlog::warn("write {} at {} (+{}): {}", fs.PathOf(ino), off, size, n.status().ToString());
    return ReplyError(req, n.status());
  }
  fuse_reply_write(req, *n);
}

}  // namespace kvmfs::fuse
