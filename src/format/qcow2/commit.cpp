// Atomic metadata switches. Changing COPIED flags and refcounts together
// (snapshot create/delete) cannot be ordered so that every intermediate
// state passes `qemu-img check`: COPIED must equal (refcount == 1) both
// before and after. So everything that changes is written to fresh
// clusters (L2 tables, the active L1, refcount blocks and table, the
// snapshot table) while the old state stays untouched, and one header write
// (a single sector: L1, refcount table and snapshot table pointers) switches
// from the old consistent state to the new one.
//
// Streaming, in bounded memory: the walk takes one L2 table at a time, and
// each table that changes is written to its fresh cluster at once (in
// batches of neighbours). Refcount blocks move to a fresh cluster the first
// time the commit changes them (BlockForUpdate), so they can be written
// back and evicted whenever the block cache is full; the old ones are
// released at the end. Fresh clusters are taken only past the old end of
// the file (floor_): nothing of the old state is ever overwritten, and a
// cluster the commit frees cannot be reused before the switch. Memory: the
// new active L1 (plus the victim's L1 for a delete), one table, a write
// batch and the bounded block cache; nothing per cluster.
//
// Locking: the walk runs with the engine lock shared (readers and in-place
// overwrites of COPIED clusters go on: neither depends on what changes, and
// an overwrite before the switch is simply one the snapshot includes);
// walk_active_ makes every other metadata change wait (LockExclusive). The
// switch takes the lock exclusive. On failure memory is reloaded from the
// file, which still holds the old state.
#include <malloc.h>

#include <algorithm>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {
namespace {

// Collects writes to neighbouring clusters into one (at most kMax bytes).
class BatchWriter {
 public:
  explicit BatchWriter(Backend& file) : file_(file) {}
  Status Add(uint64_t off, const uint8_t* p, size_t n) {
    if (!buf_.empty() && (start_ + buf_.size() != off || buf_.size() + n > kMax))
      KVMFS_RETURN_IF_ERROR(Flush());
    if (buf_.empty()) start_ = off;
    buf_.insert(buf_.end(), p, p + n);
    return Status::OK();
  }
  Status Flush() {
    if (buf_.empty()) return Status::OK();
    Status st = file_.WriteAt(start_, buf_.data(), buf_.size());
    buf_.clear();
    return st;
  }

 private:
  static constexpr size_t kMax = 256 << 10;
  Backend& file_;
  uint64_t start_ = 0;
  std::vector<uint8_t> buf_;
};

// Writes `words` as big-endian u64 at `off`, in pieces of at most 256 KiB.
Status WriteWords(Backend& file, uint64_t off, const std::vector<uint64_t>& words,
                  uint64_t total_bytes) {
  std::vector<uint8_t> raw;
  for (uint64_t pos = 0; pos < total_bytes;) {
    const uint64_t n = std::min<uint64_t>(total_bytes - pos, 256 << 10);
    raw.assign(n, 0);
    for (uint64_t i = pos / 8; i < words.size() && i * 8 < pos + n; ++i)
      StoreBE64(raw.data() + (i * 8 - pos), words[i]);
    KVMFS_RETURN_IF_ERROR(file.WriteAt(off + pos, raw.data(), raw.size()));
    pos += n;
  }
  return Status::OK();
}

}  // namespace

std::unique_lock<std::shared_mutex> Engine::LockExclusive() {
  std::unique_lock<std::shared_mutex> lock(rw_);
  walk_cv_.wait(lock, [this] { return !walk_active_; });
  return lock;
}

Status Engine::PrepareCommit(uint64_t extra_clusters) {
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file_->Size());
  uint64_t l2_tables = 0, blocks = 0;
  for (uint64_t e : l1_) l2_tables += (e & kL1OffsetMask) != 0;
  for (uint64_t e : reftable_) blocks += e != 0;
  const uint64_t cs = geo_.cluster_size;
  // Everything a commit may allocate past the floor: L2 copies, the L1,
  // moved refcount blocks, the table, the blocks of the new ranges, slack.
  const uint64_t l1_clusters = (l1_.size() * 8 + cs - 1) / cs;
  const uint64_t end = std::max(alloc_end_, (file_size + cs - 1) / cs) + 1;
  const uint64_t added = l2_tables + l1_clusters + blocks + reftable_clusters_ + extra_clusters + 64;
  const uint64_t need_clusters = end + added + (added >> rb_bits()) + 2;
  const uint64_t need_entries = (need_clusters >> rb_bits()) + 2;
  if (need_entries > reftable_.size()) {
    KVMFS_RETURN_IF_ERROR(GrowRefcountTable(need_entries));
    KVMFS_RETURN_IF_ERROR(FlushLocked());
  }
  return Status::OK();
}

