// Whole-file reads for the unit tests: one read(2) loop into a buffer sized
// from fstat, not an istreambuf_iterator, which costs tens of nanoseconds a
// byte in an unoptimized ASan build (the 100 MiB oracle images took minutes).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace kvmfs::test {

// The bytes of `path`; empty when it cannot be opened (the caller's
// comparison then fails and names the file).
inline std::vector<uint8_t> ReadFileBytes(const std::string& path) {
  std::vector<uint8_t> out;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  struct stat st;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size));
  size_t have = 0;
  for (;;) {
    if (out.size() - have < 65536) out.resize(have + std::max<size_t>(65536, out.capacity() - have));
    const ssize_t n = ::read(fd, out.data() + have, out.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(have);
  return out;
}

}  // namespace kvmfs::test
