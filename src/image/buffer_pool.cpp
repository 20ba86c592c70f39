#include "image/buffer_pool.h"

#include <algorithm>
#include <array>
#include <bit>
#include <vector>

#include "base/mutex.h"

#if defined(__SANITIZE_ADDRESS__)
#define KVMFS_BUFFER_POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVMFS_BUFFER_POOL_ASAN 1
#endif
#endif
#ifdef KVMFS_BUFFER_POOL_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace kvmfs {
namespace {

constexpr unsigned kMinShift = std::countr_zero(kBufferPoolMinBuffer);
constexpr unsigned kClasses = std::countr_zero(kBufferPoolMaxBuffer) - kMinShift + 1;

// A free buffer's bytes are not to be touched until it is handed out again:
// under ASan, a use after it went back to the pool is reported as a use
// after free would be.
void Poison(uint8_t* p, size_t n) {
#ifdef KVMFS_BUFFER_POOL_ASAN
  ASAN_POISON_MEMORY_REGION(p, n);
#else
  (void)p;
  (void)n;
#endif
}

void Unpoison(uint8_t* p, size_t n) {
#ifdef KVMFS_BUFFER_POOL_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
  (void)p;
  (void)n;
#endif
}

class Pool {
 public:
  // Never destroyed: buffers may go back after static destructors ran.
  static Pool& Get() {
    static Pool* pool = new Pool;
    return *pool;
  }

  uint8_t* Take(unsigned cls) {
    const size_t bytes = ClassBytes(cls);
    {
      MutexLock lock(mu_);
      std::vector<uint8_t*>& list = free_[cls];
      if (!list.empty()) {
        uint8_t* p = list.back();
        list.pop_back();
        free_bytes_ -= bytes;
        Unpoison(p, bytes);
        return p;
      }
    }
    return new uint8_t[bytes];
  }

  void Give(unsigned cls, uint8_t* p) {
    const size_t bytes = ClassBytes(cls);
    {
      MutexLock lock(mu_);
      if (free_bytes_ + bytes <= kBufferPoolMaxFree) {
        Poison(p, bytes);
        free_[cls].push_back(p);
        free_bytes_ += bytes;
        return;
      }
    }
    delete[] p;
  }

  size_t free_bytes() {
    MutexLock lock(mu_);
    return free_bytes_;
  }

  static size_t ClassBytes(unsigned cls) { return size_t{1} << (kMinShift + cls); }

 private:
  Mutex mu_;
  std::array<std::vector<uint8_t*>, kClasses> free_ GUARDED_BY(mu_);
  size_t free_bytes_ GUARDED_BY(mu_) = 0;
};

struct GiveBack {
  unsigned cls;
  void operator()(uint8_t* p) const { Pool::Get().Give(cls, p); }
};

}  // namespace

std::shared_ptr<uint8_t[]> PooledBuffer(size_t size) {
  if (size < kBufferPoolMinBuffer / 2 || size > kBufferPoolMaxBuffer)
    return std::shared_ptr<uint8_t[]>(new uint8_t[size == 0 ? 1 : size]);
  const unsigned shift = std::max<unsigned>(kMinShift, std::bit_width(size - 1));
  const unsigned cls = shift - kMinShift;
  return std::shared_ptr<uint8_t[]>(Pool::Get().Take(cls), GiveBack{cls});
}

size_t BufferPoolFreeBytes() { return Pool::Get().free_bytes(); }

}  // namespace kvmfs
