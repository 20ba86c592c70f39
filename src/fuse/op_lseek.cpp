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

}  // namespace

off_t Lseek(const char*, off_t off, int whence, fuse_file_info* fi) {
  if (whence == SEEK_SET) return off;  // the kernel handles SEEK_SET/CUR/END itself
  if (whence != SEEK_DATA && whence != SEEK_HOLE) return -EINVAL;
  if (off < 0) return -ENXIO;
  const pool::OpenFile& file = Handle(fi)->file;
  if (file.is_info) {  // info.json is all data
    if (static_cast<uint64_t>(off) >= file.content.size()) return -ENXIO;
    return whence == SEEK_DATA ? off : static_cast<off_t>(file.content.size());
  }
  auto pos = SeekAllocation(*file.image, static_cast<uint64_t>(off), whence == SEEK_DATA);
  if (!pos.ok()) return Reply(pos.status());
  return static_cast<off_t>(*pos);
}

}  // namespace kvmfs::fuse