Status Engine::RunCommit(std::unique_lock<std::shared_mutex>& lock, CommitPlan& plan) {
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file_->Size());
  alloc_end_ = std::max(alloc_end_, (file_size + geo_.cluster_size - 1) >> geo_.cluster_bits);
  floor_ = alloc_end_ + 1;
  floor_cursor_ = floor_;
  commit_released_.clear();
  commit_min_freed_ = UINT64_MAX;
  walk_active_ = true;
  lock.unlock();
  Status st;
  {
    std::shared_lock<std::shared_mutex> walk(rw_);
    st = CommitWalk(plan);
  }
  lock.lock();  // not LockExclusive: the walk is this one's
  walk_active_ = false;
  if (st.ok()) {
    // Corruption found meanwhile by a reader or in-place writer.
    const std::string reason = ReadOnlyReason();
    if (!reason.empty()) st = Status::ReadOnly(name_ + ": " + reason);
  }
  if (st.ok()) {
    header_.raw.l1_table_offset = plan.l1_offset;
    header_.raw.l1_size = static_cast<uint32_t>(plan.new_l1.size());
    header_.raw.refcount_table_offset = plan.reftable_offset;
    header_.raw.nb_snapshots = static_cast<uint32_t>(plan.table.size());
    header_.raw.snapshots_offset = plan.table_offset;
    Status hst = WriteHeaderLocked(true);
    if (!hst.ok()) {
      // Either state may be on disk now (both are consistent): memory
      // cannot tell which, so nothing more is written.
      floor_ = 0;
      std::lock_guard<std::mutex> reason_lock(reason_mu_);
      if (read_only_reason_.empty())
        read_only_reason_ = "a metadata update failed (" + hst.message() +
                            "); the file is consistent, reopen it to write again";
      walk_cv_.notify_all();
      return hst;
    }
    SwitchCommit(plan);
    walk_cv_.notify_all();
    // The walk's blocks and buffers went back to this thread's malloc arena;
    // give the pages back, so that the next walk (or a reader's arena)
    // does not add its peak on top (peak RSS is the documented bound).
    malloc_trim(0);
    return Status::OK();
  }
  // Nothing the old state uses was written: memory goes back to the file.
  floor_ = 0;
  commit_released_.clear();
  DropRefcounts();
  Status reload = LoadRefcountTable();
  if (!reload.ok()) {
    std::lock_guard<std::mutex> reason_lock(reason_mu_);
    if (read_only_reason_.empty())
      read_only_reason_ = "a metadata update failed (" + st.message() +
                          ") and the refcounts could not be reloaded (" + reload.message() + ")";
  }
  walk_cv_.notify_all();
  return Fatal(std::move(st));
}

Status Engine::CommitWalk(CommitPlan& plan) {
  plan.new_l1 = l1_;
  plan.charge.Set(budget(), (plan.new_l1.size() + plan.victim_l1.size()) * 8);
  if (!plan.create) KVMFS_RETURN_IF_ERROR(WalkVictim(plan));
  KVMFS_RETURN_IF_ERROR(WalkActive(plan));
  return WriteCommitTables(plan);
}

namespace {

Result<uint64_t> TableOffset(uint64_t e, uint64_t i, uint64_t floor_bytes, const Geometry& g,
                             const std::string& name, const char* which) {
  const uint64_t off = e & kL1OffsetMask;
  if ((e & kL1ReservedMask) || (off & (g.cluster_size - 1)))
    return Status::Corruption(name + ": " + which + " L1 entry " + Hex(e) +
                              " invalid (L1 index: " + Hex(i) + ")");
  if (off >= floor_bytes)
    return Status::Corruption(name + ": " + which + " L2 table at " + Hex(off) +
                              " is past the end of the file (L1 index: " + Hex(i) + ")");
  return off;
}

}  // namespace

