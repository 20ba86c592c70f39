#include "pool/namespace.h"

#include "pool/snapshot_names.h"

#include "metrics/progress.h"

#include <fcntl.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>

namespace kvmfs::pool {
namespace {

// `host_path` relative to the pool's `source` when below it (how the metrics
// name images), else as it is.
std::string RelativeImagePath(const std::string& source, const std::string& host_path) {
  if (host_path.size() > source.size() && host_path.compare(0, source.size(), source) == 0 &&
      host_path[source.size()] == '/')
    return host_path.substr(source.size() + 1);
  return host_path;
}

constexpr const char* kDiskName = "disk.raw";
constexpr const char* kInfoName = "info.json";
constexpr const char* kCheckName = "check.json";
constexpr const char* kSnapshotsName = "snapshots";
constexpr const char* kBackingName = "backing";

Status NoEntry(const std::string& path) { return Status::NotFound(path + ": no such file or directory"); }

std::vector<std::string> SplitPath(const std::string& path) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j > i) parts.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  return parts;
}

// Whether images of `format` show snapshots/ even without snapshots.
bool SnapshotsDirAlways(const std::string& format) {
  const FormatDriver* driver = FindFormat(format);
  return driver != nullptr && driver->caps().internal_snapshots;
}

}  // namespace

bool HasSnapshotsDir(const OpenImage& image) {
  // (A store that keeps snapshots itself, RBD, always has snapshots/.)
  return SnapshotsDirAlways(image.format()) || image.store().caps().snapshots || !image.snapshots().empty();
}

NamespaceOptions Namespace::WithStore(NamespaceOptions options) {
  if (!options.store)
    options.store = options.blockdev ? NewBlockDeviceStore(options.source) : NewLocalStore(options.source);
  return options;
}

Namespace::Namespace(NamespaceOptions options, ChainOpener opener)
    : options_(WithStore(std::move(options))),
      store_(*options_.store),
      keys_(std::make_shared<Keys>()),
      // Headers speak for the real drivers only, not for a test's opener.
      peek_headers_(opener == nullptr),
      probe_(options_.store),
      cache_(PolicyWithKeys(options_, keys_), &probe_, std::move(opener), ImageCache::kDefaultMaxOpen,
             options_.registry, options_.recheck) {
  // Files found changed outside kvmfs: whoever caches views drops them.
  cache_.SetChangeCallback([this](const std::string& path) {
    if (ChangeListener* listener = listener_.load()) listener->ImageChanged(path);
  });
}

ChainPolicy Namespace::PolicyWithKeys(const NamespaceOptions& options,
                                      const std::shared_ptr<Keys>& keys) {
  ChainPolicy policy = PolicyFor(options);
  {
    MutexLock lock(keys->mu);
    keys->ring = std::make_shared<const crypto::KeyRing>(options.keys, policy.allowed_roots);
  }
  policy.key_for = [keys](const std::string& path) {
    std::shared_ptr<const crypto::KeyRing> ring;
    {
      MutexLock lock(keys->mu);
      ring = keys->ring;
    }
    return ring->KeyFor(path);
  };
  return policy;
}

void Namespace::SetKeys(std::vector<crypto::KeyRule> keys) {
  auto ring = std::make_shared<const crypto::KeyRing>(std::move(keys), cache_.policy().allowed_roots);
  MutexLock lock(keys_->mu);
  keys_->ring = std::move(ring);
}

ChainPolicy Namespace::PolicyFor(const NamespaceOptions& options) {
  ChainPolicy policy;
  policy.allowed_roots.push_back(options.source);
  for (const std::string& root : options.backing_roots)
    if (std::find(policy.allowed_roots.begin(), policy.allowed_roots.end(), root) ==
        policy.allowed_roots.end())
      policy.allowed_roots.push_back(root);
  policy.writable_top = !options.readonly;
  policy.block_devices = options.blockdev;
  policy.compress = options.compress;
  // Backing files inside the pool are its images too: opened once, for
  // writing, whatever uses them first.
  policy.writable_roots.push_back(options.source);
  policy.store = options.store;
  auto keys = std::make_shared<const crypto::KeyRing>(options.keys, policy.allowed_roots);
  policy.key_for = [keys](const std::string& path) { return keys->KeyFor(path); };
  return policy;
}

