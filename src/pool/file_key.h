// FileKey: what identifies one version of a host file for caching purposes.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <string>

#include "base/path.h"  // CanonicalPath, IsUnder
#include "kvmfs/status.h"

namespace kvmfs::pool {

// (dev, ino, mtime, ctime, size): a cached verdict or opened image is reused
// only while all of them are unchanged. (ctime catches what mtime can be set
// back to hide, and a new file that reuses a deleted one's inode.)
struct FileKey {
  dev_t dev = 0;
  ino_t ino = 0;
  int64_t mtime_sec = 0;
  int64_t mtime_nsec = 0;
  int64_t ctime_sec = 0;
  int64_t ctime_nsec = 0;
  int64_t size = 0;

  static FileKey FromStat(const struct stat& st) {
    return FileKey{st.st_dev,          st.st_ino,          st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                   st.st_ctim.tv_sec, st.st_ctim.tv_nsec, st.st_size};
  }
  bool operator==(const FileKey&) const = default;
};

// stat(2) of `path` (following symlinks). Errors: kNotFound, kPermission, kIOError.
Result<struct stat> StatPath(const std::string& path);

}  // namespace kvmfs::pool
