// Tuning of the qcow2 driver, for the mount options (include as
// "format/qcow2/options.h"; the driver itself is reached through
// Qcow2Format() in kvmfs/format.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kvmfs/backend.h"
#include "kvmfs/format.h"

namespace kvmfs {

struct Qcow2Options {
  // Bytes of L2 tables cached per open image file (shared by its snapshot
  // views). QEMU's default maximum on Linux is 32 MiB. At least one table is
  // always cached.
  uint64_t l2_cache_bytes = 32ull << 20;
  // Bytes of decompressed clusters cached per image file, so sequential small
  // reads of one compressed cluster inflate it once. At least 2 clusters.
  uint64_t decompressed_cache_bytes = 4ull << 20;
};

// Options used by Qcow2Format().Open() from now on (process-wide; set them
// once at startup, before images are opened). Thread-safe.
void SetQcow2DefaultOptions(const Qcow2Options& options);
Qcow2Options Qcow2DefaultOptions();

// Opens a qcow2 image with explicit options (as Qcow2Format().Open()).
Result<std::unique_ptr<Image>> OpenQcow2(std::shared_ptr<Backend> file, const OpenContext& ctx,
                                         const Qcow2Options& options);

}  // namespace kvmfs
