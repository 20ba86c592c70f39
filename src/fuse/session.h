// Mounting and serving: fuse_new, fuse_mount, daemonize, multi-threaded loop.
#pragma once

#include "fuse/options.h"
#include "pool/namespace.h"

namespace kvmfs::fuse {

// Mounts `ns` at options.mountpoint (read-only), detaches unless
// options.foreground (returning in the parent once the mount is ready), and
// serves until unmounted or signalled (SIGINT/SIGTERM/SIGHUP unmount cleanly).
// Returns the process exit code; failures before mounting print one line
// "kvmfs: <reason>" to stderr and return 1.
int MountAndServe(const Options& options, pool::Namespace& ns);

// The libfuse option string kvmfs always passes first.
std::string BaseFuseOptions(const Options& options);

// Escapes ',' and '\' for a libfuse -o value.
std::string EscapeFuseOption(const std::string& value);

}  // namespace kvmfs::fuse
