// LiveView: the Image behind an open disk.raw (OpenImage::MakeLiveView).
#include <spdlog/spdlog.h>

#include "pool/image_cache.h"

namespace kvmfs::pool {

class LiveView final : public Image {
 public:
  LiveView(std::shared_ptr<OpenImage> owner, ViewId view, std::shared_ptr<Image> image,
           std::shared_ptr<LayerFile> file, bool write, bool force_share)
      : owner_(std::move(owner)),
        view_(std::move(view)),
        write_(write),
        force_share_(force_share),
        image_(std::move(image)),
        file_(std::move(file)) {}

  uint64_t size() const override { return Current()->size(); }
  Status Read(uint64_t off, void* buf, size_t len) override { return Current()->Read(off, buf, len); }
  // A force_share reader may move to a new image of a file changed from
  // outside while a reply is still being spliced: it reads into memory.
  Status PlanRead(uint64_t off, size_t len, ReadPlan& plan) override {
    if (force_share_) return Image::PlanRead(off, len, plan);
    return Current()->PlanRead(off, len, plan);
  }

  bool writable() const override { return Current()->writable(); }
  std::string ReadOnlyReason() const override { return Current()->ReadOnlyReason(); }
  Status BeginWrites() override { return Current()->BeginWrites(); }
  Status EndWrites() override { return Current()->EndWrites(); }

  // Changes are recorded after they are made (also when they failed part
  // way): a view that derived something before sees a newer generation.
  Status Write(uint64_t off, const void* buf, size_t len) override {
    Status st = Current()->Write(off, buf, len);
    File()->NoteWrite(off, len);
    return st;
  }
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    Status st = Current()->WriteZeroes(off, len, unmap);
    File()->NoteWrite(off, len);
    return st;
  }
  Status Flush() override { return Current()->Flush(); }
  Status Resize(uint64_t new_size) override {
    Status st = Current()->Resize(new_size);
    File()->NoteWrite(0, 0);
    return st;
  }
  // A store that keeps snapshots itself (RBD) makes them, not the format.
  Result<SnapshotInfo> CreateSnapshot(const std::string& name) override {
    auto created = File()->store().caps().snapshots ? File()->CreateStoreSnapshot(name)
                                                    : Current()->CreateSnapshot(name);
    File()->NoteSnapshots();
    return created;
  }
  Status DeleteSnapshot(const std::string& id) override {
    Status st = File()->store().caps().snapshots ? File()->DeleteStoreSnapshot(id)
                                                 : Current()->DeleteSnapshot(id);
    File()->NoteSnapshots();
    return st;
  }

  // A whole view: the allocation of the flattened chain (it has no backing
  // of its own, so ChainBlockStatus of it is this).
  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    return ChainBlockStatus(*Current(), off, len);
  }
  ImageInfo Info() const override { return Current()->Info(); }
  std::vector<SnapshotInfo> Snapshots() const override { return Current()->Snapshots(); }
  Result<std::unique_ptr<Image>> OpenSnapshot(const std::string& id) override {
    return Current()->OpenSnapshot(id);
  }
  Result<uint64_t> ActualSize() override { return Current()->ActualSize(); }

 private:
  std::shared_ptr<LayerFile> File() const { return file_.load(std::memory_order_acquire); }

  // The image to use now. A writer's files cannot change under it (its
  // locks keep other programs out, its write session pins the top file). A
  // reader follows its file when that was opened anew; a force_share reader
  // also looks for changes from outside, once per recheck interval.
  std::shared_ptr<Image> Current() const {
    std::shared_ptr<Image> image = image_.load(std::memory_order_acquire);
    if (write_) return image;
    if (force_share_ && !File()->stale()) owner_->EnsureCurrent(nullptr, false);
    if (!File()->stale()) return image;
    owner_->EnsureCurrent(nullptr, true);
    auto fresh = owner_->ViewImage(view_);
    auto files = owner_->files();
    const size_t index = view_.kind == ViewId::Kind::kLayer ? view_.layer : 0;
    if (!fresh.ok() || index >= files.size()) return image;  // keep reading what it had
    MutexLock lock(mu_);
    if (image_.load(std::memory_order_acquire) == image) {
      // The old image may still have file pieces of a reply in flight (its
      // descriptors must stay open): kept until this handle closes.
      retired_.push_back(image);
      image_.store(*fresh, std::memory_order_release);
      file_.store(files[index], std::memory_order_release);
      spdlog::debug("{}: an open disk.raw follows the file opened anew", owner_->path());
    }
    return image_.load(std::memory_order_acquire);
  }

  const std::shared_ptr<OpenImage> owner_;
  const ViewId view_;
  const bool write_;
  const bool force_share_;
  mutable std::atomic<std::shared_ptr<Image>> image_;
  mutable std::atomic<std::shared_ptr<LayerFile>> file_;
  mutable Mutex mu_;
  mutable std::vector<std::shared_ptr<Image>> retired_ GUARDED_BY(mu_);
};

std::shared_ptr<Image> OpenImage::MakeLiveView(const ViewId& view, std::shared_ptr<Image> image,
                                               bool write, bool force_share) {
  auto files = this->files();
  const size_t index = view.kind == ViewId::Kind::kLayer ? view.layer : 0;
  std::shared_ptr<LayerFile> file = index < files.size() ? files[index] : nullptr;
  if (file == nullptr) return image;
  return std::make_shared<LiveView>(shared_from_this(), view, std::move(image), std::move(file), write,
                                    force_share);
}

}  // namespace kvmfs::pool