Result<Node> Namespace::Child(const Node& dir, const std::string& name,
                              const std::optional<struct stat>& listed) {
  // Dot-entries are hidden (and "." / ".." never reach here from the kernel).
  if (name.empty() || name[0] == '.') return NoEntry(dir.host_path + "/" + name);
  Node node;
  node.host_path = dir.host_path + "/" + name;
  node.canonical = dir.canonical;
  // Our own mount point inside SOURCE: looking at it would call back into us.
  if (std::find(options_.hidden.begin(), options_.hidden.end(), node.host_path) !=
      options_.hidden.end())
    return NoEntry(node.host_path);
  struct stat lst;
  if (listed) {
    lst = *listed;
  } else {
    KVMFS_ASSIGN_OR_RETURN(lst, store_.Stat(node.host_path, false));
  }
  if (options_.blockdev) {
    // LVM's /dev/VG/lv are symlinks to /dev/dm-N: follow them wherever they go,
    // but show block devices only.
    auto st = store_.Stat(node.host_path, true);
    if (!st.ok() || !S_ISBLK(st->st_mode)) return NoEntry(node.host_path);
    node.host_st = *st;
    node.canonical = dir.canonical && !S_ISLNK(lst.st_mode);
    node.kind = NodeKind::kImageDir;
    return node;
  }
  if (S_ISLNK(lst.st_mode)) {
    // Symlinks are followed only inside SOURCE, and never to a directory that
    // contains the link (which would make the tree infinite).
    auto target = store_.Canonical(node.host_path);
    if (!target.ok() || !IsUnder(*target, options_.source)) return NoEntry(node.host_path);
    auto st = store_.Stat(*target, true);
    if (!st.ok()) return NoEntry(node.host_path);
    if (S_ISDIR(st->st_mode)) {
      auto parent = store_.Canonical(dir.host_path);
      if (!parent.ok() || IsUnder(*parent, *target)) return NoEntry(node.host_path);
    }
    node.host_st = *st;
    node.canonical = false;
  } else {
    node.host_st = lst;
  }
  if (S_ISDIR(node.host_st.st_mode)) {
    node.kind = NodeKind::kFolder;
    return node;
  }
  if (!S_ISREG(node.host_st.st_mode)) return NoEntry(node.host_path);
  // A store whose every file is an image (RBD) shows them whatever their names.
  if (store_.caps().every_file_an_image) {
    node.kind = NodeKind::kImageDir;
    return node;
  }
  if (IsVmdkExtentName(name)) return NoEntry(node.host_path);
  if (HasExtension(name) || !probe_.Probe(node.host_path, node.host_st).empty()) {
    node.kind = NodeKind::kImageDir;
    return node;
  }
  return NoEntry(node.host_path);
}

bool Namespace::HasExtension(const std::string& name) const {
  if (options_.extensions.empty()) return HasImageExtension(name);
  return HasImageExtension(name, options_.extensions);
}

Result<std::shared_ptr<OpenImage>> Namespace::ImageOf(const Node& image_dir) {
  // SOURCE is canonical, and so is every path below it reached without a
  // symlink (names are single components, never "." or "..").
  if (image_dir.canonical) return cache_.GetCanonical(image_dir.host_path, image_dir.host_st);
  return cache_.Get(image_dir.host_path);
}

std::optional<HeaderPeek> Namespace::Unopened(const Node& image_dir) {
  // (A store's own snapshots are not in any header.)
  if (!peek_headers_ || !image_dir.canonical || options_.blockdev || store_.caps().snapshots)
    return std::nullopt;
  if (cache_.Cached(image_dir.host_path, image_dir.host_st)) return std::nullopt;
  HeaderPeek peek = probe_.Peek(image_dir.host_path, image_dir.host_st);
  if (!peek.known || peek.has_backing) return std::nullopt;
  return peek;
}

