// fsync/fdatasync and flush (every close of a writable file): Image::Flush,
// so written data is durable when they return (metadata in crash-safe order,
// then the host file).
#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

void FlushFile(fuse_req_t req, Op op, fuse_ino_t ino, fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  fs.Count(op, ino);
  const pool::OpenFile& file = Handle(fi)->file;
  Status st = file.writable ? file.image->Flush() : Status::OK();
  DoneWithFile(Handle(fi));
  if (!st.ok()) spdlog::error("{} {}: {}", OpName(op), fs.PathOf(ino), st.ToString());
  ReplyErrno(req, st.ok() ? 0 : st.ToErrno());
}

}  // namespace

void Fsync(fuse_req_t req, fuse_ino_t ino, int /*datasync*/, fuse_file_info* fi) {
  FlushFile(req, Op::kFsync, ino, fi);
}

// close(2) of a descriptor: write-back now, so that close() reports errors
// and the data is safe even if the mount dies before the release.
void Flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) { FlushFile(req, Op::kFlush, ino, fi); }

}  // namespace kvmfs::fuse
