// The namespace tree of a directory SOURCE (CONTRACT.md "The tree"):
//
//   <sub/folders>/                      folders of SOURCE, mirrored
//   <image file name>/                  one directory per image file
//     disk.raw  info.json               the flattened chain
//     snapshots/<escaped name>/{disk.raw,info.json}
//     backing/<n>-<file name>/{disk.raw,info.json}
//
// Paths are resolved against the host tree on every call (no inode table), so
// the tree follows SOURCE as it changes. Images are opened only when something
// below their directory is used (ImageCache); listing folders never opens one.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include <chrono>
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "crypto/key_ring.h"
#include "kvmfs/chain.h"
#include "kvmfs/image.h"
#include "kvmfs/status.h"
#include "kvmfs/store.h"
#include "pool/change_listener.h"
#include "pool/detect.h"
#include "pool/image_cache.h"

namespace kvmfs::pool {

struct NamespaceOptions {
  std::string source;                      // canonical directory
  // The pool's name in a YAML SOURCE (the `pool` label of its metrics);
  // empty for a directory SOURCE, whose label is `source`.
  std::string pool_name;
  std::vector<std::string> backing_roots;  // canonical directories
  uid_t uid = 0;                           // (unused by the tree: it mirrors host owners)
  gid_t gid = 0;
  // Canonical paths inside SOURCE never shown (the mount point itself, when
  // it lies inside SOURCE).
  std::vector<std::string> hidden;
  // Image extensions without the dot ("qcow2"); empty: HasImageExtension's list.
  std::vector<std::string> extensions;
  // A blockdev pool: SOURCE is a directory of block devices (/dev/VG); each
  // block device in it (symlinks followed anywhere) is an image, its format
  // found by content; nothing else is shown.
  bool blockdev = false;
  // Read-only pool (config `readonly: true`, or a `-o ro` mount): images are
  // opened read-only and every write fails with kReadOnly.
  bool readonly = false;
  // Config `compress:`: images opened for writing store wholly written new
  // clusters compressed, where their format can (FormatCaps::compression).
  WriteCompression compress = WriteCompression::kNone;
  // force_share: disk.raw readers take QEMU's read lock without refusing to
  // share writing (qemu-img -U), so they open while a VM writes the image.
  bool force_share = false;
  // The mount's open files (one engine per host file across its pools); a
  // private registry when null.
  std::shared_ptr<LayerRegistry> registry;
  // How often a file of an open chain is stat'ed for changes from outside
  // (besides every open of a view).
  std::chrono::nanoseconds recheck = ImageCache::kDefaultRecheck;
  // Passphrase files of encrypted images (kvmfs.yaml(5) keys:, -o keys=FILE),
  // matched against image paths relative to SOURCE (or a backing root).
  std::vector<crypto::KeyRule> keys;
  // Where SOURCE's files live (kvmfs/store.h); `source` is the store's
  // root(). Null: the local directory store of `source` (the block-device
  // store with `blockdev`).
  std::shared_ptr<Store> store;
  // Files and folders made through the tree (mkdir NAME.ext, ln -s, mkdir of
  // a folder): kvmfs.yaml(5) create_mode, create_owner, create_group. Unset
  // owner or group: the owner or group of the folder they are made in.
  // Folders get the mode with x wherever it has r.
  mode_t create_mode = 0600;
  std::optional<uid_t> create_uid;
  std::optional<gid_t> create_gid;
};

enum class NodeKind {
  kFolder,        // a directory of SOURCE
  kImageDir,      // <image file name>/
  kSnapshotsDir,  // <image>/snapshots/
  kSnapshotDir,   // <image>/snapshots/<name>/
  kBackingDir,    // <image>/backing/
  kLayerDir,      // <image>/backing/<n>-<file>/
  kDisk,          // .../disk.raw
  kInfo,          // .../info.json
  kCheck,         // <image>/check.json, backing/<n>-<file>/check.json
};

// What a path names.
struct Node {
  NodeKind kind = NodeKind::kFolder;
  std::string host_path;  // the folder, or the image file as named in the tree
  struct stat host_st {};  // stat of host_path (symlinks followed)
  bool canonical = true;   // host_path was reached without following a symlink
  // Set for every node below kImageDir, except a kSnapshotsDir of an image
  // not opened yet whose header says it has no snapshots (EnsureImage()).
  std::shared_ptr<OpenImage> image;
  ViewId view;                       // for kSnapshotDir, kLayerDir, kDisk, kInfo

