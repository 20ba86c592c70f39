// Tuning of the qcow2 driver, for the mount options (include as
// "format/qcow2/options.h"; the driver itself is reached through
// KvmfsFormat_qcow2() in kvmfs/format.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kvmfs/backend.h"
#include "kvmfs/format.h"

namespace kvmfs {

namespace qcow2 {
class CacheBudget;
}

// The default of -o cache_size: bytes of qcow2 metadata cached by the whole
// process.
inline constexpr uint64_t kDefaultQcow2CacheBytes = 64ull << 20;

struct Qcow2Options {
  // Bytes of cached metadata (L2 tables and decompressed clusters) of all
  // open images together: the limit of the process-wide budget, applied by
  // SetQcow2DefaultOptions (-o cache_size). Each image takes what it uses
  // from the budget, the least recently used entries of any image go first;
  // an image being read always keeps the table it is using, even when one
  // table is larger than the budget.
  uint64_t cache_bytes = kDefaultQcow2CacheBytes;
  // At most this many bytes of decompressed clusters per image file, within
  // the budget, so sequential small reads of one compressed cluster inflate
  // it once. At least 2 clusters.
  uint64_t decompressed_cache_bytes = 4ull << 20;
  // The budget the image's caches are charged to; null: the process-wide one
  // (tests give images a budget of their own).
  std::shared_ptr<qcow2::CacheBudget> budget;
};

// Options used by the qcow2 driver's Open() from now on (process-wide; set them
// once at startup, before images are opened), and cache_bytes as the limit of
// the process-wide budget (shrinking it evicts at once). Thread-safe.
void SetQcow2DefaultOptions(const Qcow2Options& options);
Qcow2Options Qcow2DefaultOptions();

// The process-wide metadata cache (the budget of -o cache_size) as the
// metrics show it: lookups that found their entry or had to load it, entries
// evicted to stay within the budget, by cache (L2 tables; decompressed
// clusters), and the bytes charged now. Images with a budget of their own
// (tests) are not counted. Thread-safe, lock-free.
struct Qcow2CacheStats {
  uint64_t l2_hits = 0, l2_misses = 0, l2_evictions = 0;
  uint64_t cluster_hits = 0, cluster_misses = 0, cluster_evictions = 0;
  uint64_t bytes = 0;
  uint64_t limit_bytes = 0;
};
Qcow2CacheStats Qcow2CacheStatsNow();

// Opens a qcow2 image with explicit options (as the qcow2 driver's Open()).
// options.cache_bytes is not applied here (the budget is shared).
Result<std::unique_ptr<Image>> OpenQcow2(std::shared_ptr<Backend> file, const OpenContext& ctx,
                                         const Qcow2Options& options);

}  // namespace kvmfs
