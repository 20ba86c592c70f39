// fsync/fdatasync and flush (every close): Image::Flush, so written data is
// durable when they return (metadata in crash-safe order, then the host file).
#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

int FlushFile(const char* what, const char* path, fuse_file_info* fi) {
  const pool::OpenFile& file = Handle(fi)->file;
  if (!file.writable) return 0;
  Status st = file.image->Flush();
  if (!st.ok()) spdlog::error("{} {}: {}", what, path ? path : "?", st.ToString());
  return Reply(st);
}

}  // namespace

int Fsync(const char* path, int /*datasync*/, fuse_file_info* fi) { return FlushFile("fsync", path, fi); }

// close(2) of a descriptor: write-back now, so that close() reports errors
// and the data is safe even if the mount dies before the release.
int Flush(const char* path, fuse_file_info* fi) { return FlushFile("flush", path, fi); }

}  // namespace kvmfs::fuse
