// mkdir/rmdir: in a folder, `mkdir NAME.qcow2` makes an empty image of the
// format the extension says and `mkdir NAME` a folder; `rmdir` removes an
// empty folder, never an image (Namespace::MakeDir/RemoveDir). Internal
// snapshots, as <image>/snapshots/NAME directories: the kernel updates its
// own view of the parent; what else shows the
// snapshot list (info.json, snapshots/ listings reached through other
// names) is invalidated after the reply (kernel_cache.h: never from inside
// a request on the parent).
#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

// The canonical path of the image `node` belongs to, or "" above images.
std::string ImagePathOf(const pool::SetNode& node) {
  if (node.kind != pool::SetNode::Kind::kPool || !node.node.image) return "";
  return node.node.image->path();
}

struct Made {
  pool::SetNode node;
  struct stat st;
  std::string image_path;
};

Result<Made> Make(Filesystem& fs, fuse_ino_t parent, const std::string& name) {
  KVMFS_ASSIGN_OR_RETURN(InodeTable::Entry dir, fs.Fresh(parent));
  auto pools = fs.Pools();
  KVMFS_RETURN_IF_ERROR(pools->MakeDir(dir.node, fs.PathOf(parent, name.c_str()), name));
  KVMFS_ASSIGN_OR_RETURN(pool::SetNode node, pools->Lookup(dir.node, name));
  KVMFS_ASSIGN_OR_RETURN(struct stat st, pools->Stat(node));
  std::string image_path = ImagePathOf(node);
  return Made{std::move(node), st, std::move(image_path)};
}

Result<std::string> Remove(Filesystem& fs, fuse_ino_t parent, const std::string& name) {
  KVMFS_ASSIGN_OR_RETURN(InodeTable::Entry dir, fs.Fresh(parent));
  auto pools = fs.Pools();
  KVMFS_ASSIGN_OR_RETURN(pool::SetNode node, pools->Lookup(dir.node, name));
  KVMFS_RETURN_IF_ERROR(pools->RemoveDir(node, fs.PathOf(parent, name.c_str())));
  return ImagePathOf(node);
}

}  // namespace

void MkDir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kMkDir, parent);
  auto made = Make(fs, parent, name);
  if (!made.ok()) {
    spdlog::info("mkdir {}: {}", fs.PathOf(parent, name), made.status().ToString());
    return ReplyError(req, made.status());
  }
  std::shared_ptr<Inode> inode = fs.inodes.Add(parent, name, made->node);
  fuse_entry_param e = fs.EntryOf(inode->ino, made->node, made->st);
  if (fuse_reply_entry(req, &e) != 0) fs.inodes.Forget(inode->ino, 1);
  if (!made->image_path.empty()) fs.cache.SnapshotsChanged(made->image_path);
}

void RmDir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kRmDir, parent);
  auto removed = Remove(fs, parent, name);
  if (!removed.ok()) {
    spdlog::info("rmdir {}: {}", fs.PathOf(parent, name), removed.status().ToString());
    return ReplyError(req, removed.status());
  }
  fuse_reply_err(req, 0);
  if (!removed->empty()) fs.cache.SnapshotsChanged(*removed);
}

}  // namespace kvmfs::fuse
