// Local qcow2 overlays of S3 images: where writes to an S3 pool go.
//
// S3 objects are never rewritten in place. A pool with overlay_dir set gives
// each image a local qcow2 overlay on its first write, whose backing is the
// object's image (any format); from then on the image is read and written
// as overlay-over-object, also after a remount. The overlay is tied to the
// object's version: a sidecar JSON records bucket, key, ETag and size, and an
// overlay made over another ETag is refused (ESTALE) rather than laid over
// bytes it was not made for.
//
// What the store does:
//   - opening an S3 image: FindOverlay(); when it names one, open that file
//     (OpenLocalFile, writable) with the qcow2 driver and SetBacking() the
//     object's Image; info.json shows OverlayInfo::path.
//   - the first write to a disk.raw without one: CreateOverlay() with the
//     object Image's virtual size, then switch the live view to
//     overlay-over-object and write there.
// Thread-safe; CreateOverlay is idempotent (a concurrent or earlier creation
// of the same version returns the existing file).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvmfs/status.h"

namespace kvmfs::s3 {

// The object version an overlay belongs to.
struct OverlayTarget {
  std::string bucket;
  std::string key;         // full key
  std::string etag;
  uint64_t object_size = 0;
  std::string backing_format;  // the object's format ("raw", "qcow2", ...)
};

struct OverlayInfo {
  std::string path;       // the qcow2 file
  std::string meta_path;  // its sidecar JSON
  std::string backing;    // the backing file name recorded in the qcow2 ("s3://bucket/key")
};

// Where the overlay of (bucket, key) lives under `overlay_dir`:
// overlay_dir/<bucket>/<last key component, sanitized>.<16 hex of a hash of
// the key>.qcow2 (+ ".json"). No I/O.
OverlayInfo OverlayLocation(const std::string& overlay_dir, const std::string& bucket,
                            const std::string& key);

// The overlay of `target` if one exists; nullopt if none. ESTALE (kIOError)
// when it was made over another ETag or object size; kCorruption when its
// sidecar is unreadable.
Result<std::optional<OverlayInfo>> FindOverlay(const std::string& overlay_dir,
                                               const OverlayTarget& target);

// Creates the overlay of `target` (directories 0700, files 0600): an empty
// qcow2 v3 (64 KiB clusters) of `virtual_size` bytes whose backing file is
// "s3://bucket/key" in format target.backing_format, written to a temporary
// name, fsynced and renamed into place after its sidecar. Returns the
// existing overlay when one of this version is there; ESTALE as FindOverlay.
Result<OverlayInfo> CreateOverlay(const std::string& overlay_dir, const OverlayTarget& target,
                                  uint64_t virtual_size);

// The bytes of an empty qcow2 v3 image as `qemu-img create -f qcow2 -b
// BACKING -F FORMAT` makes it (64 KiB clusters, 16-bit refcounts): header,
// backing format extension, backing name, refcount table and block, L1.
// kInvalidArgument for a size beyond QEMU's limits or names too long.
Result<std::vector<uint8_t>> EncodeEmptyQcow2(uint64_t virtual_size, const std::string& backing,
                                              const std::string& backing_format);

}  // namespace kvmfs::s3