Status Engine::WalkVictim(const CommitPlan& plan) {
  const uint32_t bits = geo_.cluster_bits;
  const uint64_t floor_bytes = floor_ << bits;
  std::vector<uint64_t> words;
  auto release = [&](uint64_t host, uint64_t bytes, uint64_t*) -> Status {
    if (host + bytes > floor_bytes)
      return Status::Corruption(name_ + ": snapshot cluster " + Hex(host) +
                                " is past the end of the file");
    return UpdateRefcountRange(host, bytes, -1);
  };
  for (uint64_t i = 0; i < plan.victim_l1.size(); ++i) {
    KVMFS_ASSIGN_OR_RETURN(uint64_t off, TableOffset(plan.victim_l1[i], i, floor_bytes, geo_,
                                                     name_, "snapshot"));
    if (off == 0) continue;
    KVMFS_RETURN_IF_ERROR(UpdateRefcount(off >> bits, -1));
    KVMFS_RETURN_IF_ERROR(ReadL2Words(off, i, &words));
    KVMFS_RETURN_IF_ERROR(ForEachRef(words, off, release));
  }
  return UpdateRefcountRange(plan.victim_l1_offset, plan.victim_l1.size() * 8, -1);
}

Status Engine::WalkActive(CommitPlan& plan) {
  const uint32_t bits = geo_.cluster_bits;
  const uint64_t floor_bytes = floor_ << bits;
  const int64_t add = plan.create ? 1 : 0;  // the snapshot shares every table and cluster
  std::vector<uint64_t> words;
  std::vector<uint8_t> raw(geo_.cluster_size);
  BatchWriter out(*file_);
  for (uint64_t i = 0; i < plan.new_l1.size(); ++i) {
    KVMFS_ASSIGN_OR_RETURN(uint64_t off, TableOffset(plan.new_l1[i], i, floor_bytes, geo_, name_,
                                                     "active"));
    if (off == 0) continue;
    if (add) KVMFS_RETURN_IF_ERROR(UpdateRefcount(off >> bits, add));
    KVMFS_ASSIGN_OR_RETURN(uint64_t table_rc, GetRefcount(off >> bits));
    if (table_rc <= static_cast<uint64_t>(add))
      return Status::Corruption(name_ + ": L2 table at " + Hex(off) + " (L1 index " + Hex(i) +
                                ") is in use but its refcount is 0");
    KVMFS_RETURN_IF_ERROR(ReadL2Words(off, i, &words));
    bool changed = false;
    KVMFS_RETURN_IF_ERROR(ForEachRef(words, off, [&](uint64_t host, uint64_t bytes, uint64_t* e) {
      if (host + bytes > floor_bytes)
        return Status::Corruption(name_ + ": cluster " + Hex(host) + " (L2 " + Hex(off) +
                                  ") is past the end of the file");
      if (add) KVMFS_RETURN_IF_ERROR(UpdateRefcountRange(host, bytes, add));
      if (*e & kOflagCompressed) return Status::OK();
      KVMFS_ASSIGN_OR_RETURN(uint64_t rc, GetRefcount(host >> bits));
      if (rc <= static_cast<uint64_t>(add))
        return Status::Corruption(name_ + ": cluster " + Hex(host) + " (L2 " + Hex(off) +
                                  ") is in use but its refcount is 0");
      const uint64_t e2 = (*e & ~kOflagCopied) | (rc == 1 ? kOflagCopied : 0);
      changed |= e2 != *e;
      *e = e2;
      return Status::OK();
    }));
    if (!changed) {
      // Shared as it is (create), or untouched (delete).
      plan.new_l1[i] = off | (table_rc == 1 ? kOflagCopied : 0);
      continue;
    }
    // The active disk gets a fresh copy with the new flags; the old table
    // stays the snapshot's (create) or is freed (delete).
    KVMFS_ASSIGN_OR_RETURN(uint64_t fresh, AllocClusters(1));
    for (size_t k = 0; k < words.size(); ++k) StoreBE64(raw.data() + 8 * k, words[k]);
    KVMFS_RETURN_IF_ERROR(out.Add(fresh, raw.data(), raw.size()));
    KVMFS_RETURN_IF_ERROR(UpdateRefcount(off >> bits, -1));
    plan.new_l1[i] = fresh | kOflagCopied;
  }
  return out.Flush();
}

