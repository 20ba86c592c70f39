// Defaults of the Image interface and the chain-wide block status walk.
#include <algorithm>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include "kvmfs/image.h"

#include "image/buffer_pool.h"

namespace kvmfs {

Status Image::Write(uint64_t, const void*, size_t) {
  return Status::ReadOnly("image is read-only");
}

Status Image::BeginWrites() { return Status::ReadOnly("image format is read-only"); }

Status Image::EndWrites() { return Flush(); }

Status Image::WriteZeroes(uint64_t off, uint64_t len, bool /*unmap*/) {
  if (!writable()) return Status::ReadOnly("image is read-only");
  static const std::vector<uint8_t> zeros(1 << 20);
  while (len > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(len, zeros.size()));
    KVMFS_RETURN_IF_ERROR(Write(off, zeros.data(), n));
    off += n;
    len -= n;
  }
  return Status::OK();
}

Status Image::Flush() { return Status::OK(); }

Status Image::Resize(uint64_t) {
  if (!writable()) return Status::ReadOnly("image is read-only");
  return Status::NotSupported("image format cannot be resized");
}

Result<SnapshotInfo> Image::CreateSnapshot(const std::string& name) {
  return Status::NotSupported("format has no internal snapshots (creating " + name + ")");
}

Status Image::DeleteSnapshot(const std::string& id) {
  return Status::NotSupported("format has no internal snapshots (deleting " + id + ")");
}

std::vector<SnapshotInfo> Image::Snapshots() const { return {}; }

Result<CheckResult> Image::Check(const CheckOptions&) {
  return Status::NotSupported("This image format does not support checks");
}

Result<std::unique_ptr<Image>> Image::OpenSnapshot(const std::string& id) {
  return Status::NotSupported("format has no internal snapshots (asked for " + id + ")");
}

namespace {
Status OutOfMemory(uint64_t length) {
  return Status::FromErrno(ENOMEM, "no memory for " + std::to_string(length) + " bytes of a read");
}
}  // namespace

ReadPlan::~ReadPlan() { Discard(); }

void ReadPlan::AddFile(int fd, uint64_t offset, uint64_t length) {
  if (length == 0) return;
  size_ += length;
  if (!pieces_.empty()) {
    Piece& last = pieces_.back();
    if (last.fd == fd && last.fd_offset + last.length == offset) {
      last.length += length;
      return;
    }
  }
  pieces_.push_back(Piece{length, fd, offset, nullptr, nullptr});
}

Result<uint8_t*> ReadPlan::AddMemory(uint64_t length, bool zero) {
  if (length == 0) {
    static uint8_t nothing;
    return &nothing;
  }
  // A memory piece after a memory piece grows it: fewer pieces for FUSE to
  // copy, and realloc() of large blocks is a remap, not a copy.
  if (!pieces_.empty() && pieces_.back().fd < 0 && !pieces_.back().owner) {
    Piece& last = pieces_.back();
    void* grown = std::realloc(last.mem, last.length + length);
    if (grown == nullptr) return OutOfMemory(length);
    auto* at = static_cast<uint8_t*>(grown) + last.length;
    if (zero) std::memset(at, 0, length);
    last.mem = grown;
    last.length += length;
    size_ += length;
    return at;
  }
  void* mem = zero ? std::calloc(1, length) : std::malloc(length);
  if (mem == nullptr) return OutOfMemory(length);
  pieces_.push_back(Piece{length, -1, 0, mem, nullptr});
  size_ += length;
  return static_cast<uint8_t*>(mem);
}

void ReadPlan::AddShared(const void* mem, uint64_t length, std::shared_ptr<const void> owner) {
  if (length == 0) return;
  // The piece is only ever read (iovecs and fuse_bufs take non-const).
  pieces_.push_back(Piece{length, -1, 0, const_cast<void*>(mem), std::move(owner)});
  size_ += length;
}

