// Store: where the image files of a pool live (issue 13, "a store, not only a
// file").
//
// The layers below the namespace (detect, chain, layer files) see a pool's
// files only through a Store: listing a folder, stat, resolving a name an
// image stores (backing and data files) relative to the image naming it,
// opening a file as a Backend, and the locks that keep other programs out.
// Paths are strings in the store's own name space: host paths for the local
// directory and block-device stores, "rbd:POOL[/NAMESPACE]/IMAGE" for Ceph
// RBD, bucket keys for S3. Every path is unique across the stores of one
// mount (a mount shares one open file per path, pool/layer_file.h).
//
// A store answers with struct stat where it can (so the pool layer keeps its
// shapes): st_mode says folder (S_IFDIR), file (S_IFREG), block device
// (S_IFBLK) or link (S_IFLNK, no-follow stat only); st_dev/st_ino identify
// the object, st_mtim/st_ctim/st_size its version (FileKey, pool/file_key.h):
// a changed version means "changed outside kvmfs". Remote stores fill st_ino
// with a hash of the object's identity and the times with what the remote end
// reports (RBD modify timestamp, S3 Last-Modified; the S3 ETag is folded into
// st_ctim so that a rewritten object of the same size and second is a new
// version).
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/image.h"
#include "kvmfs/status.h"

namespace kvmfs {

// ---- QEMU's image lock permissions (reference: formats.md §6.1) -----------

// QEMU's BLK_PERM_* bits.
inline constexpr uint32_t kPermConsistentRead = 0x01;
inline constexpr uint32_t kPermWrite = 0x02;
inline constexpr uint32_t kPermWriteUnchanged = 0x04;
inline constexpr uint32_t kPermResize = 0x08;
inline constexpr uint32_t kPermAll = 0x0f;

// The lock bytes of one user of a file.
struct LockSet {
  uint32_t perms = 0;     // held permissions: byte 100 + bit
  uint32_t unshared = 0;  // permissions others may not hold: byte 200 + bit

  bool empty() const { return perms == 0 && unshared == 0; }
  LockSet operator|(const LockSet& o) const { return {perms | o.perms, unshared | o.unshared}; }
  bool operator==(const LockSet&) const = default;
  // Whether two users with these sets cannot both hold the file.
  bool ConflictsWith(const LockSet& o) const {
    return (perms & o.unshared) != 0 || (unshared & o.perms) != 0;
  }
  std::string ToString() const;  // "100,101,103+201,203"
};

// Writing the top image of a chain (qcow2 or raw; kvmfs may resize it):
// bytes 100, 101, 103 + 201, 203, as `qemu-io` on a qcow2 file.
inline constexpr LockSet kWriterLocks{kPermConsistentRead | kPermWrite | kPermResize,
                                      kPermWrite | kPermResize};
// Reading an image or a backing file: 100 + 201, 203 (others may not write or
// resize under a reader), as `qemu-img info` and QEMU's backing files.
inline constexpr LockSet kReaderLocks{kPermConsistentRead, kPermWrite | kPermResize};
// Reading with force_share (`qemu-img -U`): 100 only, every permission shared.
inline constexpr LockSet kSharedReaderLocks{kPermConsistentRead, 0};

// What one kvmfs user of a file holds against other programs. Destroying it
// gives everything back. Thread-safe.
class StoreLock {
 public:
  virtual ~StoreLock() = default;
  // Moves the claim to `set` (upgrade or downgrade). On failure (kBusy, with
  // QEMU's words) the claim keeps its previous set.
  virtual Status Change(LockSet set) = 0;
  virtual LockSet set() const = 0;
};

// One entry of a folder listing.
struct StoreEntry {
  std::string name;  // one path component, never "." or ".."
  // The entry's no-follow stat when the listing brought it for free (S3
  // listings carry size, time and ETag); nullopt: Stat() it.
  std::optional<struct stat> st;
};

// What a store is like, for the namespace above it.
struct StoreCaps {
  // Every file of the store is an image (block devices, RBD images): shown
  // whatever its name, its format found by content.
  bool every_file_an_image = false;
  // Symbolic links exist (local directories): no-follow stats may say S_IFLNK.
  bool links = false;
  // The store keeps snapshots of a file itself (RBD): snapshots/ shows
  // those (Snapshots() and the calls below), not the format's own.
  bool snapshots = false;
  // Objects change only through whole rewrites, never in place (S3).
  bool immutable_objects = false;
  // Remote: a stat or an open costs a network round trip.
  bool remote = false;
  // Other hosts may write a file in place without its stat version changing
  // (RBD: the modify timestamp moves at most once a minute, and nothing tells
  // a reader of a write). The kernel then never keeps such a file's pages for
  // an image's own disk.raw unless this mount writes it (and so holds its
  // write lock), and the pool's nodes are cached by the kernel as in a
  // read-write pool (short attribute timeouts for images, snapshots/ and
  // info.json), in a read-only pool too (kvmfs(8) COHERENCE).
  bool unseen_writes = false;
  // Nothing in the store can be written (an S3 pool without overlay_dir):
  // the pool is read-only whatever its config says.
  bool read_only = false;
  // Files are written elsewhere than where they are read (S3 with
  // overlay_dir): an image's first writer calls PrepareWrite(), after which
  // Canonical() of the image names a writable file over the original.
  bool write_elsewhere = false;
};

// A store-level snapshot (RBD): as SnapshotInfo, plus whether it may be
// removed.
struct StoreSnapshot {
  SnapshotInfo info;
  bool is_protected = false;  // removing it fails with kBusy
};

class Store {
 public:
  virtual ~Store() = default;

