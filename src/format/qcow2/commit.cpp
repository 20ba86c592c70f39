// Atomic metadata switches. Changing COPIED flags and refcounts together
// (snapshot create/delete) cannot be ordered so that every intermediate
// state passes `qemu-img check`: COPIED must equal (refcount == 1) both
// before and after. So everything that changes is written to fresh
// clusters (L2 tables, the active L1, refcount blocks and table, the
// snapshot table) while the old state stays untouched, and one header write
// (a single sector: L1, refcount table and snapshot table pointers) switches
// from the old consistent state to the new one.
#include <algorithm>
#include <unordered_map>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {

Status Engine::PrepareCommit(uint64_t extra_clusters) {
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file_->Size());
  uint64_t l2_tables = 0, blocks = 0;
  for (uint64_t e : l1_) l2_tables += (e & kL1OffsetMask) != 0;
  for (uint64_t e : reftable_) blocks += e != 0;
  const uint64_t cs = geo_.cluster_size;
  // Everything Commit() may allocate: L2 copies, the L1, refcount blocks
  // (twice: relocation, and new ranges), the table, slack.
  const uint64_t l1_clusters = (l1_.size() * 8 + cs - 1) / cs;
  const uint64_t need_clusters = (file_size + cs - 1) / cs + l2_tables + l1_clusters +
                                 2 * blocks + reftable_clusters_ + extra_clusters + 64;
  const uint64_t need_entries = (need_clusters >> rb_bits()) + 2;
  if (need_entries > reftable_.size()) {
    KVMFS_RETURN_IF_ERROR(GrowRefcountTable(need_entries));
    KVMFS_RETURN_IF_ERROR(FlushLocked());
  }
  return Status::OK();
}

