// A Backend on one librbd image, through librbd's asynchronous API.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <vector>

#include "backend/rbd/rbd_internal.h"

namespace kvmfs::rbd {

Status RbdError(int r, const std::string& what) {
  if (r >= 0) return Status::OK();
  return Status::FromErrno(-r, what);
}

namespace {

// An aio request in flight; Wait() collects its result exactly once.
class Completion {
 public:
  Completion() {
    if (rbd_aio_create_completion(nullptr, nullptr, &c_) != 0) c_ = nullptr;
  }
  ~Completion() {
    if (c_ != nullptr) {
      if (issued_ && !waited_) rbd_aio_wait_for_complete(c_);
      rbd_aio_release(c_);
    }
  }
  Completion(const Completion&) = delete;
  Completion& operator=(const Completion&) = delete;

  rbd_completion_t get() const { return c_; }
  bool ok() const { return c_ != nullptr; }
  void Issued() { issued_ = true; }
  // The request's return value (bytes, or -errno).
  ssize_t Wait() {
    waited_ = true;
    rbd_aio_wait_for_complete(c_);
    return rbd_aio_get_return_value(c_);
  }

 private:
  rbd_completion_t c_ = nullptr;
  bool issued_ = false;
  bool waited_ = false;
};

class RbdBackend final : public Backend {
 public:
  RbdBackend(std::shared_ptr<ImageHandle> handle, ReaderSource reader, std::string path)
      : handle_(std::move(handle)), reader_source_(std::move(reader)), path_(std::move(path)) {
    rbd_image_info_t info{};
    if (rbd_stat(handle_->get(), &info, sizeof info) == 0 && info.obj_size > 0)
      io_size_ = static_cast<uint32_t>(std::min<uint64_t>(info.obj_size, 1u << 30));
  }

  Status ReadAt(uint64_t off, void* buf, size_t len) override {
    return ReadV({ReadRange{off, buf, len}});
  }

  // Every range is issued before the first is waited for: librbd sends the
  // object requests of all of them at once.
  Status ReadV(const std::vector<ReadRange>& ranges) override {
    KVMFS_ASSIGN_OR_RETURN(uint64_t size, Size());
    std::vector<std::unique_ptr<Completion>> pending(ranges.size());
    std::vector<size_t> in_image(ranges.size(), 0);
    Status first = Status::OK();
    for (size_t i = 0; i < ranges.size(); ++i) {
      const ReadRange& r = ranges[i];
      // Bytes at or past the end read as zeros (the Backend contract).
      in_image[i] = r.off >= size ? 0 : static_cast<size_t>(std::min<uint64_t>(r.len, size - r.off));
      if (in_image[i] < r.len)
        std::memset(static_cast<uint8_t*>(r.buf) + in_image[i], 0, r.len - in_image[i]);
      if (in_image[i] == 0) continue;
      auto c = std::make_unique<Completion>();
      if (!c->ok()) {
        first = Status::FromErrno(ENOMEM, path_ + ": cannot create an aio completion");
        break;
      }
      int rc = rbd_aio_read(handle_->get(), r.off, in_image[i], static_cast<char*>(r.buf), c->get());
      if (rc < 0) {
        first = RbdError(rc, Where("read", r.off, in_image[i]));
        break;
      }
      c->Issued();
      pending[i] = std::move(c);
    }
    for (size_t i = 0; i < pending.size(); ++i) {
      if (!pending[i]) continue;
      ssize_t got = pending[i]->Wait();
      if (!first.ok()) continue;
      if (got < 0) {
        first = RbdError(static_cast<int>(got), Where("read", ranges[i].off, in_image[i]));
      } else if (static_cast<size_t>(got) < in_image[i]) {
        // Shrunk meanwhile (resized by another client): the rest is gone.
        std::memset(static_cast<uint8_t*>(ranges[i].buf) + got, 0, in_image[i] - size_t(got));
      }
    }
    return first;
  }

