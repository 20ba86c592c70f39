// statfs: the SOURCE file system's numbers, read-only.
#include "fuse/ops.h"

namespace kvmfs::fuse {

int StatFs(const char*, struct statvfs* sv) {
  auto result = Ns().StatFs();
  if (!result.ok()) return Reply(result.status());
  *sv = *result;
  return 0;
}

}  // namespace kvmfs::fuse
