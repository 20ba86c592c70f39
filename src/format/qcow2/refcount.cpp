// Refcounts (QEMU qcow2-refcount.c): entries of every width, the refcount
// block cache, cluster allocation with a free-cluster search, refcount block
// allocation (a new block describes itself when it can) and refcount table
// growth (the new table is written and flushed before the header points to
// it).
//
// Decrements are "pending": the logical value drops at once (so COPIED and
// the allocator see it), but the block is written with the old value (its
// `disk` copy) until Flush() has made durable the tables that stopped using
// the cluster, and the cluster is not reused before that. So a crash leaks,
// never corrupts.
//
// The block cache holds at most RefBlockCap() blocks (an eighth of the
// budget, at least 4), charged to the budget. Clean blocks are evicted
// least recently used first; dirty ones are written back to make room
// (writing an increment early is always safe); only blocks with pending
// decrements, which Flush() clears, must stay.
//
// The image is hostile: an allocation never returns cluster 0, never
// overlaps known metadata, never scans past what the file can hold, and
// refcount block allocation gives up after a few steps, all as corruption.
#include <algorithm>
#include <cstring>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {

namespace {

constexpr uint64_t kRefTableReservedMask = 0x1ff;
// Nested refcount block allocations before it must have converged (a new
// block lands at most in one other range that needs a block first).
constexpr int kMaxEnsureDepth = 4;
constexpr int kMaxEnsureSteps = 8;
// Blocks written back together when the cache must make room.
constexpr size_t kWriteBackBatch = 64;

}  // namespace

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
  DropRefcounts();
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
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file_->Size());
  alloc_end_ = std::max(alloc_end_, (file_size + geo_.cluster_size - 1) >> geo_.cluster_bits);
  free_hint_ = 1;
  refcounts_loaded_ = true;
  ChargeTables();
  return Status::OK();
}

void Engine::DropRefcounts() {
  free_byte_offset_ = 0;
  refblocks_.clear();
  refblock_lru_.clear();
  last_block_ = nullptr;
  pending_blocks_ = 0;
  refblock_charge_.Release();
  reftable_dirty_ = false;
  refcounts_loaded_ = false;
}

void Engine::ChargeTables() {
  l1_charge_.Set(budget(), l1_.size() * 8);
  reftable_charge_.Set(budget(), reftable_.size() * 8);
}

uint64_t Engine::RefBlockCap() const {
  return std::max<uint64_t>(4, budget().limit() / 8 / (geo_.cluster_size + kCacheEntryOverhead));
}

Result<RefBlock*> Engine::GetRefBlock(uint64_t rt_index, bool /*create*/) {
  if (rt_index >= reftable_.size()) return static_cast<RefBlock*>(nullptr);
  const uint64_t off = reftable_[rt_index];
  if (off == 0) return static_cast<RefBlock*>(nullptr);
  if (last_block_ != nullptr && last_block_->rt == rt_index) return last_block_;
  auto it = refblocks_.find(rt_index);
  if (it != refblocks_.end()) {
    RefBlock* p = it->second.get();
    refblock_lru_.splice(refblock_lru_.begin(), refblock_lru_, p->lru);
    last_block_ = p;
    return p;
  }
  if (off & (geo_.cluster_size - 1))
    return Status::Corruption(name_ + ": refcount block offset " + Hex(off) +
                              " unaligned (refcount table index " + std::to_string(rt_index) + ")");
  if (PastEof(*file_, file_size_, off, 0))
    return Status::Corruption(name_ + ": refcount block at " + Hex(off) +
                              " is past the end of the file (refcount table index " +
                              std::to_string(rt_index) + ")");
  auto block = std::make_unique<RefBlock>();
  block->rt = rt_index;
  block->host_offset = off;
  if (rebuilding_ && !rebuild_reset_[rt_index]) {
    // A rebuild counts from zero: the old values are not even read.
    block->data.assign(geo_.cluster_size, 0);
    block->dirty = true;
    rebuild_reset_[rt_index] = true;
  } else {
    block->data.resize(geo_.cluster_size);
    KVMFS_RETURN_IF_ERROR(file_->ReadAt(off, block->data.data(), block->data.size()));
  }
  RefBlock* p = block.get();
  refblock_lru_.push_front(rt_index);
  p->lru = refblock_lru_.begin();
  refblocks_.emplace(rt_index, std::move(block));
  last_block_ = p;
  KVMFS_RETURN_IF_ERROR(TrimRefBlocks());
  return p;
}

