// Test helper: which of QEMU's lock bytes (100..103, 200..203) of a file
// another open file description holds, as QEMU tests them with F_OFD_GETLK.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace kvmfs::testing {

inline std::vector<int> HeldLockBytes(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0) << path;
  std::vector<int> bytes;
  for (int b : {100, 101, 102, 103, 200, 201, 202, 203}) {
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = b;
    fl.l_len = 1;
    EXPECT_EQ(::fcntl(fd, F_OFD_GETLK, &fl), 0);
    if (fl.l_type != F_UNLCK) bytes.push_back(b);
  }
  ::close(fd);
  return bytes;
}

}  // namespace kvmfs::testing
