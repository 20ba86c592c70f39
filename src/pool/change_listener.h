// ChangeListener: how the pool layer tells whoever caches what it serves (the
// FUSE front end and, through it, the kernel's page, attribute and dentry
// caches) that an image file changed.
#pragma once

#include <string>

namespace kvmfs::pool {

// The FUSE front end implements it (src/fuse/kernel_cache.h) and registers it
// with PoolRoot::SetChangeListener, which hands it to every Namespace. Writes,
// resizes and snapshot changes made through a disk.raw or snapshots/ of the
// mount are already reported by the front end itself, with the exact set of
// nodes they change (not the written file's own pages, not the image's own
// snapshot views); calling ImageChanged() for them too is harmless but drops
// more than needed. What the front end cannot see is what the engine must
// report: outside changes of any file of a chain.
class ChangeListener {
 public:
  virtual ~ChangeListener() = default;

  // The guest-visible bytes, the size or the metadata of the image file at
  // `canonical_path` changed: a write, zeroing or resize through kvmfs, or an
  // outside change noticed. Every view whose chain contains the file may now
  // read differently. Idempotent; thread-safe; called with no pool lock held;
  // does not wait for the caches to be dropped.
  virtual void ImageChanged(const std::string& canonical_path) = 0;

  // Internal snapshots of the image file at `canonical_path` were created or
  // deleted (the snapshots/ listing and info.json change). Same rules.
  virtual void SnapshotsChanged(const std::string& canonical_path) = 0;
};

}  // namespace kvmfs::pool