Status Engine::TrimRefBlocks() {
  const uint64_t cap = RefBlockCap();
  auto evictable = [](const RefBlock& b) { return !b.dirty && b.disk.empty() && !b.busy; };
  auto erase = [this](RefBlock* b) {
    if (last_block_ == b) last_block_ = nullptr;
    refblock_lru_.erase(b->lru);
    refblocks_.erase(b->rt);
  };
  if (refblocks_.size() > cap) {
    // Clean blocks, least recently used first; never the newest (the
    // caller is using it).
    for (auto it = refblock_lru_.end();
         refblocks_.size() > cap && it != refblock_lru_.begin() &&
         std::prev(it) != refblock_lru_.begin();) {
      --it;
      RefBlock* b = refblocks_[*it].get();
      if (evictable(*b)) {
        auto next = std::next(it);
        erase(b);
        it = next;
      }
    }
  }
  if (refblocks_.size() > cap) {
    // Only dirty ones left to take: write a batch of the coldest back (an
    // increment may reach the disk early; a commit's blocks are fresh).
    std::vector<RefBlock*> batch;
    for (auto it = refblock_lru_.rbegin();
         it != refblock_lru_.rend() && std::next(it) != refblock_lru_.rend() &&
         batch.size() < kWriteBackBatch;
         ++it) {
      RefBlock* b = refblocks_[*it].get();
      if (b->dirty && b->disk.empty() && !b->busy) batch.push_back(b);
    }
    std::sort(batch.begin(), batch.end(),
              [](const RefBlock* a, const RefBlock* b) { return a->host_offset < b->host_offset; });
    for (RefBlock* b : batch) {
      KVMFS_RETURN_IF_ERROR(file_->WriteAt(b->host_offset, b->data.data(), b->data.size()));
      b->dirty = false;
      erase(b);
    }
  }
  refblock_charge_.Set(budget(), refblocks_.size() * (geo_.cluster_size + kCacheEntryOverhead) +
                                     pending_blocks_ * geo_.cluster_size);
  ChargeTables();  // the L1 may have grown (Resize): nothing to do when not
  return Status::OK();
}

Result<RefBlock*> Engine::BlockForUpdate(uint64_t rt) {
  KVMFS_ASSIGN_OR_RETURN(RefBlock * b, GetRefBlock(rt, false));
  if (b == nullptr || floor_ == 0 || rebuilding_ ||
      b->host_offset >= (floor_ << geo_.cluster_bits))
    return b;
  // A commit changes a block of the old state: it moves to a fresh cluster
  // first (the old one stays intact until the switch and is released by
  // the commit, commit_released_).
  // `b` stays busy (never written back or evicted) until it is returned.
  b->busy = true;
  Result<uint64_t> fresh = FindFree(1);
  if (!fresh.ok()) {
    b->busy = false;
    return fresh.status();
  }
  commit_released_.push_back(b->host_offset >> geo_.cluster_bits);
  b->host_offset = *fresh << geo_.cluster_bits;
  b->dirty = true;
  reftable_[rt] = b->host_offset;
  reftable_dirty_ = true;
  // Nothing else can take *fresh now (the floor cursor is past it).
  Status st = UpdateRefcount(*fresh, +1);
  b->busy = false;
  KVMFS_RETURN_IF_ERROR(st);
  return b;
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
  const uint64_t rt = cluster >> rb_bits();
  KVMFS_ASSIGN_OR_RETURN(RefBlock * b, GetRefBlock(rt, false));
  if (b == nullptr) return true;
  const uint64_t i = cluster & ((uint64_t{1} << rb_bits()) - 1);
  return GetRefcountEntry(b->data.data(), header_.refcount_order, i) == 0 &&
         (b->disk.empty() || GetRefcountEntry(b->disk.data(), header_.refcount_order, i) == 0);
}

