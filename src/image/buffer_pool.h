// Reusable byte buffers for the read path: the reply memory of ReadPlan
// (ReadFilePieces) and qcow2's compressed and decoded clusters.
//
// Those buffers are allocated and freed for every request of a streaming
// reader. Through malloc, freeing them trims the heap and gives their pages
// back to the kernel, so the next request faults every page in again (about
// 5 % of the CPU time of a compressed sequential read went to those faults
// and to zero-filling). A freed buffer goes back to a small free list
// instead, still mapped; the list is bounded (kBufferPoolMaxFree), so an
// idle mount keeps at most that much.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace kvmfs {

// Buffers are pooled in power-of-two size classes from kBufferPoolMinBuffer
// to kBufferPoolMaxBuffer; other sizes come from and go to new[]/delete[].
inline constexpr size_t kBufferPoolMinBuffer = 32u << 10;
inline constexpr size_t kBufferPoolMaxBuffer = 4u << 20;
// At most this many bytes of free buffers are kept for reuse (process-wide).
inline constexpr size_t kBufferPoolMaxFree = 8u << 20;

// A buffer of at least `size` bytes (at least one), uninitialised, that
// goes back to the pool when its last owner lets go. Throws std::bad_alloc
// as new[] does. Thread-safe.
std::shared_ptr<uint8_t[]> PooledBuffer(size_t size);

// Bytes of free buffers the pool holds now (tests).
size_t BufferPoolFreeBytes();

}  // namespace kvmfs
