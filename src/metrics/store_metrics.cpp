#include "metrics/store_metrics.h"

#include <deque>

#include "metrics/exposition.h"

namespace kvmfs::metrics {
namespace {

struct StoreFamilies {
  Family<Counter> requests{{"pool", "request", "result"}, kMaxStoreRequestSeries};
  Family<Counter> retries{{"pool", "request"}, kMaxStoreRequestSeries};
  Mutex mu;
  std::map<std::string, StoreCounters*> pools GUARDED_BY(mu);
  std::deque<StoreCounters> storage GUARDED_BY(mu);  // never moves its elements
};

void Render(StoreFamilies& f, Exposition& out) {
  std::vector<std::pair<std::string, const StoreCounters*>> pools;
  {
    MutexLock lock(f.mu);
    for (const auto& [name, c] : f.pools) pools.emplace_back(name, c);
  }
  WriteCounter(out, "kvmfs_store_requests_total",
               "Requests a pool's store sent to its server, by kind and final result (a retried "
               "request counts once).",
               f.requests);
  WriteCounter(out, "kvmfs_store_retries_total",
               "Extra attempts of a pool's store requests (connection errors, timeouts, 5xx, "
               "SlowDown).",
               f.retries);
  auto counter = [&](const char* name, const char* help, Counter StoreCounters::*member) {
    out.Family(name, help, "counter");
    for (const auto& [pool, c] : pools) out.SampleInt(name, {{"pool", pool}}, (c->*member).Value());
  };
  counter("kvmfs_store_fetched_bytes_total", "Payload bytes a pool's store received.",
          &StoreCounters::fetched_bytes);
  counter("kvmfs_store_cache_hits_total", "Blocks read from the pool's local block cache.",
          &StoreCounters::cache_hits);
  counter("kvmfs_store_cache_misses_total", "Blocks looked up in the local block cache and not found.",
          &StoreCounters::cache_misses);
  counter("kvmfs_store_cache_evictions_total",
          "Blocks the local block cache removed to stay within its bound.",
          &StoreCounters::cache_evictions);
  counter("kvmfs_store_cache_hit_bytes_total", "Bytes (uncompressed) served by the local block cache.",
          &StoreCounters::cache_hit_bytes);
  counter("kvmfs_store_cache_inserted_bytes_total",
          "Bytes (uncompressed) stored into the local block cache.",
          &StoreCounters::cache_inserted_bytes);
  out.Family("kvmfs_store_cache_bytes", "Size on disk of the pool's local block cache.", "gauge");
  for (const auto& [pool, c] : pools)
    out.Sample("kvmfs_store_cache_bytes", {{"pool", pool}}, c->cache_bytes.Value());
}

StoreFamilies& Families() {
  // Never destroyed; its collector is added with it.
  static StoreFamilies* families = [] {
    auto* f = new StoreFamilies;
    Registry::Global().Add([f](Exposition& out) { Render(*f, out); });
    return f;
  }();
  return *families;
}

}  // namespace

Counter& StoreCounters::Request(const std::string& request, const std::string& result) {
  return Families().requests.With({pool_, request, result});
}

Counter& StoreCounters::Retries(const std::string& request) {
  return Families().retries.With({pool_, request});
}

StoreCounters& StoreCountersFor(const std::string& pool) {
  StoreFamilies& f = Families();
  MutexLock lock(f.mu);
  auto it = f.pools.find(pool);
  if (it != f.pools.end()) return *it->second;
  if (f.pools.size() >= kMaxStorePools) {
    it = f.pools.find(kOverflowLabel);
    if (it != f.pools.end()) return *it->second;
    StoreCounters& c = f.storage.emplace_back(kOverflowLabel);
    f.pools.emplace(kOverflowLabel, &c);
    return c;
  }
  StoreCounters& c = f.storage.emplace_back(pool);
  f.pools.emplace(pool, &c);
  return c;
}

}  // namespace kvmfs::metrics
