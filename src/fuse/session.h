// Mounting and serving: fuse_new, fuse_mount, daemonize, multi-threaded loop.
#pragma once

#include <functional>

#include "fuse/metrics.h"
#include "fuse/options.h"
#include "pool/pool_set.h"

namespace kvmfs::fuse {

// Mounts the pools of `root` at options.mountpoint (read-only), detaches
// unless options.foreground (returning in the parent once the mount is
// ready), and serves until unmounted or signalled (SIGINT/SIGTERM unmount
// cleanly). Without `reload`, SIGHUP unmounts too; with it, `reload` is called
// once when logging is set up and then on every SIGHUP, from a watcher thread
// (never from the signal handler), while the FUSE threads keep serving.
// With `metrics` enabled, the HTTP port is bound and the metrics file written
// before mounting (a port in use fails the mount), and both are served after
// detaching. Under systemd ($NOTIFY_SOCKET) it reports READY=1 once the
// mount answers, STATUS= lines, RELOADING=1/READY=1 around reloads and
// STOPPING=1 when the loop ends (systemd.h).
// Returns the process exit code; failures before mounting print one line
// "kvmfs: <reason>" to stderr and return 1.
int MountAndServe(const Options& options, pool::PoolRoot& root, std::function<void()> reload = nullptr,
                  const MetricsSettings& metrics = {});

// The STATUS= text for systemd: "serving 2 pools (a, b) at MNT; 3 image
// files open, 1 file open through the mount" (a directory SOURCE: "1 pool
// (SOURCE)").
std::string StatusLine(const pool::PoolSet& pools, const std::string& mountpoint);

// The libfuse option string kvmfs always passes first.
std::string BaseFuseOptions(const Options& options);

// Escapes ',' and '\' for a libfuse -o value.
std::string EscapeFuseOption(const std::string& value);

}  // namespace kvmfs::fuse
