// image/buffer_pool.h: pooled buffers are reused, bounded, and safe to
// take and give back from several threads.
#include "image/buffer_pool.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

namespace kvmfs {
namespace {

TEST(BufferPool, ReusesAFreedBufferOfTheSameClass) {
  uint8_t* first = nullptr;
  {
    std::shared_ptr<uint8_t[]> a = PooledBuffer(64 << 10);
    first = a.get();
    std::memset(a.get(), 0xab, 64 << 10);  // all of it is usable
  }
  EXPECT_GE(BufferPoolFreeBytes(), size_t{64} << 10);
  // 40 KiB rounds up to the same 64 KiB class: the buffer just freed.
  std::shared_ptr<uint8_t[]> b = PooledBuffer(40 << 10);
  EXPECT_EQ(b.get(), first);
  std::memset(b.get(), 0xcd, 64 << 10);
}

TEST(BufferPool, SmallAndHugeBuffersAreNotPooled) {
  const size_t before = BufferPoolFreeBytes();
  { std::shared_ptr<uint8_t[]> small = PooledBuffer(100); }
  { std::shared_ptr<uint8_t[]> none = PooledBuffer(0); }
  { std::shared_ptr<uint8_t[]> huge = PooledBuffer(kBufferPoolMaxBuffer + 1); }
  EXPECT_EQ(BufferPoolFreeBytes(), before);
}

TEST(BufferPool, KeepsAtMostItsBoundFree) {
  std::vector<std::shared_ptr<uint8_t[]>> held;
  // Twice the bound in 1 MiB buffers, all freed at once.
  for (size_t i = 0; i < 2 * kBufferPoolMaxFree / (1 << 20); ++i)
    held.push_back(PooledBuffer(1 << 20));
  held.clear();
  EXPECT_LE(BufferPoolFreeBytes(), kBufferPoolMaxFree);
  EXPECT_GE(BufferPoolFreeBytes(), kBufferPoolMaxFree / 2);
}

TEST(BufferPool, ThreadsTakeAndGiveBackConcurrently) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 2000; ++i) {
        const size_t size = size_t{32} << (10 + (i + t) % 5);
        std::shared_ptr<uint8_t[]> b = PooledBuffer(size);
        b[0] = static_cast<uint8_t>(t);
        b[size - 1] = static_cast<uint8_t>(i);
        // Handed to another owner, as a plan hands a decoded cluster on.
        std::shared_ptr<uint8_t[]> other = b;
        b.reset();
        EXPECT_EQ(other[0], static_cast<uint8_t>(t));
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_LE(BufferPoolFreeBytes(), kBufferPoolMaxFree);
}

}  // namespace
}  // namespace kvmfs
