// What the codec layer has done so far, for the metrics (read at scrape time
// by src/fuse/metrics.cpp; the codec layer knows nothing of metrics).
#pragma once

#include <cstdint>

#include "kvmfs/codec.h"

namespace kvmfs {

struct CodecTotals {
  uint64_t calls = 0;      // decompressions (one cluster or grain each)
  uint64_t errors = 0;     // of them, failed (corrupt streams)
  uint64_t in_bytes = 0;   // compressed bytes read
  uint64_t out_bytes = 0;  // bytes produced
  uint64_t nanos = 0;      // time spent in them (summed over threads)
};

// Decompress() and InflateZlibStream() calls of this process by codec
// (DecompressBatch's jobs included). Thread-safe, lock-free.
CodecTotals DecompressTotals(CompressionType type);

}  // namespace kvmfs
