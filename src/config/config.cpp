#include "config/config.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "base/path.h"

namespace kvmfs::config {
namespace {

// Everything a parse needs to report: the file and where it is.
class Parser {
 public:
  explicit Parser(std::string file) : file_(std::move(file)), base_dir_(DirName(file_)) {}

  Status Error(const YAML::Node& node, const std::string& key, const std::string& what) const {
    return Status::InvalidArgument(file_ + ":" + std::to_string(Line(node)) + ": " + key + ": " +
                                   what);
  }
  static int Line(const YAML::Node& node) { return std::max(0, node.Mark().line) + 1; }

  static std::string Got(const YAML::Node& node) {
    if (node.IsNull()) return "nothing";
    if (node.IsScalar()) return "\"" + node.Scalar() + "\"";
    if (node.IsSequence()) return "a list";
    if (node.IsMap()) return "a mapping";
    return "nothing";
  }

  // Node -> string, bool, list of strings.
  Result<std::string> String(const YAML::Node& node, const std::string& key,
                             bool non_empty = true) const {
    if (!node.IsScalar()) return Error(node, key, "expected a string, got " + Got(node));
    if (non_empty && node.Scalar().empty()) return Error(node, key, "expected a non-empty string");
    return node.Scalar();
  }
  Result<bool> Bool(const YAML::Node& node, const std::string& key) const {
    bool value = false;
    if (!node.IsScalar() || !YAML::convert<bool>::decode(node, value))
      return Error(node, key, "expected true or false, got " + Got(node));
    return value;
  }
  Result<std::vector<std::string>> Strings(const YAML::Node& node, const std::string& key) const {
    if (!node.IsSequence()) return Error(node, key, "expected a list of strings, got " + Got(node));
    std::vector<std::string> out;
    for (size_t i = 0; i < node.size(); ++i) {
      KVMFS_ASSIGN_OR_RETURN(std::string s, String(node[i], key + "[" + std::to_string(i) + "]"));
      out.push_back(std::move(s));
    }
    return out;
  }
  std::string Absolute(const std::string& path) const {
    if (path.empty() || path[0] == '/') return path;
    return base_dir_ + "/" + path;
  }
  // Checks the keys of a mapping against `known`.
  Status Keys(const YAML::Node& map, const std::string& where,
              std::initializer_list<const char*> known) const {
    for (auto it = map.begin(); it != map.end(); ++it) {
      std::string k = it->first.IsScalar() ? it->first.Scalar() : "?";
      if (std::none_of(known.begin(), known.end(), [&](const char* n) { return k == n; })) {
        std::string list;
        for (const char* n : known) list += (list.empty() ? "" : ", ") + std::string(n);
        return Error(it->first, where.empty() ? k : where + "." + k,
                     "unknown key (expected one of: " + list + ")");
      }
    }
    return Status::OK();
  }

  Result<std::vector<std::string>> Extensions(const YAML::Node& node,
                                              const std::string& key) const {
    KVMFS_ASSIGN_OR_RETURN(std::vector<std::string> list, Strings(node, key));
    for (std::string& e : list) {
      if (!e.empty() && e[0] == '.') e.erase(0, 1);
      if (e.empty() || e.find('/') != std::string::npos)
        return Error(node, key, "expected file extensions such as qcow2, got \"" + e + "\"");
      std::transform(e.begin(), e.end(), e.begin(),
                     [](unsigned char c) { return std::tolower(c); });
    }
    return list;
  }

