// qcow writes as QEMU's qcow driver makes them: clusters and L2 tables are
// appended at the end of the file (rounded up to the cluster size), a
// compressed cluster that is written to is replaced by a normal one holding
// its decompressed bytes, and L1/L2 entries are updated in place. Ordering
// (qcow.h): data first; cached L2 tables, then L1 entries, written by Flush()
// after the data they point to is durable.
#include <algorithm>
#include <cstring>

#include "base/endian.h"
#include "format/qcow/qcow.h"

namespace kvmfs::qcow {
namespace {

// The bytes one allocating step handles at most (bounds the bounce buffer).
constexpr uint64_t kMaxAllocRun = 1u << 20;

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

}  // namespace

Status Engine::BeginWrites() {
  if (!file_->writable()) return Status::ReadOnly(name_ + ": opened read-only");
  std::unique_lock<std::shared_mutex> lock(rw_);
  if (writing_.load()) return Status::OK();
  KVMFS_ASSIGN_OR_RETURN(uint64_t size, file_->Size());
  file_size_.store(size);
  // New space starts past everything the file holds, as QEMU's
  // bdrv_getlength() rounded up to the cluster size.
  alloc_end_ = AlignUp(std::max(size, header_.meta_end), header_.cluster_size);
  writing_.store(true, std::memory_order_release);
  return Status::OK();
}

Status Engine::EndWrites() {
  if (!writing_.load()) return Status::OK();
  std::unique_lock<std::shared_mutex> lock(rw_);
  KVMFS_RETURN_IF_ERROR(FlushLocked());
  writing_.store(false, std::memory_order_release);
  return Status::OK();
}

Status Engine::Flush() {
  if (!writing_.load()) return Status::OK();
  std::unique_lock<std::shared_mutex> lock(rw_);
  return FlushLocked();
}

Status Engine::CheckWrite(uint64_t off, uint64_t len) const {
  if (!writing_.load()) return Status::ReadOnly(name_ + ": image is read-only");
  if (off > header_.virtual_size || len > header_.virtual_size - off)
    return Status::InvalidArgument(name_ + ": write of " + std::to_string(len) + " bytes at " +
                                   std::to_string(off) + " past the virtual size " +
                                   std::to_string(header_.virtual_size));
  return Status::OK();
}

Result<uint64_t> Engine::Allocate(uint64_t bytes) {
  const uint64_t at = alloc_end_;
  const uint64_t end = AlignUp(at + bytes, header_.cluster_size);
  if (end < at || end > static_cast<uint64_t>(INT64_MAX) || end > kOflagCompressed >> 1)
    return Status::NoSpace(name_ + ": no room for " + std::to_string(bytes) +
                           " more bytes (the file would pass the largest qcow offset)");
  alloc_end_ = end;
  return at;
}

Result<std::shared_ptr<L2Table>> Engine::WritableL2(uint64_t l1_index) {
  if (l1_index >= l1_.size())
    return Status::Corruption(name_ + ": L1 index " + std::to_string(l1_index) + " out of range");
  if (l1_[l1_index] != 0) return GetL2(l1_[l1_index], l1_index);
  // A new, zeroed table at the end of the file: written now so the file
  // covers it, its entries by Flush(), the L1 entry after them.
  KVMFS_ASSIGN_OR_RETURN(uint64_t offset, Allocate(header_.l2_bytes));
  const std::vector<uint8_t> zeros(header_.l2_bytes);
  KVMFS_RETURN_IF_ERROR(file_->WriteAt(offset, zeros.data(), zeros.size()).WithContext(name_));
  file_size_.store(std::max(file_size_.load(), offset + header_.l2_bytes));
  auto table = std::make_shared<L2Table>();
  table->offset = offset;
  table->entries.assign(header_.l2_entries, 0);
  table->dirty = true;
  ++dirty_tables_;
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    lru_.push_front(table);
    index_[offset] = lru_.begin();
  }
  l1_[l1_index] = offset;
  dirty_l1_.insert(l1_index);
  return table;
}

Result<uint64_t> Engine::AllocateRun(uint64_t off, const uint8_t* buf, uint64_t n,
                                     const Extent& e, BackingReader& below) {
  const uint64_t cs = header_.cluster_size;
  const uint64_t first = off & ~(cs - 1);
  // Whole clusters, at most kMaxAllocRun bytes of them (at least one).
  uint64_t end = AlignUp(off + n, cs);
  if (end - first > std::max(kMaxAllocRun, cs)) {
    end = first + std::max(kMaxAllocRun, cs);
    n = end - off;
  }
  std::vector<uint8_t> bounce(end - first);
  const uint64_t head = off - first;
  const uint64_t tail = end - (off + n);
  if (e.type == Extent::Type::kCompressed) {
    // Only ever one cluster (Map): its old bytes around the write.
    if (head > 0 || tail > 0)
      KVMFS_RETURN_IF_ERROR(ReadCompressed(e.entry, 0, bounce.data(), cs, first));
  } else {
    if (head > 0 && !below.ZerosBelow(first, head))
      KVMFS_RETURN_IF_ERROR(below.ReadBelow(first, bounce.data(), head));
    if (tail > 0 && !below.ZerosBelow(off + n, tail))
      KVMFS_RETURN_IF_ERROR(below.ReadBelow(off + n, bounce.data() + head + n, tail));
  }
  if (buf != nullptr) std::memcpy(bounce.data() + head, buf, n);
  else std::memset(bounce.data() + head, 0, n);

  const uint64_t l1_index = off >> header_.l1_shift();
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<L2Table> table, WritableL2(l1_index));
  KVMFS_ASSIGN_OR_RETURN(uint64_t host, Allocate(bounce.size()));
  KVMFS_RETURN_IF_ERROR(WriteData(first, host, bounce.data(), bounce.size()));
  file_size_.store(std::max(file_size_.load(), host + bounce.size()));
  uint64_t l2_index = (first >> header_.cluster_bits) & (header_.l2_entries - 1);
  for (uint64_t c = 0; c < bounce.size() / cs; ++c) table->entries[l2_index + c] = host + c * cs;
  if (!table->dirty) {
    table->dirty = true;
    ++dirty_tables_;
  }
  return n;
}

