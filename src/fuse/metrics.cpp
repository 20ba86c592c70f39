#include "fuse/metrics.h"

#include <dirent.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

#include <spdlog/spdlog.h>

#include "backend/image_lock.h"
#include "codec/stats.h"
#include "crypto/stats.h"
#include "format/qcow2/options.h"
#include "metrics/exposition.h"
#include "metrics/progress.h"
#include "pool/layer_file.h"

namespace kvmfs::fuse {

using metrics::Exposition;
using metrics::Labels;

// ---- Requests ------------------------------------------------------------------------

namespace {

// Every operation of fuse_lowlevel_ops that takes a request, by its name in
// the metrics (op="read").
#define KVMFS_FUSE_OPS(X)                                                                      \
  X(lookup) X(forget) X(getattr) X(setattr) X(readlink) X(mknod) X(mkdir) X(unlink) X(rmdir) \
  X(symlink) X(rename) X(link) X(open) X(read) X(write) X(flush) X(release) X(fsync)         \
  X(opendir) X(readdir) X(releasedir) X(fsyncdir) X(statfs) X(setxattr) X(getxattr)          \
  X(listxattr) X(removexattr) X(access) X(create) X(getlk) X(setlk) X(bmap) X(ioctl) X(poll) \
  X(write_buf) X(retrieve_reply) X(forget_multi) X(flock) X(fallocate) X(readdirplus)        \
  X(copy_file_range) X(lseek)

enum OpIndex : size_t {
#define KVMFS_ENUM(name) kOp_##name,
  KVMFS_FUSE_OPS(KVMFS_ENUM)
#undef KVMFS_ENUM
  kOpCount
};

constexpr const char* kOpNames[] = {
#define KVMFS_NAME(name) #name,
    KVMFS_FUSE_OPS(KVMFS_NAME)
#undef KVMFS_NAME
};
static_assert(sizeof(kOpNames) / sizeof(kOpNames[0]) == kOpCount);

// errno values told apart (EHWPOISON is 133); others count as 0.
constexpr int kMaxErrno = 134;

struct RequestMetrics {
  std::atomic<bool> enabled{false};
  size_t max_images = kDefaultMetricsMaxImages;
  std::array<bool, kOpCount> installed{};      // set before serving, read-only after
  std::array<metrics::Histogram, kOpCount> latency;
  // Errors are rare next to requests: one plain atomic each.
  std::array<std::array<std::atomic<uint64_t>, kMaxErrno>, kOpCount> errors{};
  std::unique_ptr<metrics::Family<ImageIo>> images;
  std::atomic<int64_t> open_files{0};
};

RequestMetrics& Requests() {
  static RequestMetrics* r = new RequestMetrics;  // never destroyed: used until exit
  return *r;
}

fuse_lowlevel_ops g_inner;             // the handlers Instrumented() wraps
thread_local int tl_reply_errno = 0;   // the errno of the current request's reply

// Times one request and counts its error, on the worker thread that runs it.
class RequestScope {
 public:
  explicit RequestScope(size_t op) : op_(op), t0_(metrics::NowNanos()) { tl_reply_errno = 0; }
  ~RequestScope() {
    RequestMetrics& r = Requests();
    r.latency[op_].ObserveNanos(metrics::NowNanos() - t0_);
    if (int err = tl_reply_errno; err != 0) {
      r.errors[op_][err > 0 && err < kMaxErrno ? err : 0].fetch_add(1, std::memory_order_relaxed);
      tl_reply_errno = 0;
    }
  }
  RequestScope(const RequestScope&) = delete;
  RequestScope& operator=(const RequestScope&) = delete;