Status Namespace::EnsureImage(Node& node) {
  if (node.image) return Status::OK();
  Node dir = node;
  dir.kind = NodeKind::kImageDir;
  KVMFS_ASSIGN_OR_RETURN(node.image, ImageOf(dir));
  return Status::OK();
}

Result<Node> Namespace::ImageChild(const Node& parent, const std::string& name) {
  Node node;
  node.host_path = parent.host_path;
  node.host_st = parent.host_st;
  // (Refresh() of a node below the image directory finds the image the way
  // the directory does: through the link when it was reached through one.)
  node.canonical = parent.canonical;
  node.image = parent.image;
  node.view = parent.view;
  switch (parent.kind) {
    case NodeKind::kImageDir: {
      node.view = ViewId::Top();
      // snapshots/ and backing/ of an image nobody opened yet: its header
      // can tell (ls -R of a pool opens nothing).
      if (name == kSnapshotsName || name == kBackingName) {
        if (auto peek = Unopened(parent)) {
          if (name == kSnapshotsName && SnapshotsDirAlways(peek->format) && peek->snapshots == 0) {
            node.kind = NodeKind::kSnapshotsDir;
            return node;
          }
          if (name == kBackingName || (!SnapshotsDirAlways(peek->format) && peek->snapshots == 0))
            return NoEntry(parent.host_path + "/" + name);
        }
      }
      KVMFS_ASSIGN_OR_RETURN(node.image, ImageOf(parent));
      if (name == kDiskName) node.kind = NodeKind::kDisk;
      else if (name == kInfoName) node.kind = NodeKind::kInfo;
      else if (name == kCheckName) node.kind = NodeKind::kCheck;
      else if (name == kSnapshotsName && HasSnapshotsDir(*node.image)) node.kind = NodeKind::kSnapshotsDir;
      else if (name == kBackingName && node.image->depth() > 1)
        node.kind = NodeKind::kBackingDir;
      else return NoEntry(parent.host_path + "/" + name);
      return node;
    }
    case NodeKind::kSnapshotsDir: {
      if (!node.image) return NoEntry(parent.host_path + "/snapshots/" + name);  // none
      auto id = node.image->SnapshotIdForDir(name);
      if (!id) return NoEntry(parent.host_path + "/snapshots/" + name);
      node.kind = NodeKind::kSnapshotDir;
      node.view = ViewId::Snapshot(*id);
      return node;
    }
    case NodeKind::kBackingDir: {
      auto names = node.image->LayerDirNames();
      auto it = std::find(names.begin(), names.end(), name);
      if (it == names.end()) return NoEntry(parent.host_path + "/backing/" + name);
      node.kind = NodeKind::kLayerDir;
      node.view = ViewId::Layer(size_t(it - names.begin()) + 1);
      return node;
    }
    case NodeKind::kSnapshotDir:
    case NodeKind::kLayerDir:
      if (name == kDiskName) node.kind = NodeKind::kDisk;
      else if (name == kInfoName) node.kind = NodeKind::kInfo;
      else if (name == kCheckName && parent.kind == NodeKind::kLayerDir) node.kind = NodeKind::kCheck;
      else return NoEntry(parent.host_path + "/.../" + name);
      return node;
    default:
      return Status::FromErrno(ENOTDIR, parent.host_path + "/" + name);
  }
}

Result<Node> Namespace::Root() {
  Node node;
  node.kind = NodeKind::kFolder;
  node.host_path = options_.source;
  // ("/" as SOURCE would make "//name" paths: let the cache canonicalize those.)
  node.canonical = options_.source.size() > 1 && options_.source.back() != '/';
  KVMFS_ASSIGN_OR_RETURN(node.host_st, store_.Stat(options_.source, true));
  return node;
}

Result<Node> Namespace::Lookup(const Node& parent, const std::string& name) {
  if (parent.kind == NodeKind::kFolder) return Child(parent, name);
  Node fresh = parent;
  KVMFS_RETURN_IF_ERROR(Refresh(fresh));
  return ImageChild(fresh, name);
}

