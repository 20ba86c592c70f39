// Host path helpers shared by the chain opener and the namespace.
#pragma once

#include <string>

#include "kvmfs/status.h"

namespace kvmfs {

// realpath(3) of `path`. Errors: kNotFound, kPermission, kIOError.
Result<std::string> CanonicalPath(const std::string& path);

// Whether canonical `path` is `root` or lies below it ("/a/bc" is not under
// "/a/b").
bool IsUnder(const std::string& path, const std::string& root);

// The directory part of `path` ("." when it has none).
std::string DirName(const std::string& path);

// The last extension of the file name, lower-cased, with its dot (".qcow2"),
// or "" when the name has none.
std::string LowerExtension(const std::string& path);

}  // namespace kvmfs