  Result<PoolConfig> Pool(const YAML::Node& node, const std::string& key) const {
    if (!node.IsMap())
      return Error(node, key, "expected a mapping with name and path, got " + Got(node));
    KVMFS_RETURN_IF_ERROR(
        Keys(node, key,
             {"name", "path", "layout", "backend", "readonly", "compress", "backing_roots",
              "extensions", "create_mode", "create_owner", "create_group", "ceph_conf", "client",
              "keyring", "pool", "namespace", "endpoint", "region", "bucket", "prefix", "path_style",
              "ca_file", "credentials", "profile", "cache_dir", "cache_max", "overlay_dir"}));
    PoolConfig pool;
    pool.line = Line(node);
    if (!node["name"]) return Error(node, key + ".name", "missing (every pool needs a name)");
    KVMFS_ASSIGN_OR_RETURN(pool.name, String(node["name"], key + ".name"));
    const std::string& n = pool.name;
    if (n == "." || n == ".." || n[0] == '.' || n.find('/') != std::string::npos ||
        n.find('\0') != std::string::npos || n.size() > 255)
      return Error(node["name"], key + ".name",
                   "expected a folder name (no '/', not starting with '.'), got \"" + n + "\"");
    if (node["backend"]) {
      KVMFS_ASSIGN_OR_RETURN(std::string b, String(node["backend"], key + ".backend"));
      if (b == "dir") {
        pool.backend = Backend::kDir;
      } else if (b == "blockdev") {
        pool.backend = Backend::kBlockdev;
      } else if (b == "rbd") {
        pool.backend = Backend::kRbd;
      } else if (b == "s3") {
        pool.backend = Backend::kS3;
      } else {
        return Error(node["backend"], key + ".backend",
                     "expected dir, blockdev, rbd or s3, got \"" + b + "\"");
      }
    }
    if (pool.backend != Backend::kS3) {
      for (const char* k : kS3Keys)
        if (node[k]) return Error(node[k], key + "." + k, "only for backend: s3");
    }
    if (pool.backend == Backend::kRbd) {
      KVMFS_RETURN_IF_ERROR(RbdKeys(node, key, &pool.rbd));
      pool.store_backend = "rbd";
      pool.store_options = {{"ceph_conf", pool.rbd.ceph_conf}, {"client", pool.rbd.client},
                            {"keyring", pool.rbd.keyring}, {"pool", pool.rbd.pool},
                            {"namespace", pool.rbd.ns}};
    } else if (pool.backend == Backend::kS3) {
      for (const char* k : {"ceph_conf", "client", "keyring", "pool", "namespace"})
        if (node[k]) return Error(node[k], key + "." + k, "only for backend: rbd");
      KVMFS_RETURN_IF_ERROR(S3Keys(node, key, &pool));
    } else {
      for (const char* k : {"ceph_conf", "client", "keyring", "pool", "namespace"})
        if (node[k]) return Error(node[k], key + "." + k, "only for backend: rbd");
      if (node["path"] && node["layout"])
        return Error(node["layout"], key + ".layout", "a pool has either path or layout, not both");
      if (node["path"]) {
        KVMFS_ASSIGN_OR_RETURN(pool.path, String(node["path"], key + ".path"));
        pool.path = Absolute(pool.path);
      } else if (node["layout"]) {
        KVMFS_ASSIGN_OR_RETURN(pool.layout, String(node["layout"], key + ".layout"));
      } else {
        return Error(node, key, "missing path or layout (where the pool's images are)");
      }
    }
    if (node["readonly"]) {
      KVMFS_ASSIGN_OR_RETURN(pool.readonly, Bool(node["readonly"], key + ".readonly"));
    }
    if (node["compress"]) {
      KVMFS_ASSIGN_OR_RETURN(std::string c, String(node["compress"], key + ".compress"));
      if (c == "none") {
        pool.compress = Compress::kNone;
      } else if (c == "zlib") {
        pool.compress = Compress::kZlib;
      } else if (c == "zstd") {
        pool.compress = Compress::kZstd;
      } else {
        return Error(node["compress"], key + ".compress",
                     "expected none, zlib or zstd, got \"" + c + "\"");
      }
    }
    if (node["backing_roots"]) {
      KVMFS_ASSIGN_OR_RETURN(pool.backing_roots,
                             Strings(node["backing_roots"], key + ".backing_roots"));
      for (std::string& r : pool.backing_roots) r = Absolute(r);
    }
    if (node["extensions"]) {
      KVMFS_ASSIGN_OR_RETURN(pool.extensions, Extensions(node["extensions"], key + ".extensions"));
    }
    KVMFS_RETURN_IF_ERROR(CreateRules(node, key, pool));
    return pool;
  }

