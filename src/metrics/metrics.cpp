#include "metrics/metrics.h"

#include <algorithm>
#include <cmath>
#include <ctime>

#include "metrics/exposition.h"

namespace kvmfs::metrics {

size_t ShardIndex() {
  static std::atomic<size_t> next{0};
  thread_local const size_t index = next.fetch_add(1, std::memory_order_relaxed) % kShards;
  return index;
}

uint64_t NowNanos() {
  struct timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

const std::vector<double>& LatencyBuckets() {
  static const std::vector<double> buckets = {
      0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
      0.025,   0.05,     0.1,     0.25,   0.5,     1,      2.5,   5,      10};
  return buckets;
}

// ---- Histogram --------------------------------------------------------------------

Histogram::Histogram(const std::vector<double>& bounds_seconds) {
  for (double b : bounds_seconds) {
    if (bounds_.size() == kMaxBuckets) break;
    if (!(b > 0) || (!bounds_.empty() && b <= bounds_.back())) continue;  // increasing only
    bounds_.push_back(b);
    bounds_ns_.push_back(static_cast<uint64_t>(std::llround(b * 1e9)));
  }
}

void Histogram::ObserveNanos(uint64_t ns) {
  // The first bound >= ns (Prometheus buckets are "less than or equal").
  size_t i = static_cast<size_t>(std::lower_bound(bounds_ns_.begin(), bounds_ns_.end(), ns) -
                                 bounds_ns_.begin());
  Shard& s = shards_[ShardIndex()];
  s.buckets[i].fetch_add(1, std::memory_order_relaxed);
  s.sum_ns.fetch_add(ns, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snap;
  snap.bounds = bounds_;
  snap.buckets.assign(bounds_.size() + 1, 0);
  uint64_t sum_ns = 0;
  for (const Shard& s : shards_) {
    for (size_t i = 0; i <= bounds_.size(); ++i)
      snap.buckets[i] += s.buckets[i].load(std::memory_order_relaxed);
    sum_ns += s.sum_ns.load(std::memory_order_relaxed);
  }
  for (uint64_t n : snap.buckets) snap.count += n;
  snap.sum_seconds = static_cast<double>(sum_ns) / 1e9;
  return snap;
}

// ---- Registry ---------------------------------------------------------------------

Registry& Registry::Global() {
  // Never destroyed: collectors may be removed during static destruction.
  static Registry* global = new Registry;
  return *global;
}

uint64_t Registry::Add(Collector collector) {
  MutexLock lock(mu_);
  const uint64_t id = next_id_++;
  collectors_.emplace_back(id, std::make_shared<Collector>(std::move(collector)));
  return id;
}

void Registry::Remove(uint64_t id) {
  MutexLock lock(mu_);
  collectors_.erase(std::remove_if(collectors_.begin(), collectors_.end(),
                                   [id](const auto& c) { return c.first == id; }),
                    collectors_.end());
}

std::string Registry::Render() const {
  std::vector<std::shared_ptr<Collector>> collectors;
  {
    MutexLock lock(mu_);
    for (const auto& c : collectors_) collectors.push_back(c.second);
  }
  // Collectors run without the registry lock: one may take its own locks.
  Exposition out;
  for (const auto& c : collectors) (*c)(out);
  return out.Take();
}

// ---- Rendering families -------------------------------------------------------------

namespace {

Labels Zip(const std::vector<std::string>& names, const LabelValues& values) {
  Labels labels;
  for (size_t i = 0; i < names.size() && i < values.size(); ++i)
    labels.emplace_back(names[i], values[i]);
  return labels;
}

}  // namespace

void WriteCounter(Exposition& out, const std::string& name, const std::string& help,
                  const Family<Counter>& family) {
  out.Family(name, help, "counter");
  for (const auto& [values, c] : family.Series())
    out.SampleInt(name, Zip(family.label_names(), values), c->Value());
}

void WriteGauge(Exposition& out, const std::string& name, const std::string& help,
                const Family<Gauge>& family) {
  out.Family(name, help, "gauge");
  for (const auto& [values, g] : family.Series())
    out.Sample(name, Zip(family.label_names(), values), g->Value());
}

void WriteHistogramSeries(Exposition& out, const std::string& name, const Labels& labels,
                          const Histogram& h) {
  const Histogram::Snapshot snap = h.Read();
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= snap.bounds.size(); ++i) {
    cumulative += snap.buckets[i];
    Labels with_le = labels;
    with_le.emplace_back("le", i < snap.bounds.size() ? FormatValue(snap.bounds[i]) : "+Inf");
    out.SampleInt(name + "_bucket", with_le, cumulative);
  }
  out.Sample(name + "_sum", labels, snap.sum_seconds);
  out.SampleInt(name + "_count", labels, snap.count);
}

void WriteHistogram(Exposition& out, const std::string& name, const std::string& help,
                    const Family<Histogram>& family) {
  out.Family(name, help, "histogram");
  for (const auto& [values, h] : family.Series())
    WriteHistogramSeries(out, name, Zip(family.label_names(), values), *h);
}

}  // namespace kvmfs::metrics
