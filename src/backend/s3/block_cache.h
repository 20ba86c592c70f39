// The local block cache of S3 objects: blocks of objects on local disk,
// compressed with LZ4, so that a second boot from the same golden image reads
// from the disk instead of the network.
//
// One file per block under cache_dir/<xx>/ (xx: two hex digits of the
// object's hash), named by hashes of (bucket, key), of the ETag and by the
// block index. Each file starts with a header holding the full identity
// (bucket, key, ETag, index), the lengths and CRC-32s of itself and of the
// payload: a torn or foreign entry (a crash mid-write, a bit flip, a hash
// collision) fails these checks, is removed and reads as a miss, never as
// data. Files are written to a temporary name and renamed into place, with no
// fsync: after a crash an entry is whole, absent or detected as torn.
//
// Bounded by max_bytes (file sizes rounded up to 4 KiB): inserting past the
// bound evicts the least recently used entries; the order survives a remount
// through the files' mtimes (bumped on hits). One process uses a directory
// at a time (flock on cache_dir/.lock); within a process Open() hands every
// caller of one directory the same cache. Thread-safe.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/mutex.h"
#include "base/unique_fd.h"
#include "kvmfs/status.h"

namespace kvmfs::s3 {

struct BlockKey {
  std::string bucket;
  std::string key;
  std::string etag;
  uint64_t index = 0;
};

struct BlockCacheStats {
  uint64_t hits = 0, misses = 0, inserts = 0, evictions = 0;
  uint64_t torn = 0;      // entries found damaged and removed
  uint64_t entries = 0, bytes = 0;
};

class BlockCache {
 public:
  // Opens (creating it, mode 0700) the cache in `dir`, bounded by
  // `max_bytes`; scans the entries left by an earlier mount, removes
  // temporary files of a crashed one and evicts down to the bound. The same
  // directory opened twice in one process gives the same cache (its bound:
  // the latest max_bytes). Errors: kBusy (another process uses `dir`),
  // kInvalidArgument (max_bytes < 1 MiB), host errors.
  static Result<std::shared_ptr<BlockCache>> Open(const std::string& dir, uint64_t max_bytes);

  ~BlockCache();
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  // The block's bytes when an intact entry holds exactly `len` bytes for
  // `key`; nullopt otherwise (a damaged entry is removed and counted torn).
  std::optional<std::vector<uint8_t>> Get(const BlockKey& key, size_t len);
  // Whether an entry for `key` is indexed (no I/O; it may still prove torn).
  bool Contains(const BlockKey& key) const;
  // As Get(), into `out` (len bytes; its contents are undefined on a miss).
  // Reads through a per-thread buffer: no allocation once warm.
  bool GetInto(const BlockKey& key, uint8_t* out, size_t len);
  // Stores a block (best effort: a full or failing disk is logged once and
  // the block is simply not cached). Says whether it stored it and how many
  // entries it evicted to stay within the bound.
  struct PutResult {
    bool stored = false;
    size_t evicted = 0;
  };
  PutResult Put(const BlockKey& key, const uint8_t* data, size_t len);
  // Removes the entries of (bucket, key) whose ETag is not `etag`: the
  // object changed and its old blocks will never be read again.
  void DropOtherVersions(const std::string& bucket, const std::string& key,
                         const std::string& etag);

  BlockCacheStats stats() const;
  const std::string& dir() const { return dir_; }
  uint64_t max_bytes() const;

 private:
  struct Entry;
  using Lru = std::list<std::string>;  // file names (relative), most recent first
  struct Entry {
    uint64_t bytes = 0;
    Lru::iterator lru;
  };

  BlockCache(std::string dir, uint64_t max_bytes, UniqueFd lock);
  Status Scan();
  std::string RelName(const BlockKey& key) const;
  // Indexes `name` (`bytes` on disk) as most recent and evicts past the bound.
  void Index(const std::string& name, uint64_t bytes) REQUIRES(mu_);
  void Forget(const std::string& name) REQUIRES(mu_);
  // Evicts down to the bound minus `incoming`; returns how many entries.
  size_t EvictLocked(uint64_t incoming) REQUIRES(mu_);
  void SetMaxBytes(uint64_t max_bytes);

  const std::string dir_;
  UniqueFd lock_;
  mutable Mutex mu_;
  uint64_t max_bytes_ GUARDED_BY(mu_);
  std::unordered_map<std::string, Entry> index_ GUARDED_BY(mu_);
  Lru lru_ GUARDED_BY(mu_);
  uint64_t bytes_ GUARDED_BY(mu_) = 0;
  BlockCacheStats stats_ GUARDED_BY(mu_);
  bool warned_ GUARDED_BY(mu_) = false;
  uint64_t tmp_counter_ GUARDED_BY(mu_) = 0;
};

// Exposed for tests: the entry file's bytes for a block, and its check.
std::vector<uint8_t> EncodeCacheEntry(const BlockKey& key, const uint8_t* data, size_t len);
// The block in `file` if it is an intact entry of `key` holding `len` bytes.
std::optional<std::vector<uint8_t>> DecodeCacheEntry(const std::vector<uint8_t>& file,
                                                     const BlockKey& key, size_t len);
// As DecodeCacheEntry, into `out` (len bytes); false when not intact.
bool DecodeCacheEntryInto(const uint8_t* file, size_t file_len, const BlockKey& key, uint8_t* out,
                          size_t len);

}  // namespace kvmfs::s3