Status ReadPlan::ReadFilePieces() {
  // One pooled buffer for all of them (buffer_pool.h: no page faults, no
  // malloc per piece), shared by the pieces as their owner.
  uint64_t total = 0;
  for (const Piece& p : pieces_)
    if (p.fd >= 0) total += p.length;
  if (total == 0) return Status::OK();
  std::shared_ptr<uint8_t[]> buf;
  try {
    buf = PooledBuffer(static_cast<size_t>(total));
  } catch (const std::bad_alloc&) {
    return OutOfMemory(total);
  }
  uint8_t* at = buf.get();
  for (Piece& p : pieces_) {
    if (p.fd < 0) continue;
    uint64_t done = 0;
    while (done < p.length) {
      const ssize_t n = ::pread(p.fd, at + done, p.length - done,
                                static_cast<off_t>(p.fd_offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int err = errno;
        return Status::FromErrno(err, "reading " + std::to_string(p.length) +
                                          " bytes of a reply at host offset " +
                                          std::to_string(p.fd_offset + done));
      }
      if (n == 0) {  // past the end of the file: zeros, as a splice would not give
        std::memset(at + done, 0, p.length - done);
        break;
      }
      done += static_cast<uint64_t>(n);
    }
    p.fd = -1;
    p.fd_offset = 0;
    p.mem = at;
    p.owner = buf;
    at += p.length;
  }
  return Status::OK();
}

void ReadPlan::TrimMemory(uint64_t unused) {
  if (unused == 0 || pieces_.empty() || pieces_.back().fd >= 0 || pieces_.back().owner) return;
  Piece& last = pieces_.back();
  unused = std::min<uint64_t>(unused, last.length);
  last.length -= unused;
  size_ -= unused;
  if (last.length == 0) {
    std::free(last.mem);
    pieces_.pop_back();
  }
}

void ReadPlan::Discard() {
  for (Piece& p : pieces_)
    if (!p.owner) std::free(p.mem);
  pieces_.clear();
  size_ = 0;
}

std::vector<ReadPlan::Piece> ReadPlan::Release() {
  size_ = 0;
  return std::exchange(pieces_, {});
}

Status Image::PlanRead(uint64_t off, size_t len, ReadPlan& plan) {
  KVMFS_ASSIGN_OR_RETURN(uint8_t* p, plan.AddMemory(len, false));
  return Read(off, p, len);
}

Status Image::PlanBacking(uint64_t off, size_t len, ReadPlan& plan) {
  const std::shared_ptr<Image> below = backing();
  uint64_t in_backing = 0;
  if (below && off < below->size()) in_backing = std::min<uint64_t>(len, below->size() - off);
  if (in_backing > 0) KVMFS_RETURN_IF_ERROR(below->PlanRead(off, in_backing, plan));
  if (in_backing < len) KVMFS_RETURN_IF_ERROR(plan.AddMemory(len - in_backing, true).status());
  return Status::OK();
}

Status Image::ReadBacking(uint64_t off, void* buf, size_t len) {
  auto* p = static_cast<uint8_t*>(buf);
  const std::shared_ptr<Image> below = backing();
  uint64_t in_backing = 0;
  if (below && off < below->size()) in_backing = std::min<uint64_t>(len, below->size() - off);
  if (in_backing > 0) KVMFS_RETURN_IF_ERROR(below->Read(off, p, in_backing));
  if (in_backing < len) std::memset(p + in_backing, 0, len - in_backing);
  return Status::OK();
}

Result<BlockStatus> ChainBlockStatus(Image& top, uint64_t off, uint64_t len) {
  Image* layer = &top;
  std::shared_ptr<Image> hold;  // keeps `layer` alive if its link is replaced meanwhile
  while (true) {
    KVMFS_ASSIGN_OR_RETURN(BlockStatus bs, layer->GetBlockStatus(off, len));
    if (bs.kind != Allocation::kUnallocated) return bs;
    len = bs.length;  // only this run is known to be unallocated above
    std::shared_ptr<Image> below = layer->backing();
    if (below == nullptr) return bs;
    if (off >= below->size()) return BlockStatus{Allocation::kZero, len};  // past a shorter backing
    len = std::min<uint64_t>(len, below->size() - off);
    hold = std::move(below);
    layer = hold.get();
  }
}

}  // namespace kvmfs
