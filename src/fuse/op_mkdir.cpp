// mkdir/rmdir: internal snapshots, as <image>/snapshots/NAME directories.
#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {

int MkDir(const char* path, mode_t) {
  Status st = Pools()->MakeDir(path);
  if (!st.ok()) spdlog::info("mkdir {}: {}", path, st.ToString());
  return Reply(st);
}

int RmDir(const char* path) {
  Status st = Pools()->RemoveDir(path);
  if (!st.ok()) spdlog::info("rmdir {}: {}", path, st.ToString());
  return Reply(st);
}

}  // namespace kvmfs::fuse
