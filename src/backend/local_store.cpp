// The local directory store and the block-device store: host files, reached
// with stat/realpath/opendir, locked with QEMU's OFD byte locks.
#include <dirent.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cerrno>

#include "backend/image_lock.h"
#include "base/path.h"
#include "kvmfs/store.h"

namespace kvmfs {
namespace {

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};

class LocalLock final : public StoreLock {
 public:
  explicit LocalLock(std::unique_ptr<LockClaim> claim) : claim_(std::move(claim)) {}
  Status Change(LockSet set) override { return claim_->Change(set); }
  LockSet set() const override { return claim_->set(); }

 private:
  const std::unique_ptr<LockClaim> claim_;
};

class LocalStore : public Store {
 public:
  explicit LocalStore(std::string root) : root_(std::move(root)) {}

  std::string_view kind() const override { return "dir"; }
  StoreCaps caps() const override {
    StoreCaps caps;
    caps.links = true;
    return caps;
  }
  const std::string& root() const override { return root_; }

  Result<std::vector<StoreEntry>> List(const std::string& dir) override {
    std::unique_ptr<DIR, DirCloser> d(::opendir(dir.c_str()));
    if (!d) return Status::FromErrno(errno, dir);
    std::vector<StoreEntry> entries;
    errno = 0;
    while (struct dirent* e = ::readdir(d.get())) {
      std::string name = e->d_name;
      if (name != "." && name != "..") entries.push_back({std::move(name), std::nullopt});
    }
    return entries;
  }

  Result<struct stat> Stat(const std::string& path, bool follow) override {
    struct stat st;
    if ((follow ? ::stat(path.c_str(), &st) : ::lstat(path.c_str(), &st)) != 0)
      return Status::FromErrno(errno, path);
    return st;
  }

  Result<std::string> Canonical(const std::string& path) override { return CanonicalPath(path); }

  Result<std::unique_ptr<Backend>> Open(const std::string& path, bool writable) override {
    return OpenLocalFile(path, writable);
  }

  Result<std::unique_ptr<StoreLock>> Lock(const std::string& path, LockSet set) override {
    KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<LockClaim> claim, LockClaim::Acquire(path, set));
    return std::unique_ptr<StoreLock>(std::make_unique<LocalLock>(std::move(claim)));
  }

  Result<struct statvfs> StatFs(const std::string& path) override {
    struct statvfs sv;
    if (::statvfs(path.c_str(), &sv) != 0) return Status::FromErrno(errno, path);
    return sv;
  }

 private:
  const std::string root_;
};

class BlockDeviceStore final : public LocalStore {
 public:
  using LocalStore::LocalStore;

  std::string_view kind() const override { return "blockdev"; }
  StoreCaps caps() const override {
    StoreCaps caps = LocalStore::caps();
    caps.every_file_an_image = true;
    return caps;
  }

  // LVM's /dev/VG/lv are symlinks to /dev/dm-N: followed wherever they go,
  // but only block devices are listed.
  Result<std::vector<StoreEntry>> List(const std::string& dir) override {
    KVMFS_ASSIGN_OR_RETURN(std::vector<StoreEntry> all, LocalStore::List(dir));
    std::vector<StoreEntry> devices;
    for (StoreEntry& e : all) {
      auto st = Stat(dir + "/" + e.name, true);
      if (st.ok() && S_ISBLK(st->st_mode)) devices.push_back(std::move(e));
    }
    return devices;
  }

  Result<std::unique_ptr<Backend>> Open(const std::string& path, bool writable) override {
    KVMFS_ASSIGN_OR_RETURN(struct stat st, Stat(path, true));
    if (!S_ISBLK(st.st_mode)) return Status::InvalidArgument(path + ": not a block device");
    return LocalStore::Open(path, writable);
  }
};

}  // namespace

std::shared_ptr<Store> NewLocalStore(std::string root) {
  return std::make_shared<LocalStore>(std::move(root));
}

std::shared_ptr<Store> NewBlockDeviceStore(std::string root) {
  return std::make_shared<BlockDeviceStore>(std::move(root));
}

const std::shared_ptr<Store>& HostStore() {
  static const auto* store = new std::shared_ptr<Store>(NewLocalStore("/"));  // never destroyed
  return *store;
}

}  // namespace kvmfs
