#include "metrics/progress.h"

#include <algorithm>
#include <map>
#include <tuple>
#include <vector>

#include "base/mutex.h"
#include "metrics/exposition.h"

namespace kvmfs::metrics {
namespace {

struct Running {
  Mutex mu;
  std::vector<std::shared_ptr<Progress::Entry>> entries GUARDED_BY(mu);
};

Running& All() {
  static Running* running = new Running;  // never destroyed (static destruction order)
  return *running;
}

}  // namespace

Progress::Progress(std::string op, std::string pool, std::string image)
    : entry_(std::make_shared<Entry>()) {
  entry_->op = std::move(op);
  entry_->pool = std::move(pool);
  entry_->image = std::move(image);
  Running& r = All();
  MutexLock lock(r.mu);
  r.entries.push_back(entry_);
}

Progress::~Progress() {
  Running& r = All();
  MutexLock lock(r.mu);
  r.entries.erase(std::remove(r.entries.begin(), r.entries.end(), entry_), r.entries.end());
}

void Progress::Set(double ratio) {
  if (!(ratio >= 0)) ratio = 0;  // NaN too
  entry_->ratio.store(std::min(ratio, 1.0), std::memory_order_relaxed);
}

void Progress::Update(uint64_t done, uint64_t total) {
  Set(total == 0 ? 0.0 : static_cast<double>(done) / static_cast<double>(total));
}

void WriteProgress(Exposition& out) {
  using Key = std::tuple<std::string, std::string, std::string>;  // op, pool, image
  std::map<Key, double> ratios;
  std::map<std::string, uint64_t> running;
  {
    Running& r = All();
    MutexLock lock(r.mu);
    // In the order they started: the oldest keep their own series.
    for (const auto& e : r.entries) {
      const double v = e->ratio.load(std::memory_order_relaxed);
      Key key{e->op, e->pool, e->image};
      if (ratios.size() >= kMaxProgressSeries && ratios.count(key) == 0)
        key = Key{e->op, e->pool, "_other"};
      auto [it, fresh] = ratios.emplace(std::move(key), v);
      if (!fresh) it->second = std::min(it->second, v);
      ++running[e->op];
    }
  }
  out.Family("kvmfs_operation_progress_ratio",
             "Fraction done of a running long operation (check, snapshot create or delete) on "
             "an image; the series exists only while the operation runs.",
             "gauge");
  for (const auto& [key, v] : ratios)
    out.Sample("kvmfs_operation_progress_ratio",
               {{"op", std::get<0>(key)}, {"pool", std::get<1>(key)}, {"image", std::get<2>(key)}}, v);
  out.Family("kvmfs_operations_running", "Long operations running now, by operation.", "gauge");
  for (const auto& [op, n] : running) out.SampleInt("kvmfs_operations_running", {{"op", op}}, n);
}

}  // namespace kvmfs::metrics
