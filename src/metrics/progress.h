// Progress of long operations (checks, snapshot creation and deletion), for
// kvmfs_operation_progress_ratio{op,pool,image} and kvmfs_operations_running{op}.
//
//   metrics::Progress p("check", "pool", "vm1.qcow2");  // shown from now on, at 0
//   for (...) p.Update(done, total);                  // cheap: one atomic store
//   // gone from the metrics when `p` is destroyed
//
// Any layer may use it (this library depends on src/base only). Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace kvmfs::metrics {

class Exposition;

class Progress {
 public:
  // Registers a running operation `op` ("check", "snapshot_create") on
  // `image` (a path relative to the pool, or whatever names the image to an
  // administrator) of `pool` at ratio 0.
  Progress(std::string op, std::string pool, std::string image);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // The fraction done, clamped to [0, 1].
  void Set(double ratio);
  // done / total (0 while total is 0).
  void Update(uint64_t done, uint64_t total);

  struct Entry {
    std::string op;
    std::string pool;
    std::string image;
    std::atomic<double> ratio{0};
  };

 private:
  std::shared_ptr<Entry> entry_;
};

// At most this many (op, pool, image) progress series are shown; operations
// on further images count under image="_other" (the least advanced of them).
// Series exist only while operations run, so this bounds a burst (many
// check.json files read at once), not the history.
inline constexpr size_t kMaxProgressSeries = 64;

// Renders kvmfs_operation_progress_ratio (the least advanced one when several
// run on one image) and kvmfs_operations_running (by op).
void WriteProgress(Exposition& out);

}  // namespace kvmfs::metrics
