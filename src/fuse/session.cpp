#include "fuse/session.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "fuse/filesystem.h"
#include "fuse/logging.h"
#include "fuse/ops.h"
#include "fuse/systemd.h"
#include "pool/layer_file.h"

namespace kvmfs::fuse {
namespace {

int Fail(const std::string& reason) {
  // Under systemd the journal files it as an error (<3>), not as info.
  std::fprintf(stderr, "%skvmfs: %s\n", StderrIsJournal() ? "<3>" : "", reason.c_str());
  return 1;
}

// Owns the argv strings handed to libfuse.
class FuseArgs {
 public:
  void Add(std::string arg) { strings_.push_back(std::move(arg)); }
  fuse_args Get() {
    pointers_.clear();
    for (std::string& s : strings_) pointers_.push_back(s.data());
    pointers_.push_back(nullptr);
    return FUSE_ARGS_INIT(static_cast<int>(strings_.size()), pointers_.data());
  }

 private:
  std::vector<std::string> strings_;
  std::vector<char*> pointers_;
};

// SIGHUP -> a byte on a self-pipe; a watcher thread does the reload.
int g_hup_pipe[2] = {-1, -1};

void OnHup(int) {
  int saved = errno;
  char c = 'h';
  [[maybe_unused]] ssize_t n = ::write(g_hup_pipe[1], &c, 1);
  errno = saved;
}

// Runs `reload` on every SIGHUP until Stop().
class HupWatcher {
 public:
  Status Start(std::function<void()> reload) {
    if (::pipe2(g_hup_pipe, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
    // The handler must never block: a full pipe already means "reload pending".
    ::fcntl(g_hup_pipe[1], F_SETFL, O_NONBLOCK);
    thread_ = std::thread([reload = std::move(reload)] {
      char c;
      for (;;) {
        ssize_t n = ::read(g_hup_pipe[0], &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || c == 'q') break;
        reload();
      }
    });
    struct sigaction sa {};
    sa.sa_handler = OnHup;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGHUP, &sa, nullptr);
    return Status::OK();
  }
  void Stop() {
    if (!thread_.joinable()) return;
    struct sigaction sa {};
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGHUP, &sa, nullptr);
    char c = 'q';
    while (::write(g_hup_pipe[1], &c, 1) < 0 && errno == EAGAIN) ::usleep(1000);
    thread_.join();
    ::close(g_hup_pipe[0]);
    ::close(g_hup_pipe[1]);
    g_hup_pipe[0] = g_hup_pipe[1] = -1;
  }
  ~HupWatcher() { Stop(); }

