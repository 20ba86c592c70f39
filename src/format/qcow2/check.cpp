// Consistency work on the tables (QEMU qcow2-refcount.c: the refcount walk
// of qcow2_check_refcounts / rebuild, qcow2_update_snapshot_refcount and
// the COPIED fix-up of check_oflag_copied): the refcount rebuild of a dirty
// (lazy refcounts) image, refcount changes for a whole L1 table (snapshot
// create/delete), and COPIED recomputation on the active tables.
#include <algorithm>
#include <cerrno>
#include <unordered_map>
#include <unordered_set>

#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {

namespace {

// Calls `fn(first_cluster, bytes)` for every host range an L1 table and its
// L2 tables reference (the L2 tables themselves, data and compressed ranges).
template <typename Fn>
Status WalkL1(Engine& e, const L1Table& l1, const Geometry& g, bool data_file,
              const std::function<Result<std::shared_ptr<const L2Table>>(uint64_t, uint64_t)>& get,
              const std::string& name, Fn fn) {
  const uint64_t stride = g.extended_l2 ? 2 : 1;
  for (uint64_t i = 0; i < l1.size(); ++i) {
    const uint64_t off = l1[i] & kL1OffsetMask;
    if (off == 0) continue;
    if ((l1[i] & kL1ReservedMask) || (off & (g.cluster_size - 1)))
      return Status::Corruption(name + ": L1 entry " + Hex(l1[i]) + " invalid (L1 index: " +
                                Hex(i) + ")");
    KVMFS_RETURN_IF_ERROR(fn(off, g.cluster_size));
    KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<const L2Table> t, get(off, i));
    for (uint64_t j = 0; j < g.l2_entries; ++j) {
      const uint64_t entry = t->words[j * stride];
      if (entry & kOflagCompressed) {
        const uint64_t desc = entry & kL2CompressedMask;
        const uint64_t coffset = desc & g.compressed_offset_mask;
        const uint64_t sectors = ((desc >> g.csize_shift) & g.csize_mask) + 1;
        KVMFS_RETURN_IF_ERROR(fn(coffset & ~uint64_t{kCompressedSectorSize - 1},
                                 sectors * kCompressedSectorSize));
        continue;
      }
      const uint64_t host = entry & kL2OffsetMask;
      if (host == 0 || data_file) continue;
      if (host & (g.cluster_size - 1))
        return Status::Corruption(name + ": cluster offset " + Hex(host) + " unaligned (L2 " +
                                  Hex(off) + " index " + Hex(j) + ")");
      KVMFS_RETURN_IF_ERROR(fn(host, g.cluster_size));
    }
  }
  (void)e;
  return Status::OK();
}

}  // namespace

Status Engine::AddL1Refcounts(const L1Table& l1, int64_t delta) {
  std::unordered_map<uint64_t, int64_t> deltas;
  auto get = [this](uint64_t off, uint64_t i) { return GetL2(off, i); };
  KVMFS_RETURN_IF_ERROR(WalkL1(*this, l1, geo_, header_.has_data_file(), get, name_,
                               [&](uint64_t host, uint64_t bytes) {
                                 const uint64_t a = host >> geo_.cluster_bits;
                                 const uint64_t b = (host + bytes - 1) >> geo_.cluster_bits;
                                 for (uint64_t c = a; c <= b; ++c) deltas[c] += delta;
                                 return Status::OK();
                               }));
  // Check every new value first, so a refused change leaves nothing behind.
  std::vector<std::pair<uint64_t, int64_t>> sorted(deltas.begin(), deltas.end());
  std::sort(sorted.begin(), sorted.end());
  for (const auto& [c, d] : sorted) {
    KVMFS_ASSIGN_OR_RETURN(uint64_t rc, GetRefcount(c));
    if (d > 0 && static_cast<uint64_t>(d) > refcount_max() - rc)
      return Status::TooLarge(name_ + ": refcount of cluster " + Hex(c << geo_.cluster_bits) +
                              " would exceed " + std::to_string(refcount_max()) +
                              " (refcount_bits " + std::to_string(1u << header_.refcount_order) +
                              ")");
    if (d < 0 && static_cast<uint64_t>(-d) > rc)
      return Status::Corruption(name_ + ": refcount of cluster " + Hex(c << geo_.cluster_bits) +
                                " would drop below 0");
  }
  for (const auto& [c, d] : sorted)
    if (d != 0) KVMFS_RETURN_IF_ERROR(UpdateRefcount(c, d));
  return Status::OK();
}

