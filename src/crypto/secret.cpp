// Secret: key bytes in their own pages, kept out of swap, core dumps and
// forked children, wiped when dropped.
#include <openssl/crypto.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "kvmfs/cipher.h"

namespace kvmfs {
namespace {

size_t PageSize() {
  static const size_t page = [] {
    long p = ::sysconf(_SC_PAGESIZE);
    return p > 0 ? size_t(p) : size_t(4096);
  }();
  return page;
}

}  // namespace

Result<Secret> Secret::Allocate(size_t len) {
  Secret s;
  if (len == 0) return s;
  const size_t page = PageSize();
  if (len > SIZE_MAX - page) return Status::FromErrno(ENOMEM, "secret of " + std::to_string(len) + " bytes");
  const size_t mapped = (len + page - 1) / page * page;
  void* p = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Status::FromErrno(errno, "secret of " + std::to_string(len) + " bytes");
  // Never in a core dump, never in a child after fork(); locked in RAM when
  // RLIMIT_MEMLOCK allows (a secret in swap outlives the process).
  ::madvise(p, mapped, MADV_DONTDUMP);
#ifdef MADV_WIPEONFORK
  ::madvise(p, mapped, MADV_WIPEONFORK);
#endif
  ::mlock(p, mapped);
  s.data_ = static_cast<uint8_t*>(p);
  s.size_ = len;
  s.mapped_ = mapped;
  return s;
}

Result<Secret> Secret::Copy(const uint8_t* data, size_t len) {
  KVMFS_ASSIGN_OR_RETURN(Secret s, Allocate(len));
  if (len > 0) std::memcpy(s.data_, data, len);
  return s;
}

Secret::~Secret() { Release(); }

Secret::Secret(Secret&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)) {}

Secret& Secret::operator=(Secret&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
  }
  return *this;
}

void Secret::Release() {
  if (data_ == nullptr) return;
  OPENSSL_cleanse(data_, mapped_);
  ::munlock(data_, mapped_);
  ::munmap(data_, mapped_);
  data_ = nullptr;
  size_ = 0;
  mapped_ = 0;
}

void Secret::Truncate(size_t len) {
  if (len >= size_) return;
  OPENSSL_cleanse(data_ + len, size_ - len);
  size_ = len;
}

bool Secret::Equals(const Secret& other) const {
  if (size_ != other.size_) return false;
  return size_ == 0 || CRYPTO_memcmp(data_, other.data_, size_) == 0;
}

}  // namespace kvmfs
