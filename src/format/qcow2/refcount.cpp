// Refcounts (QEMU qcow2-refcount.c): entries of every width, the refcount
// block cache, cluster allocation with a free-cluster search, refcount block
// allocation (a new block describes itself when it can) and refcount table
// growth (the new table is written and flushed before the header points to
// it).
//
// Decrements are "pending": the logical value drops at once (so COPIED and
// the allocator see it), but the block is written with the old value until
// Flush() has made durable the tables that stopped using the cluster, and the
// cluster is not reused before that. So a crash leaks, never corrupts.
#include <algorithm>
#include <cstring>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {

inline constexpr uint64_t kRefTableReservedMask = 0x1ff;

uint64_t GetRefcountEntry(const uint8_t* b, uint32_t order, uint64_t i) {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const uint32_t bits = 1u << order;
      const uint64_t per_byte = 8u >> order;
      const uint32_t shift = static_cast<uint32_t>(i % per_byte) * bits;
      return (b[i / per_byte] >> shift) & ((1u << bits) - 1);
    }
    case 3:
      return b[i];
    case 4:
      return LoadBE16(b + 2 * i);
    case 5:
      return LoadBE32(b + 4 * i);
    default:
      return LoadBE64(b + 8 * i);
  }
}

void SetRefcountEntry(uint8_t* b, uint32_t order, uint64_t i, uint64_t v) {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const uint32_t bits = 1u << order;
      const uint64_t per_byte = 8u >> order;
      const uint32_t shift = static_cast<uint32_t>(i % per_byte) * bits;
      const uint32_t mask = ((1u << bits) - 1) << shift;
      uint8_t& byte = b[i / per_byte];
      byte = static_cast<uint8_t>((byte & ~mask) | ((v << shift) & mask));
      return;
    }
    case 3:
      b[i] = static_cast<uint8_t>(v);
      return;
    case 4:
      StoreBE16(b + 2 * i, static_cast<uint16_t>(v));
      return;
    case 5:
      StoreBE32(b + 4 * i, static_cast<uint32_t>(v));
      return;
    default:
      StoreBE64(b + 8 * i, v);
      return;
  }
}

Status Engine::LoadRefcountTable() {
  if (refcounts_loaded_) return Status::OK();
  reftable_offset_ = header_.raw.refcount_table_offset;
  reftable_clusters_ = header_.raw.refcount_table_clusters;
  const uint64_t bytes = reftable_clusters_ * geo_.cluster_size;
  std::vector<uint8_t> raw(bytes);
  KVMFS_RETURN_IF_ERROR(file_->ReadAt(reftable_offset_, raw.data(), raw.size()));
  reftable_.assign(bytes / 8, 0);
  for (size_t i = 0; i < reftable_.size(); ++i) {
    const uint64_t e = LoadBE64(raw.data() + 8 * i);
    if (e & kRefTableReservedMask)
      return Status::Corruption(name_ + ": refcount table entry " + std::to_string(i) + " (" +
                                Hex(e) + ") has reserved bits set");
    reftable_[i] = e;
  }
  refblocks_.clear();
  free_hint_ = 0;
  refcounts_loaded_ = true;
  return Status::OK();
}

Result<RefBlock*> Engine::GetRefBlock(uint64_t rt_index, bool /*create*/) {
  if (rt_index >= reftable_.size()) return static_cast<RefBlock*>(nullptr);
  const uint64_t off = reftable_[rt_index];
  if (off == 0) return static_cast<RefBlock*>(nullptr);
  auto it = refblocks_.find(rt_index);
  if (it != refblocks_.end()) return it->second.get();
  if (off & (geo_.cluster_size - 1))
    return Status::Corruption(name_ + ": refcount block offset " + Hex(off) +
                              " unaligned (refcount table index " + std::to_string(rt_index) + ")");
  if (PastEof(*file_, file_size_, off, 0))
    return Status::Corruption(name_ + ": refcount block at " + Hex(off) +
                              " is past the end of the file (refcount table index " +
                              std::to_string(rt_index) + ")");
  auto block = std::make_unique<RefBlock>();
  block->host_offset = off;
  block->data.resize(geo_.cluster_size);
  KVMFS_RETURN_IF_ERROR(file_->ReadAt(off, block->data.data(), block->data.size()));
  RefBlock* p = block.get();
  refblocks_.emplace(rt_index, std::move(block));
  return p;
}

Result<uint64_t> Engine::GetRefcount(uint64_t cluster) {
  const uint64_t rt = cluster >> rb_bits();
  KVMFS_ASSIGN_OR_RETURN(RefBlock * b, GetRefBlock(rt, false));
  if (b == nullptr) return uint64_t{0};
  return GetRefcountEntry(b->data.data(), header_.refcount_order,
                          cluster & ((uint64_t{1} << rb_bits()) - 1));
}

