// raw: the file is the disk.
#include <algorithm>

#include "kvmfs/format.h"

namespace kvmfs {
namespace {

class RawImage final : public Image {
 public:
  RawImage(std::shared_ptr<Backend> file, uint64_t size) : file_(std::move(file)), size_(size) {}

  uint64_t size() const override { return size_; }

  Status Read(uint64_t off, void* buf, size_t len) override { return file_->ReadAt(off, buf, len); }

  Status Write(uint64_t off, const void* buf, size_t len) override {
    return file_->WriteAt(off, buf, len);
  }

  Status Flush() override { return file_->Flush(); }

  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    // Holes of the host file read as zeros and are reported as such, as
    // QEMU's file driver does; they still belong to this layer.
    return file_->GetAllocation(off, std::min(len, size_ - off));
  }

  ImageInfo Info() const override {
    ImageInfo info;
    info.format = "raw";
    info.virtual_size = size_;
    return info;
  }

  Result<uint64_t> ActualSize() override { return file_->AllocatedBytes(); }

 private:
  const std::shared_ptr<Backend> file_;
  const uint64_t size_;
};

class RawFormatDriver final : public FormatDriver {
 public:
  const char* name() const override { return "raw"; }
  int Probe(const uint8_t*, size_t) const override { return 1; }
  Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend> file,
                                      const OpenContext&) const override {
    KVMFS_ASSIGN_OR_RETURN(uint64_t size, file->Size());
    return std::unique_ptr<Image>(std::make_unique<RawImage>(std::move(file), size));
  }
};

}  // namespace

const FormatDriver& RawFormat() {
  static const RawFormatDriver driver;
  return driver;
}

}  // namespace kvmfs