Status Namespace::Refresh(Node& node) {
  KVMFS_ASSIGN_OR_RETURN(node.host_st, store_.Stat(node.host_path, true));
  if (node.kind == NodeKind::kFolder || node.kind == NodeKind::kImageDir) return Status::OK();
  Node dir = node;
  dir.kind = NodeKind::kImageDir;
  // As ImageChild(): snapshots/ of an image nobody opened whose header says
  // it has no snapshots stays without an image.
  if (node.kind == NodeKind::kSnapshotsDir) {
    auto peek = Unopened(dir);
    if (peek && SnapshotsDirAlways(peek->format) && peek->snapshots == 0) {
      node.image = nullptr;
      return Status::OK();
    }
  }
  KVMFS_ASSIGN_OR_RETURN(node.image, ImageOf(dir));
  return Status::OK();
}

Result<Node> Namespace::Resolve(const std::string& path) {
  KVMFS_ASSIGN_OR_RETURN(Node node, Root());
  for (const std::string& part : SplitPath(path)) {
    if (node.kind == NodeKind::kFolder) {
      KVMFS_ASSIGN_OR_RETURN(node, Child(node, part));
    } else {
      KVMFS_ASSIGN_OR_RETURN(node, ImageChild(node, part));
    }
  }
  return node;
}

namespace {

constexpr mode_t kReadBits = S_IRUSR | S_IRGRP | S_IROTH;
constexpr mode_t kWriteBits = S_IWUSR | S_IWGRP | S_IWOTH;

// A directory for the readers of a file: r-x for each class that may read it.
mode_t DirModeFor(mode_t file_mode) {
  const mode_t r = file_mode & kReadBits;
  return r | (r >> 2);  // S_IRUSR >> 2 == S_IXUSR, and so on
}

// The read bits of `view` (owner, group, mode of the file a view comes from)
// that stay once the file `lower` below it must be readable too, as the host
// would allow each class of `view`: its owner (lower's owner bits when it owns
// lower too, else lower's other bits), its group (lower's group bits when the
// group is the same, else lower's other bits), others (lower's other bits).
// Supplementary groups are not looked up: when unsure, no.
mode_t ReadsAlsoAllowedBy(const struct stat& view, const struct stat& lower) {
  const mode_t m = lower.st_mode;
  mode_t keep = 0;
  if (view.st_uid == lower.st_uid ? (m & S_IRUSR) : (m & S_IROTH)) keep |= S_IRUSR;
  if (view.st_gid == lower.st_gid ? (m & S_IRGRP) : (m & S_IROTH)) keep |= S_IRGRP;
  if (m & S_IROTH) keep |= S_IROTH;
  return keep;
}

}  // namespace

Namespace::Owner Namespace::OwnerOf(const Node& node, bool narrow) const {
  // Snapshot views and the top read the image file named in the tree; the
  // view of backing layer n its own file, and every view the files below.
  Owner owner{node.host_st.st_uid, node.host_st.st_gid, node.host_st.st_mode & 07777};
  if (!node.image) return owner;
  const std::vector<std::shared_ptr<LayerFile>> files = node.image->files();
  size_t first = 0;
  if (node.view.kind == ViewId::Kind::kLayer) {
    first = node.view.layer;
    // (Through the file's store: its path need not be a host path.)
    auto st = first < files.size() ? files[first]->store().Stat(files[first]->path(), true)
                                   : Result<struct stat>(Status::NotFound("no such layer"));
    if (!st.ok()) return {owner.uid, owner.gid, 0};  // unknown: nobody (but root)
    owner = {st->st_uid, st->st_gid, st->st_mode & 07777};
  }
  if (!narrow) return owner;
  struct stat view {};
  view.st_uid = owner.uid;
  view.st_gid = owner.gid;
  mode_t reads = owner.mode & kReadBits;
  for (size_t i = first + 1; i < files.size() && reads != 0; ++i) {
    auto st = files[i]->store().Stat(files[i]->path(), true);
    if (!st.ok()) {
      reads = 0;
      break;
    }
    reads &= ReadsAlsoAllowedBy(view, *st);
  }
  owner.mode = (owner.mode & ~kReadBits) | reads;
  return owner;
}

