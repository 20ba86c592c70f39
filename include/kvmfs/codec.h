// Codecs for compressed clusters.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvmfs/status.h"

namespace kvmfs {

enum class CompressionType { kDeflate = 0, kZstd = 1 };

// Decompresses `in` into exactly `out_len` bytes of `out`. Input past the end
// of the stream is ignored. Fails with kCorruption when the stream is invalid or
// yields fewer than `out_len` bytes. Thread-safe.
Status Decompress(CompressionType type, const uint8_t* in, size_t in_len, uint8_t* out,
                  size_t out_len);

}  // namespace kvmfs
