// Defaults of the Backend interface.
#include <algorithm>
#include <vector>

#include "kvmfs/backend.h"

namespace kvmfs {

Status Backend::WriteZeroes(uint64_t off, uint64_t len, bool /*unmap*/) {
  static const std::vector<uint8_t> zeros(1 << 20);
  while (len > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(len, zeros.size()));
    KVMFS_RETURN_IF_ERROR(WriteAt(off, zeros.data(), n));
    off += n;
    len -= n;
  }
  return Status::OK();
}

Status Backend::ReadV(const std::vector<ReadRange>& ranges) {
  for (const ReadRange& r : ranges) KVMFS_RETURN_IF_ERROR(ReadAt(r.off, r.buf, r.len));
  return Status::OK();
}

}  // namespace kvmfs