Result<uint64_t> Engine::FindFree(uint64_t n) {
  const uint64_t max_cluster = kMaxHostOffset >> geo_.cluster_bits;
  // Past alloc_end_ nothing is in the file or allocated, so refcounts there
  // are 0 but for leaks; a scan never goes further than a little past it
  // (so a crafted refcount layout cannot make it run for long).
  const uint64_t per_block = uint64_t{1} << rb_bits();
  const uint64_t leak_allowance = 2 * per_block + n;
  if (floor_ != 0) {
    // Commit or rebuild: everything at or past the floor is unused by the
    // old state; bump-allocate there.
    uint64_t c = std::max(floor_cursor_, floor_), start = c, run = 0;
    for (; run < n; ++c) {
      if (c >= max_cluster || c - std::max(floor_cursor_, floor_) > leak_allowance)
        return Status::Corruption(name_ + ": refcounts claim clusters past the end of the file "
                                          "(at " + Hex(c << geo_.cluster_bits) + ")");
      KVMFS_ASSIGN_OR_RETURN(bool free, IsFree(c));
      if (!free) {
        run = 0;
        start = c + 1;
        continue;
      }
      ++run;
    }
    floor_cursor_ = start + n;
    alloc_end_ = std::max(alloc_end_, start + n);
    return start;
  }
  // The header's cluster is always in use: refcounts that say otherwise
  // are wrong, and anything placed by them would land on metadata.
  KVMFS_ASSIGN_OR_RETURN(bool header_free, IsFree(0));
  if (header_free)
    return Status::Corruption(name_ + ": the refcount of cluster 0 (the header) is 0: the "
                                      "refcounts are wrong");
  free_hint_ = std::max<uint64_t>(free_hint_, 1);
  const uint64_t end = std::min(max_cluster, std::max(alloc_end_, free_hint_) + leak_allowance);
  uint64_t run_start = free_hint_, run_len = 0;
  bool hint_moved = false;
  for (uint64_t c = free_hint_; c < end; ++c) {
    KVMFS_ASSIGN_OR_RETURN(bool free, IsFree(c));
    if (!free) {
      run_len = 0;
      continue;
    }
    if (!hint_moved && reserved_.empty()) {
      free_hint_ = c;  // nothing below c is free
      hint_moved = true;
    }
    if (run_len == 0) run_start = c;
    if (++run_len == n) return run_start;
  }
  if (end == max_cluster)
    return Status::NoSpace(name_ + ": no free host cluster range of " + std::to_string(n) +
                           " clusters");
  return Status::Corruption(name_ + ": refcounts claim clusters past the end of the file (up to " +
                            Hex(end << geo_.cluster_bits) + ")");
}

Status Engine::EnsureRefBlock(uint64_t rt) {
  static thread_local int depth = 0;
  if (depth >= kMaxEnsureDepth)
    return Status::Corruption(name_ + ": refcount block allocation for refcount table index " +
                              std::to_string(rt) + " does not converge (refcounts are wrong)");
  ++depth;
  struct Leave {
    ~Leave() { --depth; }
  } leave;
  for (int step = 0; step < kMaxEnsureSteps; ++step) {
    if (rt < reftable_.size() && reftable_[rt] != 0) return Status::OK();
    if (rt >= reftable_.size()) {
      KVMFS_RETURN_IF_ERROR(GrowRefcountTable(rt + 1));
      continue;
    }
    KVMFS_ASSIGN_OR_RETURN(uint64_t c, FindFree(1));
    if (OverlapsMetadata(c << geo_.cluster_bits, geo_.cluster_size))
      return Status::Corruption(name_ + ": new refcount block at " + Hex(c << geo_.cluster_bits) +
                                " would overlap metadata (the refcounts are wrong)");
    const uint64_t r2 = c >> rb_bits();
    if (r2 != rt && (r2 >= reftable_.size() || reftable_[r2] == 0)) {
      // The free cluster is in another range without a block: that block
      // goes first (and lands on c, describing itself).
      KVMFS_RETURN_IF_ERROR(EnsureRefBlock(r2));
      continue;
    }
    auto block = std::make_unique<RefBlock>();
    block->rt = rt;
    block->host_offset = c << geo_.cluster_bits;
    block->data.assign(geo_.cluster_size, 0);
    block->dirty = true;
    if (r2 == rt) {
      // The new block describes itself: it can never be in use at refcount 0.
      SetRefcountEntry(block->data.data(), header_.refcount_order,
                       c & ((uint64_t{1} << rb_bits()) - 1), 1);
    } else {
      KVMFS_RETURN_IF_ERROR(UpdateRefcount(c, +1));
    }
    if (rebuilding_) rebuild_reset_[rt] = true;
    RefBlock* p = block.get();
    refblock_lru_.push_front(rt);
    p->lru = refblock_lru_.begin();
    refblocks_[rt] = std::move(block);
    last_block_ = p;
    reftable_[rt] = c << geo_.cluster_bits;
    reftable_dirty_ = true;
    alloc_end_ = std::max(alloc_end_, c + 1);
    // A walk's readers use the metadata index; the switch rebuilds it.
    if (!walk_active_) meta_clusters_.insert(c);
    return TrimRefBlocks();
  }
  return Status::Corruption(name_ + ": refcount block allocation for refcount table index " +
                            std::to_string(rt) + " does not converge (refcounts are wrong)");
}

