// read: the guest bytes as a plan of pieces (Image::PlanRead), handed to
// libfuse as a buffer vector. Pieces of host files are spliced by libfuse
// into /dev/fuse (one copy in the kernel instead of pread + write); memory
// pieces (info.json, zeros, backing or compressed data, writable images) are
// copied as before.
#include <fuse.h>
#include <linux/fuse.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

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
  if (FitsSplicePipe(plan) || (plan.pieces().size() == 1 && plan.pieces()[0].fd < 0))
    return Status::OK();
  // Too many pieces, or a max_read too large to splice: one memory buffer,
  // which libfuse writes as it is.
  plan.Discard();
  KVMFS_ASSIGN_OR_RETURN(uint8_t* p, plan.AddMemory(n, false));
  return file.image->Read(offset, p, n);
}

// The plan as a fuse_bufvec (malloc()ed, as libfuse frees it: the vector
// with free(), each memory buffer with free()). nullptr when out of memory.
fuse_bufvec* ToBufvec(ReadPlan& plan) {
  const size_t count = std::max<size_t>(1, plan.pieces().size());
  auto* vec = static_cast<fuse_bufvec*>(
      std::calloc(1, offsetof(fuse_bufvec, buf) + count * sizeof(fuse_buf)));
  if (vec == nullptr) return nullptr;
  vec->count = count;  // an empty read: one empty memory buffer
  size_t i = 0;
  for (const ReadPlan::Piece& p : plan.Release()) {
    fuse_buf& b = vec->buf[i++];
    b.size = p.length;
    if (p.fd >= 0) {
      b.flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
      b.fd = p.fd;
      b.pos = static_cast<off_t>(p.fd_offset);
    } else {
      b.mem = p.mem;
    }
  }
  return vec;
}

}  // namespace

int ReadBuf(const char* path, fuse_bufvec** bufp, size_t size, off_t off, fuse_file_info* fi) {
  ReadPlan plan;
  Status st = PlanFileRead(Handle(fi)->file, size, off, plan);
  if (!st.ok()) {
    spdlog::warn("read {} at {} (+{}): {}", path ? path : "?", off, size, st.ToString());
    return Reply(st);
  }
  fuse_bufvec* vec = ToBufvec(plan);
  if (vec == nullptr) return -ENOMEM;  // the plan frees its memory
  *bufp = vec;
  return 0;
}

}  // namespace kvmfs::fuse
