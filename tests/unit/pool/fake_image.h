// A scripted Image for namespace tests: a size, data in the first half,
// optional snapshots.
#pragma once

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kvmfs/image.h"

namespace kvmfs::pool::testing {

class FakeImage final : public Image {
 public:
  explicit FakeImage(uint64_t size, std::vector<SnapshotInfo> snapshots = {})
      : size_(size), snapshots_(std::move(snapshots)) {}

  uint64_t size() const override { return size_; }
  Status Read(uint64_t, void* buf, size_t len) override {
    std::memset(buf, 0xab, len);
    return Status::OK();
  }
  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    uint64_t half = size_ / 2;
    if (off < half) return BlockStatus{Allocation::kData, std::min(len, half - off)};
    return BlockStatus{Allocation::kUnallocated, len};
  }
  ImageInfo Info() const override {
    ImageInfo info;
    info.format = "fake";
    info.virtual_size = size_;
    info.cluster_size = 65536;
    return info;
  }
  std::vector<SnapshotInfo> Snapshots() const override { return snapshots_; }
  Result<std::unique_ptr<Image>> OpenSnapshot(const std::string& id) override {
    for (const SnapshotInfo& s : snapshots_)
      if (s.id == id) return std::unique_ptr<Image>(std::make_unique<FakeImage>(s.disk_size));
    return Status::NotFound("no snapshot " + id);
  }
  Result<uint64_t> ActualSize() override { return uint64_t{4096}; }

 private:
  uint64_t size_;
  std::vector<SnapshotInfo> snapshots_;
};

}  // namespace kvmfs::pool::testing