  // The keys of a backend: rbd pool (kvmfs.yaml(5)): pool is required, the
  // files must be readable, path and layout make no sense.
  Status RbdKeys(const YAML::Node& node, const std::string& key, RbdPoolConfig* rbd) const {
    for (const char* k : {"path", "layout"})
      if (node[k]) return Error(node[k], key + "." + k, "an rbd pool has no " + std::string(k) + " (its images are in pool:)");
    if (!node["pool"]) return Error(node, key + ".pool", "missing (the RADOS pool of the RBD images)");
    KVMFS_ASSIGN_OR_RETURN(rbd->pool, String(node["pool"], key + ".pool"));
    if (node["namespace"]) {
      KVMFS_ASSIGN_OR_RETURN(rbd->ns, String(node["namespace"], key + ".namespace"));
    }
    if (node["client"]) {
      KVMFS_ASSIGN_OR_RETURN(rbd->client, String(node["client"], key + ".client"));
      if (rbd->client.rfind("client.", 0) == 0) rbd->client.erase(0, 7);
    }
    for (const char* k : {"pool", "namespace", "client"}) {
      const std::string& v = k[0] == 'p' ? rbd->pool : k[0] == 'n' ? rbd->ns : rbd->client;
      if (v.find_first_of("/@:") != std::string::npos || v.find('\0') != std::string::npos)
        return Error(node[k], key + "." + k, "expected a name without '/', '@' or ':', got \"" + v + "\"");
    }
    for (const char* k : {"ceph_conf", "keyring"}) {
      if (!node[k]) continue;
      KVMFS_ASSIGN_OR_RETURN(std::string f, String(node[k], key + "." + k));
      f = Absolute(f);
      if (::access(f.c_str(), R_OK) != 0)
        return Error(node[k], key + "." + k, "expected a readable file, " + f + ": " + std::strerror(errno));
      (k[0] == 'c' ? rbd->ceph_conf : rbd->keyring) = f;
    }
    return Status::OK();
  }

  static constexpr const char* kS3Keys[] = {"endpoint", "region", "bucket", "prefix",
                                            "path_style", "ca_file", "credentials", "profile",
                                            "cache_dir", "cache_max", "overlay_dir"};

  // "4096", "512M", "10GiB": bytes (K, M, G, T are powers of 1024).
  Result<uint64_t> Size(const YAML::Node& node, const std::string& key) const {
    KVMFS_ASSIGN_OR_RETURN(std::string v, String(node, key));
    size_t digits = std::min(v.find_first_not_of("0123456789"), v.size());
    std::string unit = v.substr(digits);
    static const std::pair<const char*, int> kUnits[] = {
        {"", 0}, {"B", 0}, {"K", 10}, {"KiB", 10}, {"M", 20}, {"MiB", 20},
        {"G", 30}, {"GiB", 30}, {"T", 40}, {"TiB", 40}};
    for (const auto& [name, shift] : kUnits) {
      if (unit != name || digits == 0 || digits > 12) continue;
      return std::stoull(v.substr(0, digits)) << shift;
    }
    return Error(node, key, "expected a size such as 4096, 512M or 10G, got \"" + v + "\"");
  }

