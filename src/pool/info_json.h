// info.json: image metadata with the keys and value types of
// `qemu-img info --output=json` (QEMU 7.2), pretty-printed the same way.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvmfs/image.h"

namespace kvmfs::pool {

// Everything one info.json describes.
struct InfoSubject {
  std::string filename;               // canonical host path of the image file
  ImageInfo info;                     // Image::Info() of the layer
  std::optional<uint64_t> actual_size;  // Image::ActualSize(), when known
  std::string full_backing_filename;  // canonical host path of the backing layer, or ""
  std::vector<SnapshotInfo> snapshots;  // the layer's internal snapshots
  // For a snapshot view: that snapshot. virtual-size then is its disk_size and a
  // "snapshot" object describes it.
  std::optional<SnapshotInfo> snapshot;
  // Why the image's disk.raw is read-only in a read-write pool (format not
  // writable, host file read-only, corrupt image); "" when writable or in a
  // read-only pool. Shown as "read-only-reason" (a kvmfs key).
  std::string read_only_reason;
  // What the store says of the file (Store::Describe: RBD's object size,
  // features, parent...), shown under the store's kind ("rbd"); a kvmfs key.
  std::string store_kind;
  std::optional<InfoObject> store_info;
};

// One snapshot as `qemu-img info` prints it in "snapshots" (vm-clock split
// into seconds and the nanosecond remainder; icount only when recorded).
nlohmann::ordered_json SnapshotJson(const SnapshotInfo& s);

// The JSON object, keys in the order qemu-img prints them; keys qemu-img omits
// (no snapshots, no backing, encrypted when false, ...) are omitted.
nlohmann::ordered_json InfoJson(const InfoSubject& subject);

// For an image that cannot be opened: filename, format (detected, or
// "unknown") and the reason.
nlohmann::ordered_json ErrorJson(const std::string& filename, const std::string& format,
                                 const std::string& error);

// check.json: `qemu-img check --output=json` of the image file `filename`
// (canonical host path) of format `format`, keys in qemu-img's order, the
// counts qemu-img omits when zero omitted. A check that failed
// (result.failure) adds "error": "Check failed: <failure>" (where qemu-img
// prints no result and exits with 1).
nlohmann::ordered_json CheckJson(const std::string& filename, const std::string& format,
                                 const CheckResult& result);

// Pretty-printed with 4 spaces as qemu-img does, with a trailing newline.
// Invalid UTF-8 (names from a hostile image) is replaced, never thrown.
std::string RenderJson(const nlohmann::ordered_json& j);

}  // namespace kvmfs::pool
