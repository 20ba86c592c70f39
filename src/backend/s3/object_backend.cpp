// A read-only Backend over one version of one S3 object.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "backend/s3/client.h"

namespace kvmfs::s3 {
namespace {

class S3ObjectBackend final : public Backend {
 public:
  S3ObjectBackend(std::shared_ptr<S3Client> client, ObjectInfo info)
      : client_(std::move(client)),
        info_(std::move(info)),
        ref_{client_->config().bucket, client_->Key(info_.path), info_.etag, info_.size},
        name_(client_->Url(info_.path)),
        block_size_(client_->fetcher().block_size()),
        readahead_(client_->config().readahead_blocks),
        owner_(client_->fetcher().NewOwner()) {}
  // Read-ahead queued for this reader and not started is dropped with it.
  ~S3ObjectBackend() override { client_->fetcher().DropPrefetch(owner_); }

  Status ReadAt(uint64_t off, void* buf, size_t len) override {
    if (len == 0) return Status::OK();
    if (stale_.load(std::memory_order_relaxed)) return Stale();
    auto* p = static_cast<uint8_t*>(buf);
    // Past the end reads as zeros (Backend's contract).
    size_t in = off >= ref_.size ? 0 : static_cast<size_t>(std::min<uint64_t>(len, ref_.size - off));
    if (in < len) std::memset(p + in, 0, len - in);
    if (in == 0) return Status::OK();
    MaybeReadAhead(off, in);
    Status st = client_->fetcher().Read(ref_, off, p, in);
    if (!st.ok() && st.ToErrno() == ESTALE && !stale_.exchange(true)) {
      spdlog::warn("s3: {} changed on the server since it was opened (ETag {}); reopen it", name_,
                   info_.etag);
      client_->fetcher().DropObject(ref_);
    }
    return st;
  }

  Status WriteAt(uint64_t, const void*, size_t) override { return ReadOnly(); }
  Status WriteZeroes(uint64_t, uint64_t, bool) override { return ReadOnly(); }
  Status Truncate(uint64_t) override { return ReadOnly(); }
  Status Flush() override { return Status::OK(); }
  // From the listing or HEAD this backend was opened with: never a round trip.
  Result<uint64_t> Size() override { return ref_.size; }
  Result<uint64_t> AllocatedBytes() override { return ref_.size; }
  bool writable() const override { return false; }
  const std::string& name() const override { return name_; }

 private:
  Status ReadOnly() const {
    return Status::ReadOnly(name_ + ": S3 objects are not rewritten in place");
  }
  Status Stale() const {
    return Status::FromErrno(ESTALE, name_ + ": the object changed on the server (was ETag " +
                                         info_.etag + ")");
  }

  // A read starting in or right after the block where the previous one
  // ended continues a sequential run; from the third read of a run on, the
  // next `readahead_` blocks are queued (a header read at 0 and a table
  // read after it do not start a read-ahead).
  void MaybeReadAhead(uint64_t off, size_t len) {
    if (readahead_ == 0) return;
    uint64_t first = off / block_size_;
    uint64_t last = (off + len - 1) / block_size_;
    uint64_t prev_last = last_block_.load(std::memory_order_relaxed);
    bool sequential = prev_last != kNone && (first == prev_last || first == prev_last + 1);
    last_block_.store(last, std::memory_order_relaxed);
    uint32_t run = sequential ? run_.fetch_add(1, std::memory_order_relaxed) + 1 : 0;
    if (!sequential) run_.store(0, std::memory_order_relaxed);
    if (run < 2) return;
    // The window ends on a multiple of fetch_blocks: it grows by whole
    // groups, each fetched by one GET, not by one block per read.
    const uint64_t group = std::max<uint32_t>(client_->config().fetch_blocks, 1);
    const uint64_t end = (last + readahead_ + 1) / group * group;  // exclusive
    if (end > last + 1) client_->fetcher().Prefetch(ref_, last + 1, end - 1, owner_);
  }

  static constexpr uint64_t kNone = ~uint64_t{0};
  const std::shared_ptr<S3Client> client_;
  const ObjectInfo info_;
  const ObjectRef ref_;
  const std::string name_;
  const uint32_t block_size_;
  const uint32_t readahead_;
  const uint64_t owner_;
  std::atomic<bool> stale_{false};
  std::atomic<uint64_t> last_block_{kNone};
  std::atomic<uint32_t> run_{0};
};

}  // namespace

std::unique_ptr<Backend> NewS3ObjectBackend(std::shared_ptr<S3Client> client, ObjectInfo info) {
  return std::make_unique<S3ObjectBackend>(std::move(client), std::move(info));
}

}  // namespace kvmfs::s3