struct stat Namespace::BaseStat(const Node& node) const {
  // Attributes mirror the host (kvmfs(8) PERMISSIONS): a folder has the
  // owner, group and mode of the folder it shows (write bits only in a
  // writable pool); everything below an image directory the owner and group
  // of the file it comes from and no more than its read bits (directories
  // r-x for who may read); data views also no more than every file below
  // them allows. StatNode() adds write bits where writing is allowed.
  struct stat st {};
  st.st_atim = node.host_st.st_atim;
  st.st_mtim = node.host_st.st_mtim;
  st.st_ctim = node.host_st.st_ctim;
  st.st_blksize = 4096;
  st.st_nlink = node.IsDir() ? 2 : 1;
  if (node.kind == NodeKind::kFolder) {
    st.st_uid = node.host_st.st_uid;
    st.st_gid = node.host_st.st_gid;
    mode_t mode = node.host_st.st_mode & 01777;
    if (options_.readonly) mode &= ~kWriteBits;
    st.st_mode = S_IFDIR | mode;
    return st;
  }
  const bool data = node.kind == NodeKind::kDisk;
  // Directories below an image directory list what the image file's header
  // says (snapshot names, backing names): its readers, no more.
  const Owner owner = OwnerOf(node, data);
  st.st_uid = owner.uid;
  st.st_gid = owner.gid;
  if (node.IsDir())
    st.st_mode = S_IFDIR | DirModeFor(owner.mode);
  else
    st.st_mode = S_IFREG | (owner.mode & kReadBits);
  return st;
}

bool Namespace::TopWritable(const Node& node) const {
  if (options_.readonly || !node.image) return false;
  // An image of a store that writes elsewhere becomes writable at its first
  // write (PrepareWrite).
  if (store_.caps().write_elsewhere && node.image->ok()) return true;
  // A corrupt qcow2 image says so before anyone tries to write it.
  return node.image->CanWrite().ok();
}

Status Namespace::PrepareWrite(Node& node) {
  if (!store_.caps().write_elsewhere || !node.image || node.image->CanWrite().ok()) return Status::OK();
  std::shared_ptr<Image> top = node.image->top();
  if (!top) return node.image->status();
  KVMFS_RETURN_IF_ERROR(store_.PrepareWrite(node.host_path, node.image->format(), top->size()));
  // The listed name now leads to the writable file: open the image through it.
  Node dir = node;
  dir.kind = NodeKind::kImageDir;
  dir.canonical = false;
  KVMFS_ASSIGN_OR_RETURN(dir.host_st, store_.Stat(dir.host_path, true));
  KVMFS_ASSIGN_OR_RETURN(node.image, ImageOf(dir));
  node.host_st = dir.host_st;
  node.canonical = false;
  node.image->EnsureCurrent(&node.host_st, true);
  return Status::OK();
}

Result<struct stat> Namespace::Stat(const std::string& path) {
  KVMFS_ASSIGN_OR_RETURN(Node node, Resolve(path));
  return Stat(std::move(node));
}

Result<struct stat> Namespace::Stat(Node node) {
  // Whether snapshots/ is writable depends on the image.
  if (node.kind == NodeKind::kSnapshotsDir && !options_.readonly)
    KVMFS_RETURN_IF_ERROR(EnsureImage(node));
  return StatNode(node);
}

struct stat Namespace::StatNode(const Node& node) {
  struct stat st = BaseStat(node);
  if ((node.kind == NodeKind::kDisk && node.view.kind == ViewId::Kind::kTop) ||
      node.kind == NodeKind::kSnapshotsDir) {
    // Who may write the image file may write its disk.raw and make snapshots.
    if (TopWritable(node)) st.st_mode |= node.host_st.st_mode & kWriteBits;
  }
  // Decrypted data is for the mounting user only (default_permissions makes
  // the kernel enforce it, also under allow_other).
  if (node.kind == NodeKind::kDisk && node.image && node.image->encrypted())
    st.st_mode &= ~mode_t(S_IRWXG | S_IRWXO);
  if (node.kind == NodeKind::kDisk) {
    auto image = node.image->ViewImage(node.view);
    if (image.ok()) {
      st.st_size = static_cast<off_t>((*image)->size());
      st.st_blocks = static_cast<blkcnt_t>((node.image->AllocatedBytes(node.view) + 511) / 512);
    } else if (node.view.kind == ViewId::Kind::kTop && node.image->top() != nullptr) {
      // Opened but its data out of reach (a key problem): the disk keeps its
      // size, so a key added later (SIGHUP) does not meet a cached size 0.
      st.st_size = static_cast<off_t>(node.image->top()->size());
    }
  } else if (node.kind == NodeKind::kInfo) {
    st.st_size = static_cast<off_t>(node.image->InfoText(node.view).size());
  }
  return st;
}

