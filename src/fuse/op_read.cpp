// read: the guest bytes as a plan of pieces (Image::PlanRead), replied
// without copying them again: a plan with pieces of host files goes to
// fuse_reply_data, which splices those pieces into /dev/fuse (one copy in
// the kernel instead of pread + write); a plan of memory pieces (info.json,
// zeros, backing or compressed data, writable images) goes out with one
// writev (fuse_reply_iov).
#include <linux/fuse.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

// The most a pipe may hold (/proc/sys/fs/pipe-max-size; 1 MiB by default).
uint64_t PipeMaxSize() {
  uint64_t bytes = 1 << 20;
  if (std::FILE* f = std::fopen("/proc/sys/fs/pipe-max-size", "re")) {
    unsigned long long v = 0;
    if (std::fscanf(f, "%llu", &v) == 1 && v > 0) bytes = v;
    std::fclose(f);
  }
  return bytes;
}

// Whether libfuse will splice this reply: it does only when the reply fits
// its pipe with a page of slack per piece (and the header); otherwise it
// copies all of it through a fresh aligned buffer, faulting in every page,
// for every request.
bool FitsSplicePipe(const ReadPlan& plan) {
  static const uint64_t pipe_max = PipeMaxSize();
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return page * (plan.pieces().size() + 2) + sizeof(fuse_out_header) + plan.size() <= pipe_max;
}

bool HasFilePiece(const ReadPlan& plan) {
  return std::any_of(plan.pieces().begin(), plan.pieces().end(),
                     [](const ReadPlan::Piece& p) { return p.fd >= 0; });
}

Status PlanFileRead(const pool::OpenFile& file, size_t size, off_t off, ReadPlan& plan) {
  if (off < 0) return Status::InvalidArgument("negative offset");
  uint64_t offset = static_cast<uint64_t>(off);
  if (file.is_info) {
    if (offset >= file.content.size()) return Status::OK();
    size_t n = std::min<uint64_t>(size, file.content.size() - offset);
    KVMFS_ASSIGN_OR_RETURN(uint8_t* p, plan.AddMemory(n, false));
    std::memcpy(p, file.content.data() + offset, n);
    return Status::OK();
  }
  uint64_t end = file.image->size();
  if (offset >= end) return Status::OK();
  size_t n = std::min<uint64_t>(size, end - offset);
  KVMFS_RETURN_IF_ERROR(file.image->PlanRead(offset, n, plan));
  if (!HasFilePiece(plan) || FitsSplicePipe(plan)) return Status::OK();
  // Pieces of files that cannot be spliced (too many, or a max_read too
  // large for the pipe): read into memory, and the plan written with one
  // writev; its memory pieces (decoded clusters...) are not made again.
  return plan.ReadFilePieces();
}

// Sends `plan` as the reply; the plan keeps its memory until it is sent.
int ReplyPlan(fuse_req_t req, const ReadPlan& plan) {
  const std::vector<ReadPlan::Piece>& pieces = plan.pieces();
  if (pieces.empty()) return fuse_reply_buf(req, nullptr, 0);
  if (!HasFilePiece(plan)) {
    std::vector<iovec> iov(pieces.size());
    for (size_t i = 0; i < pieces.size(); ++i) iov[i] = iovec{pieces[i].mem, pieces[i].length};
    return fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
  }
  std::vector<char> storage(offsetof(fuse_bufvec, buf) + pieces.size() * sizeof(fuse_buf));
  auto* vec = reinterpret_cast<fuse_bufvec*>(storage.data());
  *vec = fuse_bufvec{};
  vec->count = pieces.size();
  for (size_t i = 0; i < pieces.size(); ++i) {
    fuse_buf& b = vec->buf[i];
    b = fuse_buf{};
    b.size = pieces[i].length;
    if (pieces[i].fd >= 0) {
      b.flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
      b.fd = pieces[i].fd;
      b.pos = static_cast<off_t>(pieces[i].fd_offset);
    } else {
      b.mem = pieces[i].mem;
    }
  }
  return fuse_reply_data(req, vec, FUSE_BUF_SPLICE_MOVE);
}

}  // namespace

void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kRead, ino);
  FileHandle* handle = Handle(fi);
  // Once replied, the file may be released (and `handle` deleted) at once.
  std::shared_ptr<Inode> inode = handle->inode;
  ImageIo* const io = handle->io;
  const uint64_t epoch = fs.cache.epoch();
  ReadPlan plan;
  Status st = PlanFileRead(handle->file, size, off, plan);
  DoneWithFile(handle);
  if (!st.ok()) {
    spdlog::warn("read {} at {} (+{}): {}", fs.PathOf(ino), off, size, st.ToString());
    return ReplyError(req, st);
  }
  if (io != nullptr) io->Read(plan.size());
  ReplyPlan(req, plan);  // the plan frees its memory after the reply
  fs.cache.Recheck(*inode, epoch);
}

}  // namespace kvmfs::fuse
