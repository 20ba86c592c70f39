// Defaults of the Store interface.
#include "kvmfs/store.h"

#include "base/path.h"

namespace kvmfs {

Result<std::string> Store::Resolve(const std::string& base, const std::string& name) {
  if (name.empty()) return Status::NotFound(base + ": empty file name");
  return Canonical(name[0] == '/' ? name : DirName(base) + "/" + name);
}

Result<std::vector<StoreSnapshot>> Store::Snapshots(const std::string& /*path*/) {
  return std::vector<StoreSnapshot>{};
}

Result<std::unique_ptr<Backend>> Store::OpenSnapshot(const std::string& path, const std::string& id) {
  return Status::NotSupported(path + ": snapshot " + id + ": the " + std::string(kind()) +
                              " store keeps no snapshots");
}

Result<SnapshotInfo> Store::CreateSnapshot(const std::string& path, const std::string& /*name*/) {
  return Status::NotSupported(path + ": the " + std::string(kind()) + " store keeps no snapshots");
}

Status Store::DeleteSnapshot(const std::string& path, const std::string& /*id*/) {
  return Status::NotSupported(path + ": the " + std::string(kind()) + " store keeps no snapshots");
}

Status Store::PrepareWrite(const std::string& path, const std::string& /*format*/,
                           uint64_t /*virtual_size*/) {
  return Status::NotSupported(path + ": the " + std::string(kind()) + " store writes files in place");
}

}  // namespace kvmfs
