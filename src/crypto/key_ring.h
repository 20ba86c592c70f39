// KeyRing: which passphrase file belongs to which image (kvmfs.yaml(5)
// `keys:`, or -o keys=FILE), and reading it as a Secret.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kvmfs/cipher.h"
#include "kvmfs/status.h"

namespace kvmfs::crypto {

// One `keys:` entry.
struct KeyRule {
  std::string match;   // glob (fnmatch, '*' also matches '/'); absolute when it starts with '/'
  std::string file;    // the passphrase file, absolute
  std::string origin;  // "CONFIG:LINE", for messages
};

// Key files larger than this are refused (a passphrase, not a disk).
inline constexpr size_t kMaxKeyFileBytes = 64 * 1024;

// Reads a passphrase file into a Secret, as QEMU's `secret,file=` does: its
// bytes as they are (a trailing newline is part of the passphrase). Errors
// (naming the file, never its content): kPermission for EACCES/EPERM,
// kNotFound, kInvalidArgument (not a regular file, larger than
// kMaxKeyFileBytes), kIOError.
Result<Secret> ReadKeyFile(const std::string& path);

// For each rule whose file group or others may read (as ssh warns about
// private keys): a line naming the file, its mode and the rule.
std::vector<std::string> KeyFileWarnings(const std::vector<KeyRule>& rules);

// The rules of one pool. Thread-safe (immutable).
class KeyRing {
 public:
  // `roots`: canonical directories images of the pool live in, the pool's
  // own first (then its backing roots).
  KeyRing(std::vector<KeyRule> rules, std::vector<std::string> roots);

  // The passphrase of the image at canonical `path`: the first rule whose
  // glob matches the path relative to the first root holding it ("sub/vm.qcow2"),
  // or, for a glob starting with '/', the absolute path. The file is read
  // now, on every call (a changed key file takes effect at the next open).
  // Errors: kPermission "PATH: no key configured ..." when no rule
  // matches; the key file's error (missing, unreadable, too large), as
  // kPermission (the contract's EACCES for key problems), naming the image,
  // the rule and the file.
  Result<std::shared_ptr<const Secret>> KeyFor(const std::string& path) const;

  bool empty() const { return rules_.empty(); }

 private:
  std::vector<KeyRule> rules_;
  std::vector<std::string> roots_;
};

}  // namespace kvmfs::crypto
