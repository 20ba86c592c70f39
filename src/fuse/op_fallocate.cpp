// fallocate: PUNCH_HOLE discards (WriteZeroes unmap), ZERO_RANGE zeroes
// (WriteZeroes), mode 0 allocates (nothing to do inside the disk; past its
// end it grows it, as for a file).
#include <linux/falloc.h>

#include <algorithm>

#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

Status Allocate(const pool::OpenFile& file, int mode, uint64_t off, uint64_t len, bool* touched) {
  if (!file.writable || file.is_info) return Status::FromErrno(EBADF, "not open for writing");
  if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
    return Status::FromErrno(EOPNOTSUPP, "fallocate mode " + std::to_string(mode));
  if ((mode & FALLOC_FL_PUNCH_HOLE) && (mode & FALLOC_FL_ZERO_RANGE))
    return Status::InvalidArgument("PUNCH_HOLE with ZERO_RANGE");
  Image& image = *file.image;
  const uint64_t size = image.size();
  const uint64_t end = off + len;
  if (end < off) return Status::TooLarge("offset + length overflows");
  *touched = true;
  Status st;
  if (mode & FALLOC_FL_PUNCH_HOLE) {
    // The VFS only lets PUNCH_HOLE through with KEEP_SIZE.
    if (off < size) st = image.WriteZeroes(off, std::min(end, size) - off, true);
  } else {
    if (end > size && !(mode & FALLOC_FL_KEEP_SIZE)) {
      st = image.Resize(end);  // the new part reads as zeros already
      file.owner->Changed();
      KVMFS_RETURN_IF_ERROR(st);
    }
    if ((mode & FALLOC_FL_ZERO_RANGE) && off < size)
      st = image.WriteZeroes(off, std::min(end, size) - off, false);
  }
  file.owner->Changed();
  KVMFS_RETURN_IF_ERROR(st);
  if (file.sync) KVMFS_RETURN_IF_ERROR(image.Flush());
  return Status::OK();
}

}  // namespace

void Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kFallocate, ino);
  if (off < 0 || len <= 0) return ReplyError(req, Status::InvalidArgument("bad range"));
  const pool::OpenFile& file = Handle(fi)->file;
  bool touched = false;
  Status st = Allocate(file, mode, static_cast<uint64_t>(off), static_cast<uint64_t>(len), &touched);
  if (touched) Changed(req, file, ino);
  DoneWithFile(Handle(fi));
  if (!st.ok())
    spdlog::warn("fallocate {} mode {:#x} at {} (+{}): {}", fs.PathOf(ino), mode, off, len,
                 st.ToString());
  ReplyErrno(req, st.ok() ? 0 : st.ToErrno());
}

}  // namespace kvmfs::fuse