Result<std::vector<DirEntry>> Namespace::List(const std::string& path) {
  KVMFS_ASSIGN_OR_RETURN(Node node, Resolve(path));
  return List(node, path);
}

Result<std::vector<DirEntry>> Namespace::List(const Node& node, const std::string& path) {
  std::vector<DirEntry> entries;
  switch (node.kind) {
    case NodeKind::kFolder: {
      KVMFS_ASSIGN_OR_RETURN(std::vector<StoreEntry> listed, store_.List(node.host_path));
      for (StoreEntry& e : listed) {
        const std::string& name = e.name;
        if (name.empty() || name[0] == '.') continue;
        auto child = Child(node, name, e.st);
        if (child.ok()) entries.push_back({name, true, BaseStat(*child), std::move(child).value()});
      }
      std::sort(entries.begin(), entries.end(),
                [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
      break;
    }
    case NodeKind::kImageDir: {
      entries.push_back({kDiskName, false, std::nullopt, std::nullopt});
      entries.push_back({kInfoName, false, std::nullopt, std::nullopt});
      entries.push_back({kCheckName, false, std::nullopt, std::nullopt});
      if (auto peek = Unopened(node)) {
        if (SnapshotsDirAlways(peek->format) || peek->snapshots > 0) {
          Node child = node;
          child.kind = NodeKind::kSnapshotsDir;
          // (in a writable pool its mode depends on the image: no attributes)
          std::optional<struct stat> st;
          std::optional<Node> known;
          if (options_.readonly) st = BaseStat(child), known = child;
          entries.push_back({kSnapshotsName, true, st, known});
        }
        break;
      }
      KVMFS_ASSIGN_OR_RETURN(auto image, ImageOf(node));
      Node child = node;
      child.image = image;
      child.view = ViewId::Top();
      if (HasSnapshotsDir(*image)) {
        child.kind = NodeKind::kSnapshotsDir;
        entries.push_back({kSnapshotsName, true, StatNode(child), child});
      }
      if (image->depth() > 1) {
        child.kind = NodeKind::kBackingDir;
        entries.push_back({kBackingName, true, StatNode(child), child});
      }
      break;
    }
    case NodeKind::kSnapshotsDir:
    case NodeKind::kBackingDir: {
      if (!node.image) break;  // an unopened image without snapshots
      Node child = node;
      child.kind = node.kind == NodeKind::kSnapshotsDir ? NodeKind::kSnapshotDir : NodeKind::kLayerDir;
      const struct stat st = BaseStat(child);
      if (node.kind == NodeKind::kSnapshotsDir) {
        const std::vector<SnapshotInfo> snapshots = node.image->snapshots();
        const std::vector<std::string> names = SnapshotDirNames(snapshots);
        for (size_t i = 0; i < names.size() && i < snapshots.size(); ++i) {
          child.view = ViewId::Snapshot(snapshots[i].id);
          entries.push_back({names[i], true, st, child});
        }
      } else {
        const std::vector<std::string> names = node.image->LayerDirNames();
        for (size_t i = 0; i < names.size(); ++i) {
          child.view = ViewId::Layer(i + 1);
          entries.push_back({names[i], true, st, child});
        }
      }
      break;
    }
    case NodeKind::kSnapshotDir:
    case NodeKind::kLayerDir:
      entries.push_back({kDiskName, false, std::nullopt, std::nullopt});
      entries.push_back({kInfoName, false, std::nullopt, std::nullopt});
      if (node.kind == NodeKind::kLayerDir) entries.push_back({kCheckName, false, std::nullopt, std::nullopt});
      break;
    case NodeKind::kDisk:
    case NodeKind::kInfo:
    case NodeKind::kCheck:
      return Status::FromErrno(ENOTDIR, path);
  }
  return entries;
}

Result<OpenFile> Namespace::Open(const std::string& path, int flags) {
  KVMFS_ASSIGN_OR_RETURN(Node node, Resolve(path));
  return Open(node, path, flags);
}

Result<OpenFile> Namespace::Open(const Node& node_in, const std::string& path, int flags) {
  Node node = node_in;
  if (node.IsDir()) return Status::FromErrno(EISDIR, path);
  const bool write = (flags & O_ACCMODE) != O_RDONLY;
  const bool top_disk = node.kind == NodeKind::kDisk && node.view.kind == ViewId::Kind::kTop;
  if (write || (flags & O_TRUNC) != 0) {
    if (options_.readonly) return Status::ReadOnly(path + ": the pool is read-only");
    if (!top_disk) return Status::ReadOnly(path + ": read-only (only an image's own disk.raw is writable)");
    KVMFS_RETURN_IF_ERROR(PrepareWrite(node));
    KVMFS_RETURN_IF_ERROR(node.image->CanWrite());
    // A disk has no "empty" state to truncate to; dd needs conv=notrunc.
    if ((flags & O_TRUNC) != 0)
      return Status::InvalidArgument(path + ": O_TRUNC: a disk cannot be truncated (dd: use conv=notrunc)");
  }
  // Opening a view looks at every file of its chain: a change from outside
  // is seen no later than here.
  node.image->EnsureCurrent(nullptr, true);
  OpenFile file;
  file.owner = node.image;
  if (node.kind == NodeKind::kCheck) {
    // Made at this open (the check runs now): no page cache, no size.
    file.is_info = file.fresh = true;
    KVMFS_ASSIGN_OR_RETURN(file.content, CheckText(node, path));
    return file;
  }
  if (node.kind == NodeKind::kInfo) {
    file.is_info = true;
    file.content = node.image->InfoText(node.view);
  } else {
    KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<Image> image, node.image->ViewImage(node.view));
    AccessOptions access;
    access.force_share = options_.force_share;
    KVMFS_ASSIGN_OR_RETURN(file.handle, node.image->AcquireHandle(node.view, write, access));
    file.image = node.image->MakeLiveView(node.view, std::move(image), write, access.force_share);
    file.writable = write;
    file.sync = (flags & (O_SYNC | O_DSYNC)) != 0;
  }
  file.unchanged = node.image->MarkOpened(node.view, file.is_info);
  return file;
}

Status Namespace::WithWriter(const Node& node_in, const std::function<Status(Image&)>& fn) {
  if (options_.readonly) return Status::ReadOnly(node_in.host_path + ": the pool is read-only");
  Node node = node_in;
  KVMFS_RETURN_IF_ERROR(PrepareWrite(node));
  KVMFS_RETURN_IF_ERROR(node.image->CanWrite());
  AccessOptions access;
  access.force_share = options_.force_share;
  const ViewId top = ViewId::Top();
  // EndWrites and unlock when `handle` goes, on the way out.
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<DiskHandle> handle, node.image->AcquireHandle(top, true, access));
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<Image> image, node.image->ViewImage(top));
  std::shared_ptr<Image> view = node.image->MakeLiveView(top, std::move(image), true, false);
  return fn(*view);
}

