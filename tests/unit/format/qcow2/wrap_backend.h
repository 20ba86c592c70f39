// A Backend that forwards everything to another one: the base of the test
// backends that count, hold or gate calls to watch what the engine does.
#pragma once

#include <memory>
#include <string>

#include "kvmfs/backend.h"

namespace kvmfs::test {

class WrapBackend : public Backend {
 public:
  explicit WrapBackend(std::shared_ptr<Backend> base) : base_(std::move(base)) {}
  Status ReadAt(uint64_t off, void* buf, size_t len) override { return base_->ReadAt(off, buf, len); }
  Status WriteAt(uint64_t off, const void* buf, size_t len) override {
    return base_->WriteAt(off, buf, len);
  }
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    return base_->WriteZeroes(off, len, unmap);
  }
  Status Flush() override { return base_->Flush(); }
  Result<uint64_t> Size() override { return base_->Size(); }
  Status Truncate(uint64_t size) override { return base_->Truncate(size); }
  Result<uint64_t> AllocatedBytes() override { return base_->AllocatedBytes(); }
  Result<BlockStatus> GetAllocation(uint64_t off, uint64_t len) override {
    return base_->GetAllocation(off, len);
  }
  bool writable() const override { return base_->writable(); }
  const std::string& name() const override { return base_->name(); }

 protected:
  const std::shared_ptr<Backend> base_;
};

}  // namespace kvmfs::test