 private:
  const size_t op_;
  const uint64_t t0_;
};

template <size_t kOp, auto kField>
struct Wrapped {
  template <class... Args>
  static void Call(fuse_req_t req, Args... args) {
    RequestScope scope(kOp);
    (g_inner.*kField)(req, args...);
  }
};

template <size_t kOp, auto kField>
void Install(fuse_lowlevel_ops& out) {
  if (g_inner.*kField == nullptr) return;
  out.*kField = &Wrapped<kOp, kField>::Call;
  Requests().installed[kOp] = true;
}

}  // namespace

void NoteReplyErrno(int err) { tl_reply_errno = err; }

void EnableRequestMetrics(size_t max_images) {
  RequestMetrics& r = Requests();
  r.max_images = max_images;
  if (!r.images) r.images = std::make_unique<metrics::Family<ImageIo>>(std::vector<std::string>{"pool", "image"}, max_images);
  r.enabled.store(true);
}

bool RequestMetricsEnabled() { return Requests().enabled.load(std::memory_order_relaxed); }

fuse_lowlevel_ops Instrumented(const fuse_lowlevel_ops& ops) {
  if (!RequestMetricsEnabled()) return ops;
  g_inner = ops;
  fuse_lowlevel_ops out = ops;
#define KVMFS_INSTALL(name) Install<kOp_##name, &fuse_lowlevel_ops::name>(out);
  KVMFS_FUSE_OPS(KVMFS_INSTALL)
#undef KVMFS_INSTALL
  return out;
}

std::pair<std::string, std::string> ImageLabels(const std::string& path, const pool::SetNode& node,
                                                const pool::PoolSet& pools) {
  std::string p = path;
  auto drop_last = [&p] {
    size_t slash = p.rfind('/');
    p.resize(slash == std::string::npos ? 0 : slash);
  };
  drop_last();  // disk.raw
  // snapshots/NAME/ or backing/N-FILE/ below the image directory.
  if (node.kind == pool::SetNode::Kind::kPool && node.node.view.kind != pool::ViewId::Kind::kTop) {
    drop_last();
    drop_last();
  }
  while (!p.empty() && p[0] == '/') p.erase(0, 1);
  if (pools.mirrored()) return {pools.root()->options().source, p};
  size_t slash = p.find('/');
  if (slash == std::string::npos) return {p, ""};
  return {p.substr(0, slash), p.substr(slash + 1)};
}

ImageIo* ImageIoFor(const std::string& path, const pool::SetNode& node, const pool::PoolSet& pools) {
  RequestMetrics& r = Requests();
  if (!r.enabled.load(std::memory_order_relaxed) || !r.images) return nullptr;
  if (node.kind != pool::SetNode::Kind::kPool || node.node.kind != pool::NodeKind::kDisk) return nullptr;
  auto [pool_name, image] = ImageLabels(path, node, pools);
  return &r.images->With({pool_name, image});
}

OpenFileCount::OpenFileCount() { Requests().open_files.fetch_add(1, std::memory_order_relaxed); }
OpenFileCount::~OpenFileCount() { Requests().open_files.fetch_sub(1, std::memory_order_relaxed); }

uint64_t OpenFiles() {
  return static_cast<uint64_t>(std::max<int64_t>(0, Requests().open_files.load(std::memory_order_relaxed)));
}

// ---- Collectors ----------------------------------------------------------------------

namespace {

void WriteRequests(Exposition& out) {
  RequestMetrics& r = Requests();
  const std::string name = "kvmfs_fuse_request_duration_seconds";
  out.Family(name, "Time from a FUSE request reaching kvmfs to its reply, by operation.", "histogram");
  for (size_t op = 0; op < kOpCount; ++op)
    if (r.installed[op]) metrics::WriteHistogramSeries(out, name, {{"op", kOpNames[op]}}, r.latency[op]);
  out.Family("kvmfs_fuse_errors_total", "FUSE requests answered with an error, by operation and errno.",
             "counter");
  for (size_t op = 0; op < kOpCount; ++op) {
    for (int err = 0; err < kMaxErrno; ++err) {
      const uint64_t n = r.errors[op][err].load(std::memory_order_relaxed);
      if (n == 0) continue;
      const char* errname = err == 0 ? "other" : strerrorname_np(err);
      out.SampleInt("kvmfs_fuse_errors_total",
                    {{"op", kOpNames[op]}, {"errno", errname ? errname : std::to_string(err)}}, n);
    }
  }
  out.Family("kvmfs_open_files", "Files open through the mount (disk.raw and info.json).", "gauge");
  out.SampleInt("kvmfs_open_files", {}, static_cast<uint64_t>(std::max<int64_t>(0, r.open_files.load())));
}

void WriteImages(Exposition& out) {
  RequestMetrics& r = Requests();
  if (!r.images) return;
  const auto series = r.images->Series();
  auto family = [&](const char* name, const char* help, uint64_t (ImageIo::*get)() const) {
    out.Family(name, help, "counter");
    for (const auto& [v, io] : series) out.SampleInt(name, {{"pool", v[0]}, {"image", v[1]}}, (io->*get)());
  };
  family("kvmfs_read_requests_total", "Reads of an image's disk.raw views answered.", &ImageIo::reads);
  family("kvmfs_read_bytes_total", "Bytes read from an image's disk.raw views.", &ImageIo::read_bytes);
  family("kvmfs_write_requests_total", "Writes to an image's disk.raw answered.", &ImageIo::writes);
  family("kvmfs_write_bytes_total", "Bytes written to an image's disk.raw.", &ImageIo::written_bytes);
  out.Family("kvmfs_metrics_image_series_limit",
             "The most (pool, image) series kept (metrics_max_images); more images count as "
             "image=\"_other\".",
             "gauge");
  out.SampleInt("kvmfs_metrics_image_series_limit", {}, r.images->max_series());
}

void WriteEngine(Exposition& out) {
  const Qcow2CacheStats c = Qcow2CacheStatsNow();
  auto by_cache = [&](const char* name, const char* help, uint64_t l2, uint64_t cluster) {
    out.Family(name, help, "counter");
    out.SampleInt(name, {{"cache", "l2"}}, l2);
    out.SampleInt(name, {{"cache", "cluster"}}, cluster);
  };
  by_cache("kvmfs_metadata_cache_hits_total", "qcow2 metadata cache lookups that found their entry.",
           c.l2_hits, c.cluster_hits);
  by_cache("kvmfs_metadata_cache_misses_total", "qcow2 metadata cache lookups that had to load it.",
           c.l2_misses, c.cluster_misses);
  by_cache("kvmfs_metadata_cache_evictions_total",
           "qcow2 metadata cache entries evicted to stay within cache_size.", c.l2_evictions,
           c.cluster_evictions);
  out.Family("kvmfs_metadata_cache_bytes", "Bytes in the qcow2 metadata cache now.", "gauge");
  out.SampleInt("kvmfs_metadata_cache_bytes", {}, c.bytes);
  out.Family("kvmfs_metadata_cache_limit_bytes", "The qcow2 metadata cache budget (cache_size).", "gauge");
  out.SampleInt("kvmfs_metadata_cache_limit_bytes", {}, c.limit_bytes);

  static const std::pair<CompressionType, const char*> kCodecs[] = {
      {CompressionType::kDeflate, "deflate"}, {CompressionType::kZstd, "zstd"}, {CompressionType::kZlib, "zlib"}};
  CodecTotals totals[3];
  for (int i = 0; i < 3; ++i) totals[i] = DecompressTotals(kCodecs[i].first);
  auto codec = [&](const char* name, const char* help, auto get, bool seconds) {
    out.Family(name, help, "counter");
    for (int i = 0; i < 3; ++i) {
      const uint64_t v = get(totals[i]);
      if (seconds)
        out.Sample(name, {{"codec", kCodecs[i].second}}, static_cast<double>(v) / 1e9);
      else
        out.SampleInt(name, {{"codec", kCodecs[i].second}}, v);
    }
  };
  codec("kvmfs_decompress_operations_total", "Compressed clusters or grains decompressed.",
        [](const CodecTotals& t) { return t.calls; }, false);
  codec("kvmfs_decompress_errors_total", "Decompressions that failed (corrupt data).",
        [](const CodecTotals& t) { return t.errors; }, false);
  codec("kvmfs_decompress_input_bytes_total", "Compressed bytes decompressed.",
        [](const CodecTotals& t) { return t.in_bytes; }, false);
  codec("kvmfs_decompress_output_bytes_total", "Bytes decompression produced.",
        [](const CodecTotals& t) { return t.out_bytes; }, false);
  codec("kvmfs_decompress_seconds_total", "Time spent decompressing, summed over threads.",
        [](const CodecTotals& t) { return t.nanos; }, true);

  const CryptTotals crypt[2] = {CipherTotals(false), CipherTotals(true)};
  const char* const kDirections[2] = {"decrypt", "encrypt"};
  auto cipher = [&](const char* name, const char* help, auto get, bool seconds) {
    out.Family(name, help, "counter");
    for (int i = 0; i < 2; ++i) {
      const uint64_t v = get(crypt[i]);
      if (seconds)
        out.Sample(name, {{"direction", kDirections[i]}}, static_cast<double>(v) / 1e9);
      else
        out.SampleInt(name, {{"direction", kDirections[i]}}, v);
    }
  };
  cipher("kvmfs_crypt_operations_total", "Runs of sectors encrypted or decrypted.",
         [](const CryptTotals& t) { return t.calls; }, false);
  cipher("kvmfs_crypt_errors_total", "Encryptions or decryptions that failed.",
         [](const CryptTotals& t) { return t.errors; }, false);
  cipher("kvmfs_crypt_bytes_total", "Bytes encrypted or decrypted.",
         [](const CryptTotals& t) { return t.bytes; }, false);
  cipher("kvmfs_crypt_seconds_total", "Time spent encrypting or decrypting, summed over threads.",
         [](const CryptTotals& t) { return t.nanos; }, true);

  out.Family("kvmfs_lock_conflicts_total",
             "Times another program's QEMU image locks refused kvmfs (EBUSY, \"Failed to get lock\").",
             "counter");
  out.SampleInt("kvmfs_lock_conflicts_total", {}, ImageLockConflicts());
  out.Family("kvmfs_open_image_files", "Image files (tops and backing files) kvmfs has open.", "gauge");
  out.SampleInt("kvmfs_open_image_files", {}, pool::OpenLayerFiles());
}

// The pools of `set` with their metric label and namespace (null: missing path).
std::vector<std::pair<std::string, std::shared_ptr<pool::Namespace>>> PoolsOf(const pool::PoolSet& set) {
  std::vector<std::pair<std::string, std::shared_ptr<pool::Namespace>>> out;
  if (set.mirrored()) {
    out.emplace_back(set.root()->options().source, set.root());
  } else {
    for (const pool::PoolEntry& p : set.pools()) out.emplace_back(p.name, p.ns);
  }
  return out;
}

void WriteSnapshots(Exposition& out, const pool::PoolSet& set) {
  const auto pools = PoolsOf(set);
  out.Family("kvmfs_snapshot_creates_total",
             "Internal snapshots created through the mount (mkdir snapshots/NAME); a config "
             "reload starts the pool's count again.",
             "counter");
  for (const auto& [name, ns] : pools)
    out.SampleInt("kvmfs_snapshot_creates_total", {{"pool", name}}, ns ? ns->snapshots_created() : 0);
  out.Family("kvmfs_snapshot_deletes_total",
             "Internal snapshots deleted through the mount (rmdir snapshots/NAME).", "counter");
  for (const auto& [name, ns] : pools)
    out.SampleInt("kvmfs_snapshot_deletes_total", {{"pool", name}}, ns ? ns->snapshots_deleted() : 0);
}

void WriteCapacity(Exposition& out, const std::vector<PoolCapacity>& pools, double scanned) {
  auto gauge = [&](const char* name, const char* help, uint64_t PoolCapacity::*member) {
    out.Family(name, help, "gauge");
    for (const PoolCapacity& p : pools) out.SampleInt(name, {{"pool", p.pool}}, p.*member);
  };
  gauge("kvmfs_pool_images", "Images in the pool (as the tree shows them).", &PoolCapacity::images);
  gauge("kvmfs_pool_images_unsized",
        "Images whose virtual size is not in their first bytes (not in kvmfs_pool_virtual_bytes).",
        &PoolCapacity::unsized);
  gauge("kvmfs_pool_virtual_bytes", "Sum of the images' virtual sizes: what the guests were promised.",
        &PoolCapacity::virtual_bytes);
  gauge("kvmfs_pool_allocated_bytes",
        "Guest bytes allocated: raw files' allocated blocks; for other formats the image file's "
        "host bytes (an upper bound: their tables are not read to be scraped).",
        &PoolCapacity::allocated_bytes);
  gauge("kvmfs_pool_host_bytes", "Host bytes the image files take (st_blocks).", &PoolCapacity::host_bytes);
  gauge("kvmfs_pool_filesystem_size_bytes", "Size of the file system holding the pool.",
        &PoolCapacity::fs_size_bytes);
  gauge("kvmfs_pool_filesystem_avail_bytes", "Bytes still available on the pool's file system.",
        &PoolCapacity::fs_avail_bytes);
  out.Family("kvmfs_pool_capacity_scan_timestamp_seconds",
             "When the pools were last scanned for the capacity gauges (unix time).", "gauge");
  if (scanned > 0) out.Sample("kvmfs_pool_capacity_scan_timestamp_seconds", {}, scanned);
}

// A few of the standard process_* metrics client libraries export.
void WriteProcess(Exposition& out, double start_time) {
  double cpu = 0, rss = 0;
  if (std::FILE* f = std::fopen("/proc/self/stat", "re")) {
    char buf[1024];
    size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    // After "pid (comm) ": fields 3.. ; utime is 14, stime 15, rss 24.
    if (const char* p = std::strrchr(buf, ')')) {
      unsigned long long utime = 0, stime = 0;
      long long rss_pages = 0;
      if (std::sscanf(p + 2,
                      "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d "
                      "%*u %*u %lld",
                      &utime, &stime, &rss_pages) == 3) {
        cpu = static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
        rss = static_cast<double>(rss_pages) * static_cast<double>(::sysconf(_SC_PAGESIZE));
      }
    }
  }
  uint64_t fds = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (struct dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++fds;
    ::closedir(d);
  }
  out.Family("process_cpu_seconds_total", "User and system CPU time spent.", "counter");
  out.Sample("process_cpu_seconds_total", {}, cpu);
  out.Family("process_resident_memory_bytes", "Resident memory size.", "gauge");
  out.Sample("process_resident_memory_bytes", {}, rss);
  out.Family("process_open_fds", "Open file descriptors.", "gauge");
  out.SampleInt("process_open_fds", {}, fds > 0 ? fds - 1 : 0);  // less the one reading the dir
  out.Family("process_start_time_seconds", "Start time of the process (unix time).", "gauge");
  out.Sample("process_start_time_seconds", {}, start_time);
}

double UnixNow() {
  struct timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// One pool: walks its folders through the namespace (as the tree lists them).
void ScanPool(pool::Namespace& ns, PoolCapacity& cap) {
  auto root = ns.Root();
  if (!root.ok()) return;
  std::vector<std::pair<pool::Node, int>> todo{{std::move(root).value(), 0}};
  size_t seen = 0;
  while (!todo.empty()) {
    auto [dir, depth] = std::move(todo.back());
    todo.pop_back();
    auto entries = ns.List(dir, dir.host_path);
    if (!entries.ok()) continue;
    for (pool::DirEntry& e : *entries) {
      if (++seen > kMaxScanEntries) {
        cap.truncated = true;
        return;
      }
      if (!e.node) continue;
      pool::Node& n = *e.node;
      if (n.kind == pool::NodeKind::kFolder) {
        if (depth < 64) todo.emplace_back(std::move(n), depth + 1);
        continue;
      }
      if (n.kind != pool::NodeKind::kImageDir) continue;
      const struct stat& st = n.host_st;
      ++cap.images;
      const uint64_t host = static_cast<uint64_t>(st.st_blocks) * 512;
      cap.host_bytes += host;
      pool::HeaderPeek peek = ns.probe().Peek(n.host_path, st);
      if (peek.format == "raw" && S_ISREG(st.st_mode)) {
        cap.virtual_bytes += static_cast<uint64_t>(st.st_size);
        cap.allocated_bytes += std::min<uint64_t>(host, static_cast<uint64_t>(st.st_size));
        continue;
      }
      cap.allocated_bytes += host;
      if (peek.virtual_size)  // a hostile header's size saturates the sum, never wraps it
        cap.virtual_bytes = *peek.virtual_size > UINT64_MAX - cap.virtual_bytes
                                ? UINT64_MAX
                                : cap.virtual_bytes + *peek.virtual_size;
      else
        ++cap.unsized;
    }
  }
}

}  // namespace

std::vector<PoolCapacity> ScanCapacity(const pool::PoolSet& pools) {
  std::vector<PoolCapacity> out;
  for (const auto& [name, ns] : PoolsOf(pools)) {
    PoolCapacity cap;
    cap.pool = name;
    if (ns) {
      struct statvfs sv;
      if (::statvfs(ns->options().source.c_str(), &sv) == 0) {
        cap.fs_size_bytes = static_cast<uint64_t>(sv.f_blocks) * sv.f_frsize;
        cap.fs_avail_bytes = static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
      }
      ScanPool(*ns, cap);
      if (cap.truncated)
        spdlog::warn("metrics: pool {} has more than {} entries; its capacity counts only those",
                     name, kMaxScanEntries);
    }
    out.push_back(std::move(cap));
  }
  return out;
}

// ---- The service ---------------------------------------------------------------------

Result<std::unique_ptr<MetricsService>> MetricsService::Prepare(const MetricsSettings& settings) {
  std::unique_ptr<MetricsService> s(new MetricsService(settings));
  if (!settings.listen.empty()) {
    KVMFS_ASSIGN_OR_RETURN(s->http_, metrics::HttpServer::Listen(settings.listen));
  }
  if (!settings.file.empty()) {
    auto interval = std::chrono::milliseconds(static_cast<int64_t>(settings.file_interval * 1000));
    KVMFS_ASSIGN_OR_RETURN(s->file_, metrics::FileWriter::Create(settings.file, interval, [] {
                             return metrics::Registry::Global().Render();
                           }));
  }
  return s;
}

void MetricsService::Start(pool::PoolRoot& root) {
  root_ = &root;
  const double start_time = UnixNow();
  const std::string version = settings_.version;
  metrics::Registry& reg = metrics::Registry::Global();
  collectors_.push_back(reg.Add([version](Exposition& out) {
    out.Family("kvmfs_build_info", "The kvmfs version serving (always 1).", "gauge");
    out.SampleInt("kvmfs_build_info", {{"version", version}}, 1);
  }));
  collectors_.push_back(reg.Add(WriteRequests));
  collectors_.push_back(reg.Add(WriteImages));
  collectors_.push_back(reg.Add(WriteEngine));
  collectors_.push_back(reg.Add([this](Exposition& out) { WriteSnapshots(out, *root_->Get()); }));
  collectors_.push_back(reg.Add([this](Exposition& out) {
    std::vector<PoolCapacity> cap;
    double when;
    {
      MutexLock lock(mu_);
      cap = capacity_;
      when = capacity_time_;
    }
    WriteCapacity(out, cap, when);
  }));
  collectors_.push_back(reg.Add(metrics::WriteProgress));
  collectors_.push_back(reg.Add([start_time](Exposition& out) { WriteProcess(out, start_time); }));
  scanner_ = std::thread([this] { ScanLoop(); });
  if (http_) {
    Status st = http_->Start([] { return metrics::Registry::Global().Render(); });
    if (!st.ok()) spdlog::error("{}", st.ToString());
  }
  if (file_) file_->Start();
}

void MetricsService::ScanLoop() {
  const auto interval = std::chrono::milliseconds(static_cast<int64_t>(settings_.capacity_interval * 1000));
  for (;;) {
    // Outside the lock: a scrape meanwhile shows the previous scan.
    std::vector<PoolCapacity> cap = ScanCapacity(*root_->Get());
    const double when = UnixNow();
    MutexLock lock(mu_);
    capacity_ = std::move(cap);
    capacity_time_ = when;
    const auto until = std::chrono::steady_clock::now() + interval;
    while (!stop_ && cv_.wait_until(mu_, until) != std::cv_status::timeout) {
    }
    if (stop_) return;
  }
}

void MetricsService::Stop() {
  {
    MutexLock lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (scanner_.joinable()) scanner_.join();
  if (http_) http_->Stop();
  if (file_) file_->Stop();  // the final values
  for (uint64_t id : collectors_) metrics::Registry::Global().Remove(id);
  collectors_.clear();
}

MetricsService::~MetricsService() { Stop(); }

std::string MetricsService::Describe() const {
  std::string out;
  if (http_) out = "http://" + http_->description() + "/metrics";
  if (file_) out += (out.empty() ? "file " : ", file ") + file_->path();
  return out;
}

}  // namespace kvmfs::fuse