  Status WriteAt(uint64_t off, const void* buf, size_t len) override {
    if (!handle_->writable()) return Status::ReadOnly(path_ + ": opened read-only");
    if (len == 0) return Status::OK();
    KVMFS_ASSIGN_OR_RETURN(uint64_t size, Size());
    // librbd refuses writes past the end: grow first, as a file would.
    if (off + len > size) KVMFS_RETURN_IF_ERROR(Truncate(off + len));
    Completion c;
    if (!c.ok()) return Status::FromErrno(ENOMEM, path_ + ": cannot create an aio completion");
    int rc = rbd_aio_write(handle_->get(), off, len, static_cast<const char*>(buf), c.get());
    if (rc < 0) return RbdError(rc, Where("write", off, len));
    c.Issued();
    ssize_t r = c.Wait();
    if (r < 0) return RbdError(static_cast<int>(r), Where("write", off, len));
    return Status::OK();
  }

  // unmap: rbd discard (the store turns off skip_partial_discard, so partial
  // objects are zeroed rather than skipped); else rbd write-zeroes.
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    if (!handle_->writable()) return Status::ReadOnly(path_ + ": opened read-only");
    KVMFS_ASSIGN_OR_RETURN(uint64_t size, Size());
    if (off >= size || len == 0) return Status::OK();  // never changes the size
    len = std::min<uint64_t>(len, size - off);
    Completion c;
    if (!c.ok()) return Status::FromErrno(ENOMEM, path_ + ": cannot create an aio completion");
    int rc = unmap ? rbd_aio_discard(handle_->get(), off, len, c.get())
                   : rbd_aio_write_zeroes(handle_->get(), off, len, c.get(), 0, 0);
    const char* what = unmap ? "discard" : "write-zeroes";
    if (rc < 0) return RbdError(rc, Where(what, off, len));
    c.Issued();
    ssize_t r = c.Wait();
    if (r == -EOPNOTSUPP || r == -ENOTSUP) return Backend::WriteZeroes(off, len, unmap);
    if (r < 0) return RbdError(static_cast<int>(r), Where(what, off, len));
    return Status::OK();
  }

  // librbd's cache is off: a write is stable when it completes, and a
  // flush only matters to the exclusive lock's owner (writes need the lock).
  // Others never flush: librbd would take the lock for it.
  Status Flush() override {
    if (!handle_->writable()) return Status::OK();
    int is_owner = 0;
    if (rbd_is_exclusive_lock_owner(handle_->get(), &is_owner) == 0 && !is_owner) {
      uint64_t features = 0;
      if (rbd_get_features(handle_->get(), &features) == 0 && (features & RBD_FEATURE_EXCLUSIVE_LOCK) != 0)
        return Status::OK();
    }
    Completion c;
    if (!c.ok()) return Status::FromErrno(ENOMEM, path_ + ": cannot create an aio completion");
    int rc = rbd_aio_flush(handle_->get(), c.get());
    if (rc < 0) return RbdError(rc, path_ + ": flush");
    c.Issued();
    ssize_t r = c.Wait();
    return RbdError(static_cast<int>(r), path_ + ": flush");
  }

  // librbd keeps the size in the open image (updated by the header watch
  // when another client resizes): no round trip.
  Result<uint64_t> Size() override {
    uint64_t size = 0;
    int rc = rbd_get_size(handle_->get(), &size);
    if (rc < 0) return RbdError(rc, path_ + ": size");
    return size;
  }

  Status Truncate(uint64_t size) override {
    if (!handle_->writable()) return Status::ReadOnly(path_ + ": opened read-only");
    int rc = rbd_resize2(handle_->get(), size, true, nullptr, nullptr);
    if (rc < 0) return RbdError(rc, path_ + ": resize to " + std::to_string(size));
    return Status::OK();
  }

