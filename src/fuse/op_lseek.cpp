// lseek: SEEK_DATA / SEEK_HOLE from the chain's allocation map.
#include <unistd.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

// Where the next data (want_data) or hole starts at or after `off`. kData runs
// are data; kZero and kUnallocated runs are holes. As on Linux: ENXIO at or
// past the end, and the end of the file counts as a hole.
Result<uint64_t> SeekAllocation(Image& image, uint64_t off, bool want_data) {
  uint64_t size = image.size();
  if (off >= size) return Status::FromErrno(ENXIO, "seek past the end");
  while (off < size) {
    KVMFS_ASSIGN_OR_RETURN(BlockStatus bs, ChainBlockStatus(image, off, size - off));
    if (bs.length == 0) return Status::Corruption("allocation map: empty run");
    bool is_data = bs.kind == Allocation::kData;
    if (is_data == want_data) return off;
    off += bs.length;
  }
  if (want_data) return Status::FromErrno(ENXIO, "no data past the offset");
  return size;
}

Result<off_t> Seek(const pool::OpenFile& file, off_t off, int whence) {
  if (whence == SEEK_SET) return off;  // the kernel handles SEEK_SET/CUR/END itself
  if (whence != SEEK_DATA && whence != SEEK_HOLE) return Status::InvalidArgument("whence");
  if (off < 0) return Status::FromErrno(ENXIO, "negative offset");
  if (file.is_info) {  // info.json is all data
    if (static_cast<uint64_t>(off) >= file.content.size()) return Status::FromErrno(ENXIO, "past the end");
    return whence == SEEK_DATA ? off : static_cast<off_t>(file.content.size());
  }
  KVMFS_ASSIGN_OR_RETURN(uint64_t pos,
                         SeekAllocation(*file.image, static_cast<uint64_t>(off), whence == SEEK_DATA));
  return static_cast<off_t>(pos);
}

}  // namespace

void Lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi) {
  Fs(req).Count(Op::kLseek, ino);
  auto pos = Seek(Handle(fi)->file, off, whence);
  DoneWithFile(Handle(fi));
  if (!pos.ok()) return ReplyError(req, pos.status());
  fuse_reply_lseek(req, *pos);
}

}  // namespace kvmfs::fuse
