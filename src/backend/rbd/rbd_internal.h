// Shared by the RBD store and its backends (not an interface).
#pragma once

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "kvmfs/backend.h"
#include "kvmfs/status.h"

namespace kvmfs::rbd {

// One open librbd image (read-write, read-only, or a snapshot). librbd's
// image calls are thread-safe; this only closes it.
//
// librbd watches the image header only for read-write handles: a read-only
// one keeps the size and snapshot list it opened with. WatchHeader() has
// RADOS tell this handle when the header changes (a resize or a snapshot by
// any client: librbd notifies the header object), after which changed()
// says that the handle is out of date and is to be opened anew.
class ImageHandle {
 public:
  ImageHandle(rbd_image_t image, std::string name, std::string snap, bool writable)
      : image_(image), name_(std::move(name)), snap_(std::move(snap)), writable_(writable) {}
  ~ImageHandle() {
    if (watch_io_ != nullptr) {
      rados_unwatch2(watch_io_, watch_cookie_);
      // No callback may still be running on this handle once it is gone.
      rados_watch_flush(rados_ioctx_get_cluster(watch_io_));
    }
    rbd_close(image_);
  }
  ImageHandle(const ImageHandle&) = delete;
  ImageHandle& operator=(const ImageHandle&) = delete;

  rbd_image_t get() const { return image_; }
  const std::string& name() const { return name_; }
  const std::string& snap() const { return snap_; }
  bool writable() const { return writable_; }

  // Watches header object `oid` in `io`; returns -errno when RADOS refuses
  // (then nothing tells this handle of changes).
  int WatchHeader(rados_ioctx_t io, const std::string& oid) {
    watch_oid_ = oid;  // before the watch: a notify may come before rados_watch2 returns
    notify_io_ = io;
    int rc = rados_watch2(io, oid.c_str(), &watch_cookie_, &OnNotify, &OnError, this);
    if (rc < 0) return rc;
    watch_io_ = io;
    return 0;
  }
  bool changed() const { return changed_.load(std::memory_order_acquire); }

 private:
  static void OnNotify(void* arg, uint64_t notify_id, uint64_t cookie, uint64_t /*notifier*/, void* /*data*/,
                       size_t /*len*/) {
    auto* self = static_cast<ImageHandle*>(arg);
    self->changed_.store(true, std::memory_order_release);
    // Unacknowledged, the notifier (a resize, a snapshot) waits for its timeout.
    rados_notify_ack(self->notify_io_, self->watch_oid_.c_str(), notify_id, cookie, nullptr, 0);
  }
  static void OnError(void* arg, uint64_t /*cookie*/, int /*err*/) {
    // The watch is lost (a reconnect): whatever changed meanwhile went unseen.
    static_cast<ImageHandle*>(arg)->changed_.store(true, std::memory_order_release);
  }

  const rbd_image_t image_;
  const std::string name_;
  const std::string snap_;
  const bool writable_;
  std::atomic<bool> changed_{false};
  rados_ioctx_t notify_io_ = nullptr;  // set before the watch
  rados_ioctx_t watch_io_ = nullptr;   // set when the watch is up: unwatched at close
  std::string watch_oid_;
  uint64_t watch_cookie_ = 0;
};

// A librbd error (-errno) as Status, naming `what`.
Status RbdError(int r, const std::string& what);

// The current read-only handle of an image (a new one once the header
// changed: ImageHandle::changed()).
using ReaderSource = std::function<Result<std::shared_ptr<ImageHandle>>()>;

// A Backend on `handle`; `path` names it in messages. Allocation queries go
// to a read-only handle of the same image from `reader` (on a read-write
// handle librbd would take the exclusive lock for them), or to `handle`
// itself when `reader` is empty (`handle` is read-only).
std::unique_ptr<Backend> NewRbdBackend(std::shared_ptr<ImageHandle> handle, ReaderSource reader,
                                       std::string path);

}  // namespace kvmfs::rbd
