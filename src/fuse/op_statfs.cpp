// statfs: the numbers of the file system holding the pool, read-only.
#include "fuse/ops.h"

namespace kvmfs::fuse {

int StatFs(const char* path, struct statvfs* sv) {
  auto result = Pools()->StatFs(path);
  if (!result.ok()) return Reply(result.status());
  *sv = *result;
  return 0;
}

}  // namespace kvmfs::fuse