  // The objects that exist (fast-diff's object map when enabled), counted in
  // whole objects.
  Result<uint64_t> AllocatedBytes() override {
    KVMFS_ASSIGN_OR_RETURN(uint64_t size, Size());
    uint64_t total = 0;
    KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<ImageHandle> reader, Reader());
    int rc = rbd_diff_iterate2(reader->get(), nullptr, 0, size, 1, 1, &CountData, &total);
    if (rc < 0) return RbdError(rc, path_ + ": allocation");
    return total;
  }

  // As QEMU's rbd driver (qemu_rbd_co_block_status): whole-object diff
  // against nothing, parents included.
  Result<BlockStatus> GetAllocation(uint64_t off, uint64_t len) override {
    KVMFS_ASSIGN_OR_RETURN(uint64_t size, Size());
    if (off >= size) return BlockStatus{Allocation::kZero, len};
    const uint64_t end = std::min<uint64_t>(off + len, size);
    Extent first{off, end, false, 0, 0};
    auto reader = Reader();
    if (!reader.ok()) return BlockStatus{Allocation::kData, len};
    int rc = rbd_diff_iterate2((*reader)->get(), nullptr, off, end - off, 1, 1, &FirstExtent, &first);
    // Errors and images without an object map: all data.
    if (rc < 0 && rc != -ECANCELED) return BlockStatus{Allocation::kData, len};
    if (!first.found || first.start >= end) return BlockStatus{Allocation::kZero, end - off};
    if (first.start > off) return BlockStatus{Allocation::kZero, first.start - off};
    return BlockStatus{Allocation::kData, std::min(first.stop, end) - off};
  }

  bool writable() const override { return handle_->writable(); }
  const std::string& name() const override { return path_; }
  BackendCaps caps() const override {
    BackendCaps caps;
    caps.zeroing = true;
    caps.allocation_map = true;
    caps.remote = true;
    caps.io_size = io_size_;
    return caps;
  }

 private:
  struct Extent {
    uint64_t lo, hi;  // the range asked
    bool found;
    uint64_t start, stop;  // the first data run (merged with those adjacent)
  };
  static int CountData(uint64_t /*off*/, size_t len, int exists, void* arg) {
    if (exists) *static_cast<uint64_t*>(arg) += len;
    return 0;
  }
  static int FirstExtent(uint64_t off, size_t len, int exists, void* arg) {
    auto* e = static_cast<Extent*>(arg);
    if (!exists) return e->found ? -ECANCELED : 0;
    const uint64_t start = std::max(off, e->lo);
    if (!e->found) {
      e->found = true;
      e->start = start;
      e->stop = off + len;
      return 0;
    }
    if (start > e->stop) return -ECANCELED;  // a gap: the first run ends
    e->stop = std::max(e->stop, off + len);
    return 0;
  }
  // The handle for allocation queries: this backend's own when read-only,
  // else a read-only one, opened anew once its header changed (a resize).
  Result<std::shared_ptr<ImageHandle>> Reader() {
    if (!reader_source_) return handle_;
    std::lock_guard lock(reader_mu_);
    if (!reader_ || reader_->changed()) {
      KVMFS_ASSIGN_OR_RETURN(reader_, reader_source_());
    }
    return reader_;
  }
  std::string Where(const char* what, uint64_t off, uint64_t len) const {
    return path_ + ": " + what + " of " + std::to_string(len) + " bytes at offset " + std::to_string(off);
  }

  const std::shared_ptr<ImageHandle> handle_;
  const ReaderSource reader_source_;
  std::mutex reader_mu_;
  std::shared_ptr<ImageHandle> reader_;  // GUARDED_BY(reader_mu_)
  const std::string path_;
  uint32_t io_size_ = 4u << 20;
};

}  // namespace

std::unique_ptr<Backend> NewRbdBackend(std::shared_ptr<ImageHandle> handle, ReaderSource reader,
                                       std::string path) {
  return std::make_unique<RbdBackend>(std::move(handle), std::move(reader), std::move(path));
}

}  // namespace kvmfs::rbd
