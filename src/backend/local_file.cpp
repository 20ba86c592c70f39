// A local file or block device, read with pread/pwrite.
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "base/unique_fd.h"
#include "kvmfs/backend.h"

namespace kvmfs {
namespace {

class LocalFile final : public Backend {
 public:
  LocalFile(std::string path, UniqueFd fd, bool writable, bool is_blockdev)
      : path_(std::move(path)), fd_(std::move(fd)), writable_(writable), is_blockdev_(is_blockdev) {}

  Status ReadAt(uint64_t off, void* buf, size_t len) override {
    auto* p = static_cast<uint8_t*>(buf);
    while (len > 0) {
      ssize_t n = ::pread(fd_.get(), p, len, static_cast<off_t>(off));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(errno, path_ + ": read at offset " + std::to_string(off));
      }
      if (n == 0) {  // end of file: the rest reads as zeros
        std::memset(p, 0, len);
        return Status::OK();
      }
      p += n;
      off += static_cast<uint64_t>(n);
      len -= static_cast<size_t>(n);
    }
    return Status::OK();
  }

  Status WriteAt(uint64_t off, const void* buf, size_t len) override {
    if (!writable_) return Status::ReadOnly(path_ + ": opened read-only");
    auto* p = static_cast<const uint8_t*>(buf);
    while (len > 0) {
      ssize_t n = ::pwrite(fd_.get(), p, len, static_cast<off_t>(off));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(errno, path_ + ": write at offset " + std::to_string(off));
      }
      p += n;
      off += static_cast<uint64_t>(n);
      len -= static_cast<size_t>(n);
    }
    return Status::OK();
  }

  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    if (!writable_) return Status::ReadOnly(path_ + ": opened read-only");
    if (len == 0) return Status::OK();
    const std::string where = path_ + ": zeroing " + std::to_string(len) + " bytes at offset " +
                              std::to_string(off);
    if (is_blockdev_) {
      // BLKDISCARD only zeroes on devices that promise it; BLKZEROOUT always
      // does (unmapping when the device can), so it serves both cases.
      uint64_t range[2] = {off, len};
      if (::ioctl(fd_.get(), BLKZEROOUT, range) == 0) return Status::OK();
      if (errno != EOPNOTSUPP && errno != ENOTTY && errno != EINVAL)
        return Status::FromErrno(errno, where + " (BLKZEROOUT)");
      return Backend::WriteZeroes(off, len, unmap);
    }
    // Never change the size: a hole or zero range past the end must not grow
    // the file (KEEP_SIZE), and the part past the end already reads as zeros.
    KVMFS_ASSIGN_OR_RETURN(uint64_t size, Size());
    if (off >= size) return Status::OK();
    len = std::min<uint64_t>(len, size - off);
    const int mode = unmap ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
                           : (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
    if (::fallocate(fd_.get(), mode, static_cast<off_t>(off), static_cast<off_t>(len)) == 0)
      return Status::OK();
    if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
      return Status::FromErrno(errno, where);
    if (!unmap) {
      // No ZERO_RANGE (tmpfs, some network file systems): a punched hole
      // reads as zeros too.
      if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      static_cast<off_t>(off), static_cast<off_t>(len)) == 0)
        return Status::OK();
      if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
        return Status::FromErrno(errno, where);
    }
    return Backend::WriteZeroes(off, len, unmap);
  }

  Status Flush() override {
    if (!writable_) return Status::OK();
    if (::fdatasync(fd_.get()) != 0) return Status::FromErrno(errno, path_ + ": fdatasync");
    return Status::OK();
  }

  Result<uint64_t> Size() override {
    if (is_blockdev_) {
      uint64_t bytes = 0;
      if (::ioctl(fd_.get(), BLKGETSIZE64, &bytes) != 0)
        return Status::FromErrno(errno, path_ + ": BLKGETSIZE64");
      return bytes;
    }
    struct stat st;
    if (::fstat(fd_.get(), &st) != 0) return Status::FromErrno(errno, path_ + ": fstat");
    return static_cast<uint64_t>(st.st_size);
  }

  Status Truncate(uint64_t size) override {
    if (!writable_) return Status::ReadOnly(path_ + ": opened read-only");
    if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0)
      return Status::FromErrno(errno, path_ + ": ftruncate");
    return Status::OK();
  }

  Result<uint64_t> AllocatedBytes() override {
    struct stat st;
    if (::fstat(fd_.get(), &st) != 0) return Status::FromErrno(errno, path_ + ": fstat");
    return static_cast<uint64_t>(st.st_blocks) * 512;
  }

  Result<BlockStatus> GetAllocation(uint64_t off, uint64_t len) override {
    if (is_blockdev_) return BlockStatus{Allocation::kData, len};
    off_t data = ::lseek(fd_.get(), static_cast<off_t>(off), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) return BlockStatus{Allocation::kZero, len};  // hole up to EOF
      return BlockStatus{Allocation::kData, len};  // no SEEK_DATA here: claim data
    }
    if (static_cast<uint64_t>(data) > off)
      return BlockStatus{Allocation::kZero, std::min<uint64_t>(len, uint64_t(data) - off)};
    off_t hole = ::lseek(fd_.get(), static_cast<off_t>(off), SEEK_HOLE);
    if (hole < 0 || static_cast<uint64_t>(hole) <= off) return BlockStatus{Allocation::kData, len};
    return BlockStatus{Allocation::kData, std::min<uint64_t>(len, uint64_t(hole) - off)};
  }

  int fd() const override { return fd_.get(); }
  bool writable() const override { return writable_; }
  BackendCaps caps() const override {
    BackendCaps caps;
    caps.splice = true;
    caps.zeroing = true;
    caps.allocation_map = !is_blockdev_;
    return caps;
  }
  const std::string& name() const override { return path_; }

 private:
  const std::string path_;
  const UniqueFd fd_;
  const bool writable_;
  const bool is_blockdev_;
};

}  // namespace

Result<std::unique_ptr<Backend>> OpenLocalFile(const std::string& path, bool writable) {
  // Image content names the files opened here (backing and data files): a
  // FIFO would block open() and read() for good, a device may act on open.
  // The type is checked before opening, and again on what was opened (the
  // name may have changed in between; O_NONBLOCK keeps that open from
  // waiting for a FIFO writer).
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return Status::FromErrno(errno, path);
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    return Status::InvalidArgument(path + ": not a regular file or block device");
  int fd = ::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return Status::FromErrno(errno, path);
  UniqueFd ufd(fd);
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, path + ": fstat");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    return Status::InvalidArgument(path + ": not a regular file or block device");
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
    return Status::FromErrno(errno, path + ": fcntl");
  return std::unique_ptr<Backend>(
      std::make_unique<LocalFile>(path, std::move(ufd), writable, S_ISBLK(st.st_mode)));
}

}  // namespace kvmfs