  // The keys of a backend: s3 pool (kvmfs.yaml(5)): bucket is required,
  // the files must be readable, the folders absolute.
  Status S3Keys(const YAML::Node& node, const std::string& key, PoolConfig* pool) const {
    for (const char* k : {"path", "layout"})
      if (node[k]) return Error(node[k], key + "." + k, "an s3 pool has no " + std::string(k) + " (its images are in bucket:)");
    if (!node["bucket"]) return Error(node, key + ".bucket", "missing (the bucket of the images)");
    pool->store_backend = "s3";
    auto& o = pool->store_options;
    for (const char* k : {"endpoint", "region", "bucket", "prefix", "profile"}) {
      if (!node[k]) continue;
      KVMFS_ASSIGN_OR_RETURN(o[k], String(node[k], key + "." + k, std::strcmp(k, "prefix") != 0));
      if (o[k].find_first_of(std::string("\0\r\n", 3)) != std::string::npos)
        return Error(node[k], key + "." + k, "expected one line");
    }
    const std::string& ep = o["endpoint"];
    if (!ep.empty() && ep.rfind("http://", 0) != 0 && ep.rfind("https://", 0) != 0)
      return Error(node["endpoint"], key + ".endpoint", "expected http://HOST[:PORT] or https://HOST[:PORT], got \"" + ep + "\"");
    if (node["path_style"]) {
      KVMFS_ASSIGN_OR_RETURN(bool ps, Bool(node["path_style"], key + ".path_style"));
      o["path_style"] = ps ? "true" : "false";
    }
    for (const char* k : {"ca_file", "credentials"}) {
      if (!node[k]) continue;
      KVMFS_ASSIGN_OR_RETURN(std::string f, String(node[k], key + "." + k));
      f = Absolute(f);
      if (::access(f.c_str(), R_OK) != 0)
        return Error(node[k], key + "." + k, "expected a readable file, " + f + ": " + std::strerror(errno));
      o[k] = f;
    }
    for (const char* k : {"cache_dir", "overlay_dir"}) {
      if (!node[k]) continue;
      KVMFS_ASSIGN_OR_RETURN(std::string d, String(node[k], key + "." + k));
      o[k] = Absolute(d);
    }
    if (node["cache_max"]) {
      if (!node["cache_dir"]) return Error(node["cache_max"], key + ".cache_max", "without cache_dir there is no cache to bound");
      KVMFS_ASSIGN_OR_RETURN(uint64_t max, Size(node["cache_max"], key + ".cache_max"));
      if (max < (1u << 20)) return Error(node["cache_max"], key + ".cache_max", "expected at least 1M");
      o["cache_max"] = std::to_string(max);
    }
    return Status::OK();
  }

  // create_mode, create_owner, create_group of a pool.
  Status CreateRules(const YAML::Node& node, const std::string& key, PoolConfig& pool) const {
    if (node["create_mode"]) {
      KVMFS_ASSIGN_OR_RETURN(std::string m, String(node["create_mode"], key + ".create_mode"));
      char* end = nullptr;
      const unsigned long mode = std::strtoul(m.c_str(), &end, 8);
      if (m.empty() || *end != '\0' || mode > 0777 || m.find_first_not_of("01234567") != std::string::npos)
        return Error(node["create_mode"], key + ".create_mode",
                     "expected an octal mode such as 0640, got \"" + m + "\"");
      pool.create_mode = static_cast<unsigned>(mode);
    }
    for (const char* what : {"create_owner", "create_group"}) {
      if (!node[what]) continue;
      const bool user = std::strcmp(what, "create_owner") == 0;
      KVMFS_ASSIGN_OR_RETURN(std::string name, String(node[what], key + "." + what));
      std::optional<unsigned> id;
      if (!name.empty() && name.find_first_not_of("0123456789") == std::string::npos) {
        id = static_cast<unsigned>(std::strtoul(name.c_str(), nullptr, 10));
      } else if (user) {
        if (const struct passwd* pw = ::getpwnam(name.c_str())) id = pw->pw_uid;
      } else if (const struct group* gr = ::getgrnam(name.c_str())) {
        id = gr->gr_gid;
      }
      if (!id)
        return Error(node[what], key + "." + what,
                     std::string("expected a ") + (user ? "user" : "group") + " name or number, got \"" +
                         name + "\" (no such " + (user ? "user" : "group") + ")");
      (user ? pool.create_uid : pool.create_gid) = id;
    }
    return Status::OK();
  }

