// opendir/readdir/readdirplus/releasedir. No OPENDIR round trips: OPENDIR
// answers ENOSYS once, and the kernel then opens directories itself and
// caches every listing (FOPEN_CACHE_DIR), checked against the directory's
// mtime (folders: the host folder's; below an image: the image file's) and
// dropped by kvmfs's invalidations (kernel_cache.h). A listing is made at
// offset 0 and kept in the inode table for the calls that continue it.
// READDIRPLUS hands out the attributes that come with the listing (folders,
// image/snapshot/layer directories), which links their inodes and saves the
// kernel a LOOKUP each; other entries (disk.raw, info.json) go without.
#include <vector>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

using Listing = std::shared_ptr<const std::vector<pool::DirEntry>>;

Result<Listing> ListingFor(Filesystem& fs, fuse_ino_t ino, off_t off, pool::SetNode* dir,
                           fuse_ino_t* parent) {
  Listing listing = off > 0 ? fs.inodes.Listing(ino) : nullptr;
  auto entry = fs.inodes.Find(ino);
  if (!entry) return Status::FromErrno(ESTALE, "unknown inode");
  *parent = entry->inode->parent;
  if (listing) {
    *dir = std::move(entry->node);
    return listing;
  }
  KVMFS_ASSIGN_OR_RETURN(InodeTable::Entry fresh, fs.Fresh(ino));
  KVMFS_ASSIGN_OR_RETURN(std::vector<pool::DirEntry> entries,
                         fs.Pools()->List(fresh.node, fs.PathOf(ino)));
  listing = std::make_shared<const std::vector<pool::DirEntry>>(std::move(entries));
  fs.inodes.SetListing(ino, listing);
  fresh.inode->MarkCached();
  *dir = std::move(fresh.node);
  return listing;
}

// Fills `buf` with entries from offset `off` (".", "..", then the listing:
// entry i has offset i + 1, the offset of the next one). Returns the bytes
// used; `linked` gets the inodes READDIRPLUS counted a lookup for.
size_t Fill(fuse_req_t req, Filesystem& fs, fuse_ino_t ino, fuse_ino_t parent, const pool::SetNode& dir,
            const std::vector<pool::DirEntry>& entries, off_t off, bool plus, std::vector<char>& buf,
            std::vector<fuse_ino_t>& linked) {
  size_t used = 0;
  const size_t count = entries.size() + 2;
  for (size_t i = static_cast<size_t>(off); i < count; ++i) {
    const off_t next = static_cast<off_t>(i + 1);
    const pool::DirEntry* e = i < 2 ? nullptr : &entries[i - 2];
    const char* name = i == 0 ? "." : i == 1 ? ".." : e->name.c_str();
    fuse_entry_param param{};
    param.attr.st_mode = (e == nullptr || e->is_dir) ? S_IFDIR : S_IFREG;
    param.attr.st_ino = i == 0 ? ino : i == 1 ? parent : fs.inodes.NumberOf(ino, e->name);
    std::shared_ptr<Inode> child;
    if (plus && e != nullptr && e->st && e->node && dir.kind == pool::SetNode::Kind::kPool) {
      pool::SetNode node{pool::SetNode::Kind::kPool, dir.ns, *e->node};
      child = fs.inodes.Add(ino, e->name, node);
      param = fs.EntryOf(child->ino, node, *e->st);
    }
    const size_t left = buf.size() - used;
    size_t n = plus ? fuse_add_direntry_plus(req, buf.data() + used, left, name, &param, next)
                    : fuse_add_direntry(req, buf.data() + used, left, name, &param.attr, next);
    if (n > left) {
      if (child) fs.inodes.Forget(child->ino, 1);  // not sent
      break;
    }
    if (child) linked.push_back(child->ino);
    used += n;
  }
  return used;
}

void ListDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus) {
  Filesystem& fs = Fs(req);
  fs.Count(plus ? Op::kReadDirPlus : Op::kReadDir, ino);
  if (off < 0) return ReplyError(req, Status::InvalidArgument("negative offset"));
  pool::SetNode dir;
  fuse_ino_t parent = FUSE_ROOT_ID;
  auto listing = ListingFor(fs, ino, off, &dir, &parent);
  if (!listing.ok()) return ReplyError(req, listing.status());
  std::vector<char> buf(size);
  std::vector<fuse_ino_t> linked;
  size_t used = Fill(req, fs, ino, parent, dir, **listing, off, plus, buf, linked);
  // The end of the listing: the entries need not be kept any longer.
  if (used == 0) fs.inodes.SetListing(ino, nullptr);
  if (fuse_reply_buf(req, buf.data(), used) != 0) {
    for (fuse_ino_t child : linked) fs.inodes.Forget(child, 1);  // the kernel took none of them
  }
}

}  // namespace

void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kOpenDir, ino);
  if (fs.no_opendir) {
    fuse_reply_err(req, ENOSYS);  // never asked again
    return;
  }
  // A kernel without FUSE_CAP_NO_OPENDIR_SUPPORT: what it would assume.
  fi->cache_readdir = 1;
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  ListDir(req, ino, size, off, false);
}

void ReadDirPlus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  ListDir(req, ino, size, off, true);
}

void ReleaseDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  Fs(req).Count(Op::kReleaseDir, ino);
  fuse_reply_err(req, 0);
}

}  // namespace kvmfs::fuse