Status Engine::GrowRefcountTable(uint64_t min_entries) {
  if (floor_ != 0 && !rebuilding_)
    return Status::NoSpace(name_ + ": refcount table full during a metadata commit");
  const uint64_t per_cluster = geo_.cluster_size / 8;
  uint64_t entries = std::max(min_entries, reftable_.size() + reftable_.size() / 2);
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
    entries = (need + per_cluster - 1) / per_cluster * per_cluster;  // grows: terminates
  }
  if (OverlapsMetadata(start << geo_.cluster_bits, k * geo_.cluster_size))
    return Status::Corruption(name_ + ": new refcount table at " + Hex(start << geo_.cluster_bits) +
                              " would overlap metadata (the refcounts are wrong)");
  reserved_.push_back({start, start + k});
  reftable_.resize(entries, 0);
  if (rebuilding_) rebuild_reset_.resize(entries, true);  // new ranges have no old blocks
  Status st;
  for (uint64_t c = start; c < start + k && st.ok(); ++c) st = UpdateRefcount(c, +1);
  reserved_.pop_back();
  KVMFS_RETURN_IF_ERROR(st);
  alloc_end_ = std::max(alloc_end_, start + k);
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
  ChargeTables();
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
  KVMFS_ASSIGN_OR_RETURN(RefBlock * b, BlockForUpdate(rt));
  if (b == nullptr)
    return Status::Corruption(name_ + ": no refcount block for cluster " +
                              Hex(cluster << geo_.cluster_bits));
  const uint32_t order = header_.refcount_order;
  const uint64_t i = cluster & ((uint64_t{1} << rb_bits()) - 1);
  const uint64_t old = GetRefcountEntry(b->data.data(), order, i);
  uint64_t now;
  if (delta >= 0) {
    const uint64_t d = static_cast<uint64_t>(delta);
    if (d > refcount_max() - old)
      return Status::TooLarge(name_ + ": refcount of cluster " + Hex(cluster << geo_.cluster_bits) +
                              " would exceed " + std::to_string(refcount_max()) +
                              " (refcount_bits " + std::to_string(1u << order) + ")");
    now = old + d;
    if (!b->disk.empty()) {
      const uint64_t v = GetRefcountEntry(b->disk.data(), order, i);
      SetRefcountEntry(b->disk.data(), order, i, v + std::min(d, refcount_max() - v));
    }
  } else {
    const uint64_t d = static_cast<uint64_t>(-delta);
    if (old < d)
      return Status::Corruption(name_ + ": refcount of cluster " +
                                Hex(cluster << geo_.cluster_bits) + " would drop below 0");
    now = old - d;
    if (floor_ != 0 && !rebuilding_) {
      // A commit's blocks are fresh: the switch makes the decrement durable
      // with everything else, and the floor keeps the cluster from reuse
      // until then.
      if (now == 0) commit_min_freed_ = std::min(commit_min_freed_, cluster);
    } else if (b->disk.empty()) {
      b->disk = b->data;  // still holds `old` at i
      ++pending_blocks_;
      refblock_charge_.Set(budget(), refblocks_.size() * (geo_.cluster_size + kCacheEntryOverhead) +
                                         pending_blocks_ * geo_.cluster_size);
    }
  }
  SetRefcountEntry(b->data.data(), order, i, now);
  b->dirty = true;
  // A free cluster is no place for the next compressed cluster's bytes.
  if (now == 0 && free_byte_offset_ != 0 && (free_byte_offset_ >> geo_.cluster_bits) == cluster)
    free_byte_offset_ = 0;
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
  // Wrong refcounts must not put anything over metadata (QEMU's overlap
  // check): nothing has changed yet, so the caller's corruption is clean.
  if (OverlapsMetadata(start << geo_.cluster_bits, n << geo_.cluster_bits))
    return Status::Corruption(name_ + ": newly allocated cluster " +
                              Hex(start << geo_.cluster_bits) +
                              " overlaps metadata (the refcounts are wrong)");
  // Blocks for the run first; they must not take clusters of the run.
  reserved_.push_back({start, start + n});
  Status st;
  for (uint64_t rt = start >> rb_bits(); rt <= (start + n - 1) >> rb_bits() && st.ok(); ++rt)
    st = EnsureRefBlock(rt);
  reserved_.pop_back();
  KVMFS_RETURN_IF_ERROR(st);
  for (uint64_t c = start; c < start + n; ++c) KVMFS_RETURN_IF_ERROR(UpdateRefcount(c, +1));
  if (free_hint_ >= start && free_hint_ < start + n) free_hint_ = start + n;
  alloc_end_ = std::max(alloc_end_, start + n);
  return start << geo_.cluster_bits;
}