Status Engine::RecomputeCopied() {
  const Geometry& g = geo_;
  const uint64_t stride = g.extended_l2 ? 2 : 1;
  const bool data_file = header_.has_data_file();
  for (uint64_t i = 0; i < l1_.size(); ++i) {
    const uint64_t off = l1_[i] & kL1OffsetMask;
    if (off == 0) continue;
    KVMFS_ASSIGN_OR_RETURN(uint64_t rc, GetRefcount(off >> g.cluster_bits));
    const uint64_t want = (l1_[i] & ~kOflagCopied) | (rc == 1 ? kOflagCopied : 0);
    if (want != l1_[i]) {
      l1_[i] = want;
      l1_dirty_ = true;
    }
    KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<const L2Table> loaded, GetL2(off, i));
    (void)loaded;
    std::shared_ptr<L2Table> t = l2_cache_.LookupForWrite(off);
    if (!t) return Status::FromErrno(EIO, name_ + ": L2 table at " + Hex(off) + " vanished from the cache");
    for (uint64_t j = 0; j < g.l2_entries; ++j) {
      uint64_t& entry = t->words[j * stride];
      if (entry & kOflagCompressed) continue;
      const uint64_t host = entry & kL2OffsetMask;
      if (data_file || host == 0) continue;  // data-file entries keep COPIED
      KVMFS_ASSIGN_OR_RETURN(uint64_t drc, GetRefcount(host >> g.cluster_bits));
      const uint64_t e2 = (entry & ~kOflagCopied) | (drc == 1 ? kOflagCopied : 0);
      if (e2 != entry) {
        entry = e2;
        MarkDirty(*t);
      }
    }
  }
  return Status::OK();
}

Status Engine::RebuildRefcounts() {
  const Geometry& g = geo_;
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file_->Size());
  std::vector<uint64_t> counts((file_size + g.cluster_size - 1) >> g.cluster_bits);
  auto add = [&](uint64_t host, uint64_t bytes) -> Status {
    if (bytes == 0) return Status::OK();
    const uint64_t a = host >> g.cluster_bits, b = (host + bytes - 1) >> g.cluster_bits;
    if (b >= counts.size() + 1)
      return Status::Corruption(name_ + ": range " + Hex(host) + " (+" + std::to_string(bytes) +
                                ") is past the end of the file");
    if (b >= counts.size()) counts.resize(b + 1);
    for (uint64_t c = a; c <= b; ++c) ++counts[c];
    return Status::OK();
  };
  auto get = [this](uint64_t off, uint64_t i) { return GetL2(off, i); };
  KVMFS_RETURN_IF_ERROR(add(0, g.cluster_size));
  KVMFS_RETURN_IF_ERROR(add(l1_offset_, l1_.size() * 8));
  KVMFS_RETURN_IF_ERROR(WalkL1(*this, l1_, g, header_.has_data_file(), get, name_, add));
  for (const Snapshot& s : snapshots_) {
    KVMFS_RETURN_IF_ERROR(add(s.l1_table_offset, uint64_t{s.l1_size} * 8));
    KVMFS_ASSIGN_OR_RETURN(L1Table l1, LoadL1(s.l1_table_offset, s.l1_size, "snapshot L1 table"));
    KVMFS_RETURN_IF_ERROR(WalkL1(*this, l1, g, header_.has_data_file(), get, name_, add));
  }
  if (header_.raw.nb_snapshots > 0)
    KVMFS_RETURN_IF_ERROR(add(header_.raw.snapshots_offset, EncodeSnapshotTable(snapshots_).size()));
  KVMFS_RETURN_IF_ERROR(add(reftable_offset_, reftable_clusters_ * g.cluster_size));
  for (uint64_t e : reftable_)
    if (e) KVMFS_RETURN_IF_ERROR(add(e, g.cluster_size));
  for (uint64_t c = 0; c < counts.size(); ++c)
    if (counts[c] > refcount_max())
      return Status::Corruption(name_ + ": cluster " + Hex(c << g.cluster_bits) + " has " +
                                std::to_string(counts[c]) + " references, more than refcount_bits allow");

  // Install: existing blocks get the counted values; ranges without a block
  // get a new one (placed on clusters nobody references).
  const uint64_t per_block = uint64_t{1} << rb_bits();
  rebuild_counts_ = &counts;
  free_hint_ = 0;
  Status st;
  for (uint64_t rt = 0; rt < reftable_.size() && st.ok(); ++rt) {
    if (reftable_[rt] == 0) continue;
    Result<RefBlock*> b = GetRefBlock(rt, false);
    if (!b.ok()) {
      st = b.status();
      break;
    }
    RefBlock* blk = *b;
    blk->pending.clear();
    for (uint64_t i = 0; i < per_block; ++i) {
      const uint64_t c = rt * per_block + i;
      SetRefcountEntry(blk->data.data(), header_.refcount_order, i, c < counts.size() ? counts[c] : 0);
    }
    blk->dirty = true;
  }
  std::unordered_set<uint64_t> installed;
  for (uint64_t rt = 0; rt < reftable_.size(); ++rt)
    if (reftable_[rt] != 0) installed.insert(rt);
  for (uint64_t c = 0; c < counts.size() && st.ok(); ++c) {
    if (counts[c] == 0) continue;
    const uint64_t rt = c / per_block;
    if (installed.count(rt)) continue;
    // A range without a block: a new one (its entries start at 0 but for
    // blocks placed in it), plus every referenced cluster of the range.
    st = EnsureRefBlock(rt);
    installed.insert(rt);
    for (uint64_t c2 = rt * per_block;
         c2 < std::min<uint64_t>(counts.size(), (rt + 1) * per_block) && st.ok(); ++c2)
      if (counts[c2] > 0) st = UpdateRefcount(c2, static_cast<int64_t>(counts[c2]));
  }
  rebuild_counts_ = nullptr;
  free_hint_ = 0;
  return st;
}

}  // namespace kvmfs::qcow2
