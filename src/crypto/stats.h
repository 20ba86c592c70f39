// What the cipher layer has done so far, for the metrics (read at scrape
// time by src/fuse/metrics.cpp; the cipher layer knows nothing of metrics).
#pragma once

#include <cstdint>

namespace kvmfs {

struct CryptTotals {
  uint64_t calls = 0;   // SectorCipher::Encrypt/Decrypt calls (a run of sectors each)
  uint64_t errors = 0;  // of them, failed
  uint64_t bytes = 0;   // bytes encrypted or decrypted
  uint64_t nanos = 0;   // time spent in them (summed over threads)
};

// Every SectorCipher's decryptions (`encrypt` false) or encryptions of this
// process (CryptBatch's jobs included). Thread-safe, lock-free.
CryptTotals CipherTotals(bool encrypt);

}  // namespace kvmfs
