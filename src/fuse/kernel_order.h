// The kernel orders some requests of one open file for us: RELEASE comes
// only after every READ, WRITE, FLUSH... on it was answered (in-flight
// requests hold the kernel's file). ThreadSanitizer cannot see that edge (it
// runs through /dev/fuse), and would take the delete in Release() for a race
// with the last read. These annotations state the edge; they compile to
// nothing unless built with -fsanitize=thread.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define KVMFS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KVMFS_TSAN 1
#endif
#endif

#ifdef KVMFS_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace kvmfs::fuse {

// A request on the open file `handle` is done with it (call before replying).
inline void DoneWithFile([[maybe_unused]] const void* handle) {
#ifdef KVMFS_TSAN
  __tsan_release(const_cast<void*>(handle));
#endif
}

// RELEASE of `handle`: every earlier request on it is done.
inline void AllDoneWithFile([[maybe_unused]] const void* handle) {
#ifdef KVMFS_TSAN
  __tsan_acquire(const_cast<void*>(handle));
#endif
}

}  // namespace kvmfs::fuse
