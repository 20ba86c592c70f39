// An in-memory backend for tests and fuzzing.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "base/mutex.h"

#include "kvmfs/backend.h"

namespace kvmfs {
namespace {

// An in-memory file grows no larger than this, as a disk of that size would
// (EFBIG past it): a hostile image whose allocator lands a cluster at a
// terabyte offset makes a sparse host file, but would make this a terabyte
// vector (the qcow2_refcount fuzz target found one).
constexpr uint64_t kMaxMemFile = uint64_t{1} << 30;

class MemBackend final : public Backend {
 public:
  MemBackend(std::string name, std::vector<uint8_t> data, bool writable)
      : name_(std::move(name)), data_(std::move(data)), writable_(writable) {}

  Status ReadAt(uint64_t off, void* buf, size_t len) override {
    if (len == 0) return Status::OK();  // (buf may be null)
    MutexLock lock(mu_);
    auto* p = static_cast<uint8_t*>(buf);
    std::memset(p, 0, len);
    if (off < data_.size()) {
      size_t n = std::min<uint64_t>(len, data_.size() - off);
      std::memcpy(p, data_.data() + off, n);
    }
    return Status::OK();
  }
  Status WriteAt(uint64_t off, const void* buf, size_t len) override {
    if (!writable_) return Status::ReadOnly(name_ + ": read-only");
    if (len == 0) return Status::OK();  // (buf may be null)
    if (off > kMaxMemFile || len > kMaxMemFile - off)
      return Status::FromErrno(EFBIG, name_ + ": write past the in-memory file limit");
    MutexLock lock(mu_);
    if (off + len > data_.size()) data_.resize(off + len);
    std::memcpy(data_.data() + off, buf, len);
    return Status::OK();
  }
  Status Flush() override { return Status::OK(); }
  Result<uint64_t> Size() override {
    MutexLock lock(mu_);
    return static_cast<uint64_t>(data_.size());
  }
  Status Truncate(uint64_t size) override {
    if (!writable_) return Status::ReadOnly(name_ + ": read-only");
    if (size > kMaxMemFile)
      return Status::FromErrno(EFBIG, name_ + ": truncate past the in-memory file limit");
    MutexLock lock(mu_);
    data_.resize(size);
    return Status::OK();
  }
  Result<uint64_t> AllocatedBytes() override { return Size(); }
  bool writable() const override { return writable_; }
  const std::string& name() const override { return name_; }

 private:
  const std::string name_;
  Mutex mu_;
  std::vector<uint8_t> data_;  // guarded by mu_
  const bool writable_;
};

}  // namespace

std::unique_ptr<Backend> NewMemBackend(std::string name, std::vector<uint8_t> data, bool writable) {
  return std::make_unique<MemBackend>(std::move(name), std::move(data), writable);
}

}  // namespace kvmfs