  Result<KeyConfig> Key(const YAML::Node& node, const std::string& key) const {
    if (!node.IsMap())
      return Error(node, key, "expected a mapping with match and file, got " + Got(node));
    KVMFS_RETURN_IF_ERROR(Keys(node, key, {"match", "file"}));
    KeyConfig k;
    k.line = Line(node);
    k.source = file_;
    if (!node["match"]) return Error(node, key + ".match", "missing (a glob for image paths)");
    if (!node["file"]) return Error(node, key + ".file", "missing (the passphrase file)");
    KVMFS_ASSIGN_OR_RETURN(k.match, String(node["match"], key + ".match"));
    KVMFS_ASSIGN_OR_RETURN(k.file, String(node["file"], key + ".file"));
    k.file = Absolute(k.file);
    if (::access(k.file.c_str(), R_OK) != 0)
      return Error(node["file"], key + ".file",
                   "expected a readable file, " + k.file + ": " + std::strerror(errno));
    return k;
  }

  Result<Config> Parse(const YAML::Node& root) const {
    Config config;
    config.file = file_;
    config.extensions = DefaultExtensions();
    if (root.IsNull()) return Error(root, "pools", "missing (the config has no pools)");
    if (!root.IsMap())
      return Error(root, "(top level)", "expected a mapping with pools, got " + Got(root));
    KVMFS_RETURN_IF_ERROR(
        Keys(root, "", {"pools", "keys", "layouts", "os_release", "extensions", "metrics"}));
    if (root["metrics"]) {
      KVMFS_ASSIGN_OR_RETURN(config.metrics, Metrics(root["metrics"]));
    }
    if (root["os_release"]) {
      KVMFS_ASSIGN_OR_RETURN(config.os_release, String(root["os_release"], "os_release"));
      config.os_release = Absolute(config.os_release);
    }
    if (root["extensions"]) {
      KVMFS_ASSIGN_OR_RETURN(config.extensions, Extensions(root["extensions"], "extensions"));
    }
    if (root["layouts"]) {
      const YAML::Node layouts = root["layouts"];
      if (!layouts.IsMap())
        return Error(layouts, "layouts", "expected a mapping of layouts, got " + Got(layouts));
      for (auto it = layouts.begin(); it != layouts.end(); ++it) {
        KVMFS_ASSIGN_OR_RETURN(std::string name, String(it->first, "layouts"));
        std::string key = "layouts." + name;
        if (!it->second.IsMap())
          return Error(it->second, key,
                       "expected a mapping of os-release ID to path, got " + Got(it->second));
        Layout layout;
        for (auto t = it->second.begin(); t != it->second.end(); ++t) {
          KVMFS_ASSIGN_OR_RETURN(std::string id, String(t->first, key));
          KVMFS_ASSIGN_OR_RETURN(std::string tmpl, String(t->second, key + "." + id));
          layout.templates[id] = Absolute(tmpl);
          layout.lines[id] = Line(t->second);
        }
        config.layouts[name] = std::move(layout);
      }
    }
    if (!root["pools"]) return Error(root, "pools", "missing (the config has no pools)");
    const YAML::Node pools = root["pools"];
    if (!pools.IsSequence())
      return Error(pools, "pools", "expected a list of pools, got " + Got(pools));
    std::set<std::string> names;
    for (size_t i = 0; i < pools.size(); ++i) {
      std::string key = "pools[" + std::to_string(i) + "]";
      KVMFS_ASSIGN_OR_RETURN(PoolConfig pool, Pool(pools[i], key));
      if (!names.insert(pool.name).second)
        return Error(pools[i]["name"], key + ".name",
                     "expected a unique name, \"" + pool.name + "\" is used twice");
      if (!pool.layout.empty() && config.layouts.count(pool.layout) == 0)
        return Error(pools[i]["layout"], key + ".layout",
                     "expected the name of a layout under layouts, got \"" + pool.layout + "\"");
      config.pools.push_back(std::move(pool));
    }
    if (root["keys"]) {
      KVMFS_ASSIGN_OR_RETURN(config.keys, KeyList(root["keys"]));
    }
    return config;
  }

