// Codecs for compressed clusters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "kvmfs/status.h"

namespace kvmfs {

// kDeflate and kZstd: qcow2 clusters. kZlib: a zlib (RFC 1950) stream read
// as zlib's uncompress() reads it (VMDK grains): it must end within the
// input with a valid checksum and yield at most `out_len` bytes.
enum class CompressionType { kDeflate = 0, kZstd = 1, kZlib = 2 };

// Decompresses `in` into exactly `out_len` bytes of `out`. Input past the end
// of the stream is ignored. Fails with kCorruption when the stream is invalid or
// yields fewer than `out_len` bytes. Thread-safe.
Status Decompress(CompressionType type, const uint8_t* in, size_t in_len, uint8_t* out,
                  size_t out_len);

// One decompression of a batch: `in_len` bytes at `in` into exactly
// `out_len` bytes at `out`, as Decompress(); for kZlib into at most
// `out_len` bytes (a shorter stream is no error: `produced` tells).
// `status` and `produced` are set by DecompressBatch().
struct DecompressJob {
  const uint8_t* in = nullptr;
  size_t in_len = 0;
  uint8_t* out = nullptr;
  size_t out_len = 0;
  Status status;
  size_t produced = 0;  // bytes written to `out` (out_len on success but for kZlib)
};

// A kZlib stream into at most `out_len` bytes of `out`; returns how many it
// yielded. kCorruption when the stream is invalid, does not end within
// `in_len` or would yield more than `out_len` bytes. Thread-safe.
Result<size_t> InflateZlibStream(const uint8_t* in, size_t in_len, uint8_t* out, size_t out_len);

// Runs every job of `jobs`, concurrently: the calling thread works through
// them together with the helpers of a process-wide pool (one thread per core
// but one, started on first use; none on one core). Returns once every job
// is done; each job's `status` says how it went. Outputs must not overlap.
// Thread-safe: when the helpers are busy with other batches, the caller does
// the work alone, so a batch never waits for another one.
void DecompressBatch(CompressionType type, std::span<DecompressJob> jobs);

// Queues `task` on DecompressBatch's process-wide pool, to run on a helper
// thread, in posting order. Returns false (and drops `task`) when the pool
// has no helper (one core): the caller does the work itself. A task must
// not wait for another posted task (nothing says when a helper takes it):
// a thread that needs a posted task's result runs the work itself when no
// helper has started it (qcow2's compressed clusters, see cache.cpp).
// Thread-safe.
bool PostDecodeTask(std::function<void()> task);

// Compresses `in` into one zlib (RFC 1950) stream, as zlib's compress() at
// the default level (QEMU's VMDK grains), into at most `out_cap` bytes of
// `out`; returns its length. kNoSpace when it does not fit. Thread-safe.
Result<size_t> CompressZlibStream(const uint8_t* in, size_t in_len, uint8_t* out, size_t out_cap);

// Compresses one qcow2 cluster as QEMU's qcow2 writer does: kDeflate into
// a raw deflate stream (windowBits -12, the default level: what QEMU's
// inflate with windowBits -12 reads), kZstd into one zstd frame (the default
// level), kZlib as CompressZlibStream(). Into at most `out_cap` bytes of
// `out`; returns the length. kNoSpace when the result does not fit (the
// caller then stores the data uncompressed). Thread-safe.
Result<size_t> Compress(CompressionType type, const uint8_t* in, size_t in_len, uint8_t* out,
                        size_t out_cap);

// Helper threads of DecompressBatch's pool (0 until first used, or on one
// core). For tests and benchmarks.
unsigned DecompressHelperThreads();

}  // namespace kvmfs
