// The store registry: the one place that names the stores of pools whose
// files are not local (kvmfs.yaml(5) `backend: rbd`, `backend: s3`). The pool
// layer asks OpenStore() with the pool's backend name and keys, and never
// names a backend itself.
#include <string_view>

#include "backend/rbd/rbd_store.h"
#include "backend/s3/s3_store.h"
#include "kvmfs/store.h"

namespace kvmfs {
namespace {

std::string Option(const StoreConfig& config, const char* key) {
  auto it = config.options.find(key);
  return it == config.options.end() ? std::string() : it->second;
}

Result<std::shared_ptr<Store>> OpenRbd(const StoreConfig& config) {
  rbd::RbdConfig rc{Option(config, "ceph_conf"), Option(config, "client"), Option(config, "keyring"),
                    Option(config, "pool"), Option(config, "namespace")};
  return rbd::NewRbdStore(rc);
}

struct Registered {
  std::string_view backend;
  Result<std::shared_ptr<Store>> (*open)(const StoreConfig&);
};

constexpr Registered kStores[] = {
    {"rbd", OpenRbd},
    {"s3", s3::OpenS3Store},
};

}  // namespace

Result<std::shared_ptr<Store>> OpenStore(const StoreConfig& config) {
  for (const Registered& r : kStores)
    if (r.backend == config.backend) return r.open(config);
  return Status::NotSupported("pool " + config.pool + ": backend " + config.backend +
                              " has no store in this build");
}

}  // namespace kvmfs
