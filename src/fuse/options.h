// The kvmfs command line:
//   kvmfs [-f] [-d] [-o OPT[,OPT...]] SOURCE MOUNTPOINT
// Options may also follow the positional arguments, as mount helpers pass them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvmfs/status.h"

namespace kvmfs::fuse {

struct Options {
  bool foreground = false;  // -f
  bool debug = false;       // -d: debug logging (not libfuse's protocol dump)
  bool help = false;        // -h, --help
  bool version = false;     // -V, --version
  std::string source;
  std::string mountpoint;
  // Our own -o options.
  std::vector<std::string> backing_roots;  // backing_root=DIR, repeatable
  bool force_share = false;                // force_share: read without refusing writers (qemu-img -U)
  bool read_only = false;                  // ro (also passed to libfuse)
  unsigned max_threads = 16;               // max_threads=N
  uint64_t cache_size = 64ull << 20;       // cache_size=SIZE: qcow2 metadata cache, whole process
  std::string config;                      // config=FILE, or a YAML SOURCE (canonical after validation)
  std::string log_level;                   // log_level=trace|debug|info|warn|error
  // entry_timeout=T, attr_timeout=T, negative_timeout=T (seconds): how long
  // the kernel trusts names, attributes and absent names of nodes that can
  // change (kernel_cache.h; immutable nodes are trusted until invalidated).
  double entry_timeout = 1.0;
  double attr_timeout = 1.0;
  double negative_timeout = 1.0;
  std::string keys;                        // keys=FILE: a YAML `keys:` list (canonical after validation)
  // The kernel checks every access against the modes kvmfs shows (which
  // mirror the host's): on unless no_default_permissions (kvmfs(8) PERMISSIONS).
  bool default_permissions = true;
  // Prometheus metrics (kvmfs(8) METRICS); a config's `metrics:` fills what
  // these leave unset.
  std::string metrics;                     // metrics=ADDR:PORT: serve /metrics over HTTP
  std::string metrics_file;                // metrics_file=PATH: write them to a file (textfile collector)
  double metrics_interval = 0;             // metrics_interval=SECONDS between file writes (0: default 15)
  size_t metrics_max_images = 0;           // metrics_max_images=N (0: default 500)
  // Everything else given with -o, for libfuse (ro, allow_other, fsname, ...).
  std::vector<std::string> fuse_options;
};

// Parses argv. Errors (kInvalidArgument) carry the one-line reason.
Result<Options> ParseCommandLine(int argc, char** argv);

// Checks SOURCE, MOUNTPOINT and backing roots before mounting and makes them
// canonical. Errors carry the one-line reason (without the "kvmfs: " prefix).
Status ValidateOptions(Options& options);

// Parses a size: bytes, or a number with a K, M or G suffix (powers of
// 1024; "KiB", "MB"... also accepted). Errors carry the one-line reason.
Result<uint64_t> ParseSize(const std::string& what, const std::string& value);

// Splits "a,b\,c" into {"a", "b,c"}.
std::vector<std::string> SplitOptionList(const std::string& list);

void PrintUsage();

}  // namespace kvmfs::fuse
