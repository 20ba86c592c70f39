// kvmfs: mount a directory of KVM/QEMU images as raw disks.
#include <fuse.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

#include "fuse/options.h"
#include "fuse/session.h"
#include "pool/file_key.h"
#include "pool/namespace.h"

#ifndef KVMFS_VERSION
#define KVMFS_VERSION "unknown"
#endif

namespace {

int Fail(const std::string& reason) {
  std::fprintf(stderr, "kvmfs: %s\n", reason.c_str());
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
  char arg0[] = "kvmfs";
  char* argv[] = {arg0, nullptr};
  fuse_args args = FUSE_ARGS_INIT(1, argv);
  fuse_lib_help(&args);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvmfs;
  auto parsed = fuse::ParseCommandLine(argc, argv);
  if (!parsed.ok()) return Fail(parsed.status().message());
  fuse::Options options = std::move(parsed).value();
  if (options.help) {
    fuse::PrintUsage();
    PrintFuseHelp();
    return 0;
  }
  if (options.version) {
    std::printf("kvmfs %s (libfuse %s)\n", KVMFS_VERSION, fuse_pkgversion());
    return 0;
  }
  Status valid = fuse::ValidateOptions(options);
  if (!valid.ok()) return Fail(valid.message());

  RaiseFileLimit();
  pool::NamespaceOptions ns_options;
  ns_options.source = options.source;
  ns_options.backing_roots = options.backing_roots;
  ns_options.uid = ::getuid();
  ns_options.gid = ::getgid();
  if (IsUnder(options.mountpoint, options.source)) ns_options.hidden.push_back(options.mountpoint);
  pool::Namespace ns(std::move(ns_options));
  return fuse::MountAndServe(options, ns);
}