  bool IsDir() const {
    return kind != NodeKind::kDisk && kind != NodeKind::kInfo && kind != NodeKind::kCheck;
  }
};

struct DirEntry {
  std::string name;
  bool is_dir = false;
  // The entry's attributes (as Stat() of it) when they came for free with
  // the listing: folders and image/snapshot/layer directories. Handed to the
  // kernel with READDIRPLUS, which then skips a LOOKUP per entry.
  std::optional<struct stat> st;
  // The entry's node, when the listing resolved it (set whenever `st` is):
  // lets a caller that keeps nodes (the FUSE inode table) skip Lookup().
  std::optional<Node> node;
};

// An open disk.raw or info.json. Holding it keeps the opened chain alive (and
// for disk.raw, QEMU's locks on its files).
struct OpenFile {
  std::shared_ptr<OpenImage> owner;
  std::shared_ptr<Image> image;  // disk.raw: the view's image (a LiveView)
  std::string content;           // info.json: its text at open time
  bool is_info = false;
  bool unchanged = false;        // opened before with this image version: keep the page cache
  bool fresh = false;            // check.json: made at this open, never from a page cache
  bool writable = false;         // disk.raw opened for writing
  bool sync = false;             // O_SYNC / O_DSYNC: flush after every write
  std::shared_ptr<DiskHandle> handle;  // disk.raw: released with the last copy
};

class Namespace {
 public:
  explicit Namespace(NamespaceOptions options, ChainOpener opener = nullptr);

  // The chain policy for images of this namespace: SOURCE plus the backing roots.
  static ChainPolicy PolicyFor(const NamespaceOptions& options);

  // Replaces the key rules (SIGHUP of a directory mount with -o keys=FILE):
  // an image that failed for want of a key opens again at its next use
  // (within the recheck interval). Thread-safe.
  void SetKeys(std::vector<crypto::KeyRule> keys);

  // Resolves an absolute path of the mount ("/", "/a/vm.qcow2/disk.raw").
  // Errors: kNotFound (no such node), kIOError(ENOTDIR) below a file.
  Result<Node> Resolve(const std::string& path);

  // Attributes mirror the host (kvmfs(8) PERMISSIONS): folders the owner,
  // group and mode of their host folder (without write bits in a read-only
  // pool); below an image directory the owner and group of the image file
  // (of its own file for a backing layer view) with its read bits only
  // (directories r-x where it may be read), data views narrowed to the
  // classes every file below may be read by, and an encrypted disk.raw
  // without group/other bits. In a writable pool the top disk.raw and
  // snapshots/ of a writable image also get the image file's write bits.
  // Times of the folder or image file. disk.raw: size = virtual size, blocks from
  // the allocation map (size 0 when the image cannot be opened); info.json:
  // size of its text.
  Result<struct stat> Stat(const std::string& path);

  // The entries of a directory, without "." and "..". Listing an image
  // directory opens the image (whether backing/ exists depends on it).
  Result<std::vector<DirEntry>> List(const std::string& path);

  // Opens disk.raw or info.json with open(2) `flags`. A disk.raw handle takes
  // QEMU's locks (OpenImage::AcquireHandle). Errors: kReadOnly for write
  // access to info.json, snapshot and backing views, read-only formats, files
  // or pools; kInvalidArgument for O_TRUNC on a writable disk.raw (a disk
  // cannot be emptied); kBusy when another program holds the image's locks;
  // kIOError(EISDIR) for directories; and the image's own open error for
  // disk.raw (its ToErrno() is what the caller sees).
  Result<OpenFile> Open(const std::string& path, int flags);

  // truncate(2) of a top disk.raw: Image::Resize under a brief write session.
  // Errors: kInvalidArgument (shrinking), kReadOnly, kBusy, as Open().
  Status Truncate(const std::string& path, uint64_t size);

  // mkdir <image>/snapshots/NAME: an internal snapshot named by the
  // unescaped NAME (see SnapshotNameForDir). Errors: kAlreadyExists,
  // kInvalidArgument (NAME is no escaped snapshot name), kReadOnly (anywhere
  // else, read-only pool or image), kBusy (another program holds the image).
  Status MakeSnapshotDir(const std::string& path);