Result<bool> Engine::IsFree(uint64_t cluster) {
  for (const auto& r : reserved_)
    if (cluster >= r.first && cluster < r.second) return false;
  if (rebuild_counts_ != nullptr && cluster < rebuild_counts_->size() &&
      (*rebuild_counts_)[cluster] > 0)
    return false;
  const uint64_t rt = cluster >> rb_bits();
  KVMFS_ASSIGN_OR_RETURN(RefBlock * b, GetRefBlock(rt, false));
  if (b == nullptr) return true;
  const uint64_t i = cluster & ((uint64_t{1} << rb_bits()) - 1);
  return GetRefcountEntry(b->data.data(), header_.refcount_order, i) == 0 &&
         b->pending.count(static_cast<uint32_t>(i)) == 0;
}

Result<uint64_t> Engine::FindFree(uint64_t n) {
  const uint64_t limit = kMaxHostOffset >> geo_.cluster_bits;
  uint64_t run_start = free_hint_, run_len = 0;
  bool hint_moved = false;
  for (uint64_t c = free_hint_; c < limit; ++c) {
    KVMFS_ASSIGN_OR_RETURN(bool free, IsFree(c));
    if (!free) {
      run_len = 0;
      continue;
    }
    if (!hint_moved && reserved_.empty() && rebuild_counts_ == nullptr) {
      free_hint_ = c;  // nothing below c is free
      hint_moved = true;
    }
    if (run_len == 0) run_start = c;
    if (++run_len == n) return run_start;
  }
  return Status::NoSpace(name_ + ": no free host cluster range of " + std::to_string(n) +
                         " clusters");
}

Status Engine::EnsureRefBlock(uint64_t rt) {
  while (true) {
    if (rt < reftable_.size() && reftable_[rt] != 0) return Status::OK();
    if (rt >= reftable_.size()) {
      KVMFS_RETURN_IF_ERROR(GrowRefcountTable(rt + 1));
      continue;
    }
    KVMFS_ASSIGN_OR_RETURN(uint64_t c, FindFree(1));
    const uint64_t r2 = c >> rb_bits();
    auto block = std::make_unique<RefBlock>();
    block->host_offset = c << geo_.cluster_bits;
    block->data.assign(geo_.cluster_size, 0);
    block->dirty = true;
    if (r2 == rt) {
      // The new block describes itself: it can never be in use at refcount 0.
      SetRefcountEntry(block->data.data(), header_.refcount_order,
                       c & ((uint64_t{1} << rb_bits()) - 1), 1);
    } else {
      if (r2 >= reftable_.size() || reftable_[r2] == 0) {
        // The lowest free cluster is in another range without a block: that
        // block goes first (and lands on c, describing itself).
        KVMFS_RETURN_IF_ERROR(EnsureRefBlock(r2));
        continue;
      }
      KVMFS_RETURN_IF_ERROR(UpdateRefcount(c, +1));
    }
    refblocks_[rt] = std::move(block);
    reftable_[rt] = c << geo_.cluster_bits;
    reftable_dirty_ = true;
    meta_clusters_.insert(c);
  }
}

Status Engine::GrowRefcountTable(uint64_t min_entries) {
  if (in_commit_)
    return Status::NoSpace(name_ + ": refcount table full during a metadata commit");
  const uint64_t per_cluster = geo_.cluster_size / 8;
  uint64_t entries = std::max<uint64_t>(min_entries, reftable_.size() + reftable_.size() / 2);
  entries = (entries + per_cluster - 1) / per_cluster * per_cluster;
  uint64_t start = 0, k = 0;
  while (true) {
    k = entries / per_cluster;
    if (k * geo_.cluster_size > kMaxRefcountTableBytes)
      return Status::TooLarge(name_ + ": refcount table would exceed " +
                              std::to_string(kMaxRefcountTableBytes) + " bytes");
    KVMFS_ASSIGN_OR_RETURN(start, FindFree(k));
    // The table's own clusters and the blocks they may need must be indexable.
    const uint64_t need = ((start + k + 2) >> rb_bits()) + 2;
    if (need <= entries) break;
    entries = (need + per_cluster - 1) / per_cluster * per_cluster;
  }
  reserved_.push_back({start, start + k});
  reftable_.resize(entries, 0);
  Status st;
  for (uint64_t c = start; c < start + k && st.ok(); ++c) st = UpdateRefcount(c, +1);
  reserved_.pop_back();
  KVMFS_RETURN_IF_ERROR(st);
  // Every block the new table names is on disk before the table, and the
  // table before the header points to it.
  KVMFS_RETURN_IF_ERROR(WriteRefBlocks(true));
  KVMFS_RETURN_IF_ERROR(file_->Flush());
  std::vector<uint8_t> raw(k * geo_.cluster_size, 0);
  for (size_t i = 0; i < reftable_.size(); ++i) StoreBE64(raw.data() + 8 * i, reftable_[i]);
  const uint64_t new_off = start << geo_.cluster_bits;
  KVMFS_RETURN_IF_ERROR(file_->WriteAt(new_off, raw.data(), raw.size()));
  KVMFS_RETURN_IF_ERROR(file_->Flush());
  const uint64_t old_off = reftable_offset_;
  const uint64_t old_clusters = reftable_clusters_;
  reftable_offset_ = new_off;
  reftable_clusters_ = k;
  header_.raw.refcount_table_offset = new_off;
  header_.raw.refcount_table_clusters = static_cast<uint32_t>(k);
  reftable_dirty_ = false;
  KVMFS_RETURN_IF_ERROR(WriteHeaderLocked(true));
  KVMFS_RETURN_IF_ERROR(UpdateRefcountRange(old_off, old_clusters * geo_.cluster_size, -1));
  RebuildMetadataIndex();
  return Status::OK();
}