  // A number from `min` to `max` (seconds, counts).
  Result<double> Number(const YAML::Node& node, const std::string& key, double min, double max) const {
    double value = 0;
    if (!node.IsScalar() || !YAML::convert<double>::decode(node, value) || !(value >= min) ||
        value > max)
      return Error(node, key,
                   "expected a number from " + FormatNumber(min) + " to " + FormatNumber(max) +
                       ", got " + Got(node));
    return value;
  }
  static std::string FormatNumber(double v) {
    std::string s = std::to_string(v);
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  }

  Result<MetricsConfig> Metrics(const YAML::Node& node) const {
    if (!node.IsMap()) return Error(node, "metrics", "expected a mapping, got " + Got(node));
    KVMFS_RETURN_IF_ERROR(
        Keys(node, "metrics", {"listen", "file", "interval", "max_images", "capacity_interval"}));
    MetricsConfig m;
    if (node["listen"]) {
      KVMFS_ASSIGN_OR_RETURN(m.listen, String(node["listen"], "metrics.listen"));
    }
    if (node["file"]) {
      KVMFS_ASSIGN_OR_RETURN(m.file, String(node["file"], "metrics.file"));
      m.file = Absolute(m.file);
    }
    if (node["interval"]) {
      KVMFS_ASSIGN_OR_RETURN(m.interval, Number(node["interval"], "metrics.interval", 0.1, 86400));
    }
    if (node["max_images"]) {
      KVMFS_ASSIGN_OR_RETURN(double n, Number(node["max_images"], "metrics.max_images", 1, 100000));
      if (n != static_cast<double>(static_cast<size_t>(n)))
        return Error(node["max_images"], "metrics.max_images", "expected a whole number, got " + Got(node["max_images"]));
      m.max_images = static_cast<size_t>(n);
    }
    if (node["capacity_interval"]) {
      KVMFS_ASSIGN_OR_RETURN(m.capacity_interval,
                             Number(node["capacity_interval"], "metrics.capacity_interval", 1, 86400));
    }
    return m;
  }

  Result<std::vector<KeyConfig>> KeyList(const YAML::Node& keys) const {
    if (!keys.IsSequence())
      return Error(keys, "keys", "expected a list of match/file pairs, got " + Got(keys));
    std::vector<KeyConfig> out;
    for (size_t i = 0; i < keys.size(); ++i) {
      KVMFS_ASSIGN_OR_RETURN(KeyConfig k, Key(keys[i], "keys[" + std::to_string(i) + "]"));
      out.push_back(std::move(k));
    }
    return out;
  }

  // A keys file (-o keys=FILE): a mapping with only `keys:`.
  Result<std::vector<KeyConfig>> KeysOnly(const YAML::Node& root) const {
    if (!root.IsMap() || !root["keys"])
      return Error(root, "keys", "missing (a keys file holds a keys: list)");
    KVMFS_RETURN_IF_ERROR(Keys(root, "", {"keys"}));
    return KeyList(root["keys"]);
  }

