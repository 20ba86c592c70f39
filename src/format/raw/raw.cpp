// raw: the file is the disk.
#include <algorithm>
#include <atomic>

#include "kvmfs/format.h"

namespace kvmfs {
namespace {

class RawImage final : public Image {
 public:
  RawImage(std::shared_ptr<Backend> file, uint64_t size) : file_(std::move(file)), size_(size) {}

  uint64_t size() const override { return size_.load(std::memory_order_acquire); }

  Status Read(uint64_t off, void* buf, size_t len) override { return file_->ReadAt(off, buf, len); }

  // The file is the disk, byte for byte: it is handed out as it is. (A write
  // racing with the splice shows the reader old or new bytes of its own
  // range, as any read racing a write; no range ever moves.)
  Status PlanRead(uint64_t off, size_t len, ReadPlan& plan) override {
    if (file_->fd() < 0) return Image::PlanRead(off, len, plan);
    plan.AddFile(file_->fd(), off, len);
    return Status::OK();
  }

  // Writable once BeginWrites() ran on a backend opened for writing.
  bool writable() const override { return writing_.load(std::memory_order_acquire); }

  Status BeginWrites() override {
    if (!file_->writable()) return Status::ReadOnly(file_->name() + ": opened read-only");
    writing_.store(true, std::memory_order_release);
    return Status::OK();
  }

  // Nothing is cached: durable once the host file is flushed.
  Status EndWrites() override { return Flush(); }

  Status Write(uint64_t off, const void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(CheckWrite(off, len));
    return file_->WriteAt(off, buf, len);
  }

  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    KVMFS_RETURN_IF_ERROR(CheckWrite(off, len));
    return file_->WriteZeroes(off, len, unmap);
  }

  Status Flush() override { return file_->Flush(); }

  // Growing extends the file (a hole, reading as zeros). Shrinking would
  // silently drop guest data that nothing can bring back, so it is refused
  // as for qcow2 (kInvalidArgument); `qemu-img resize --shrink` does it.
  Status Resize(uint64_t new_size) override {
    if (!writable()) return Status::ReadOnly(file_->name() + ": image is read-only");
    if (new_size < size())
      return Status::InvalidArgument(file_->name() + ": shrinking a raw image from " +
                                     std::to_string(size()) + " to " + std::to_string(new_size) +
                                     " bytes is refused (use qemu-img resize --shrink)");
    if (new_size == size()) return Status::OK();
    KVMFS_RETURN_IF_ERROR(file_->Truncate(new_size));
    size_.store(new_size, std::memory_order_release);
    return Status::OK();
  }

  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    // Holes of the host file read as zeros and are reported as such, as
    // QEMU's file driver does; they still belong to this layer.
    return file_->GetAllocation(off, std::min(len, size() - off));
  }

  ImageInfo Info() const override {
    ImageInfo info;
    info.format = "raw";
    info.virtual_size = size();
    return info;
  }

  Result<uint64_t> ActualSize() override { return file_->AllocatedBytes(); }

 private:
  Status CheckWrite(uint64_t off, uint64_t len) const {
    if (!writable()) return Status::ReadOnly(file_->name() + ": image is read-only");
    const uint64_t size = this->size();
    if (off > size || len > size - off)
      return Status::InvalidArgument(file_->name() + ": write of " + std::to_string(len) +
                                     " bytes at offset " + std::to_string(off) +
                                     " past the end of the disk (" + std::to_string(size) + ")");
    return Status::OK();
  }

  const std::shared_ptr<Backend> file_;
  std::atomic<uint64_t> size_;      // changes only through Resize()
  std::atomic<bool> writing_{false};
};

class RawFormatDriver final : public FormatDriver {
 public:
  const char* name() const override { return "raw"; }
  FormatCaps caps() const override { return {.writable = true, .create = true, .resize = true}; }
  std::vector<std::string> extensions() const override { return {"raw", "iso"}; }
  // qemu-img create -f raw: a sparse file of the size (rounded up to 512).
  Status Create(Backend& file, const CreateOptions& options) const override {
    if (!options.backing_file.empty())
      return Status::NotSupported(file.name() + ": raw images have no backing file");
    return file.Truncate((options.size + 511) & ~uint64_t{511});
  }
  int Probe(const uint8_t*, size_t) const override { return 1; }
  FormatPeek Peek(const uint8_t*, size_t) const override { return {.known = true}; }
  Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend> file,
                                      const OpenContext&) const override {
    KVMFS_ASSIGN_OR_RETURN(uint64_t size, file->Size());
    return std::unique_ptr<Image>(std::make_unique<RawImage>(std::move(file), size));
  }
};

}  // namespace

const FormatDriver& KvmfsFormat_raw() {
  static const RawFormatDriver driver;
  return driver;
}

}  // namespace kvmfs