Status Engine::WriteLocked(uint64_t off, const uint8_t* buf, size_t len, BackingReader& below) {
  while (len > 0) {
    KVMFS_ASSIGN_OR_RETURN(Extent e, Map(off, len, MapMode::kRead));
    uint64_t done = e.length;
    if (e.type == Extent::Type::kData) {
      KVMFS_RETURN_IF_ERROR(WriteData(off, e.host, buf, e.length));
    } else {
      KVMFS_ASSIGN_OR_RETURN(done, AllocateRun(off, buf, e.length, e, below));
    }
    off += done;
    buf += done;
    len -= done;
    if (dirty_tables_ > kMaxDirtyTables) KVMFS_RETURN_IF_ERROR(FlushLocked());
  }
  return Status::OK();
}

Status Engine::Write(uint64_t off, const uint8_t* buf, size_t len, BackingReader& below) {
  std::unique_lock<std::shared_mutex> lock(rw_);
  KVMFS_RETURN_IF_ERROR(CheckWrite(off, len));
  return WriteLocked(off, buf, len, below);
}

Status Engine::WriteZeroes(uint64_t off, uint64_t len, bool unmap, BackingReader& below) {
  std::unique_lock<std::shared_mutex> lock(rw_);
  KVMFS_RETURN_IF_ERROR(CheckWrite(off, len));
  // qcow has no zero clusters: allocated clusters are zeroed in place (the
  // host may release them), unallocated ones already read as zeros unless a
  // backing file shows through, where zeros are written as data.
  while (len > 0) {
    KVMFS_ASSIGN_OR_RETURN(Extent e, Map(off, len, MapMode::kRead));
    uint64_t done = e.length;
    if (e.type == Extent::Type::kData) {
      KVMFS_RETURN_IF_ERROR(ZeroData(off, e.host, e.length, unmap));
    } else if (e.type == Extent::Type::kCompressed || !below.ZerosBelow(off, e.length)) {
      KVMFS_ASSIGN_OR_RETURN(done, AllocateRun(off, nullptr, e.length, e, below));
    }
    off += done;
    len -= done;
    if (dirty_tables_ > kMaxDirtyTables) KVMFS_RETURN_IF_ERROR(FlushLocked());
  }
  return Status::OK();
}

Status Engine::FlushLocked() {
  if (dirty_tables_ == 0 && dirty_l1_.empty()) return file_->Flush().WithContext(name_);
  // 1. The data (and new clusters) the tables are about to point to.
  KVMFS_RETURN_IF_ERROR(file_->Flush().WithContext(name_));
  // 2. The L2 tables.
  std::vector<std::shared_ptr<L2Table>> dirty;
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    for (const auto& t : lru_)
      if (t->dirty) dirty.push_back(t);
  }
  std::sort(dirty.begin(), dirty.end(),
            [](const auto& a, const auto& b) { return a->offset < b->offset; });
  std::vector<uint8_t> raw(header_.l2_bytes);
  for (const auto& t : dirty) {
    for (uint64_t i = 0; i < header_.l2_entries; ++i) StoreBE64(&raw[8 * i], t->entries[i]);
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(t->offset, raw.data(), raw.size()).WithContext(name_));
    t->dirty = false;
    --dirty_tables_;
  }
  // 3. The L1 entries that point to new tables, once those are durable.
  if (!dirty_l1_.empty()) {
    KVMFS_RETURN_IF_ERROR(file_->Flush().WithContext(name_));
    auto it = dirty_l1_.begin();
    while (it != dirty_l1_.end()) {
      uint64_t first = *it, last = *it;
      auto run_end = std::next(it);
      while (run_end != dirty_l1_.end() && *run_end == last + 1) last = *run_end++;
      std::vector<uint8_t> bytes(8 * (last - first + 1));
      for (uint64_t i = first; i <= last; ++i) StoreBE64(&bytes[8 * (i - first)], l1_[i]);
      KVMFS_RETURN_IF_ERROR(
          file_->WriteAt(header_.l1_offset + 8 * first, bytes.data(), bytes.size()).WithContext(name_));
      it = dirty_l1_.erase(it, run_end);
    }
  }
  return file_->Flush().WithContext(name_);
}

}  // namespace kvmfs::qcow