 private:
  std::string file_;
  std::string base_dir_;  // relative paths in the file are taken from here
};

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

}  // namespace

const std::vector<std::string>& DefaultExtensions() {
  static const std::vector<std::string> kList = {"qcow2", "qcow", "img",  "raw", "vdi",
                                                 "vmdk",  "vhd",  "vhdx", "iso"};
  return kList;
}

Result<Config> ParseConfig(const std::string& text, const std::string& file) {
  Parser parser(file);
  // yaml-cpp reports errors by exceptions: this is their edge.
  try {
    YAML::Node root = YAML::Load(text);
    return parser.Parse(root);
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument(file + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  } catch (const std::exception& e) {
    return Status::InvalidArgument(file + ": " + e.what());
  }
}

Result<std::vector<KeyConfig>> ParseKeys(const std::string& text, const std::string& file) {
  Parser parser(file);
  try {
    YAML::Node root = YAML::Load(text);
    return parser.KeysOnly(root);
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument(file + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  } catch (const std::exception& e) {
    return Status::InvalidArgument(file + ": " + e.what());
  }
}

Result<std::vector<KeyConfig>> LoadKeys(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::InvalidArgument(path + ": " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return Status::InvalidArgument(path + ": read error");
  return ParseKeys(text.str(), path);
}

Result<Config> LoadConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::InvalidArgument(path + ": " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return Status::InvalidArgument(path + ": read error");
  return ParseConfig(text.str(), path);
}

OsRelease ParseOsRelease(const std::string& text) {
  OsRelease out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#') continue;
    size_t eq = line.find('=', start);
    if (eq == std::string::npos) continue;
    std::string key = Lower(line.substr(start, eq - start));
    std::string value = line.substr(eq + 1);
    while (!value.empty() && (value.back() == '\r' || value.back() == ' ' || value.back() == '\t'))
      value.pop_back();
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
      std::string unescaped;
      for (size_t i = 0; i < value.size(); ++i) {
        if (value[i] == '\\' && i + 1 < value.size()) ++i;
        unescaped += value[i];
      }
      value = unescaped;
    }
    out[key] = value;
  }
  return out;
}

Result<OsRelease> LoadOsRelease(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::InvalidArgument("os_release " + path + ": " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  return ParseOsRelease(text.str());
}

Result<std::string> PoolPath(const Config& config, const PoolConfig& pool, const OsRelease& os) {
  if (pool.layout.empty()) return pool.path;
  auto layout_it = config.layouts.find(pool.layout);
  std::string where = config.file + ":" + std::to_string(pool.line) + ": pool " + pool.name;
  if (layout_it == config.layouts.end())
    return Status::InvalidArgument(where + ": no layout named \"" + pool.layout + "\"");
  const Layout& layout = layout_it->second;
  std::vector<std::string> candidates;
  auto id = os.find("id");
  if (id != os.end()) candidates.push_back(Lower(id->second));
  auto like = os.find("id_like");
  if (like != os.end()) {
    std::istringstream words(like->second);
    std::string w;
    while (words >> w) candidates.push_back(Lower(w));
  }
  candidates.push_back("default");
  std::string chosen;
  for (const std::string& c : candidates)
    if (layout.templates.count(c)) {
      chosen = c;
      break;
    }
  if (chosen.empty())
    return Status::InvalidArgument(where + ": layouts." + pool.layout + ": no entry for ID \"" +
                                   (id == os.end() ? std::string() : id->second) + "\" of " +
                                   config.os_release + " and no default");
  const std::string& tmpl = layout.templates.at(chosen);
  std::string key = config.file + ":" + std::to_string(layout.lines.at(chosen)) + ": layouts." +
                    pool.layout + "." + chosen;
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] != '{') {
      out += tmpl[i];
      continue;
    }
    size_t close = tmpl.find('}', i);
    if (close == std::string::npos)
      return Status::InvalidArgument(key + ": unclosed '{' in \"" + tmpl + "\"");
    std::string field = Lower(tmpl.substr(i + 1, close - i - 1));
    auto value = os.find(field);
    if (value == os.end())
      return Status::InvalidArgument(key + ": unknown os-release field {" + field + "} (not in " +
                                     config.os_release + ")");
    out += Lower(value->second);
    i = close;
  }
  return out;
}

}  // namespace kvmfs::config
