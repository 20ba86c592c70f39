// Metrics in Prometheus' data model (counters, gauges, histograms, label
// families with a cardinality cap) and the registry that renders them in the
// text exposition format (exposition.h).
//
// The hot path is lock-free and allocation-free: counters and histograms
// are sharded, each thread adding to the cache line of its own shard
// (ShardIndex()), so FUSE workers reading at full speed never bounce one
// line between cores; a scrape sums the shards. Label values are resolved
// once (Family::With, under a mutex) and the returned reference is kept by
// the caller: families never free a series, so references stay valid for
// the life of the family.
//
// This layer depends on src/base only, so any layer may use it; the format,
// codec, crypto and backend layers still keep plain counters of their own
// that collectors read at scrape time (src/fuse/metrics.cpp).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/mutex.h"

namespace kvmfs::metrics {

class Exposition;

// Shards per counter: more than the cores of most hosts is no gain, fewer
// makes threads share lines.
inline constexpr size_t kShards = 16;
inline constexpr size_t kCacheLine = 64;

// The shard of the calling thread (threads are numbered round-robin on
// their first call). Lock-free.
size_t ShardIndex();

// N monotonically increasing counts kept side by side (one cache line per
// shard holds all N), for values that are always updated together (the
// requests and bytes of one image). Thread-safe, lock-free.
template <size_t N>
class CounterArray {
  static_assert(N >= 1 && N * 8 <= kCacheLine);

 public:
  void Add(size_t i, uint64_t n = 1) {
    shards_[ShardIndex()].v[i].fetch_add(n, std::memory_order_relaxed);
  }
  uint64_t Value(size_t i) const {
    uint64_t sum = 0;
    for (const Shard& s : shards_) sum += s.v[i].load(std::memory_order_relaxed);
    return sum;
  }

 private:
  struct alignas(kCacheLine) Shard {
    std::array<std::atomic<uint64_t>, N> v{};
  };
  std::array<Shard, kShards> shards_{};
};

// One monotonically increasing count. Thread-safe, lock-free.
class Counter {
 public:
  void Add(uint64_t n = 1) { c_.Add(0, n); }
  uint64_t Value() const { return c_.Value(0); }

 private:
  CounterArray<1> c_;
};

// A value that goes up and down (one atomic: gauges change rarely).
class Gauge {
 public:
  void Set(double v) { v_.store(v, std::memory_order_relaxed); }
  void Add(double d) {
    double cur = v_.load(std::memory_order_relaxed);
    while (!v_.compare_exchange_weak(cur, cur + d, std::memory_order_relaxed)) {
    }
  }
  double Value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> v_{0};
};

// Bucket upper bounds in seconds, for latencies from 10 µs to 10 s.
const std::vector<double>& LatencyBuckets();

// Observations of durations (nanoseconds) counted into fixed buckets, with
// their count and sum. Thread-safe, lock-free; at most kMaxBuckets bounds.
class Histogram {
 public:
  static constexpr size_t kMaxBuckets = 24;
  // `bounds_seconds`: increasing upper bounds (the +Inf bucket is implied).
  explicit Histogram(const std::vector<double>& bounds_seconds = LatencyBuckets());

  void ObserveNanos(uint64_t ns);

  struct Snapshot {
    std::vector<double> bounds;     // seconds
    std::vector<uint64_t> buckets;  // per bound, not cumulative; +1 for +Inf
    uint64_t count = 0;
    double sum_seconds = 0;
  };
  Snapshot Read() const;

 private:
  struct alignas(kCacheLine) Shard {
    std::array<std::atomic<uint64_t>, kMaxBuckets + 1> buckets{};
    std::atomic<uint64_t> sum_ns{0};
  };
  std::vector<uint64_t> bounds_ns_;
  std::vector<double> bounds_;
  std::array<Shard, kShards> shards_{};
};

// Label values of one series, in the order of the family's label names.
using LabelValues = std::vector<std::string>;

// Series of one metric told apart by labels, at most `max_series` of them:
// beyond the cap every new combination shares one overflow series whose
// label values are all kOverflowLabel, so a pool of 10,000 images cannot
// make a scrape of 10,000 x N lines. M is Counter, Gauge, Histogram or any
// default-constructible type a collector knows how to render.
inline constexpr const char* kOverflowLabel = "_other";

template <class M>
class Family {
 public:
  Family(std::vector<std::string> label_names, size_t max_series)
      : names_(std::move(label_names)), max_series_(max_series) {}

  // The series of `values` (created on first use; the overflow series when
  // the cap is reached). The reference stays valid as long as the family.
  // Takes a mutex: callers keep the reference rather than calling it per
  // request.
  M& With(const LabelValues& values) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    auto it = index_.find(values);
    if (it != index_.end()) return *it->second;
    if (index_.size() >= max_series_) {
      LabelValues other(names_.size(), kOverflowLabel);
      it = index_.find(other);
      if (it != index_.end()) return *it->second;
      return Insert(std::move(other));
    }
    return Insert(values);
  }

  // Every series, in label order (for rendering). The pointers stay valid.
  std::vector<std::pair<LabelValues, const M*>> Series() const EXCLUDES(mu_) {
    MutexLock lock(mu_);
    std::vector<std::pair<LabelValues, const M*>> out;
    out.reserve(index_.size());
    for (const auto& [values, m] : index_) out.emplace_back(values, m);
    return out;
  }
  const std::vector<std::string>& label_names() const { return names_; }
  size_t max_series() const { return max_series_; }

 private:
  M& Insert(LabelValues values) REQUIRES(mu_) {
    M& m = storage_.emplace_back();
    index_.emplace(std::move(values), &m);
    return m;
  }

  const std::vector<std::string> names_;
  const size_t max_series_;
  mutable Mutex mu_;
  std::deque<M> storage_ GUARDED_BY(mu_);  // a deque never moves its elements
  std::map<LabelValues, M*> index_ GUARDED_BY(mu_);
};

// What a registry renders: a set of collectors, each writing its families to
// an Exposition when scraped. Collectors run on the scraping thread, in the
// order they were added; they must not block on the data path.
class Registry {
 public:
  using Collector = std::function<void(Exposition&)>;

  // The registry of this process (the HTTP server and the file writer render it).
  static Registry& Global();

  // Adds `collector`; returns an id for Remove().
  uint64_t Add(Collector collector) EXCLUDES(mu_);
  void Remove(uint64_t id) EXCLUDES(mu_);

  // The text exposition format (version 0.0.4) of every collector.
  std::string Render() const EXCLUDES(mu_);

 private:
  mutable Mutex mu_;
  uint64_t next_id_ GUARDED_BY(mu_) = 1;
  std::vector<std::pair<uint64_t, std::shared_ptr<Collector>>> collectors_ GUARDED_BY(mu_);
};

// Renders the families most metrics are made of.
void WriteCounter(Exposition& out, const std::string& name, const std::string& help,
                  const Family<Counter>& family);
void WriteGauge(Exposition& out, const std::string& name, const std::string& help,
                const Family<Gauge>& family);
void WriteHistogram(Exposition& out, const std::string& name, const std::string& help,
                    const Family<Histogram>& family);

// The _bucket, _sum and _count samples of one histogram series (after its
// family's Exposition::Family line).
void WriteHistogramSeries(Exposition& out, const std::string& name, const std::vector<std::pair<std::string, std::string>>& labels,
                          const Histogram& h);

// Seconds elapsed on the monotonic clock, for timing (ns).
uint64_t NowNanos();

}  // namespace kvmfs::metrics
