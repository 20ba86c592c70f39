// CryptBatch: the sector runs of one request encrypted or decrypted
// concurrently, as DecompressBatch (src/codec/batch.cpp) does for compressed
// clusters: the caller and a few helpers take jobs from one atomic counter,
// so a batch is never slower than the caller alone, even when every helper
// is busy with other batches.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "base/mutex.h"

#include "kvmfs/cipher.h"

namespace kvmfs {
namespace {

// A fixed set of threads running posted tasks in order.
class HelperPool {
 public:
  explicit HelperPool(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~HelperPool() {
    {
      MutexLock lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  unsigned size() const { return static_cast<unsigned>(threads_.size()); }
  void Post(const std::function<void()>& task, unsigned n) {
    {
      MutexLock lock(mu_);
      for (unsigned i = 0; i < n; ++i) queue_.push_back(task);
    }
    if (n == 1)
      cv_.notify_one();
    else
      cv_.notify_all();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> task;
      {
        MutexLock lock(mu_);
        while (!stop_ && queue_.empty()) cv_.wait(mu_);
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  Mutex mu_;
  std::condition_variable_any cv_;
  std::deque<std::function<void()>> queue_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// Built on first use: kvmfs forks into the background after parsing its
// options, and threads do not survive a fork.
HelperPool& Pool() {
  static HelperPool pool(std::max(1u, std::thread::hardware_concurrency()) - 1);
  return pool;
}

// One batch, held by shared_ptr so that a helper starting after the batch is
// over finds no job and touches nothing else.
struct Batch {
  const SectorCipher* cipher = nullptr;
  bool encrypt = false;
  std::span<CryptJob> jobs;
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};
  Mutex mu;
  std::condition_variable_any cv;

  void Work() {
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < jobs.size();) {
      CryptJob& j = jobs[i];
      j.status = encrypt ? cipher->Encrypt(j.sector, j.data, j.len)
                         : cipher->Decrypt(j.sector, j.data, j.len);
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == jobs.size()) {
        MutexLock lock(mu);
        cv.notify_all();
      }
    }
  }
};

Status FirstError(std::span<CryptJob> jobs) {
  for (const CryptJob& j : jobs)
    if (!j.status.ok()) return j.status;
  return Status::OK();
}

}  // namespace

Status CryptBatch(const SectorCipher& cipher, bool encrypt, std::span<CryptJob> jobs) {
  if (jobs.size() <= 1) {
    for (CryptJob& j : jobs)
      j.status = encrypt ? cipher.Encrypt(j.sector, j.data, j.len)
                         : cipher.Decrypt(j.sector, j.data, j.len);
    return FirstError(jobs);
  }
  HelperPool& pool = Pool();
  auto batch = std::make_shared<Batch>();
  batch->cipher = &cipher;
  batch->encrypt = encrypt;
  batch->jobs = jobs;
  const unsigned helpers = std::min<size_t>(pool.size(), jobs.size() - 1);
  if (helpers > 0) pool.Post([batch] { batch->Work(); }, helpers);
  batch->Work();
  {
    std::unique_lock<Mutex> lock(batch->mu);
    batch->cv.wait(lock, [&] { return batch->done.load(std::memory_order_acquire) == jobs.size(); });
  }
  return FirstError(jobs);
}

Status CryptRange(const SectorCipher& cipher, bool encrypt, uint64_t sector, uint8_t* data,
                  size_t len, size_t chunk) {
  const size_t unit = cipher.spec().sector_size;
  if (len % unit != 0)
    return Status::InvalidArgument("encrypted I/O of " + std::to_string(len) +
                                   " bytes is not a whole number of " + std::to_string(unit) +
                                   "-byte sectors");
  chunk = std::max<size_t>(unit, chunk / unit * unit);
  if (len <= chunk)
    return encrypt ? cipher.Encrypt(sector, data, len) : cipher.Decrypt(sector, data, len);
  std::vector<CryptJob> jobs;
  jobs.reserve(len / chunk + 1);
  for (size_t off = 0; off < len; off += chunk) {
    CryptJob j;
    j.sector = sector + off / kCryptSectorSize;
    j.data = data + off;
    j.len = std::min(chunk, len - off);
    jobs.push_back(std::move(j));
  }
  return CryptBatch(cipher, encrypt, jobs);
}

}  // namespace kvmfs
