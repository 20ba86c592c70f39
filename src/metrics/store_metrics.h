// Counters of a pool's store, filled by the store itself (a remote store:
// S3, RBD, ...). This layer names no backend: a store asks for the counters
// of its pool once and keeps the reference.
//
//   metrics::StoreCounters& m = metrics::StoreCountersFor(pool);
//   m.Request("GET", "ok").Add();            // keep the Counter& on a hot path
//   m.Retries("GET").Add(2);
//   m.fetched_bytes.Add(n);
//   m.cache_hits.Add(); m.cache_hit_bytes.Add(n); m.cache_bytes.Set(used);
//
// rendered as
//   kvmfs_store_requests_total{pool,request,result}  requests sent (a retried
//                                                   request counts once, with
//                                                   its final result)
//   kvmfs_store_retries_total{pool,request}          extra attempts
//   kvmfs_store_fetched_bytes_total{pool}            payload bytes received
//   kvmfs_store_cache_hits_total{pool}, kvmfs_store_cache_misses_total{pool},
//   kvmfs_store_cache_evictions_total{pool}          the local block cache
//   kvmfs_store_cache_hit_bytes_total{pool}          bytes served by the cache
//   kvmfs_store_cache_inserted_bytes_total{pool}     bytes added to the cache
//   kvmfs_store_cache_bytes{pool}                    its size on disk (gauge)
// Series exist once a store of the pool has counted something. At most
// kMaxStorePools pools and kMaxStoreRequestSeries (pool, request, result)
// triples (beyond: the "_other" series). Thread-safe; counting is lock-free.
#pragma once

#include <string>

#include "metrics/metrics.h"

namespace kvmfs::metrics {

inline constexpr size_t kMaxStorePools = 64;
inline constexpr size_t kMaxStoreRequestSeries = 512;

class StoreCounters {
 public:
  explicit StoreCounters(std::string pool = {}) : pool_(std::move(pool)) {}

  // The count of requests of kind `request` ("GET", "LIST", "HEAD") that
  // ended with `result` ("ok", "not_found", "denied", "changed", "error").
  // Takes a mutex: keep the reference.
  Counter& Request(const std::string& request, const std::string& result);
  // The extra attempts of requests of kind `request`. Takes a mutex.
  Counter& Retries(const std::string& request);

  Counter fetched_bytes;
  Counter cache_hits;
  Counter cache_misses;
  Counter cache_evictions;
  Counter cache_hit_bytes;
  Counter cache_inserted_bytes;
  Gauge cache_bytes;

  const std::string& pool() const { return pool_; }

 private:
  std::string pool_;
};

// The counters of pool `pool` (created and registered with the global
// registry on first use; the reference stays valid for the life of the
// process, across reloads that reopen the pool's store). Takes a mutex.
StoreCounters& StoreCountersFor(const std::string& pool);

}  // namespace kvmfs::metrics
