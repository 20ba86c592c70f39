// The metrics of a mount (kvmfs(8) METRICS): the FUSE requests timed and
// counted where they are dispatched, reads and writes per pool and image,
// and collectors that read what the lower layers count (qcow2 metadata
// cache, codecs, ciphers, QEMU locks, snapshots, open files) and the pools'
// capacity at scrape time. Served over HTTP (-o metrics=ADDR:PORT) and/or
// written to a file (-o metrics_file=PATH) by metrics/server.h.
#pragma once

#include <fuse_lowlevel.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "kvmfs/status.h"
#include "metrics/metrics.h"
#include "metrics/server.h"
#include "pool/pool_set.h"

namespace kvmfs::fuse {

// The default cap of (pool, image) series: a pool of more images shows the
// busiest first-seen ones by name and the rest as image="_other".
inline constexpr size_t kDefaultMetricsMaxImages = 500;

struct MetricsSettings {
  std::string listen;                 // metrics=ADDR:PORT ("" = no HTTP endpoint)
  std::string file;                   // metrics_file=PATH ("" = no file)
  double file_interval = 15;          // metrics_interval=SECONDS between file writes
  size_t max_images = kDefaultMetricsMaxImages;  // metrics_max_images=N
  double capacity_interval = 60;      // metrics_capacity_interval=SECONDS between pool scans
  std::string version;                // kvmfs_build_info{version}
  bool enabled() const { return !listen.empty() || !file.empty(); }
};

// ---- Requests ------------------------------------------------------------------------

// Turns request timing and the per-image counters on; before Operations()
// is first called (the table is built once). Off, the data path does
// nothing more than without metrics.
void EnableRequestMetrics(size_t max_images);
bool RequestMetricsEnabled();

// `ops` with every handler it sets wrapped: the handler runs inside a scope
// that times it into kvmfs_fuse_request_duration_seconds{op} and counts the
// errno its reply carried (NoteReplyErrno) into kvmfs_fuse_errors_total.
// Unchanged when request metrics are off.
fuse_lowlevel_ops Instrumented(const fuse_lowlevel_ops& ops);

// The reads and writes of one image: requests and bytes. Lock-free.
class ImageIo {
 public:
  void Read(uint64_t bytes) {
    c_.Add(0);
    c_.Add(1, bytes);
  }
  void Wrote(uint64_t bytes) {
    c_.Add(2);
    c_.Add(3, bytes);
  }
  uint64_t reads() const { return c_.Value(0); }
  uint64_t read_bytes() const { return c_.Value(1); }
  uint64_t writes() const { return c_.Value(2); }
  uint64_t written_bytes() const { return c_.Value(3); }

 private:
  metrics::CounterArray<4> c_;
};

// The counters of the image whose disk.raw `node` is, reached at mount path
// `path` (".../vm.qcow2/disk.raw", ".../vm.qcow2/snapshots/s1/disk.raw");
// labelled by pool (a YAML pool's name, or a directory SOURCE's path) and
// the image path inside it. nullptr when request metrics are off or `node`
// is no disk.raw. Takes a mutex: called at open.
ImageIo* ImageIoFor(const std::string& path, const pool::SetNode& node, const pool::PoolSet& pools);
// The (pool, image) labels ImageIoFor uses (for tests).
std::pair<std::string, std::string> ImageLabels(const std::string& path, const pool::SetNode& node,
                                                const pool::PoolSet& pools);

// Counts the files open through the mount for its life (a FileHandle member).
class OpenFileCount {
 public:
  OpenFileCount();
  ~OpenFileCount();
  OpenFileCount(const OpenFileCount&) = delete;
  OpenFileCount& operator=(const OpenFileCount&) = delete;
};

// Files open through the mount now (for systemd's STATUS= line).
uint64_t OpenFiles();

// ---- Pool capacity ----------------------------------------------------------------------

// What one scan found in a pool (kvmfs(8) METRICS says what each means).
struct PoolCapacity {
  std::string pool;
  uint64_t images = 0;
  uint64_t unsized = 0;          // images whose header states no size in its first bytes
  uint64_t virtual_bytes = 0;
  uint64_t allocated_bytes = 0;
  uint64_t host_bytes = 0;
  uint64_t fs_size_bytes = 0;
  uint64_t fs_avail_bytes = 0;
  bool truncated = false;        // the scan stopped at kMaxScanEntries
};

// Walks every pool of `pools` as the tree shows it (folders listed, image
// files stat'ed and their first bytes peeked once per file version through
// the pools' probe caches): never opens an image, never takes a lock.
std::vector<PoolCapacity> ScanCapacity(const pool::PoolSet& pools);
inline constexpr size_t kMaxScanEntries = 200000;

// ---- The service -------------------------------------------------------------------------

// Owns the endpoint, the file writer, the collectors and the capacity scans
// of one mount.
class MetricsService {
 public:
  // Before mounting and daemonizing: binds the HTTP port and writes the file
  // once, so that a port in use or an unwritable path fails the mount.
  static Result<std::unique_ptr<MetricsService>> Prepare(const MetricsSettings& settings);
  ~MetricsService();

  // After daemonizing: registers the collectors over `root` and starts
  // serving, writing and scanning (threads).
  void Start(pool::PoolRoot& root);
  // Stops everything; the file is written a last time.
  void Stop();

  // "http://127.0.0.1:9101/metrics, file /path" for the log.
  std::string Describe() const;

 private:
  explicit MetricsService(MetricsSettings settings) : settings_(std::move(settings)) {}
  void ScanLoop();

  const MetricsSettings settings_;
  std::unique_ptr<metrics::HttpServer> http_;
  std::unique_ptr<metrics::FileWriter> file_;
  pool::PoolRoot* root_ = nullptr;
  std::vector<uint64_t> collectors_;

  Mutex mu_;
  std::condition_variable_any cv_;  // waits on mu_
  bool stop_ GUARDED_BY(mu_) = false;
  std::vector<PoolCapacity> capacity_ GUARDED_BY(mu_);
  double capacity_time_ GUARDED_BY(mu_) = 0;  // unix time of the last scan
  std::thread scanner_;
};

}  // namespace kvmfs::fuse
