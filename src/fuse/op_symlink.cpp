// symlink: `ln -s BASE NAME.qcow2` in a folder makes NAME an overlay of the
// image BASE (a linked clone, Namespace::CloneImage); BASE is recorded as
// its backing file name, relative to the folder as a link target is.
//
// The kernel asked for a symbolic link and takes only a symbolic link in the
// reply (anything else fails the call with EIO): it gets a link inode that is
// valid for no time, numbered with a number reserved for nothing else, and
// the entry is dropped right after the reply, so that the next lookup finds
// NAME as what it is, an image directory.
#include <spdlog/spdlog.h>

#include <cstring>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

Status MakeLink(Filesystem& fs, fuse_ino_t parent, const std::string& name, const std::string& target,
                const std::string& path) {
  KVMFS_ASSIGN_OR_RETURN(InodeTable::Entry dir, fs.Fresh(parent));
  return fs.Pools()->MakeLink(dir.node, path, name, target);
}

}  // namespace

void Symlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kSymlink, parent);
  const std::string path = fs.PathOf(parent, name);
  Status made = MakeLink(fs, parent, name, link, path);
  if (!made.ok()) {
    spdlog::info("symlink {} -> {}: {}", path, link, made.ToString());
    return ReplyError(req, made);
  }
  const fuse_ctx* ctx = fuse_req_ctx(req);
  fuse_entry_param e{};
  // A name no entry can have ('/' is in it): the number stays this link's.
  e.ino = fs.inodes.NumberOf(parent, std::string("/link/") + name);
  e.attr.st_ino = e.ino;
  e.attr.st_mode = S_IFLNK | 0777;
  e.attr.st_nlink = 1;
  e.attr.st_size = static_cast<off_t>(std::strlen(link));
  e.attr.st_uid = ctx->uid;
  e.attr.st_gid = ctx->gid;
  e.attr_timeout = 0;
  e.entry_timeout = 0;
  fuse_reply_entry(req, &e);
  fs.cache.EntriesChanged({{parent, name}});
}

}  // namespace kvmfs::fuse