  // rmdir <image>/snapshots/NAME: deletes that snapshot. kBusy while its
  // disk.raw is open; kReadOnly anywhere else.
  Status RemoveSnapshotDir(const std::string& path);

  // statvfs of SOURCE, marked read-only for a read-only pool.
  Result<struct statvfs> StatFs();

  // ---- By node: for callers that keep nodes (the FUSE inode table) instead
  // of resolving a path on every request. `path` only names the node in
  // errors. Thread-safe.

  // The node of "/" (SOURCE). Errors: SOURCE cannot be stat'ed.
  Result<Node> Root();
  // The child `name` of directory node `parent` (from Root() or Lookup()),
  // as Resolve() of the parent's path + "/name" would find it, without
  // walking from the root: one lstat for a folder's child, and below an image
  // directory the image as the cache holds it now. Errors as Resolve().
  Result<Node> Lookup(const Node& parent, const std::string& name);
  // Brings `node` up to date with its host file: stats it again and, below
  // an image directory, takes the image the cache holds for the file now
  // (opened again when the file changed). Stat/List/Open below require a
  // node refreshed this way (or fresh from Lookup()). Errors: kNotFound when
  // the file or folder is gone.
  Status Refresh(Node& node);
  // As the path versions above.
  Result<struct stat> Stat(Node node);
  Result<std::vector<DirEntry>> List(const Node& node, const std::string& path);
  Result<OpenFile> Open(const Node& node, const std::string& path, int flags);
  Status Truncate(const Node& node, const std::string& path, uint64_t size);
  // mkdir `name` in `parent`; `path` is the new directory's.
  Status MakeSnapshotDir(Node parent, const std::string& path, const std::string& name);
  Status RemoveSnapshotDir(const Node& node, const std::string& path);

  // ---- Images made, cloned and renamed through the tree (tree_ops.cpp) ----
  // Refused in a read-only pool (kReadOnly). New files and folders get the
  // create rules of NamespaceOptions; every change is logged.

  // mkdir `name` in `parent`: in a folder, an empty image (virtual size 0,
  // as `qemu-img create -f FMT NAME 0`) when the name's extension says a
  // format whose driver creates images (FormatCaps::create), else a folder;
  // in snapshots/, a snapshot (MakeSnapshotDir). Errors: kAlreadyExists,
  // NotPermitted (hidden names, anywhere else), the host's and the driver's
  // errors (a half-made file is removed).
  Status MakeDir(Node parent, const std::string& path, const std::string& name);
  Status MakeDir(const std::string& path);  // as Resolve() of its folder, then MakeDir
  // rmdir: an empty folder below SOURCE, or a snapshot (RemoveSnapshotDir).
  // Images and SOURCE itself are never removed (NotPermitted): deleting a
  // disk is left to the host.
  Status RemoveDir(const Node& node, const std::string& path);
  Status RemoveDir(const std::string& path);
  // ln -s TARGET NAME in folder `parent`: an overlay NAME (a linked clone, as
  // `qemu-img create -f FMT -b TARGET -F TARGET_FMT NAME`) of the image file
  // TARGET names, relative to the folder (or an absolute host path), which
  // is recorded as its backing file name; the size is TARGET's. Errors:
  // kAlreadyExists, kNotFound (no image TARGET), kPermission (TARGET outside
  // SOURCE and the backing roots), kNotSupported (NAME's format cannot
  // record a backing file), NotPermitted (NAME is no image name), TARGET's
  // open error.
  Status CloneImage(const Node& parent, const std::string& path, const std::string& name,
                    const std::string& target);
  // mv: renames the image file of image directory `node` to `new_name` in
  // folder `new_parent` when nothing uses it: kBusy when a view of it (or
  // of an image above it) is open in kvmfs, another program holds its QEMU
  // locks, or another image of the pool names it as its backing file (the
  // reason is in the message). The new name must show the same image
  // (kInvalidArgument otherwise); a move to another folder keeps no
  // relative reference (a backing file, VMDK extents, a data file) pointing
  // elsewhere (NotPermitted). Errors: kAlreadyExists (never replaces),
  // NotPermitted (not an image, folders).
  Status RenameImage(const Node& node, const std::string& path, const Node& new_parent,
                     const std::string& new_name);

  // Who hears of image files changing (the engine's change detection calls
  // it); nullptr for nobody. The listener must outlive its registration.
  void SetChangeListener(ChangeListener* listener) { listener_.store(listener); }
  ChangeListener* change_listener() const { return listener_.load(); }

