// DecompressBatch: the clusters of one read decompressed concurrently.
//
// A 1 MiB read over 64 KiB compressed clusters is 16 independent
// decompressions; one FUSE worker doing them in turn leaves the other cores
// idle when a single reader streams. The batch is shared by the caller and a
// few helpers through one atomic "next job" counter: whoever is free takes
// the next job, the caller included, so a batch finishes at least as fast as
// the caller alone even when every helper is busy elsewhere.
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

#include "kvmfs/codec.h"

namespace kvmfs {
namespace {

// A fixed set of threads running posted tasks in order. Tasks must not
// block on one another (a batch's caller never waits for a helper that has
// not taken a job, see Batch; a reader never waits for a posted cluster that
// no thread has started: it decodes it itself, see PostDecodeTask).
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
  // Queues `n` copies of `task`.
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
  void Post(std::function<void()>&& task) {
    {
      MutexLock lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> task;
      {
        MutexLock lock(mu_);
        while (!stop_ && queue_.empty()) cv_.wait(mu_);
        if (queue_.empty()) return;  // stopping, nothing left
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

// Built on first use, never before: kvmfs forks into the background after
// parsing its options, and threads do not survive a fork.
HelperPool& Pool() {
  static HelperPool pool(std::max(1u, std::thread::hardware_concurrency()) - 1);
  return pool;
}

std::atomic<bool> g_pool_started{false};

// One job: exactly out_len bytes, but for kZlib (at most out_len).
void RunJob(CompressionType type, DecompressJob& j) {
  if (type == CompressionType::kZlib) {
    Result<size_t> n = InflateZlibStream(j.in, j.in_len, j.out, j.out_len);
    j.status = n.status();
    j.produced = n.ok() ? *n : 0;
    return;
  }
  j.status = Decompress(type, j.in, j.in_len, j.out, j.out_len);
  j.produced = j.status.ok() ? j.out_len : 0;
}

// The shared state of one batch. Helpers hold it by shared_ptr: one that
// starts after the batch is over finds no job left and touches nothing
// else, so the caller may return (and free the jobs) as soon as every job
// is done, whatever the helpers still queued.
struct Batch {
  CompressionType type;
  std::span<DecompressJob> jobs;
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};
  Mutex mu;
  std::condition_variable_any cv;

  // Runs jobs until none is left; true when it finished the last one.
  void Work() {
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < jobs.size();) {
      RunJob(type, jobs[i]);
      // acq_rel: the caller, seeing done == size, sees every job's output.
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == jobs.size()) {
        MutexLock lock(mu);
        cv.notify_all();
      }
    }
  }
};

}  // namespace

void DecompressBatch(CompressionType type, std::span<DecompressJob> jobs) {
  if (jobs.size() <= 1) {
    for (DecompressJob& j : jobs) RunJob(type, j);
    return;
  }
  HelperPool& pool = Pool();
  g_pool_started.store(true, std::memory_order_relaxed);
  auto batch = std::make_shared<Batch>();
  batch->type = type;
  batch->jobs = jobs;
  const unsigned helpers = std::min<size_t>(pool.size(), jobs.size() - 1);
  if (helpers > 0) pool.Post([batch] { batch->Work(); }, helpers);
  batch->Work();
  std::unique_lock<Mutex> lock(batch->mu);
  batch->cv.wait(lock, [&] { return batch->done.load(std::memory_order_acquire) == jobs.size(); });
}

bool PostDecodeTask(std::function<void()> task) {
  HelperPool& pool = Pool();
  g_pool_started.store(true, std::memory_order_relaxed);
  if (pool.size() == 0) return false;
  pool.Post(std::move(task));
  return true;
}

unsigned DecompressHelperThreads() {
  return g_pool_started.load(std::memory_order_relaxed) ? Pool().size() : 0;
}

}  // namespace kvmfs
