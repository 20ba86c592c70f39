// The YAML configuration of a kvmfs mount (CONTRACT.md "Configuration (YAML)",
// kvmfs.yaml(5)): pools, keys, per-distro path layouts, os-release.
//
// Loading checks every key: unknown keys, wrong types and bad values are
// errors whose message names the file, the 1-based line and the key, and says
// what was expected:
//   /etc/kvmfs.yaml:7: pools[1].readonly: expected true or false, got "maybe"
// Relative paths in the file are relative to the directory of the file.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kvmfs/status.h"

namespace kvmfs::config {

enum class Backend { kDir, kBlockdev, kRbd, kS3 };

// backend: rbd (kvmfs.yaml(5)): where the RBD images are and who reads them.
struct RbdPoolConfig {
  std::string ceph_conf;  // absolute; empty: librados' default search
  std::string client;     // cephx id without "client."; empty: admin
  std::string keyring;    // absolute; empty: the one ceph.conf names
  std::string pool;       // RADOS pool
  std::string ns;         // RBD namespace (`namespace:`); empty: the default one
};

// `compress:` of a pool: qcow2 writes stored compressed (kvmfs.yaml(5)).
enum class Compress { kNone, kZlib, kZstd };

struct PoolConfig {
  std::string name;    // the folder under the mount point
  std::string path;    // set when the pool has `path` (never for backend: rbd)
  std::string layout;  // set when the pool has `layout`
  Backend backend = Backend::kDir;
  RbdPoolConfig rbd;   // backend: rbd
  // A pool whose files are not local (rbd, s3): its backend's name and keys
  // for the store registry (kvmfs/store.h OpenStore, StoreConfig::options):
  // files made absolute, sizes in bytes, booleans "true"/"false". Empty
  // store_backend: a local directory (dir, blockdev).
  std::string store_backend;
  std::map<std::string, std::string> store_options;
  bool readonly = false;
  Compress compress = Compress::kNone;
  std::vector<std::string> backing_roots;  // as written, made absolute
  std::vector<std::string> extensions;     // image extensions ("qcow2"), empty: the top-level list
  // Files made through the tree (mkdir NAME.qcow2, ln -s): create_mode (an
  // octal mode, default 0600), create_owner / create_group (a name or a
  // number, resolved when the config is read; unset: the folder's).
  unsigned create_mode = 0600;
  std::optional<unsigned> create_uid;
  std::optional<unsigned> create_gid;
  int line = 0;                            // where the pool starts (1-based)
};

struct KeyConfig {
  std::string match;  // glob against the image's path inside its pool
  std::string file;   // the passphrase file (absolute)
  int line = 0;
  std::string source;  // the YAML file this entry was read from
};

// LAYOUT -> (os-release ID or "default" -> path template).
struct Layout {
  std::map<std::string, std::string> templates;
  std::map<std::string, int> lines;  // line of each template
};

// metrics: (kvmfs.yaml(5) METRICS); -o metrics=, metrics_file=, ... win.
// Read at mount time only (a SIGHUP reload does not move the endpoint).
struct MetricsConfig {
  std::string listen;             // ADDR:PORT of /metrics ("" none)
  std::string file;               // textfile collector file, absolute ("" none)
  double interval = 0;            // seconds between file writes (0: default)
  size_t max_images = 0;          // cap of (pool, image) series (0: default)
  double capacity_interval = 0;   // seconds between pool capacity scans (0: default)
};

struct Config {
  std::string file;  // the config file, as given
  std::vector<PoolConfig> pools;
  std::vector<KeyConfig> keys;
  std::map<std::string, Layout> layouts;
  std::string os_release = "/etc/os-release";
  std::vector<std::string> extensions;  // image extensions without the dot
  MetricsConfig metrics;
};

// The default image extensions: qcow2 qcow img raw vdi vmdk vhd vhdx iso.
const std::vector<std::string>& DefaultExtensions();

// Parses config text; `file` names it in messages and anchors relative paths.
// Errors: kInvalidArgument "FILE:LINE: KEY: what was expected". Checks that
// every key file (and an S3 pool's credentials and ca_file) exists and is
// readable.
Result<Config> ParseConfig(const std::string& text, const std::string& file);

// Reads and parses `path`. Errors as ParseConfig, plus "PATH: <strerror>".
Result<Config> LoadConfig(const std::string& path);

// A keys file (-o keys=FILE): YAML holding only a `keys:` list, as in a
// config. Errors as ParseConfig ("FILE:LINE: keys[0].file: ...").
Result<std::vector<KeyConfig>> ParseKeys(const std::string& text, const std::string& file);
Result<std::vector<KeyConfig>> LoadKeys(const std::string& path);

// os-release fields (KEY=value, quotes stripped), keys lower-cased.
using OsRelease = std::map<std::string, std::string>;
OsRelease ParseOsRelease(const std::string& text);
Result<OsRelease> LoadOsRelease(const std::string& path);

// The path of `pool`: its `path`, or its layout's template for the os-release
// ID (then each ID_LIKE, then "default") with every {field} replaced by the
// lower-cased os-release field. Errors (kInvalidArgument, naming file and
// line): no template matches, an unknown {field}.
Result<std::string> PoolPath(const Config& config, const PoolConfig& pool, const OsRelease& os);

}  // namespace kvmfs::config