  // "dir", "blockdev", "rbd", "s3": for messages and info.json.
  virtual std::string_view kind() const = 0;
  virtual StoreCaps caps() const = 0;
  // The path of the store's top folder (canonical).
  virtual const std::string& root() const = 0;

  // The entries of folder `dir` (any order; dot-entries included: callers
  // hide them). Errors: kNotFound, kPermission, kIOError(ENOTDIR).
  virtual Result<std::vector<StoreEntry>> List(const std::string& dir) = 0;

  // stat of `path`; `follow`: through symbolic links (stat, not lstat).
  // Errors: kNotFound, kPermission, kIOError.
  virtual Result<struct stat> Stat(const std::string& path, bool follow = true) = 0;

  // The canonical path of `path` (realpath: links followed, "." and ".."
  // gone). Errors as Stat().
  virtual Result<std::string> Canonical(const std::string& path) = 0;

  // The canonical path of `name` as the image at `base` names it (a backing
  // or data file): `name` relative to the folder of `base` unless absolute
  // in this store. Default: DirName(base) + "/" + name, canonicalized.
  // Errors: kNotFound (nothing there), kNotSupported (names this store cannot
  // follow), as Canonical().
  virtual Result<std::string> Resolve(const std::string& base, const std::string& name);

  // Opens the file at `path` as a Backend, read-write when `writable`.
  // Errors: kNotFound, kPermission/kReadOnly (the store refuses writing),
  // kInvalidArgument (not a file), kIOError.
  virtual Result<std::unique_ptr<Backend>> Open(const std::string& path, bool writable) = 0;

  // Claims `set` on the file at `path` against other programs (QEMU's OFD
  // byte locks on local files; RBD's exclusive lock for a writer). Claims of
  // kvmfs itself never refuse each other. Errors: kBusy (another program
  // holds conflicting locks, in QEMU's words), Open()'s errors.
  virtual Result<std::unique_ptr<StoreLock>> Lock(const std::string& path, LockSet set) = 0;

  // statvfs of the store (for the folder `path`).
  virtual Result<struct statvfs> StatFs(const std::string& path) = 0;

  // ---- Store-level snapshots (caps().snapshots) ---------------------------
  // Default: none, kNotSupported.

  // The snapshots of the file at `path`, oldest first.
  virtual Result<std::vector<StoreSnapshot>> Snapshots(const std::string& path);
  // Snapshot `id` of the file at `path`, read-only.
  virtual Result<std::unique_ptr<Backend>> OpenSnapshot(const std::string& path, const std::string& id);
  // Creates snapshot `name` of the file as it is now (writes through kvmfs
  // are flushed first by the caller). kAlreadyExists for a taken name.
  virtual Result<SnapshotInfo> CreateSnapshot(const std::string& path, const std::string& name);
  // Removes snapshot `id`. kBusy for a protected snapshot.
  virtual Status DeleteSnapshot(const std::string& path, const std::string& id);

  // The file that the file at `path` reads through by itself, shown as its
  // backing layer (an RBD clone's parent snapshot): its path, or nullopt.
  // The file's own backend already returns the merged data. Default: none.
  virtual std::optional<std::string> Parent(const std::string& /*path*/) { return std::nullopt; }

  // What the store itself says of the file at `path`, for info.json under
  // the key kind() (RBD: object size, features, parent). Default: none.
  virtual std::optional<InfoObject> Describe(const std::string& /*path*/) { return std::nullopt; }

  // ---- Writes elsewhere (caps().write_elsewhere) ----------------------------

  // Makes the image listed at `path` writable before its first write: the
  // S3 store creates a local qcow2 overlay whose backing file is the object
  // (read as `format`, a disk of `virtual_size` bytes). Afterwards
  // Canonical(path) names the overlay; idempotent. Default: kNotSupported.
  virtual Status PrepareWrite(const std::string& path, const std::string& format,
                              uint64_t virtual_size);
};

// A pool's store as its config describes it (kvmfs.yaml(5) `backend:` and
// that backend's keys), for OpenStore().
struct StoreConfig {
  std::string backend;  // "rbd", "s3"
  std::string pool;     // the pool's name, for messages
  // The backend's keys as the config gives them (files made absolute, sizes
  // in bytes, booleans "true"/"false"), checked by the config reader.
  std::map<std::string, std::string> options;
};

// Opens the store of a pool whose files are not local (the store registry,
// backend/store_registry.cpp): connects and checks the credentials. Errors
// in one line, nothing secret in them: the backend's (kPermission for wrong
// keys, kNotFound, kIOError for an unreachable server), kNotSupported for a
// backend this build does not have.
Result<std::shared_ptr<Store>> OpenStore(const StoreConfig& config);

// The local directory store of canonical directory `root`: host files,
// symlinks followed as stat(2)/realpath(3) do, QEMU's OFD locks.
std::shared_ptr<Store> NewLocalStore(std::string root);

// A directory of block devices (/dev/VG): as the local store, but every
// entry that is (or links to) a block device is a file, and nothing else is
// listed.
std::shared_ptr<Store> NewBlockDeviceStore(std::string root);

// The store of host paths that no pool names ("/"): the chain opener's and
// the tests' default.
const std::shared_ptr<Store>& HostStore();

}  // namespace kvmfs
