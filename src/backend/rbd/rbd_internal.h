// Shared by the RBD store and its backends (not an interface).
#pragma once

#include <rbd/librbd.h>

#include <memory>
#include <string>

#include "kvmfs/backend.h"
#include "kvmfs/status.h"

namespace kvmfs::rbd {

// One open librbd image (read-write, read-only, or a snapshot). librbd's
// image calls are thread-safe; this only closes it.
class ImageHandle {
 public:
  ImageHandle(rbd_image_t image, std::string name, std::string snap, bool writable)
      : image_(image), name_(std::move(name)), snap_(std::move(snap)), writable_(writable) {}
  ~ImageHandle() { rbd_close(image_); }
  ImageHandle(const ImageHandle&) = delete;
  ImageHandle& operator=(const ImageHandle&) = delete;

  rbd_image_t get() const { return image_; }
  const std::string& name() const { return name_; }
  const std::string& snap() const { return snap_; }
  bool writable() const { return writable_; }

 private:
  const rbd_image_t image_;
  const std::string name_;
  const std::string snap_;
  const bool writable_;
};

// A librbd error (-errno) as Status, naming `what`.
Status RbdError(int r, const std::string& what);

// A Backend on `handle`; `path` names it in messages.
std::unique_ptr<Backend> NewRbdBackend(std::shared_ptr<ImageHandle> handle, std::string path);

}  // namespace kvmfs::rbd