Status Engine::WriteCommitTables(CommitPlan& plan) {
  const uint64_t cs = geo_.cluster_size;
  // 1. The active L1: the old one stays the new snapshot's (create) or is
  //    freed (delete).
  plan.l1_offset = l1_offset_;
  if (!plan.new_l1.empty()) {
    const uint64_t bytes = plan.new_l1.size() * 8;
    KVMFS_ASSIGN_OR_RETURN(plan.l1_offset, AllocClusters((bytes + cs - 1) / cs));
    KVMFS_RETURN_IF_ERROR(WriteWords(*file_, plan.l1_offset, plan.new_l1, bytes));
    if (!plan.create && !l1_.empty())
      KVMFS_RETURN_IF_ERROR(UpdateRefcountRange(l1_offset_, l1_.size() * 8, -1));
  }
  // 2. The snapshot table.
  plan.table_offset = 0;
  if (!plan.table.empty()) {
    const std::vector<uint8_t> bytes = EncodeSnapshotTable(plan.table);
    KVMFS_ASSIGN_OR_RETURN(plan.table_offset, AllocClusters((bytes.size() + cs - 1) / cs));
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(plan.table_offset, bytes.data(), bytes.size()));
  }
  if (header_.raw.nb_snapshots > 0)
    KVMFS_RETURN_IF_ERROR(UpdateRefcountRange(header_.raw.snapshots_offset,
                                              EncodeSnapshotTable(snapshots_).size(), -1));
  // 3. The refcount table's new place; then the old blocks the commit
  //    moved are released (which may move more: each moves once).
  KVMFS_ASSIGN_OR_RETURN(plan.reftable_offset, AllocClusters(reftable_clusters_));
  KVMFS_RETURN_IF_ERROR(UpdateRefcountRange(reftable_offset_, reftable_clusters_ * cs, -1));
  while (!commit_released_.empty()) {
    const uint64_t c = commit_released_.back();
    commit_released_.pop_back();
    KVMFS_RETURN_IF_ERROR(UpdateRefcount(c, -1));
  }
  // 4. Every changed block (all at fresh places), the table, then durable.
  KVMFS_RETURN_IF_ERROR(WriteRefBlocks(false));
  KVMFS_RETURN_IF_ERROR(WriteWords(*file_, plan.reftable_offset, reftable_, reftable_clusters_ * cs));
  return file_->Flush();
}

void Engine::SwitchCommit(CommitPlan& plan) {
  // The header names the new state; memory follows. Tables the switch freed
  // leave the cache (their clusters may be reused now).
  const uint32_t bits = geo_.cluster_bits;
  auto drop_if_freed = [&](uint64_t off) {
    if (off == 0) return;
    Result<uint64_t> rc = GetRefcount(off >> bits);
    if (!rc.ok() || *rc == 0) l2_cache_.Erase(off);
  };
  floor_ = 0;
  for (uint64_t i = 0; i < l1_.size(); ++i)
    if ((l1_[i] & kL1OffsetMask) != (plan.new_l1[i] & kL1OffsetMask))
      drop_if_freed(l1_[i] & kL1OffsetMask);
  for (uint64_t e : plan.victim_l1) drop_if_freed(e & kL1OffsetMask);
  l1_ = std::move(plan.new_l1);
  l1_offset_ = plan.l1_offset;
  l1_dirty_ = false;
  reftable_offset_ = plan.reftable_offset;
  reftable_dirty_ = false;
  for (auto& [rt, b] : refblocks_) b->dirty = false;  // all written
  if (commit_min_freed_ != UINT64_MAX) free_hint_ = std::min(free_hint_, commit_min_freed_);
  free_hint_ = std::max<uint64_t>(free_hint_, 1);
  for (size_t i = 0; i < plan.table.size(); ++i) plan.table[i].index = static_cast<uint32_t>(i);
  snapshots_ = std::move(plan.table);
  RebuildMetadataIndex();
  ChargeTables();
  plan.charge.Release();
}

}  // namespace kvmfs::qcow2