  const NamespaceOptions& options() const { return options_; }
  // The `pool` and `image` labels of the metrics (the progress of checks and
  // snapshot operations) for the image file `host_path`: the pool's name (a
  // directory SOURCE: its path) and `host_path` relative to the pool.
  std::pair<std::string, std::string> MetricLabels(const std::string& host_path) const;
  ImageCache& cache() { return cache_; }
  // Snapshots made and deleted through this namespace (mkdir/rmdir under
  // snapshots/), for the metrics. Lock-free.
  uint64_t snapshots_created() const { return snapshots_created_.load(std::memory_order_relaxed); }
  uint64_t snapshots_deleted() const { return snapshots_deleted_.load(std::memory_order_relaxed); }
  ProbeCache& probe() { return probe_; }

 private:
  // Classifies `name` in host folder `dir`: a folder, an image, or nothing
  // (kNotFound). `lst`: its no-follow stat when a listing brought it.
  Result<Node> Child(const Node& dir, const std::string& name,
                     const std::optional<struct stat>& lst = std::nullopt);
  Result<Node> ImageChild(const Node& parent, const std::string& name);
  Result<std::shared_ptr<OpenImage>> ImageOf(const Node& image_dir);
  // For an image directory whose image is not open: what its header says,
  // when that is enough to list the directory without opening the image (raw,
  // or qcow2 without a backing file); nullopt otherwise.
  std::optional<HeaderPeek> Unopened(const Node& image_dir);
  // Opens the image of a node below an image directory if still unopened.
  Status EnsureImage(Node& node);
  // Before the first write to an image of a store that writes elsewhere (S3
  // with overlay_dir, StoreCaps::write_elsewhere): has the store make the
  // writable file (Store::PrepareWrite) and points `node` at the image
  // through it. Nothing for other stores or images already writable.
  Status PrepareWrite(Node& node);
  // kNotSupported for a remote store: the tree gestures (mkdir NAME.ext, a
  // folder, ln -s, mv, rmdir of a folder) work on host files only.
  Status LocalTree(const std::string& path) const;
  bool HasExtension(const std::string& name) const;
  // A brief write session on the top image of `node` (truncate, snapshots).
  Status WithWriter(const Node& node, const std::function<Status(Image&)>& fn);
  bool TopWritable(const Node& node) const;
  // Owner, group and permission bits of the file `node` comes from (the
  // image file, or a backing layer's file); with `narrow`, read bits only
  // where every file below it lets the same class read too.
  struct Owner {
    uid_t uid;
    gid_t gid;
    mode_t mode;
  };
  Owner OwnerOf(const Node& node, bool narrow) const;
  // tree_ops.cpp
  Result<std::string> CheckText(const Node& node, const std::string& path);
  Status CreateImageFile(const std::string& host_path, const struct stat& folder_st,
                         const std::string& format, const CreateOptions& create);
  Status ApplyCreateRules(int fd, const std::string& host_path, const struct stat& folder_st,
                          bool folder);
  Status CheckRenameable(const Node& node, const std::string& path, bool same_folder);
  Result<std::string> BackedBy(const std::string& canonical);
  struct stat BaseStat(const Node& node) const;
  struct stat StatNode(const Node& node);

  // The key rules in force, swapped by SetKeys(); the chain policy asks them.
  struct Keys {
    Mutex mu;
    std::shared_ptr<const crypto::KeyRing> ring GUARDED_BY(mu);
  };
  static ChainPolicy PolicyWithKeys(const NamespaceOptions& options, const std::shared_ptr<Keys>& keys);

  // With options.store set (WithStore()).
  static NamespaceOptions WithStore(NamespaceOptions options);

  const NamespaceOptions options_;
  Store& store_;  // *options_.store
  const std::shared_ptr<Keys> keys_;
  const bool peek_headers_;  // Unopened() may answer from image headers
  ProbeCache probe_;
  ImageCache cache_;
  std::atomic<ChangeListener*> listener_{nullptr};
  std::atomic<uint64_t> snapshots_created_{0};
  std::atomic<uint64_t> snapshots_deleted_{0};
};

// Whether an image directory shows snapshots/: always for qcow2, else when
// the image has snapshots.
bool HasSnapshotsDir(const OpenImage& image);

}  // namespace kvmfs::pool