Status Namespace::Truncate(const std::string& path, uint64_t size) {
  KVMFS_ASSIGN_OR_RETURN(Node node, Resolve(path));
  return Truncate(node, path, size);
}

Status Namespace::Truncate(const Node& node, const std::string& path, uint64_t size) {
  if (node.IsDir()) return Status::FromErrno(EISDIR, path);
  if (node.kind != NodeKind::kDisk || node.view.kind != ViewId::Kind::kTop)
    return Status::ReadOnly(path + ": read-only (only an image's own disk.raw is writable)");
  return WithWriter(node, [&](Image& image) { return image.Resize(size).WithContext(path); });
}

namespace {

// "/a/vm.qcow2/snapshots/NAME" -> ("/a/vm.qcow2/snapshots", "NAME").
std::pair<std::string, std::string> SplitLast(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  size_t slash = p.rfind('/');
  if (slash == std::string::npos) return {"/", p};
  return {slash == 0 ? "/" : p.substr(0, slash), p.substr(slash + 1)};
}

}  // namespace

Status Namespace::MakeSnapshotDir(const std::string& path) {
  auto [parent_path, name] = SplitLast(path);
  KVMFS_ASSIGN_OR_RETURN(Node parent, Resolve(parent_path));
  return MakeSnapshotDir(std::move(parent), path, name);
}

