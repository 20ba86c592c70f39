#include "fuse/options.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "metrics/server.h"
#include "pool/file_key.h"

namespace kvmfs::fuse {
namespace {

constexpr unsigned kMaxThreadsLimit = 1024;

bool EndsWithCi(const std::string& s, const std::string& suffix) {
  if (s.size() < suffix.size()) return false;
  return std::equal(suffix.rbegin(), suffix.rend(), s.rbegin(),
                    [](char a, char b) { return std::tolower((unsigned char)a) == std::tolower((unsigned char)b); });
}

bool IsYaml(const std::string& path) { return EndsWithCi(path, ".yaml") || EndsWithCi(path, ".yml"); }

// Options mount(8) hands to helpers that mean nothing to a FUSE mount.
bool IsMountOnlyOption(const std::string& opt) {
  static const char* const kIgnored[] = {"defaults", "auto", "noauto", "nofail", "_netdev",
                                         "user",     "nouser", "users", "owner", "comment"};
  for (const char* name : kIgnored)
    if (opt == name || opt.rfind(std::string(name) + "=", 0) == 0) return true;
  return opt.rfind("x-", 0) == 0;
}

Status ApplyOption(const std::string& opt, Options& o) {
  size_t eq = opt.find('=');
  std::string key = opt.substr(0, eq);
  std::string value = eq == std::string::npos ? "" : opt.substr(eq + 1);
  bool has_value = eq != std::string::npos;
  if (key == "backing_root") {
    if (value.empty()) return Status::InvalidArgument("backing_root needs a directory: -o backing_root=DIR");
    o.backing_roots.push_back(value);
  } else if (key == "force_share") {
    if (has_value) return Status::InvalidArgument("force_share takes no value");
    o.force_share = true;
  } else if (key == "no_default_permissions" || key == "default_permissions") {
    // default_permissions is always in force (session.cpp); only the admin's
    // explicit no_default_permissions turns it off (kvmfs(8) warns).
    if (has_value) return Status::InvalidArgument(key + " takes no value");
    o.default_permissions = key == "default_permissions";
  } else if (key == "max_threads") {
    char* end = nullptr;
    errno = 0;
    unsigned long n = std::strtoul(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || errno != 0 || n == 0 || n > kMaxThreadsLimit)
      return Status::InvalidArgument("max_threads must be a number from 1 to " +
                                     std::to_string(kMaxThreadsLimit) + ", not '" + value + "'");
    o.max_threads = static_cast<unsigned>(n);
  } else if (key == "cache_size") {
    KVMFS_ASSIGN_OR_RETURN(o.cache_size, ParseSize("cache_size", value));
    if (o.cache_size == 0)
      return Status::InvalidArgument("cache_size must be more than 0, not '" + value + "'");
  } else if (key == "entry_timeout" || key == "attr_timeout" || key == "negative_timeout") {
    char* end = nullptr;
    errno = 0;
    double t = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0' || errno != 0 || !(t >= 0) || t > 86400)
      return Status::InvalidArgument(key + " must be a number of seconds from 0 to 86400, not '" +
                                     value + "'");
    (key == "entry_timeout" ? o.entry_timeout : key == "attr_timeout" ? o.attr_timeout
                                                                      : o.negative_timeout) = t;
  } else if (key == "config") {
    if (value.empty()) return Status::InvalidArgument("config needs a file: -o config=FILE");
    o.config = value;
  } else if (key == "keys") {
    if (value.empty()) return Status::InvalidArgument("keys needs a file: -o keys=FILE");
    o.keys = value;
  } else if (key == "metrics") {
    if (value.empty()) return Status::InvalidArgument("metrics needs an address: -o metrics=127.0.0.1:9101");
    o.metrics = value;
  } else if (key == "metrics_file") {
    if (value.empty()) return Status::InvalidArgument("metrics_file needs a path: -o metrics_file=PATH");
    o.metrics_file = value;
  } else if (key == "metrics_interval") {
    char* end = nullptr;
    errno = 0;
    double t = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0' || errno != 0 || !(t >= 0.1) || t > 86400)
      return Status::InvalidArgument("metrics_interval must be a number of seconds from 0.1 to 86400, not '" +
                                     value + "'");
    o.metrics_interval = t;
  } else if (key == "metrics_max_images") {
    char* end = nullptr;
    errno = 0;
    unsigned long n = std::strtoul(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || errno != 0 || n == 0 || n > 100000)
      return Status::InvalidArgument("metrics_max_images must be a number from 1 to 100000, not '" +
                                     value + "'");
    o.metrics_max_images = n;
  } else if (key == "log_level") {
    static const char* const kLevels[] = {"trace", "debug", "info", "warn", "error"};
    if (std::none_of(std::begin(kLevels), std::end(kLevels), [&](const char* l) { return value == l; }))
      return Status::InvalidArgument("log_level must be trace, debug, info, warn or error, not '" +
                                     value + "'");
    o.log_level = value;
  } else if (opt == "ro") {
    o.read_only = true;
    if (std::find(o.fuse_options.begin(), o.fuse_options.end(), "ro") == o.fuse_options.end())
      o.fuse_options.push_back("ro");
  } else if (opt == "rw") {
    // Read-write is the default; a later "rw" undoes an earlier "ro" (mount(8) order).
    o.read_only = false;
    o.fuse_options.erase(std::remove(o.fuse_options.begin(), o.fuse_options.end(), "ro"),
                         o.fuse_options.end());
  } else if (IsMountOnlyOption(opt)) {
  } else if (!opt.empty()) {
    o.fuse_options.push_back(opt);
  }
  return Status::OK();
}

// Makes `path` canonical after checking that it exists and is (want_dir) or
// is not a directory.
Status CheckPath(const std::string& what, std::string& path, bool want_dir) {
  auto canonical = CanonicalPath(path);
  if (!canonical.ok()) {
    int err = canonical.status().ToErrno();
    return Status::InvalidArgument(what + " " + path + ": " + std::strerror(err));
  }
  struct stat st;
  if (::stat(canonical->c_str(), &st) != 0)
    return Status::InvalidArgument(what + " " + path + ": " + std::strerror(errno));
  if (want_dir && !S_ISDIR(st.st_mode))
    return Status::InvalidArgument(what + " " + path + ": not a directory");
  if (!want_dir && S_ISDIR(st.st_mode))
    return Status::InvalidArgument(what + " " + path + ": is a directory");
  path = *canonical;
  return Status::OK();
}

Status CheckFile(const std::string& what, std::string& path) { return CheckPath(what, path, false); }
Status CheckDir(const std::string& what, std::string& path) { return CheckPath(what, path, true); }

}  // namespace

Result<uint64_t> ParseSize(const std::string& what, const std::string& value) {
  auto bad = [&] {
    return Status::InvalidArgument(what + " must be a size in bytes, or with a K, M or G suffix (" +
                                   what + "=64M), not '" + value + "'");
  };
  size_t digits = 0;
  while (digits < value.size() && std::isdigit(static_cast<unsigned char>(value[digits]))) ++digits;
  if (digits == 0 || digits > 19) return bad();
  const uint64_t n = std::stoull(value.substr(0, digits));
  std::string suffix = value.substr(digits);
  for (char& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  unsigned shift;
  if (suffix.empty() || suffix == "B")
    shift = 0;
  else if (suffix == "K" || suffix == "KB" || suffix == "KIB")
    shift = 10;
  else if (suffix == "M" || suffix == "MB" || suffix == "MIB")
    shift = 20;
  else if (suffix == "G" || suffix == "GB" || suffix == "GIB")
    shift = 30;
  else
    return bad();
  if (n > (UINT64_MAX >> shift)) return bad();
  return n << shift;
}

std::vector<std::string> SplitOptionList(const std::string& list) {
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i] == '\\' && i + 1 < list.size()) {
      cur += list[++i];
    } else if (list[i] == ',') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += list[i];
    }
  }
  out.push_back(cur);
  return out;
}

