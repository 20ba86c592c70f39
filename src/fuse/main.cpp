// kvmfs: mount a directory of KVM/QEMU images, or the pools of a YAML config,
// as raw disks.
#include <fuse_lowlevel.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

#include "config/config.h"
#include "format/qcow2/options.h"
#include "fuse/options.h"
#include "fuse/session.h"
#include "fuse/systemd.h"
#include "pool/file_key.h"
#include "pool/namespace.h"
#include "pool/pool_set.h"

#ifndef KVMFS_VERSION
#define KVMFS_VERSION "unknown"
#endif

namespace {

using namespace kvmfs;

int Fail(const std::string& reason) {
  // Under systemd the journal files it as an error (<3>), not as info.
  std::fprintf(stderr, "%skvmfs: %s\n", kvmfs::fuse::StderrIsJournal() ? "<3>" : "", reason.c_str());
  return 1;
}

// Every opened image holds descriptors for its whole chain: use what the
// hard limit allows.
void RaiseFileLimit() {
  struct rlimit rl;
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

void PrintFuseHelp() {
  std::printf("FUSE options:\n");
  std::fflush(stdout);
  fuse_lowlevel_help();
}

// The keys of -o keys=FILE (none without it).
Result<std::vector<config::KeyConfig>> LoadKeysOption(const kvmfs::fuse::Options& options) {
  if (options.keys.empty()) return std::vector<config::KeyConfig>{};
  return config::LoadKeys(options.keys);
}

// A directory SOURCE: one namespace mirrored at the root, with the keys of
// -o keys=FILE (read again by every call: SIGHUP).
Result<std::shared_ptr<pool::PoolSet>> DirectoryPools(const kvmfs::fuse::Options& options) {
  KVMFS_ASSIGN_OR_RETURN(std::vector<config::KeyConfig> keys, LoadKeysOption(options));
  pool::NamespaceOptions ns_options;
  ns_options.source = options.source;
  ns_options.backing_roots = options.backing_roots;
  ns_options.uid = ::getuid();
  ns_options.gid = ::getgid();
  ns_options.readonly = options.read_only;
  ns_options.force_share = options.force_share;
  ns_options.keys = pool::KeyRules(options.keys, keys);
  if (IsUnder(options.mountpoint, options.source)) ns_options.hidden.push_back(options.mountpoint);
  return std::make_shared<pool::PoolSet>(std::make_shared<pool::Namespace>(std::move(ns_options)));
}

// The metrics of the mount: the -o options, then what the config's
// `metrics:` sets that they leave unset.
kvmfs::fuse::MetricsSettings MetricsFor(const kvmfs::fuse::Options& options,
                                        const config::MetricsConfig& cfg) {
  kvmfs::fuse::MetricsSettings m;
  m.listen = !options.metrics.empty() ? options.metrics : cfg.listen;
  m.file = !options.metrics_file.empty() ? options.metrics_file : cfg.file;
  if (options.metrics_interval > 0)
    m.file_interval = options.metrics_interval;
  else if (cfg.interval > 0)
    m.file_interval = cfg.interval;
  if (options.metrics_max_images > 0)
    m.max_images = options.metrics_max_images;
  else if (cfg.max_images > 0)
    m.max_images = cfg.max_images;
  if (cfg.capacity_interval > 0) m.capacity_interval = cfg.capacity_interval;
  m.version = KVMFS_VERSION;
  return m;
}

// Loads the config and builds its pools. -o backing_root=DIR applies to
// every pool; -o keys=FILE adds its keys after the config's. `metrics`, when
// given, receives the config's metrics: section.
Result<std::shared_ptr<pool::PoolSet>> LoadPools(const kvmfs::fuse::Options& options,
                                                 config::MetricsConfig* metrics = nullptr) {
  KVMFS_ASSIGN_OR_RETURN(config::Config cfg, config::LoadConfig(options.config));
  if (metrics != nullptr) *metrics = cfg.metrics;
  KVMFS_ASSIGN_OR_RETURN(std::vector<config::KeyConfig> extra_keys, LoadKeysOption(options));
  for (config::KeyConfig& k : extra_keys) cfg.keys.push_back(std::move(k));
  for (config::PoolConfig& p : cfg.pools)
    p.backing_roots.insert(p.backing_roots.end(), options.backing_roots.begin(),
                           options.backing_roots.end());
  pool::PoolSetOptions set_options;
  set_options.uid = ::getuid();
  set_options.gid = ::getgid();
  set_options.hidden.push_back(options.mountpoint);
  set_options.readonly = options.read_only;
  set_options.force_share = options.force_share;
  return pool::BuildPoolSet(cfg, set_options);
}

}  // namespace

int main(int argc, char** argv) {
  auto parsed = kvmfs::fuse::ParseCommandLine(argc, argv);
  if (!parsed.ok()) return Fail(parsed.status().message());
  kvmfs::fuse::Options options = std::move(parsed).value();
  if (options.help) {
    kvmfs::fuse::PrintUsage();
    PrintFuseHelp();
    return 0;
  }
  if (options.version) {
    std::printf("kvmfs %s (libfuse %s)\n", KVMFS_VERSION, fuse_pkgversion());
    return 0;
  }
  Status valid = kvmfs::fuse::ValidateOptions(options);
  if (!valid.ok()) return Fail(valid.message());

  Qcow2Options qcow2_options;
  qcow2_options.cache_bytes = options.cache_size;
  SetQcow2DefaultOptions(qcow2_options);

  RaiseFileLimit();
  if (options.config.empty()) {
    // Warnings (key file modes) are logged by the first reload, once
    // logging is set up.
    if (!options.keys.empty()) spdlog::set_level(spdlog::level::off);
    auto pools = DirectoryPools(options);
    if (!pools.ok()) return Fail(pools.status().message());
    pool::PoolRoot root(std::move(pools).value());
    const kvmfs::fuse::MetricsSettings metrics = MetricsFor(options, {});
    if (options.keys.empty()) return kvmfs::fuse::MountAndServe(options, root, nullptr, metrics);
    // SIGHUP re-reads the keys file into the same namespace (the kernel's
    // nodes keep pointing at it): images that failed for want of a key open
    // again at their next use.
    std::shared_ptr<pool::Namespace> ns = root.Get()->root();
    auto reload = [&options, ns] {
      auto keys = LoadKeysOption(options);
      if (!keys.ok()) {
        spdlog::error("keys {}: {}; keeping the previous keys", options.keys, keys.status().message());
        return;
      }
      ns->SetKeys(pool::KeyRules(options.keys, *keys));
      spdlog::info("keys {}: loaded", options.keys);
    };
    return kvmfs::fuse::MountAndServe(options, root, reload, metrics);
  }

  // A YAML config: refuse a bad one before mounting. Warnings (missing pool
  // paths) are logged by the first reload, once logging is set up.
  spdlog::set_level(spdlog::level::off);
  config::MetricsConfig metrics_config;
  auto pools = LoadPools(options, &metrics_config);
  if (!pools.ok()) return Fail(pools.status().message());
  const kvmfs::fuse::MetricsSettings metrics = MetricsFor(options, metrics_config);
  pool::PoolRoot root(std::move(pools).value());
  auto reload = [&options, &root] {
    auto fresh = LoadPools(options);
    if (!fresh.ok()) {
      spdlog::error("config {}: {}; keeping the previous pools", options.config,
                    fresh.status().message());
      return;
    }
    std::string names;
    for (const pool::PoolEntry& p : (*fresh)->pools())
      names += (names.empty() ? "" : ", ") + p.name;
    root.Set(std::move(fresh).value());
    spdlog::info("config {}: pools {}", options.config, names.empty() ? "(none)" : names);
  };
  return kvmfs::fuse::MountAndServe(options, root, reload, metrics);
}
