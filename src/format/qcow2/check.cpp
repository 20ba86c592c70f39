// Consistency work on the tables (QEMU qcow2-refcount.c: the refcount walk
// of qcow2_check_refcounts / rebuild and the COPIED fix-up of
// check_oflag_copied): the refcount rebuild of a dirty (lazy refcounts)
// image, COPIED recomputation on the active tables, the checks that make a
// writer refuse tables reached twice, and the table walk helpers the
// commit shares.
//
// Memory: every walk here streams one L2 table at a time (read past the
// cache, so the readers' hot tables stay) and counts straight into the
// refcount blocks, whose cache is bounded (refcount.cpp) and written back
// as it goes. Nothing is kept per cluster: a rebuild needs the refcount
// table (at most 8 MiB, QEMU's limit), one L1 table at a time (at most
// 32 MiB) and one cluster, whatever the image size.
#include <algorithm>
#include <cerrno>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {

Status Engine::ReadL2Words(uint64_t off, uint64_t l1_index, std::vector<uint64_t>* words) {
  if (std::shared_ptr<const L2Table> hit = l2_cache_.Lookup(off)) {
    *words = hit->words;
    return Status::OK();
  }
  if (PastEof(*file_, file_size_, off, 0))
    return Status::Corruption(name_ + ": L2 table offset " + Hex(off) + " (L1 index: " +
                              Hex(l1_index) + ") is past the end of the file");
  words->resize(geo_.cluster_size / 8);
  KVMFS_RETURN_IF_ERROR(file_->ReadAt(off, words->data(), geo_.cluster_size));
  for (uint64_t& w : *words) w = LoadBE64(reinterpret_cast<const uint8_t*>(&w));
  return Status::OK();
}

Status Engine::ForEachRef(std::vector<uint64_t>& words, uint64_t table_off,
                          const std::function<Status(uint64_t, uint64_t, uint64_t*)>& fn) {
  const Geometry& g = geo_;
  const uint64_t stride = g.extended_l2 ? 2 : 1;
  const bool data_file = header_.has_data_file();
  for (uint64_t j = 0; j < g.l2_entries; ++j) {
    uint64_t* entry = &words[j * stride];
    if (*entry & kOflagCompressed) {
      if (data_file)
        return Status::Corruption(name_ + ": compressed cluster in image with data file (L2 " +
                                  Hex(table_off) + " index " + Hex(j) + ")");
      const uint64_t desc = *entry & kL2CompressedMask;
      const uint64_t coffset = desc & g.compressed_offset_mask;
      const uint64_t sectors = ((desc >> g.csize_shift) & g.csize_mask) + 1;
      if (coffset == 0)
        return Status::Corruption(name_ + ": compressed cluster at offset 0 (L2 " +
                                  Hex(table_off) + " index " + Hex(j) + ")");
      KVMFS_RETURN_IF_ERROR(fn(coffset & ~uint64_t{kCompressedSectorSize - 1},
                               sectors * kCompressedSectorSize, entry));
      continue;
    }
    if (*entry & kL2StdReservedMask)
      return Status::Corruption(name_ + ": L2 entry " + Hex(*entry) + " has reserved bits set (L2 " +
                                Hex(table_off) + " index " + Hex(j) + ")");
    const uint64_t host = *entry & kL2OffsetMask;
    if (host == 0 || data_file) continue;  // data-file clusters are not refcounted
    if (host & (g.cluster_size - 1))
      return Status::Corruption(name_ + ": cluster offset " + Hex(host) + " unaligned (L2 " +
                                Hex(table_off) + " index " + Hex(j) + ")");
    KVMFS_RETURN_IF_ERROR(fn(host, g.cluster_size, entry));
  }
  return Status::OK();
}

namespace {

// The L2 offset of L1 entry `e` (0: none), or corruption.
Result<uint64_t> L2OffsetOf(uint64_t e, uint64_t i, const Geometry& g, const std::string& name) {
  const uint64_t off = e & kL1OffsetMask;
  if ((e & kL1ReservedMask) || (off & (g.cluster_size - 1)))
    return Status::Corruption(name + ": L1 entry " + Hex(e) + " invalid (L1 index: " + Hex(i) +
                              ")");
  return off;
}

}  // namespace

