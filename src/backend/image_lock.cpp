// QEMU-compatible image locks: OFD byte locks, as block/file-posix.c takes them.
#include "backend/image_lock.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <map>
#include <mutex>

#include "base/mutex.h"

namespace kvmfs {
namespace {

constexpr off_t kPermLockBase = 100;     // QEMU's RAW_LOCK_PERM_BASE
constexpr off_t kSharedLockBase = 200;   // QEMU's RAW_LOCK_SHARED_BASE
constexpr int kPermBits = 4;             // BLK_PERM_ALL of QEMU >= 6.2

// bdrv_perm_names() of QEMU, for the messages.
const char* PermName(int bit) {
  static const char* const kNames[kPermBits] = {"consistent read", "write", "write unchanged",
                                                "resize"};
  return kNames[bit];
}

int Fcntl(int fd, int cmd, short type, off_t byte, struct flock* out = nullptr) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  fl.l_pid = 0;  // OFD locks require 0
  int rc;
  do {
    rc = ::fcntl(fd, cmd, &fl);
  } while (rc != 0 && errno == EINTR);
  if (out != nullptr) *out = fl;
  return rc;
}

std::string BusyMessage(const std::string& path, const char* what, int bit) {
  return std::string("Failed to get ") + what + "\"" + PermName(bit) +
         "\" lock. Is another process using the image [" + path + "]?";
}

}  // namespace

std::string LockSet::ToString() const {
  std::string out;
  for (int i = 0; i < kPermBits; ++i)
    if (perms & (1u << i)) out += (out.empty() ? "" : ",") + std::to_string(kPermLockBase + i);
  out += "+";
  std::string shared;
  for (int i = 0; i < kPermBits; ++i)
    if (unshared & (1u << i)) shared += (shared.empty() ? "" : ",") + std::to_string(kSharedLockBase + i);
  return out + shared;
}

Result<std::unique_ptr<FileLock>> FileLock::Open(const std::string& path) {
  // Never waits for a FIFO writer (image content chooses these names).
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return Status::FromErrno(errno, path + ": opening for image locks");
  UniqueFd ufd(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, path + ": fstat");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    return Status::InvalidArgument(path + ": not a regular file or block device");
  return std::unique_ptr<FileLock>(new FileLock(path, std::move(ufd)));
}

Status FileLock::LockBytes(LockSet set) {
  LockSet done;
  for (int i = 0; i < kPermBits; ++i) {
    for (bool shared_byte : {false, true}) {
      uint32_t mask = shared_byte ? set.unshared : set.perms;
      if (!(mask & (1u << i))) continue;
      off_t byte = (shared_byte ? kSharedLockBase : kPermLockBase) + i;
      if (Fcntl(fd_.get(), F_OFD_SETLK, F_RDLCK, byte) != 0) {
        int err = errno;
        UnlockBytes(done);
        if (err == EAGAIN || err == EACCES)  // someone holds a write lock on it (virtlockd-like)
          return Status::Busy(BusyMessage(path_, shared_byte ? "shared " : "", i));
        return Status::FromErrno(err, path_ + ": OFD lock on byte " + std::to_string(byte));
      }
      (shared_byte ? done.unshared : done.perms) |= 1u << i;
    }
  }
  return Status::OK();
}

void FileLock::UnlockBytes(LockSet set) {
  for (int i = 0; i < kPermBits; ++i) {
    if (set.perms & (1u << i)) Fcntl(fd_.get(), F_OFD_SETLK, F_UNLCK, kPermLockBase + i);
    if (set.unshared & (1u << i)) Fcntl(fd_.get(), F_OFD_SETLK, F_UNLCK, kSharedLockBase + i);
  }
}

// raw_check_lock_bytes(): a permission may be held only while nobody else
// refuses to share it (byte 200+i free), and refused only while nobody else
// holds it (byte 100+i free). GETLK with a write lock finds the shared read
// locks of every other open file description, our own excluded.
Status FileLock::CheckConflicts(LockSet want, LockSet before) {
  for (int i = 0; i < kPermBits; ++i) {
    const uint32_t bit = 1u << i;
    for (bool shared_byte : {false, true}) {
      uint32_t added = shared_byte ? (want.unshared & ~before.unshared) : (want.perms & ~before.perms);
      if (!(added & bit)) continue;
      // Holding perm i: look at "not shared" byte 200+i; not sharing i: at 100+i.
      off_t probe = (shared_byte ? kPermLockBase : kSharedLockBase) + i;
      struct flock fl;
      if (Fcntl(fd_.get(), F_OFD_GETLK, F_WRLCK, probe, &fl) != 0)
        return Status::FromErrno(errno, path_ + ": testing OFD lock on byte " + std::to_string(probe));
      if (fl.l_type != F_UNLCK) return Status::Busy(BusyMessage(path_, shared_byte ? "shared " : "", i));
    }
  }
  return Status::OK();
}