Status Engine::Commit(std::vector<Snapshot> table, bool old_l1_kept) {
  in_commit_ = true;
  auto fail = [this](Status st) {
    in_commit_ = false;
    // Memory no longer matches the (intact, consistent) file.
    std::lock_guard<std::mutex> lock(reason_mu_);
    if (read_only_reason_.empty())
      read_only_reason_ = "a metadata update failed (" + st.message() +
                          "); the file is consistent, reopen it to write again";
    return st;
  };
#define KVMFS_COMMIT_TRY(expr)                \
  do {                                        \
    ::kvmfs::Status _c = (expr);              \
    if (!_c.ok()) return fail(std::move(_c)); \
  } while (0)
  const uint64_t cs = geo_.cluster_size;
  const uint32_t bits = geo_.cluster_bits;
  std::unordered_map<uint64_t, uint64_t> live_blocks;  // rt index -> on-disk offset now
  for (uint64_t rt = 0; rt < reftable_.size(); ++rt)
    if (reftable_[rt]) live_blocks[rt] = reftable_[rt];

  // 1. Changed L2 tables move to fresh clusters (refcount 1: COPIED).
  std::unordered_map<uint64_t, uint64_t> l1_index_of;
  for (uint64_t i = 0; i < l1_.size(); ++i)
    if (l1_[i] & kL1OffsetMask) l1_index_of[l1_[i] & kL1OffsetMask] = i;
  std::vector<uint8_t> raw(cs);
  for (const std::shared_ptr<L2Table>& t : l2_cache_.DirtyTables()) {
    auto it = l1_index_of.find(t->host_offset);
    if (it == l1_index_of.end())
      return fail(Status::Corruption(name_ + ": dirty L2 table at " + Hex(t->host_offset) +
                                     " is not in the active L1 table"));
    Result<uint64_t> fresh = AllocClusters(1);
    if (!fresh.ok()) return fail(fresh.status());
    for (size_t i = 0; i < t->words.size(); ++i) StoreBE64(raw.data() + 8 * i, t->words[i]);
    KVMFS_COMMIT_TRY(file_->WriteAt(*fresh, raw.data(), raw.size()));
    const uint64_t old = t->host_offset;
    KVMFS_COMMIT_TRY(UpdateRefcount(old >> bits, -1));
    l1_[it->second] = *fresh | kOflagCopied;
    // The old offset keeps its on-disk (old) content for snapshot readers.
    l2_cache_.Erase(old);
    t->host_offset = *fresh;
    t->dirty = false;
    l2_cache_.Put(t);
  }
  dirty_l2_count_ = 0;

  // 2. The active L1.
  uint64_t l1_off = l1_offset_;
  if (!l1_.empty()) {
    const uint64_t bytes = l1_.size() * 8;
    Result<uint64_t> fresh = AllocClusters((bytes + cs - 1) / cs);
    if (!fresh.ok()) return fail(fresh.status());
    std::vector<uint8_t> l1raw(bytes);
    for (size_t i = 0; i < l1_.size(); ++i) StoreBE64(l1raw.data() + 8 * i, l1_[i]);
    KVMFS_COMMIT_TRY(file_->WriteAt(*fresh, l1raw.data(), l1raw.size()));
    if (!old_l1_kept) KVMFS_COMMIT_TRY(UpdateRefcountRange(l1_offset_, bytes, -1));
    l1_off = *fresh;
  }

  // 3. The snapshot table.
  uint64_t table_off = 0;
  if (!table.empty()) {
    const std::vector<uint8_t> bytes = EncodeSnapshotTable(table);
    Result<uint64_t> fresh = AllocClusters((bytes.size() + cs - 1) / cs);
    if (!fresh.ok()) return fail(fresh.status());
    KVMFS_COMMIT_TRY(file_->WriteAt(*fresh, bytes.data(), bytes.size()));
    table_off = *fresh;
  }
  if (header_.raw.nb_snapshots > 0)
    KVMFS_COMMIT_TRY(UpdateRefcountRange(header_.raw.snapshots_offset,
                                         EncodeSnapshotTable(snapshots_).size(), -1));

  // 4. The refcount table, then every changed live block, at fresh places.
  Result<uint64_t> new_table = AllocClusters(reftable_clusters_);
  if (!new_table.ok()) return fail(new_table.status());
  KVMFS_COMMIT_TRY(UpdateRefcountRange(reftable_offset_, reftable_clusters_ * cs, -1));
  for (bool moved = true; moved;) {
    moved = false;
    std::vector<uint64_t> todo;
    for (const auto& [rt, b] : refblocks_) {
      auto live = live_blocks.find(rt);
      if (b->dirty && live != live_blocks.end() && reftable_[rt] == live->second)
        todo.push_back(rt);
    }
    std::sort(todo.begin(), todo.end());
    for (uint64_t rt : todo) {
      Result<uint64_t> fresh = AllocClusters(1);
      if (!fresh.ok()) return fail(fresh.status());
      KVMFS_COMMIT_TRY(UpdateRefcount(reftable_[rt] >> bits, -1));
      reftable_[rt] = *fresh;
      refblocks_[rt]->host_offset = *fresh;
      moved = true;
    }
  }
  // Blocks hold the new values; nothing of the old state is overwritten.
  KVMFS_COMMIT_TRY(WriteRefBlocks(false));
  std::vector<uint8_t> rt_raw(reftable_clusters_ * cs, 0);
  for (size_t i = 0; i < reftable_.size() && 8 * i < rt_raw.size(); ++i)
    StoreBE64(rt_raw.data() + 8 * i, reftable_[i]);
  KVMFS_COMMIT_TRY(file_->WriteAt(*new_table, rt_raw.data(), rt_raw.size()));
  KVMFS_COMMIT_TRY(file_->Flush());

  // 5. The switch: one header write, then it is durable.
  header_.raw.l1_table_offset = l1_off;
  header_.raw.l1_size = static_cast<uint32_t>(l1_.size());
  header_.raw.refcount_table_offset = *new_table;
  header_.raw.nb_snapshots = static_cast<uint32_t>(table.size());
  header_.raw.snapshots_offset = table_off;
  KVMFS_COMMIT_TRY(WriteHeaderLocked(true));
#undef KVMFS_COMMIT_TRY
  in_commit_ = false;
  l1_offset_ = l1_off;
  l1_dirty_ = false;
  reftable_offset_ = *new_table;
  reftable_dirty_ = false;
  // The decrements are on disk already (the new blocks hold them).
  ApplyPending();
  for (auto& [rt, b] : refblocks_) b->dirty = false;
  for (size_t i = 0; i < table.size(); ++i) table[i].index = static_cast<uint32_t>(i);
  snapshots_ = std::move(table);
  RebuildMetadataIndex();
  return Status::OK();
}

}  // namespace kvmfs::qcow2