Status Engine::UpdateRefcount(uint64_t cluster, int64_t delta) {
  const uint64_t rt = cluster >> rb_bits();
  if (rt >= reftable_.size() || reftable_[rt] == 0) {
    if (delta < 0)
      return Status::Corruption(name_ + ": refcount of cluster " + Hex(cluster << geo_.cluster_bits) +
                                " would drop below 0 (no refcount block)");
    KVMFS_RETURN_IF_ERROR(EnsureRefBlock(rt));
  }
  KVMFS_ASSIGN_OR_RETURN(RefBlock * b, GetRefBlock(rt, false));
  const uint64_t i = cluster & ((uint64_t{1} << rb_bits()) - 1);
  const uint64_t old = GetRefcountEntry(b->data.data(), header_.refcount_order, i);
  uint64_t now;
  if (delta >= 0) {
    const uint64_t d = static_cast<uint64_t>(delta);
    if (d > refcount_max() - old)
      return Status::TooLarge(name_ + ": refcount of cluster " + Hex(cluster << geo_.cluster_bits) +
                              " would exceed " + std::to_string(refcount_max()) +
                              " (refcount_bits " +
                              std::to_string(1u << header_.refcount_order) + ")");
    now = old + d;
  } else {
    const uint64_t d = static_cast<uint64_t>(-delta);
    if (old < d)
      return Status::Corruption(name_ + ": refcount of cluster " +
                                Hex(cluster << geo_.cluster_bits) + " would drop below 0");
    now = old - d;
    b->pending[static_cast<uint32_t>(i)] += d;
  }
  SetRefcountEntry(b->data.data(), header_.refcount_order, i, now);
  b->dirty = true;
  return Status::OK();
}

Status Engine::UpdateRefcountRange(uint64_t host, uint64_t bytes, int64_t delta) {
  if (bytes == 0) return Status::OK();
  const uint64_t first = host >> geo_.cluster_bits;
  const uint64_t last = (host + bytes - 1) >> geo_.cluster_bits;
  for (uint64_t c = first; c <= last; ++c) KVMFS_RETURN_IF_ERROR(UpdateRefcount(c, delta));
  return Status::OK();
}

Result<uint64_t> Engine::AllocClusters(uint64_t n) {
  KVMFS_ASSIGN_OR_RETURN(uint64_t start, FindFree(n));
  // Blocks for the run first; they must not take clusters of the run.
  reserved_.push_back({start, start + n});
  Status st;
  for (uint64_t rt = start >> rb_bits(); rt <= (start + n - 1) >> rb_bits() && st.ok(); ++rt)
    st = EnsureRefBlock(rt);
  reserved_.pop_back();
  KVMFS_RETURN_IF_ERROR(st);
  for (uint64_t c = start; c < start + n; ++c) KVMFS_RETURN_IF_ERROR(UpdateRefcount(c, +1));
  if (free_hint_ >= start && free_hint_ < start + n) free_hint_ = start + n;
  return start << geo_.cluster_bits;
}

Status Engine::WriteRefBlocks(bool with_pending) {
  std::vector<RefBlock*> dirty;
  for (auto& [rt, b] : refblocks_)
    if (b->dirty) dirty.push_back(b.get());
  std::sort(dirty.begin(), dirty.end(),
            [](const RefBlock* a, const RefBlock* b) { return a->host_offset < b->host_offset; });
  std::vector<uint8_t> tmp;
  for (RefBlock* b : dirty) {
    const uint8_t* out = b->data.data();
    if (with_pending && !b->pending.empty()) {
      // The on-disk value keeps the decrements out until they are safe.
      tmp = b->data;
      for (const auto& [i, d] : b->pending) {
        const uint64_t v = GetRefcountEntry(tmp.data(), header_.refcount_order, i);
        SetRefcountEntry(tmp.data(), header_.refcount_order, i,
                         std::min(refcount_max(), v + d));
      }
      out = tmp.data();
    }
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(b->host_offset, out, b->data.size()));
    if (!with_pending || b->pending.empty()) b->dirty = false;
  }
  return Status::OK();
}

bool Engine::HasPending() const {
  for (const auto& [rt, b] : refblocks_)
    if (!b->pending.empty()) return true;
  return false;
}

void Engine::ApplyPending() {
  const uint64_t mask = (uint64_t{1} << rb_bits()) - 1;
  for (auto& [rt, b] : refblocks_) {
    for (const auto& [i, d] : b->pending) {
      const uint64_t c = (rt << rb_bits()) | (i & mask);
      if (GetRefcountEntry(b->data.data(), header_.refcount_order, i) == 0)
        free_hint_ = std::min(free_hint_, c);
    }
    b->pending.clear();
  }
}

}  // namespace kvmfs::qcow2
