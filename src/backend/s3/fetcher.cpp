#include "backend/s3/fetcher.h"

#include <algorithm>
#include <cstring>

namespace kvmfs::s3 {

BlockFetcher::BlockFetcher(const S3Config& config, GetFn get, ConnectFn connect,
                           std::shared_ptr<BlockCache> cache)
    : block_size_(config.block_size),
      ram_max_(std::max<uint64_t>(config.ram_cache_bytes, 4ull * config.block_size)),
      prefetch_max_(std::max<size_t>(config.readahead_blocks, 1) * 4),
      // At most 64 MiB per GET (one buffer).
      fetch_blocks_(std::clamp<uint32_t>(config.fetch_blocks, 1,
                                         std::max<uint32_t>(1, (64u << 20) / config.block_size))),
      get_(std::move(get)),
      connect_(std::move(connect)),
      cache_(std::move(cache)),
      counters_(metrics::StoreCountersFor(config.pool)),
      connections_(config.connections) {
  // What an earlier mount left in the cache counts from the start.
  if (cache_) counters_.cache_bytes.Set(static_cast<double>(cache_->stats().bytes));
}

BlockFetcher::~BlockFetcher() {
  std::vector<std::thread> workers;
  {
    MutexLock lock(mu_);
    stopping_ = true;
    workers.swap(workers_);
  }
  work_cv_.notify_all();
  for (std::thread& t : workers) t.join();
}

void BlockFetcher::StartWorkersLocked() {
  // Started with the first job, not at construction: a mount builds its
  // stores before it detaches into the background, and threads do not
  // survive fork().
  if (!workers_.empty() || stopping_) return;
  for (uint32_t i = 0; i < connections_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

std::string BlockFetcher::BlockName(const ObjectRef& obj, uint64_t index) {
  std::string name = obj.key;
  name.push_back('\0');
  name += obj.etag;
  name.push_back('\0');
  name += std::to_string(index);
  return name;
}

size_t BlockFetcher::BlockLen(const ObjectRef& obj, uint64_t index) const {
  uint64_t start = index * block_size_;
  return static_cast<size_t>(std::min<uint64_t>(block_size_, obj.size - start));
}

BlockFetcher::Block BlockFetcher::LookupLocked(const ObjectRef& obj, uint64_t index,
                                               const std::string& name,
                                               std::shared_ptr<Pending>* pending,
                                               std::unique_ptr<Job>* job) {
  if (auto it = ram_.find(name); it != ram_.end()) {
    ram_lru_.splice(ram_lru_.begin(), ram_lru_, it->second.lru);
    return it->second.data;
  }
  if (auto it = inflight_.find(name); it != inflight_.end()) {
    *pending = it->second;
    return {};
  }
  *pending = std::make_shared<Pending>();
  inflight_[name] = *pending;
  *job = std::make_unique<Job>(Job{obj, index, name, *pending});
  return {};
}

void BlockFetcher::InsertRamLocked(const std::string& name, Block data) {
  if (ram_.count(name) != 0) return;
  ram_lru_.push_front(name);
  ram_bytes_ += data.size;
  ram_[name] = RamEntry{std::move(data), ram_lru_.begin()};
  while (ram_bytes_ > ram_max_ && !ram_lru_.empty()) {
    auto it = ram_.find(ram_lru_.back());
    ram_bytes_ -= it->second.data.size;
    ram_.erase(it);
    ram_lru_.pop_back();
  }
}

Status BlockFetcher::Read(const ObjectRef& obj, uint64_t off, uint8_t* buf, size_t len) {
  if (len == 0) return Status::OK();
  const uint64_t first = off / block_size_;
  const uint64_t last = (off + len - 1) / block_size_;
  const size_t n = static_cast<size_t>(last - first + 1);
  std::vector<Block> blocks(n);
  std::vector<std::shared_ptr<Pending>> waits(n);
  size_t queued = 0;
  {
    MutexLock lock(mu_);
    for (size_t i = 0; i < n; ++i) {
      std::unique_ptr<Job> job;
      std::string name = BlockName(obj, first + i);
      blocks[i] = LookupLocked(obj, first + i, name, &waits[i], &job);
      if (blocks[i]) ++stats_.ram_hits;
      if (job) {
        StartWorkersLocked();
        demand_.push_back(std::move(job));
        ++queued;
      }
    }
  }
  if (queued == 1) work_cv_.notify_one();
  else if (queued > 1) work_cv_.notify_all();
  Status first_error;
  {
    MutexLock lock(mu_);
    for (size_t i = 0; i < n; ++i) {
      if (!waits[i]) continue;
      while (!waits[i]->done) done_cv_.wait(mu_);
      if (!waits[i]->status.ok() && first_error.ok()) first_error = waits[i]->status;
      blocks[i] = waits[i]->data;
    }
  }
  if (!first_error.ok()) return first_error;
  for (size_t i = 0; i < n; ++i) {
    uint64_t block_start = (first + i) * block_size_;
    uint64_t from = std::max(off, block_start);
    uint64_t to = std::min(off + len, block_start + blocks[i].size);
    if (to > from) std::memcpy(buf + (from - off), blocks[i].data.get() + (from - block_start), to - from);
  }
  return Status::OK();
}

uint64_t BlockFetcher::NewOwner() {
  MutexLock lock(mu_);
  return next_owner_++;
}

void BlockFetcher::DropPrefetch(uint64_t owner) {
  {
    MutexLock lock(mu_);
    for (auto it = prefetch_.begin(); it != prefetch_.end();) {
      Job& j = **it;
      // Held by the queue and inflight_ only: no reader joined it.
      if (j.owner != owner || j.pending.use_count() > 2) {
        ++it;
        continue;
      }
      j.pending->done = true;
      j.pending->status = Status::FromErrno(ECANCELED, "s3: read-ahead dropped");
      inflight_.erase(j.name);
      it = prefetch_.erase(it);
      ++stats_.dropped;
    }
  }
  done_cv_.notify_all();
}

void BlockFetcher::Prefetch(const ObjectRef& obj, uint64_t first, uint64_t last, uint64_t owner) {
  if (obj.size == 0) return;
  last = std::min(last, (obj.size - 1) / block_size_);
  size_t queued = 0;
  {
    MutexLock lock(mu_);
    for (uint64_t i = first; i <= last && prefetch_.size() < prefetch_max_; ++i) {
      std::string name = BlockName(obj, i);
      if (ram_.count(name) != 0 || inflight_.count(name) != 0) continue;
      auto pending = std::make_shared<Pending>();
      inflight_[name] = pending;
      StartWorkersLocked();
      prefetch_.push_back(std::make_unique<Job>(Job{obj, i, std::move(name), pending, owner}));
      ++queued;
      ++stats_.prefetched;
    }
  }
  if (queued > 0) work_cv_.notify_all();
}

void BlockFetcher::DropObject(const ObjectRef& obj) {
  {
    MutexLock lock(mu_);
    std::string prefix = obj.key;
    prefix.push_back('\0');
    for (auto it = ram_lru_.begin(); it != ram_lru_.end();) {
      if (it->compare(0, prefix.size(), prefix) == 0 &&
          it->compare(prefix.size(), obj.etag.size() + 1, obj.etag + '\0') != 0) {
        auto e = ram_.find(*it);
        ram_bytes_ -= e->second.data.size;
        ram_.erase(e);
        it = ram_lru_.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (cache_) cache_->DropOtherVersions(obj.bucket, obj.key, obj.etag);
}

void BlockFetcher::WorkerLoop() {
  std::unique_ptr<HttpConnection> conn;
  for (;;) {
    Batch batch;
    {
      MutexLock lock(mu_);
      while (!stopping_ && demand_.empty() && prefetch_.empty()) work_cv_.wait(mu_);
      if (stopping_) {
        // Nobody waits on read-ahead; a demand read's caller is gone too
        // (the fetcher outlives every backend reading through it).
        for (auto* q : {&demand_, &prefetch_}) {
          for (auto& j : *q) {
            j->pending->done = true;
            j->pending->status = Status::FromErrno(ESHUTDOWN, "s3: client closing");
            inflight_.erase(j->name);
          }
          q->clear();
        }
        done_cv_.notify_all();
        return;
      }
      batch = TakeBatchLocked();
    }
    RunBatch(batch, conn);
  }
}

bool BlockFetcher::InDiskCache(const Job& job) const {
  return cache_ && cache_->Contains(BlockKey{job.obj.bucket, job.obj.key, job.obj.etag, job.index});
}

BlockFetcher::Batch BlockFetcher::TakeBatchLocked() {
  auto& q = !demand_.empty() ? demand_ : prefetch_;
  Batch batch;
  batch.push_back(std::move(q.front()));
  q.pop_front();
  // Read-ahead goes out fetch_blocks_ at a time (readers queue it in whole
  // groups). A demand queue is shared out over the workers: as many blocks
  // per GET as it takes for every worker to have one, up to fetch_blocks_.
  const size_t share = (q.size() + 1 + connections_ - 1) / connections_;
  const size_t want = &q == &prefetch_ ? fetch_blocks_
                                       : std::min<size_t>(fetch_blocks_, std::max<size_t>(share, 1));
  if (want <= 1 || InDiskCache(*batch.front())) return batch;
  while (batch.size() < want && !q.empty()) {
    const Job& last = *batch.back();
    const Job& next = *q.front();
    if (next.index != last.index + 1 || next.obj.key != last.obj.key ||
        next.obj.etag != last.obj.etag || next.obj.bucket != last.obj.bucket || InDiskCache(next)) {
      break;
    }
    batch.push_back(std::move(q.front()));
    q.pop_front();
  }
  return batch;
}

BlockFetcher::Block BlockFetcher::FromDisk(const Job& job, size_t len) {
  if (!cache_) return {};
  BlockKey key{job.obj.bucket, job.obj.key, job.obj.etag, job.index};
  std::shared_ptr<uint8_t[]> buf(new uint8_t[len]);  // not zeroed: GetInto fills it
  if (!cache_->GetInto(key, buf.get(), len)) {
    counters_.cache_misses.Add();
    return {};
  }
  counters_.cache_hits.Add();
  counters_.cache_hit_bytes.Add(len);
  const uint8_t* p = buf.get();
  return Block{std::shared_ptr<const uint8_t>(std::move(buf), p), len};
}

void BlockFetcher::Finish(Job& job, const Status& st, Block data, bool from_disk) {
  {
    MutexLock lock(mu_);
    inflight_.erase(job.name);
    job.pending->done = true;
    job.pending->status = st;
    job.pending->data = data;
    if (data) InsertRamLocked(job.name, data);
    if (from_disk) ++stats_.disk_hits;
    else if (st.ok()) ++stats_.fetched;
    else ++stats_.fetch_errors;
  }
  done_cv_.notify_all();
}

void BlockFetcher::RunBatch(Batch& batch, std::unique_ptr<HttpConnection>& conn) {
  if (batch.size() == 1) {
    Job& job = *batch.front();
    if (Block b = FromDisk(job, BlockLen(job.obj, job.index))) {
      Finish(job, Status::OK(), std::move(b), /*from_disk=*/true);
      return;
    }
  } else if (cache_) {
    // Checked absent when batched: count the lookups the batch stands for.
    counters_.cache_misses.Add(batch.size());
  }
  const ObjectRef& obj = batch.front()->obj;
  const uint64_t start = batch.front()->index * block_size_;
  size_t total = 0;
  for (const auto& job : batch) total += BlockLen(obj, job->index);
  if (!conn) conn = connect_();
  std::shared_ptr<uint8_t[]> buf(new uint8_t[total]);  // not zeroed: the GET fills it
  Status st = get_(*conn, obj, start, buf.get(), total);
  {
    MutexLock lock(mu_);
    ++stats_.gets;
  }
  size_t at = 0;
  std::vector<Block> blocks;
  for (auto& job : batch) {
    const size_t len = BlockLen(obj, job->index);
    Block b;
    if (st.ok()) b = Block{std::shared_ptr<const uint8_t>(buf, buf.get() + at), len};
    at += len;
    blocks.push_back(b);
    Finish(*job, st, std::move(b), /*from_disk=*/false);
  }
  // Off the readers' path: they already have the blocks.
  if (!st.ok() || !cache_) return;
  for (size_t i = 0; i < batch.size(); ++i) {
    BlockKey key{obj.bucket, obj.key, obj.etag, batch[i]->index};
    BlockCache::PutResult put = cache_->Put(key, blocks[i].data.get(), blocks[i].size);
    counters_.cache_evictions.Add(put.evicted);
    if (put.stored) counters_.cache_inserted_bytes.Add(blocks[i].size);
  }
  counters_.cache_bytes.Set(static_cast<double>(cache_->stats().bytes));
}

FetcherStats BlockFetcher::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

}  // namespace kvmfs::s3
