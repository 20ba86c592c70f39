// open/release: a FileHandle per open file, holding the opened chain. Whether
// the kernel keeps the file's cached pages is decided here (kernel_cache.h):
// kept while the view is unchanged since its last open, never for O_DIRECT;
// a writable image's info.json is read afresh at every open (direct I/O, so
// that its length never comes from cached attributes), and so is an image
// that other hosts may write unseen (RBD) unless opened for writing.
#include <fcntl.h>
#include <linux/fuse.h>

#include <spdlog/spdlog.h>

#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

Result<std::unique_ptr<FileHandle>> OpenHandle(Filesystem& fs, fuse_ino_t ino, int flags,
                                               pool::SetNode* node) {
  KVMFS_ASSIGN_OR_RETURN(InodeTable::Entry entry, fs.Fresh(ino));
  KVMFS_ASSIGN_OR_RETURN(pool::OpenFile file, fs.Pools()->Open(entry.node, fs.PathOf(ino), flags));
  auto handle = std::make_unique<FileHandle>();
  handle->ns = entry.node.ns;
  handle->inode = std::move(entry.inode);
  handle->file = std::move(file);
  handle->io = ImageIoFor(fs.PathOf(ino), entry.node, *fs.Pools());
  *node = std::move(entry.node);
  return handle;
}

// fuse_reply_open, with FOPEN_PARALLEL_DIRECT_WRITES added to direct I/O:
// the kernel then sends several O_DIRECT writes to the file at once (within
// its size, and while no open of it uses the page cache) instead of one at a
// time under the inode lock. libfuse 3.14 has no field for that flag; this is
// the struct fuse_open_out it would send, with the bit.
int ReplyOpen(fuse_req_t req, const fuse_file_info& fi) {
  fuse_open_out out{};
  out.fh = fi.fh;
  if (fi.direct_io) out.open_flags |= FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
  if (fi.keep_cache) out.open_flags |= FOPEN_KEEP_CACHE;
  if (fi.cache_readdir) out.open_flags |= FOPEN_CACHE_DIR;
  if (fi.nonseekable) out.open_flags |= FOPEN_NONSEEKABLE;
  if (fi.noflush) out.open_flags |= FOPEN_NOFLUSH;
  return fuse_reply_buf(req, reinterpret_cast<const char*>(&out), sizeof out);
}

}  // namespace

void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kOpen, ino);
  const uint64_t epoch = fs.cache.epoch();
  pool::SetNode node;
  auto opened = OpenHandle(fs, ino, fi->flags, &node);
  if (!opened.ok()) {
    // Refusals an administrator needs to see (locked by QEMU, read-only
    // image) are logged; lookups of missing files are not.
    const auto code = opened.status().code();
    if (code == Status::Code::kBusy || code == Status::Code::kReadOnly)
      spdlog::info("open {}: {}", fs.PathOf(ino), opened.status().ToString());
    else
      spdlog::debug("open {}: {}", fs.PathOf(ino), opened.status().ToString());
    return ReplyError(req, opened.status());
  }
  std::unique_ptr<FileHandle> handle = std::move(opened).value();
  const pool::OpenFile& file = handle->file;
  const bool unseen_writes = UnseenWrites(node);
  if (fi->flags & O_DIRECT) {
    fi->direct_io = 1;  // O_DIRECT: bypass the page cache, as the caller asked
  } else if (file.fresh || (file.is_info && !Immutable(node))) {
    // (check.json is made at every open and its size is 0: only direct
    // reads return its text.)
    fi->direct_io = 1;
  } else if (unseen_writes && !file.writable) {
    // Another host may write the image (RBD) while this is open, and may
    // have written it since any page was kept: every read asks the store.
    fi->direct_io = 1;
  } else {
    // A writer holds the image's write lock: what it caches stays true while
    // it is open (but pages kept from before may not be).
    fi->keep_cache = file.unchanged && !unseen_writes ? 1 : 0;
  }
  // Nothing to write back at close(2) of a read-only file: no FLUSH request.
  if (!file.writable) fi->noflush = 1;
  fi->fh = reinterpret_cast<uintptr_t>(handle.get());
  std::shared_ptr<Inode> inode = handle->inode;
  // Known before the reply: a RELEASE may follow it at once.
  fs.AddHandle(handle.get());
  // An interrupted open: the kernel will never release it.
  if (ReplyOpen(req, *fi) != 0) {
    fs.RemoveHandle(handle.get());
    return;
  }
  handle.release();
  fs.cache.Recheck(*inode, epoch);
}

void Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  fs.Count(Op::kRelease, ino);
  AllDoneWithFile(Handle(fi));
  fs.RemoveHandle(Handle(fi));
  delete Handle(fi);
  fi->fh = 0;
  fuse_reply_err(req, 0);
}

}  // namespace kvmfs::fuse