Status Engine::RecomputeCopied() {
  const uint32_t bits = geo_.cluster_bits;
  std::vector<uint64_t> scratch;
  std::vector<uint8_t> raw(geo_.cluster_size);
  for (uint64_t i = 0; i < l1_.size(); ++i) {
    KVMFS_ASSIGN_OR_RETURN(uint64_t off, L2OffsetOf(l1_[i], i, geo_, name_));
    if (off == 0) continue;
    KVMFS_ASSIGN_OR_RETURN(uint64_t rc, GetRefcount(off >> bits));
    const uint64_t want = (l1_[i] & ~kOflagCopied) | (rc == 1 ? kOflagCopied : 0);
    if (want != l1_[i]) {
      l1_[i] = want;
      l1_dirty_ = true;
    }
    // The cached table is fixed in place (the caller holds the lock
    // exclusive); otherwise a private copy. Either way the table is written
    // at once: the image is still marked dirty, so the order is free.
    std::shared_ptr<L2Table> cached = l2_cache_.LookupForWrite(off);
    std::vector<uint64_t>* words = cached ? &cached->words : &scratch;
    if (!cached) KVMFS_RETURN_IF_ERROR(ReadL2Words(off, i, &scratch));
    bool changed = false;
    KVMFS_RETURN_IF_ERROR(ForEachRef(*words, off, [&](uint64_t host, uint64_t, uint64_t* e) {
      if (*e & kOflagCompressed) return Status::OK();
      KVMFS_ASSIGN_OR_RETURN(uint64_t drc, GetRefcount(host >> bits));
      const uint64_t e2 = (*e & ~kOflagCopied) | (drc == 1 ? kOflagCopied : 0);
      if (e2 != *e) {
        *e = e2;
        changed = true;
      }
      return Status::OK();
    }));
    if (!changed || (cached && cached->dirty)) continue;  // a dirty one is written by Flush
    for (size_t k = 0; k < words->size(); ++k) StoreBE64(raw.data() + 8 * k, (*words)[k]);
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(off, raw.data(), raw.size()));
  }
  return Status::OK();
}

Status Engine::RebuildRefcounts() {
  free_byte_offset_ = 0;  // refcounts start from the tables alone
  const uint64_t cs = geo_.cluster_size;
  const uint32_t bits = geo_.cluster_bits;
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file_->Size());
  alloc_end_ = std::max(alloc_end_, (file_size + cs - 1) >> bits);
  // Counting starts from zero in every block (GetRefBlock resets a block
  // the first time it is used); new blocks go past the end of the file,
  // where nothing the tables reference can be (one cluster of slack for a
  // compressed cluster ending past it).
  refblocks_.clear();
  refblock_lru_.clear();
  last_block_ = nullptr;
  pending_blocks_ = 0;
  rebuilding_ = true;
  floor_ = alloc_end_ + 1;
  floor_cursor_ = floor_;
  rebuild_reset_.assign(reftable_.size(), false);
  auto add = [&](uint64_t host, uint64_t bytes) -> Status {
    if (bytes == 0) return Status::OK();
    const uint64_t a = host >> bits, b = (host + bytes - 1) >> bits;
    if (b >= floor_)
      return Status::Corruption(name_ + ": range " + Hex(host) + " (+" + std::to_string(bytes) +
                                ") is past the end of the file");
    for (uint64_t c = a; c <= b; ++c) {
      Status st = UpdateRefcount(c, +1);
      if (st.code() == Status::Code::kTooLarge)
        return Status::Corruption(name_ + ": cluster " + Hex(c << bits) +
                                  " has more references than refcount_bits allow");
      KVMFS_RETURN_IF_ERROR(st);
    }
    return Status::OK();
  };
  std::vector<uint64_t> words;
  auto walk = [&](const L1Table& l1) -> Status {
    for (uint64_t i = 0; i < l1.size(); ++i) {
      KVMFS_ASSIGN_OR_RETURN(uint64_t off, L2OffsetOf(l1[i], i, geo_, name_));
      if (off == 0) continue;
      KVMFS_RETURN_IF_ERROR(add(off, cs));
      KVMFS_RETURN_IF_ERROR(ReadL2Words(off, i, &words));
      KVMFS_RETURN_IF_ERROR(ForEachRef(
          words, off, [&](uint64_t host, uint64_t bytes, uint64_t*) { return add(host, bytes); }));
    }
    return Status::OK();
  };
  Status st = [&]() -> Status {
    // The blocks of the old table (new ones, past the floor, count
    // themselves when they are made).
    const uint64_t old_entries = reftable_.size();
    for (uint64_t rt = 0; rt < old_entries; ++rt)
      if (reftable_[rt] != 0 && reftable_[rt] < (floor_ << bits))
        KVMFS_RETURN_IF_ERROR(add(reftable_[rt], cs));
    KVMFS_RETURN_IF_ERROR(add(0, cs));
    KVMFS_RETURN_IF_ERROR(add(reftable_offset_, reftable_clusters_ * cs));
    KVMFS_RETURN_IF_ERROR(add(l1_offset_, l1_.size() * 8));
    // The LUKS area of an encrypted image (QEMU's calculate_refcounts).
    if (header_.crypto) {
      const uint64_t at = header_.crypto->offset, bytes = header_.crypto->length;
      KVMFS_RETURN_IF_ERROR(add(at, bytes));
    }
    if (header_.raw.nb_snapshots > 0)
      KVMFS_RETURN_IF_ERROR(
          add(header_.raw.snapshots_offset, EncodeSnapshotTable(snapshots_).size()));
    KVMFS_RETURN_IF_ERROR(walk(l1_));
    for (const Snapshot& s : snapshots_) {
      KVMFS_RETURN_IF_ERROR(ValidateTable(s.l1_table_offset, s.l1_size, 8, kMaxL1Bytes, cs,
                                          "snapshot " + s.info.id + " L1 table", name_));
      KVMFS_RETURN_IF_ERROR(add(s.l1_table_offset, uint64_t{s.l1_size} * 8));
      KVMFS_ASSIGN_OR_RETURN(L1Table l1, LoadL1(s.l1_table_offset, s.l1_size, "snapshot L1 table"));
      BudgetCharge charge(budget(), l1.size() * 8);
      KVMFS_RETURN_IF_ERROR(walk(l1));
    }
    // Blocks no reference reached still hold old counts: zero them too.
    for (uint64_t rt = 0; rt < rebuild_reset_.size(); ++rt)
      if (reftable_[rt] != 0 && !rebuild_reset_[rt])
        KVMFS_RETURN_IF_ERROR(GetRefBlock(rt, false).status());
    return Status::OK();
  }();
  rebuilding_ = false;
  floor_ = 0;
  free_hint_ = 1;
  rebuild_reset_.clear();
  rebuild_reset_.shrink_to_fit();
  return st;
}

