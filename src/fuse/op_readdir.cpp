// opendir/readdir/releasedir: a directory is listed once per open (at the
// first readdir), and handed out in pieces with offsets so that libfuse can
// answer READDIRPLUS: entries whose attributes come with the listing
// (directories) reach the kernel with their attributes, which saves it a
// LOOKUP each (ls -R of a large pool: one request per image less).
#include "fuse/ops.h"

namespace kvmfs::fuse {
namespace {

// What fi->fh points to for an open directory.
struct DirHandle {
  std::optional<std::vector<pool::DirEntry>> entries;  // set by the first readdir
};

DirHandle* DirOf(const fuse_file_info* fi) {
  return reinterpret_cast<DirHandle*>(static_cast<uintptr_t>(fi->fh));
}

}  // namespace

int OpenDir(const char*, fuse_file_info* fi) {
  fi->fh = reinterpret_cast<uintptr_t>(new DirHandle);
  return 0;
}

int ReleaseDir(const char*, fuse_file_info* fi) {
  delete DirOf(fi);
  fi->fh = 0;
  return 0;
}

int ReadDir(const char* path, void* buf, fuse_fill_dir_t filler, off_t off, fuse_file_info* fi,
            fuse_readdir_flags flags) {
  DirHandle* dir = DirOf(fi);
  if (dir == nullptr || off < 0) return -EINVAL;
  // Offset 0 is a (re)start (rewinddir): list again.
  if (off == 0 || !dir->entries) {
    auto listed = Pools()->List(path);
    if (!listed.ok()) return Reply(listed.status());
    dir->entries = std::move(listed).value();
  }
  const std::vector<pool::DirEntry>& entries = *dir->entries;
  const bool plus = (flags & FUSE_READDIR_PLUS) != 0;
  // Entry i of ".", "..", entries... has offset i + 1 (the offset of the next one).
  const size_t count = entries.size() + 2;
  for (size_t i = static_cast<size_t>(off); i < count; ++i) {
    const off_t next = static_cast<off_t>(i + 1);
    struct stat st {};
    if (i < 2) {
      st.st_mode = S_IFDIR;
      if (filler(buf, i == 0 ? "." : "..", &st, next, fuse_fill_dir_flags(0)) != 0) break;
      continue;
    }
    const pool::DirEntry& e = entries[i - 2];
    if (plus && e.st) {
      if (filler(buf, e.name.c_str(), &*e.st, next, FUSE_FILL_DIR_PLUS) != 0) break;
      continue;
    }
    st.st_mode = e.is_dir ? S_IFDIR : S_IFREG;
    if (filler(buf, e.name.c_str(), &st, next, fuse_fill_dir_flags(0)) != 0) break;
  }
  return 0;
}

}  // namespace kvmfs::fuse
