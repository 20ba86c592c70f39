#include "pool/file_key.h"

#include <cerrno>

namespace kvmfs::pool {

Result<struct stat> StatPath(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return Status::FromErrno(errno, path);
  return st;
}

}  // namespace kvmfs::pool
