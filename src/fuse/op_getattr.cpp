// getattr: attributes of any node.
#include "fuse/ops.h"

namespace kvmfs::fuse {

int GetAttr(const char* path, struct stat* st, fuse_file_info*) {
  auto result = Pools()->Stat(path);
  if (!result.ok()) return Reply(result.status());
  *st = *result;
  return 0;
}

}  // namespace kvmfs::fuse
