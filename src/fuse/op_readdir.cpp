// readdir: the whole listing in one reply (offset 0 entries).
#include "fuse/ops.h"

namespace kvmfs::fuse {

int ReadDir(const char* path, void* buf, fuse_fill_dir_t filler, off_t, fuse_file_info*,
            fuse_readdir_flags) {
  auto entries = Pools()->List(path);
  if (!entries.ok()) return Reply(entries.status());
  struct stat st {};
  st.st_mode = S_IFDIR;
  filler(buf, ".", &st, 0, fuse_fill_dir_flags(0));
  filler(buf, "..", &st, 0, fuse_fill_dir_flags(0));
  for (const pool::DirEntry& e : *entries) {
    st.st_mode = e.is_dir ? S_IFDIR : S_IFREG;
    if (filler(buf, e.name.c_str(), &st, 0, fuse_fill_dir_flags(0)) != 0) break;
  }
  return 0;
}

}  // namespace kvmfs::fuse