Result<Options> ParseCommandLine(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (options_done || arg.empty() || arg[0] != '-' || arg == "-") {
      positional.push_back(arg);
    } else if (arg == "--") {
      options_done = true;
    } else if (arg == "-f") {
      o.foreground = true;
    } else if (arg == "-d") {
      o.debug = true;
    } else if (arg == "-h" || arg == "--help") {
      o.help = true;
    } else if (arg == "-V" || arg == "--version") {
      o.version = true;
    } else if (arg == "-o" || arg.rfind("-o", 0) == 0) {
      std::string list;
      if (arg == "-o") {
        if (i + 1 >= argc) return Status::InvalidArgument("-o needs an argument");
        list = argv[++i];
      } else {
        list = arg.substr(2);
      }
      for (const std::string& opt : SplitOptionList(list)) KVMFS_RETURN_IF_ERROR(ApplyOption(opt, o));
    } else {
      return Status::InvalidArgument("unknown option " + arg + " (see kvmfs --help)");
    }
  }
  if (o.help || o.version) return o;
  if (positional.size() != 2)
    return Status::InvalidArgument(
        "usage: kvmfs [-f] [-d] [-o OPT[,OPT...]] SOURCE MOUNTPOINT (see kvmfs --help)");
  o.source = positional[0];
  o.mountpoint = positional[1];
  return o;
}

