// Clang's thread-safety annotations (-Wthread-safety), after abseil's and
// leveldb's port/thread_annotations.h. They compile to nothing elsewhere;
// the clang build phase of tools/test.sh turns violations into errors.
#pragma once

#if defined(__clang__)
#define KVMFS_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define KVMFS_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) KVMFS_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY KVMFS_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) KVMFS_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) KVMFS_THREAD_ANNOTATION(pt_guarded_by(x))
#define ACQUIRED_BEFORE(...) KVMFS_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define ACQUIRED_AFTER(...) KVMFS_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#define REQUIRES(...) KVMFS_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) KVMFS_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define ACQUIRE(...) KVMFS_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) KVMFS_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...) KVMFS_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) KVMFS_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#define RELEASE_GENERIC(...) KVMFS_THREAD_ANNOTATION(release_generic_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) KVMFS_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define EXCLUDES(...) KVMFS_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) KVMFS_THREAD_ANNOTATION(assert_capability(x))
#define RETURN_CAPABILITY(x) KVMFS_THREAD_ANNOTATION(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS KVMFS_THREAD_ANNOTATION(no_thread_safety_analysis)