namespace {
// Conflicts with other programs' locks (kBusy from Set), for the metrics.
std::atomic<uint64_t> g_conflicts{0};

Status Counted(Status st) {
  if (st.code() == Status::Code::kBusy) g_conflicts.fetch_add(1, std::memory_order_relaxed);
  return st;
}
}  // namespace

uint64_t ImageLockConflicts() { return g_conflicts.load(std::memory_order_relaxed); }

Status FileLock::Set(LockSet want) {
  const LockSet before = held_;
  const LockSet grown = before | want;
  const LockSet added{grown.perms & ~before.perms, grown.unshared & ~before.unshared};
  KVMFS_RETURN_IF_ERROR(Counted(LockBytes(added)));
  Status checked = CheckConflicts(want, before);
  if (!checked.ok()) {
    UnlockBytes(added);
    return Counted(checked);
  }
  UnlockBytes({grown.perms & ~want.perms, grown.unshared & ~want.unshared});
  held_ = want;
  return Status::OK();
}

// ---- The process-wide table of claims --------------------------------------

namespace {

struct Entry {
  std::unique_ptr<FileLock> lock;
  std::map<const LockClaim*, LockSet> claims;

  LockSet UnionExcept(const LockClaim* skip) const {
    LockSet u;
    for (const auto& [claim, set] : claims)
      if (claim != skip) u = u | set;
    return u;
  }
};

template <typename K>
struct Table {
  Mutex mu;
  std::map<K, Entry> files GUARDED_BY(mu);
};

}  // namespace

// Keyed by (device, inode): two paths to one file share its locks.
template <typename K>
static Table<K>& Claims() {
  static Table<K>* table = new Table<K>;  // never destroyed: claims may outlive statics
  return *table;
}

Result<std::unique_ptr<LockClaim>> LockClaim::Acquire(const std::string& path, LockSet set) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return Status::FromErrno(errno, path);
  Key key{st.st_dev, st.st_ino};
  std::unique_ptr<LockClaim> claim(new LockClaim(path, key));
  auto& table = Claims<Key>();
  MutexLock lock(table.mu);
  auto it = table.files.find(key);
  bool created = false;
  if (it == table.files.end()) {
    KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<FileLock> fl, FileLock::Open(path));
    it = table.files.emplace(key, Entry{std::move(fl), {}}).first;
    created = true;
  }
  Entry& entry = it->second;
  Status st_set = entry.lock->Set(entry.UnionExcept(nullptr) | set);
  if (!st_set.ok()) {
    if (created) table.files.erase(it);
    return st_set;
  }
  entry.claims[claim.get()] = set;
  return claim;
}

LockClaim::~LockClaim() {
  auto& table = Claims<Key>();
  MutexLock lock(table.mu);
  auto it = table.files.find(key_);
  if (it == table.files.end()) return;
  Entry& entry = it->second;
  entry.claims.erase(this);
  if (entry.claims.empty()) {
    table.files.erase(it);  // closing the descriptor drops every OFD lock it held
    return;
  }
  // A smaller set never conflicts (nothing new is locked).
  (void)entry.lock->Set(entry.UnionExcept(nullptr));
}

Status LockClaim::Change(LockSet set) {
  auto& table = Claims<Key>();
  MutexLock lock(table.mu);
  auto it = table.files.find(key_);
  if (it == table.files.end()) return Status::NotFound(path_ + ": lock claim lost");
  Entry& entry = it->second;
  KVMFS_RETURN_IF_ERROR(entry.lock->Set(entry.UnionExcept(this) | set));
  entry.claims[this] = set;
  return Status::OK();
}

LockSet LockClaim::set() const {
  auto& table = Claims<Key>();
  MutexLock lock(table.mu);
  auto it = table.files.find(key_);
  if (it == table.files.end()) return {};
  auto c = it->second.claims.find(this);
  return c == it->second.claims.end() ? LockSet{} : c->second;
}

}  // namespace kvmfs
