// rename: `mv` of an image file nothing uses, within its pool
// (Namespace::RenameImage). The kernel moves its own dentry with the inode
// kvmfs resolved under the old name: that inode (and those of its contents)
// resolve the new host path from before the reply (InodeTable::Moved), and
// both names' entries are dropped after the reply, so the next lookup
// resolves the new name afresh. kvmfs never replaces a name (EEXIST), and exchanges and
// whiteouts are not offered (EINVAL).
#include <stdio.h>

#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

Status RenameNode(Filesystem& fs, fuse_ino_t parent, const std::string& name, fuse_ino_t newparent,
                  const std::string& newname, const std::string& path) {
  KVMFS_ASSIGN_OR_RETURN(InodeTable::Entry from, fs.Fresh(parent));
  KVMFS_ASSIGN_OR_RETURN(InodeTable::Entry to, fs.Fresh(newparent));
  auto pools = fs.Pools();
  KVMFS_ASSIGN_OR_RETURN(pool::SetNode node, pools->Lookup(from.node, name));
  KVMFS_RETURN_IF_ERROR(pools->Rename(node, path, to.node, newname));
  // Before the reply: the kernel keeps the moved directory's inode under
  // the new name until the invalidation after the reply reaches it.
  fs.inodes.Moved(node.ns.get(), node.node.host_path, to.node.node.host_path + "/" + newname);
  return Status::OK();
}

}  // namespace

void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
            const char* newname, unsigned int flags) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kRename, parent);
  const std::string path = fs.PathOf(parent, name);
  const std::string to = fs.PathOf(newparent, newname);
  Status renamed = (flags & ~unsigned{RENAME_NOREPLACE}) != 0
                       ? Status::InvalidArgument(path + ": rename flags " + std::to_string(flags) +
                                                 " (exchange, whiteout) are not offered")
                       : RenameNode(fs, parent, name, newparent, newname, path);
  if (!renamed.ok()) {
    // Refusals say why (EBUSY: what uses the image).
    spdlog::info("rename {} to {}: {}", path, to, renamed.ToString());
    return ReplyError(req, renamed);
  }
  fuse_reply_err(req, 0);
  fs.cache.EntriesChanged({{parent, name}, {newparent, newname}});
}

}  // namespace kvmfs::fuse
