// setattr: truncate/ftruncate through Image::Resize (growing; shrinking is
// EINVAL unless the format does it safely). Nothing else of a node can be
// set: chmod, chown and utimes fail with EPERM (EROFS from the kernel when
// read-only), as the other modifying operations (op_refused.cpp).
#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

constexpr int kRefusedBits = FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID;

Status TruncateOpen(const pool::OpenFile& file, uint64_t size) {
  if (!file.writable || file.is_info) return Status::ReadOnly("not open for writing");
  if (size == file.image->size()) return Status::OK();
  Status resized = file.image->Resize(size);
  file.owner->Changed();
  return resized;
}

// Truncates `ino` to `size` (through the open file `handle` when it is
// writable); the kernel's caches of views above the image go.
Status TruncateInode(fuse_req_t req, fuse_ino_t ino, uint64_t size, FileHandle* handle) {
  Filesystem& fs = Fs(req);
  if (handle != nullptr && handle->file.writable) {
    Status st = TruncateOpen(handle->file, size);
    Changed(req, handle->file, ino);
    return st;
  }
  KVMFS_ASSIGN_OR_RETURN(InodeTable::Entry entry, fs.Fresh(ino));
  Status st = fs.Pools()->Truncate(entry.node, fs.PathOf(ino), size);
  if (entry.node.kind == pool::SetNode::Kind::kPool && entry.node.node.image)
    fs.cache.Written(entry.node.node.image->path(), ino);
  return st;
}

Result<struct stat> AttrAfter(Filesystem& fs, fuse_ino_t ino, pool::SetNode* node) {
  KVMFS_ASSIGN_OR_RETURN(InodeTable::Entry entry, fs.Fresh(ino));
  KVMFS_ASSIGN_OR_RETURN(struct stat st, fs.Pools()->Stat(entry.node));
  st.st_ino = ino;
  *node = std::move(entry.node);
  return st;
}

}  // namespace

void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kSetAttr, ino);
  // Times alone (touch, utimes) and modes or owners are not ours to change;
  // times that come with a size (truncate) follow from the resize.
  if (!(to_set & FUSE_SET_ATTR_SIZE) || (to_set & kRefusedBits)) {
    ReplyErrno(req, EPERM);
    return;
  }
  if (attr->st_size < 0) return ReplyError(req, Status::InvalidArgument("negative size"));
  FileHandle* handle = fi != nullptr ? Handle(fi) : nullptr;
  Status st = TruncateInode(req, ino, static_cast<uint64_t>(attr->st_size), handle);
  if (handle != nullptr) DoneWithFile(handle);
  if (!st.ok()) {
    spdlog::warn("truncate {} to {}: {}", fs.PathOf(ino), attr->st_size, st.ToString());
    return ReplyError(req, st);
  }
  pool::SetNode node;
  auto after = AttrAfter(fs, ino, &node);
  if (!after.ok()) return ReplyError(req, after.status());
  fuse_reply_attr(req, &*after, AttrTimeout(node));
}

}  // namespace kvmfs::fuse