Status ValidateOptions(Options& o) {
  // A YAML SOURCE is the config; with -o config=FILE, SOURCE is only a label
  // (the fsname shown by mount(8)), as for other FUSE file systems.
  if (o.config.empty() && IsYaml(o.source)) o.config = o.source;
  if (!o.config.empty()) {
    // Canonical: the daemon changes to "/" and re-reads the file on SIGHUP.
    KVMFS_RETURN_IF_ERROR(CheckFile("config", o.config));
  } else {
    KVMFS_RETURN_IF_ERROR(CheckDir("source", o.source));
  }
  KVMFS_RETURN_IF_ERROR(CheckDir("mount point", o.mountpoint));
  // Canonical: re-read on SIGHUP after the daemon changed to "/".
  if (!o.keys.empty()) KVMFS_RETURN_IF_ERROR(CheckFile("keys", o.keys));
  for (std::string& root : o.backing_roots) KVMFS_RETURN_IF_ERROR(CheckDir("backing_root", root));
  if (!o.metrics.empty()) {
    auto address = metrics::ParseListenAddress(o.metrics);
    if (!address.ok()) return address.status();
  }
  // Absolute: the daemon writes it after changing to "/".
  if (!o.metrics_file.empty() && o.metrics_file[0] != '/') {
    char cwd[4096];
    if (::getcwd(cwd, sizeof cwd) == nullptr) return Status::InvalidArgument("metrics_file: getcwd failed");
    o.metrics_file = std::string(cwd) + "/" + o.metrics_file;
  }
  return Status::OK();
}

void PrintUsage() {
  std::printf(
      "usage: kvmfs [-f] [-d] [-o OPT[,OPT...]] SOURCE MOUNTPOINT\n"
      "\n"
      "Shows the KVM/QEMU images under the directory SOURCE as raw disks at MOUNTPOINT,\n"
      "read-write unless -o ro. SOURCE may instead be a YAML config (*.yaml, *.yml)\n"
      "whose pools appear as MOUNTPOINT/<pool>/; SIGHUP re-reads it. See kvmfs(8),\n"
      "kvmfs.yaml(5).\n"
      "\n"
      "options:\n"
      "    -f                     stay in the foreground (log to stderr)\n"
      "    -d                     debug logging (to syslog unless -f)\n"
      "    -h, --help             print this help\n"
      "    -V, --version          print the version\n"
      "    -o backing_root=DIR    backing files may also live under DIR (repeatable;\n"
      "                           with a config: for every pool)\n"
      "    -o force_share         read images other programs hold write locks on\n"
      "                           (as qemu-img -U); never for writing\n"
      "    -o max_threads=N       FUSE worker threads (default 16)\n"
      "    -o cache_size=SIZE     qcow2 metadata (L2 tables, decompressed clusters)\n"
      "                           cached by all images together (default 64M)\n"
      "    -o log_level=LEVEL     trace, debug (one line per FUSE request), info\n"
      "                           (default), warn or error; trace also dumps the\n"
      "                           FUSE protocol\n"
      "    -o entry_timeout=T, attr_timeout=T, negative_timeout=T\n"
      "                           seconds the kernel trusts names, attributes and\n"
      "                           absent names that can change (default 1)\n"
      "    -o config=FILE         YAML configuration; SOURCE is then only a label\n"
      "    -o keys=FILE           passphrases of encrypted images: a YAML file with\n"
      "                           a keys: list (as in kvmfs.yaml(5)); re-read on SIGHUP\n"
      "    -o no_default_permissions\n"
      "                           let the kernel skip permission checks (with\n"
      "                           allow_other every user may then read every disk)\n"
      "    -o metrics=ADDR:PORT   serve Prometheus metrics at http://ADDR:PORT/metrics\n"
      "                           (ADDR defaults to 127.0.0.1)\n"
      "    -o metrics_file=PATH   write them to PATH (atomically) every\n"
      "                           metrics_interval=SECONDS (default 15)\n"
      "    -o metrics_max_images=N  (pool, image) series kept (default 500)\n"
      "    -o ro, allow_other, max_read=N, ...\n"
      "                           passed to FUSE (see below); ro makes every pool read-only\n"
      "\n");
}

}  // namespace kvmfs::fuse