Status Engine::WriteRefBlocks(bool with_pending) {
  std::vector<RefBlock*> dirty;
  for (auto& [rt, b] : refblocks_)
    if (b->dirty) dirty.push_back(b.get());
  std::sort(dirty.begin(), dirty.end(),
            [](const RefBlock* a, const RefBlock* b) { return a->host_offset < b->host_offset; });
  // Blocks next to each other go in one write (a commit's fresh blocks are).
  const uint64_t cs = geo_.cluster_size;
  const size_t max_batch = std::max<size_t>(1, (256u << 10) / cs);
  std::vector<uint8_t> buf;
  for (size_t i = 0; i < dirty.size();) {
    size_t j = i + 1;
    while (j < dirty.size() && j - i < max_batch &&
           dirty[j]->host_offset == dirty[j - 1]->host_offset + cs)
      ++j;
    buf.resize((j - i) * cs);
    for (size_t k = i; k < j; ++k) {
      const RefBlock* b = dirty[k];
      const std::vector<uint8_t>& src = with_pending && !b->disk.empty() ? b->disk : b->data;
      std::copy(src.begin(), src.end(), buf.begin() + static_cast<ptrdiff_t>((k - i) * cs));
    }
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(dirty[i]->host_offset, buf.data(), buf.size()));
    for (size_t k = i; k < j; ++k)
      if (!with_pending || dirty[k]->disk.empty()) dirty[k]->dirty = false;
    i = j;
  }
  return Status::OK();
}

void Engine::ApplyPending() {
  const uint64_t per_block = uint64_t{1} << rb_bits();
  const uint32_t order = header_.refcount_order;
  for (auto& [rt, b] : refblocks_) {
    if (b->disk.empty()) continue;
    for (uint64_t i = 0; i < per_block; ++i)
      if (GetRefcountEntry(b->data.data(), order, i) == 0 &&
          GetRefcountEntry(b->disk.data(), order, i) != 0) {
        free_hint_ = std::min(free_hint_, (rt << rb_bits()) | i);
        break;
      }
    b->disk.clear();
    b->disk.shrink_to_fit();
    b->dirty = true;  // the disk holds the old values until written again
  }
  pending_blocks_ = 0;
  free_hint_ = std::max<uint64_t>(free_hint_, 1);
  refblock_charge_.Set(budget(), refblocks_.size() * (geo_.cluster_size + kCacheEntryOverhead));
}

}  // namespace kvmfs::qcow2
