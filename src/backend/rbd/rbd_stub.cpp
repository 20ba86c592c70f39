// backend: rbd in a build without librbd/librados.
#include "backend/rbd/rbd_store.h"

namespace kvmfs::rbd {

Result<std::shared_ptr<Store>> NewRbdStore(const RbdConfig& config) {
  return Status::NotSupported("rbd pool " + config.pool +
                              ": kvmfs was built without librbd (install librbd-dev and librados-dev, "
                              "then rebuild)");
}

bool RbdAvailable() { return false; }

}  // namespace kvmfs::rbd