Status Engine::CheckActiveTables() {
  const uint32_t bits = geo_.cluster_bits;
  const uint64_t cs = geo_.cluster_size;
  // Sorted offsets: a table reached twice shows as a neighbour (8 bytes per
  // L1 entry, charged).
  std::vector<uint64_t> tables, blocks;
  BudgetCharge charge(budget(), (l1_.size() + reftable_.size()) * 8);
  for (uint64_t i = 0; i < l1_.size(); ++i) {
    KVMFS_ASSIGN_OR_RETURN(uint64_t off, L2OffsetOf(l1_[i], i, geo_, name_));
    if (off != 0) tables.push_back(off);
  }
  for (uint64_t e : reftable_)
    if (e != 0) blocks.push_back(e);
  std::sort(tables.begin(), tables.end());
  std::sort(blocks.begin(), blocks.end());
  auto index_of = [&](uint64_t off, uint64_t after) {
    for (uint64_t i = after; i < l1_.size(); ++i)
      if ((l1_[i] & kL1OffsetMask) == off) return i;
    return uint64_t{0};
  };
  for (size_t k = 0; k < tables.size(); ++k) {
    const uint64_t off = tables[k];
    if (k > 0 && tables[k - 1] == off) {
      const uint64_t a = index_of(off, 0);
      return Status::Corruption(name_ + ": L2 table at " + Hex(off) + " is reached twice (L1 " +
                                "indexes " + Hex(a) + " and " + Hex(index_of(off, a + 1)) +
                                "): a write would land on two guest offsets");
    }
    bool meta = std::binary_search(blocks.begin(), blocks.end(), off);
    for (const auto& r : meta_ranges_) meta = meta || (off < r.second && r.first < off + cs);
    if (meta)
      return Status::Corruption(name_ + ": L2 table at " + Hex(off) + " (L1 index " +
                                Hex(index_of(off, 0)) + ") overlaps other metadata");
  }
  for (uint64_t i = 0; i < l1_.size(); ++i) {
    if (!(l1_[i] & kOflagCopied) || (l1_[i] & kL1OffsetMask) == 0) continue;
    const uint64_t off = l1_[i] & kL1OffsetMask;
    KVMFS_ASSIGN_OR_RETURN(uint64_t rc, GetRefcount(off >> bits));
    if (rc != 1)
      return Status::Corruption(name_ + ": L2 table at " + Hex(off) + " (L1 index " + Hex(i) +
                                ") is marked COPIED but its refcount is " + std::to_string(rc) +
                                ": it is shared, a write would change a snapshot");
  }
  return Status::OK();
}

}  // namespace kvmfs::qcow2
