// Block fetching for S3 objects: the read path below S3 object backends.
//
// An object is read in blocks of config.block_size. A block comes from the
// in-memory LRU (recent and read-ahead blocks), else from the disk block
// cache, else from the server by a ranged GET; every miss of one request is
// fetched at once by a pool of worker threads, each with its own keep-alive
// connection, so a large read is as many GETs in flight as there are
// connections. Consecutive queued blocks of one object that the disk cache
// does not hold are fetched by one GET of up to config.fetch_blocks blocks
// (a long queue is shared out over the workers, so a short one still uses
// them all). A block being fetched is fetched once: later readers wait for
// it. Read-ahead blocks queue behind demand reads; read-ahead of blocks the
// disk cache holds decodes them ahead of the reader the same way.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "backend/s3/block_cache.h"
#include "backend/s3/config.h"
#include "backend/s3/http.h"
#include "base/mutex.h"
#include "kvmfs/status.h"
#include "metrics/store_metrics.h"

namespace kvmfs::s3 {

// One version of one object: what a block belongs to.
struct ObjectRef {
  std::string bucket;
  std::string key;   // full key
  std::string etag;  // the version read (If-Match)
  uint64_t size = 0;
};

struct FetcherStats {
  uint64_t ram_hits = 0, disk_hits = 0, fetched = 0, fetch_errors = 0, prefetched = 0;
  uint64_t gets = 0;  // ranged GETs sent (one per run of coalesced blocks)
  uint64_t dropped = 0;  // read-ahead blocks dropped before they were fetched
};

class BlockFetcher {
 public:
  // A ranged GET of [off, off+len) of `obj` into `buf`, with retries; ESTALE
  // (kIOError) when the object's ETag changed.
  using GetFn = std::function<Status(HttpConnection& conn, const ObjectRef& obj, uint64_t off,
                                     uint8_t* buf, size_t len)>;
  using ConnectFn = std::function<std::unique_ptr<HttpConnection>()>;

  // `cache` may be null. config.connections worker threads start with the
  // first fetch.
  BlockFetcher(const S3Config& config, GetFn get, ConnectFn connect,
               std::shared_ptr<BlockCache> cache);
  ~BlockFetcher();  // waits for the workers (queued read-ahead is dropped)
  BlockFetcher(const BlockFetcher&) = delete;
  BlockFetcher& operator=(const BlockFetcher&) = delete;

  // Reads [off, off+len) of `obj` into `buf`; requires off + len <= obj.size.
  // Fails with the first failing block's status (nothing cached from it).
  // Thread-safe.
  Status Read(const ObjectRef& obj, uint64_t off, uint8_t* buf, size_t len);
  // Queues blocks [first, last] of `obj` (clamped to the object) that are
  // neither in memory nor in flight, behind every demand read, on behalf of
  // reader `owner` (NewOwner()). Thread-safe.
  void Prefetch(const ObjectRef& obj, uint64_t first, uint64_t last, uint64_t owner = 0);
  // A fresh reader id for Prefetch() and DropPrefetch().
  uint64_t NewOwner();
  // Drops the read-ahead `owner` queued that no worker has started and no
  // reader waits for (the reader closed its file). Thread-safe.
  void DropPrefetch(uint64_t owner);
  // Forgets the in-memory blocks of `obj` (its ETag changed) and, in the disk
  // cache, every other version of its key but `obj.etag`.
  void DropObject(const ObjectRef& obj);

  uint32_t block_size() const { return block_size_; }
  FetcherStats stats() const;

 private:
  // A block's bytes: its own buffer or a slice of a coalesced GET's (the
  // buffer lives as long as any of its blocks).
  struct Block {
    std::shared_ptr<const uint8_t> data;
    size_t size = 0;
    explicit operator bool() const { return data != nullptr; }
  };
  struct Pending {
    bool done = false;
    Status status;
    Block data;
  };
  struct Job {
    ObjectRef obj;
    uint64_t index;
    std::string name;
    std::shared_ptr<Pending> pending;
    uint64_t owner = 0;  // read-ahead: the reader it is for
  };
  using Batch = std::vector<std::unique_ptr<Job>>;
  struct RamEntry {
    Block data;
    std::list<std::string>::iterator lru;
  };

  static std::string BlockName(const ObjectRef& obj, uint64_t index);
  size_t BlockLen(const ObjectRef& obj, uint64_t index) const;
  // Looks up `name` in memory; else registers it in flight (and returns the
  // job to queue in *job) or joins the fetch in flight (*pending).
  Block LookupLocked(const ObjectRef& obj, uint64_t index, const std::string& name,
                     std::shared_ptr<Pending>* pending, std::unique_ptr<Job>* job) REQUIRES(mu_);
  void InsertRamLocked(const std::string& name, Block data) REQUIRES(mu_);
  // Starts the worker threads unless they run (or the fetcher stops).
  void StartWorkersLocked() REQUIRES(mu_);
  void WorkerLoop();
  // Takes the next job and the consecutive ones that share its GET.
  Batch TakeBatchLocked() REQUIRES(mu_);
  bool InDiskCache(const Job& job) const;
  void RunBatch(Batch& batch, std::unique_ptr<HttpConnection>& conn);
  // The block from the disk cache, or an empty Block.
  Block FromDisk(const Job& job, size_t len);
  // Publishes the outcome of `job` and wakes its readers.
  void Finish(Job& job, const Status& st, Block data, bool from_disk);

  const uint32_t block_size_;
  const uint64_t ram_max_;
  const size_t prefetch_max_;
  const uint32_t fetch_blocks_;
  GetFn get_;
  ConnectFn connect_;
  std::shared_ptr<BlockCache> cache_;
  metrics::StoreCounters& counters_;

  mutable Mutex mu_;
  std::condition_variable_any work_cv_;  // with mu_: jobs queued or stopping
  std::condition_variable_any done_cv_;  // with mu_: a Pending completed
  std::deque<std::unique_ptr<Job>> demand_ GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Job>> prefetch_ GUARDED_BY(mu_);
  std::unordered_map<std::string, std::shared_ptr<Pending>> inflight_ GUARDED_BY(mu_);
  std::unordered_map<std::string, RamEntry> ram_ GUARDED_BY(mu_);
  std::list<std::string> ram_lru_ GUARDED_BY(mu_);  // most recent first
  uint64_t ram_bytes_ GUARDED_BY(mu_) = 0;
  bool stopping_ GUARDED_BY(mu_) = false;
  uint64_t next_owner_ GUARDED_BY(mu_) = 1;
  FetcherStats stats_ GUARDED_BY(mu_);
  const uint32_t connections_;
  std::vector<std::thread> workers_ GUARDED_BY(mu_);
};

}  // namespace kvmfs::s3
