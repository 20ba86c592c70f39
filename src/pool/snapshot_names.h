// File names for internal snapshots (CONTRACT.md "The tree").
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kvmfs/image.h"

namespace kvmfs::pool {

// A snapshot name as a file name: '%' becomes "%25", '/' becomes "%2F", and a
// name that is empty, "." or ".." is replaced by `id` (escaped the same way).
// NUL bytes, which no file name may hold, become "%00".
std::string EscapeSnapshotName(const std::string& name, const std::string& id);

// The directory names of `snapshots`, in the same order. Names are the escaped
// snapshot names; when one is already taken by an earlier snapshot, "@<id>" is
// appended (repeatedly, until unique), so every snapshot stays reachable.
std::vector<std::string> SnapshotDirNames(const std::vector<SnapshotInfo>& snapshots);

// The snapshot name a new directory `dir_name` (mkdir snapshots/NAME) stands
// for: "%25" -> '%', "%2F" -> '/'. Empty when `dir_name` is not what
// EscapeSnapshotName() makes of any name: a '%' not starting one of those
// escapes, "%00", or a name that is empty, "." or "..".
std::optional<std::string> SnapshotNameForDir(const std::string& dir_name);

}  // namespace kvmfs::pool