Status Namespace::MakeSnapshotDir(Node parent, const std::string& path, const std::string& name) {
  if (parent.kind == NodeKind::kSnapshotsDir) KVMFS_RETURN_IF_ERROR(EnsureImage(parent));
  if (parent.kind != NodeKind::kSnapshotsDir) {
    if (Lookup(parent, name).ok()) return Status::AlreadyExists(path + ": exists");
    return Status::ReadOnly(path + ": only snapshots/NAME directories can be made");
  }
  if (parent.image->SnapshotIdForDir(name)) return Status::AlreadyExists(path + ": snapshot exists");
  auto snapshot_name = SnapshotNameForDir(name);
  if (!snapshot_name)
    return Status::InvalidArgument(path + ": '" + name +
                                   "' is not a snapshot name (escape '%' as %25 and '/' as %2F)");
  for (const SnapshotInfo& s : parent.image->snapshots())
    if (s.name == *snapshot_name)
      return Status::AlreadyExists(path + ": a snapshot named '" + s.name + "' exists (id " + s.id + ")");
  // Shown as running in the metrics while it lasts (the format layer
  // reports no finer progress: 0 until done).
  auto [pool_label, image_label] = MetricLabels(parent.host_path);
  metrics::Progress progress("snapshot_create", pool_label, image_label);
  return WithWriter(parent, [&](Image& image) -> Status {
    auto created = image.CreateSnapshot(*snapshot_name);
    if (!created.ok()) return created.status().WithContext(path);
    spdlog::info("{}: created snapshot '{}' (id {})", parent.host_path, created->name, created->id);
    snapshots_created_.fetch_add(1, std::memory_order_relaxed);
    return Status::OK();
  });
}

Status Namespace::RemoveSnapshotDir(const std::string& path) {
  KVMFS_ASSIGN_OR_RETURN(Node node, Resolve(path));
  return RemoveSnapshotDir(node, path);
}

Status Namespace::RemoveSnapshotDir(const Node& node, const std::string& path) {
  if (node.kind != NodeKind::kSnapshotDir) {
    if (!node.IsDir()) return Status::FromErrno(ENOTDIR, path);
    return Status::ReadOnly(path + ": only snapshots/NAME directories can be removed");
  }
  if (node.image->ViewOpen(node.view))
    return Status::Busy(path + ": the snapshot's disk.raw is open");
  auto [pool_label, image_label] = MetricLabels(node.host_path);
  metrics::Progress progress("snapshot_delete", pool_label, image_label);
  return WithWriter(node, [&](Image& image) -> Status {
    Status deleted = image.DeleteSnapshot(node.view.snapshot_id);
    if (!deleted.ok()) return deleted.WithContext(path);
    spdlog::info("{}: deleted snapshot id {}", node.host_path, node.view.snapshot_id);
    snapshots_deleted_.fetch_add(1, std::memory_order_relaxed);
    return Status::OK();
  });
}

std::pair<std::string, std::string> Namespace::MetricLabels(const std::string& host_path) const {
  return {options_.pool_name.empty() ? options_.source : options_.pool_name,
          RelativeImagePath(options_.source, host_path)};
}

Result<struct statvfs> Namespace::StatFs() {
  KVMFS_ASSIGN_OR_RETURN(struct statvfs sv, store_.StatFs(options_.source));
  if (options_.readonly) sv.f_flag |= ST_RDONLY;
  return sv;
}

}  // namespace kvmfs::pool
