// Which host files are images, and of which format, without opening them.
//
// Files are recognised by extension (the name says "image") and, for other
// names, by the magic of their first 512 bytes. Probing reads the file, so
// verdicts are cached per FileKey.
#pragma once

#include <sys/stat.h>

#include "base/mutex.h"

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvmfs/format.h"
#include "kvmfs/store.h"
#include "pool/file_key.h"

namespace kvmfs::pool {

// `name` (a file name, no directory) ends in one of `extensions` (lower case,
// without the dot), compared case-insensitively.
bool HasImageExtension(const std::string& name, const std::vector<std::string>& extensions);
// The same with the default list, config::DefaultExtensions():
// .qcow2 .qcow .img .raw .vdi .vmdk .vhd .vhdx .iso.
bool HasImageExtension(const std::string& name);

// `name` is a VMDK extent file (*-flat.vmdk, *-sNNN.vmdk, *-fNNN.vmdk), which
// belongs to a descriptor and is not shown on its own.
bool IsVmdkExtentName(const std::string& name);

// The format QEMU would name for these leading bytes ("qcow2", "qcow", "vdi",
// "vmdk", "vhdx", "vpc": a driver's sure probe, or a recognised magic of a
// format without a driver), or "" when no known magic matches. `len` may be
// shorter than 512.
std::string ProbeMagic(const uint8_t* head, size_t len);

// What the first bytes of an image file say about its tree, without opening
// it: enough to list its directory (CONTRACT.md "The tree").
struct HeaderPeek : FormatPeek {
  std::string format;  // as ProbeCache::FormatOf
};

// Caches magic probes per file version. Thread-safe.
class ProbeCache {
 public:
  // Probes files of `store` (null: the host's files).
  explicit ProbeCache(std::shared_ptr<Store> store = nullptr)
      : store_(store ? std::move(store) : HostStore()) {}

  // The format and what its driver's Peek() says of the image at `path` (one
  // read of its first bytes per file version).
  HeaderPeek Peek(const std::string& path, const struct stat& st);

  // The magic verdict for the regular file at `path` whose stat is `st`
  // (ProbeMagic of its first 512 bytes; "" for unreadable files).
  std::string Probe(const std::string& path, const struct stat& st);

  // The format to open `path` with: the format its name says (FormatForName),
  // else the magic verdict, else "raw".
  std::string FormatOf(const std::string& path, const struct stat& st);

  // Number of probes that really read a file (for tests).
  size_t reads() const;

 private:
  struct Entry {
    FileKey key;
    std::string verdict;
    FormatPeek peek;  // the verdict's driver's Peek()
  };
  Entry ProbeEntry(const std::string& path, const struct stat& st);
  const std::shared_ptr<Store> store_;
  mutable Mutex mu_;
  std::unordered_map<std::string, Entry> entries_ GUARDED_BY(mu_);  // by "dev:ino"
  size_t reads_ GUARDED_BY(mu_) = 0;
};

// The file name part of `path`.
std::string BaseName(const std::string& path);

}  // namespace kvmfs::pool