 private:
  std::thread thread_;
};

// Serves `se` until unmounted or signalled: the multi-threaded loop, one
// cloned /dev/fuse descriptor per worker.
int Serve(fuse_session* se, const Options& options) {
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(cfg, 1);
  fuse_loop_cfg_set_max_threads(cfg, options.max_threads);
  int rc = fuse_session_loop_mt(se, cfg);
  fuse_loop_cfg_destroy(cfg);
  return rc;
}

// A config reload replaced the pools: the kernel's entries for the old and
// new pool names, and the root's listing, are dropped.
void OnPoolsReplaced(Filesystem& fs) {
  std::vector<std::string> names;
  for (auto& [name, ino] : fs.inodes.Children(FUSE_ROOT_ID)) names.push_back(name);
  for (const pool::PoolEntry& p : fs.Pools()->pools()) names.push_back(p.name);
  fs.cache.PoolsReplaced(names);
}

}  // namespace

std::string StatusLine(const pool::PoolSet& pools, const std::string& mountpoint) {
  std::string names;
  size_t n = 0;
  if (pools.mirrored()) {
    names = pools.root()->options().source;
    n = 1;
  } else {
    for (const pool::PoolEntry& p : pools.pools()) {
      names += (names.empty() ? "" : ", ") + p.name;
      ++n;
    }
  }
  const uint64_t images = pool::OpenLayerFiles();
  const uint64_t files = OpenFiles();
  return "serving " + std::to_string(n) + (n == 1 ? " pool" : " pools") +
         (names.empty() ? "" : " (" + names + ")") + " at " + mountpoint + "; " +
         std::to_string(images) + (images == 1 ? " image file" : " image files") + " open, " +
         std::to_string(files) + (files == 1 ? " file" : " files") + " open through the mount";
}

std::string EscapeFuseOption(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == ',' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::string BaseFuseOptions(const Options& options) {
  // Read-write unless -o ro (passed on to the kernel with the other FUSE
  // options). default_permissions lets the kernel check the modes, which
  // mirror the host's (kvmfs(8) PERMISSIONS; what keeps other users out with
  // allow_other), unless the admin said no_default_permissions.
  std::string base = std::string(options.default_permissions ? "default_permissions," : "") +
                     "fsname=" + EscapeFuseOption(options.source) + ",subtype=kvmfs";
  // Reads small enough to be spliced (ops.h), unless the user chose a size.
  for (const std::string& opt : options.fuse_options)
    if (opt.rfind("max_read=", 0) == 0) return base;
  return base + ",max_read=" + std::to_string(kMaxRead);
}

int MountAndServe(const Options& options, pool::PoolRoot& root, std::function<void()> reload,
                  const MetricsSettings& metrics_settings) {
  FuseArgs argv;
  argv.Add("kvmfs");
  argv.Add("-o");
  argv.Add(BaseFuseOptions(options));
  for (const std::string& opt : options.fuse_options) {
    argv.Add("-o");
    argv.Add(EscapeFuseOption(opt));
  }
  if (options.log_level == "trace") {
    argv.Add("-o");
    argv.Add("debug");  // libfuse's protocol dump, logged at trace level
  }
  SetMutableTimeouts({options.entry_timeout, options.attr_timeout, options.negative_timeout});
  SetMaxRead(kMaxRead);
  for (const std::string& opt : options.fuse_options) {
    if (opt.rfind("max_read=", 0) != 0) continue;
    try {
      SetMaxRead(static_cast<unsigned>(std::stoul(opt.substr(9))));
    } catch (const std::exception&) {
      return Fail("invalid option " + opt);
    }
  }
  fuse_args args = argv.Get();
  // libfuse may replace args with its own allocated copy; free it last, as
  // fuse_main does (its strings may be referenced until fuse_destroy).
  struct ArgsGuard {
    fuse_args* a;
    ~ArgsGuard() { fuse_opt_free_args(a); }
  } args_guard{&args};

  // Bound and written before mounting: a port in use fails the mount. The
  // request table is built once (Operations()), with timing when enabled.
  std::unique_ptr<MetricsService> metrics;
  if (metrics_settings.enabled()) {
    auto prepared = MetricsService::Prepare(metrics_settings);
    if (!prepared.ok()) return Fail(prepared.status().message());
    metrics = std::move(prepared).value();
    EnableRequestMetrics(metrics_settings.max_images);
  }

  CaptureFuseLog();
  auto root_node = root.Get()->Root();
  if (!root_node.ok()) return Fail(root_node.status().message());
  Filesystem fs(root, std::move(root_node).value());
  fuse_session* se = fuse_session_new(&args, &Operations(), sizeof(fuse_lowlevel_ops), &fs);
  if (se == nullptr) {
    std::string why = LastFuseMessage();
    return Fail(why.empty() ? "invalid FUSE options" : why);
  }
  if (fuse_session_mount(se, options.mountpoint.c_str()) != 0) {
    std::string why = LastFuseMessage();
    fuse_session_destroy(se);
    return Fail("cannot mount " + options.mountpoint + (why.empty() ? "" : ": " + why));
  }
  // In the background, the parent returns from here (exit 0) once the child
  // is running; the mount already exists at that point.
  if (fuse_daemonize(options.foreground ? 1 : 0) != 0) {
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return Fail("cannot detach into the background");
  }
  SetupLogging(options.foreground, options.debug, options.log_level);
  spdlog::info("serving {} at {} ({}, up to {} threads, {} KiB metadata cache{})", options.source,
               options.mountpoint, options.read_only ? "read-only" : "read-write",
               options.max_threads, options.cache_size >> 10,
               options.force_share ? ", force_share" : "");

  if (fuse_set_signal_handlers(se) != 0) {
    spdlog::error("cannot install signal handlers");
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return 1;
  }
  // After daemonizing: threads do not survive fork().
  fs.cache.Start(se);
  root.SetChangeListener(&fs.cache);
  root.OnSet([&fs] { OnPoolsReplaced(fs); });
  if (metrics) {
    metrics->Start(root);
    spdlog::info("metrics: {}", metrics->Describe());
  }
  // Under systemd: READY=1 once the loop below answers, STATUS= lines.
  const std::string mountpoint = options.mountpoint;
  Notifier notifier(mountpoint, [&root, mountpoint] { return StatusLine(*root.Get(), mountpoint); });
  HupWatcher watcher;
  if (reload) {
    // SIGHUP reloads from here on (before, libfuse's handler would unmount).
    Status started = watcher.Start([&notifier, reload] {
      notifier.Reloading();
      reload();
      notifier.Reloaded();
    });
    if (!started.ok()) spdlog::warn("SIGHUP reload unavailable: {}", started.ToString());
    reload();  // the first load with logging set up: warnings reach the log
  }
  notifier.Start();
  int rc = Serve(se, options);
  notifier.Stopping();
  watcher.Stop();
  if (metrics) metrics->Stop();
  root.OnSet(nullptr);
  root.SetChangeListener(nullptr);
  fs.cache.Stop();
  fuse_remove_signal_handlers(se);
  fuse_session_unmount(se);
  notifier.Join();  // after the unmount: a stat that was never answered fails now
  fuse_session_destroy(se);  // calls Destroy(): write sessions end
  spdlog::shutdown();
  // A positive value is the signal that ended the loop: a clean stop.
  return rc < 0 ? 1 : 0;
}

}  // namespace kvmfs::fuse
