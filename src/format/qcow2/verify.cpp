// The read-only check of `qemu-img check` (QEMU 7.2 qcow2-refcount.c:
// qcow2_check_refcounts with calculate_refcounts, check_refcounts_l1/l2,
// check_refblocks, compare_refcounts, check_oflag_copied; and
// qcow2-bitmap.c: qcow2_check_bitmaps_refcounts), counting what QEMU counts
// so that the result is the one `qemu-img check --output=json` prints.
//
// QEMU keeps a reference count for every cluster of the file in memory. This
// walk keeps them for one window of clusters at a time (at most
// CheckOptions::max_count_bytes of counters), walking every table once per
// window: a file of any size is checked in bounded memory, in one pass when
// its clusters fit the window. Findings that do not depend on the window
// (reserved bits, unaligned tables, ranges past the end of the file,
// fragmentation) are counted in the first pass only; reference counts are
// compared, and refcount overflows counted, per window.
//
// Everything is read from the file (the engine's write-back caches are
// flushed before, and the metadata stays frozen meanwhile: Engine::Check).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {
namespace {

constexpr uint64_t kReftableReservedMask = 0x1ff;
constexpr uint64_t kReftableOffsetMask = ~kReftableReservedMask;
constexpr uint64_t kDefaultCountBytes = 16ull << 20;
// Bitmaps (qcow2-bitmap.c).
constexpr uint64_t kBmeOffsetMask = 0x00fffffffffffe00ull;
constexpr uint64_t kBmeReservedMask = 0xff000000000001feull;
constexpr uint64_t kBmeAllOnes = 1;
constexpr uint64_t kBmeMaxTableSize = 0x8000000;
constexpr size_t kBitmapEntryHeader = 24;
// Bitmap table entries read at a time.
constexpr uint64_t kTableChunk = 8192;

std::string ErrnoText(const Status& st) {
  const int err = st.ToErrno();
  return std::strerror(err != 0 ? err : EIO);
}

}  // namespace

// One check: see the file comment. Runs with the engine's metadata frozen.
class Verifier {
 public:
  Verifier(Engine& e, const CheckOptions& options)
      : e_(e), g_(e.geo_), options_(options), refcount_max_(e.refcount_max()) {}

  CheckResult Run() {
    Status st = RunPasses();
    if (st.ok()) st = CheckCopied();
    if (!st.ok() && res_.failure.empty()) res_.failure = ErrnoText(st);
    res_.image_end_offset = (highest_ + 1) * g_.cluster_size;
    res_.total_clusters = (e_.virtual_size() + g_.cluster_size - 1) >> g_.cluster_bits;
    return res_;
  }

 private:
  // ---- Counting ----

  bool first() const { return lo_ == 0; }
  void Once() { res_.corruptions += first() ? 1 : 0; }

  // qcow2_inc_refcounts_imrt: +1 for every cluster [offset, offset+size)
  // touches; a range ending a cluster or more past the end of the file is
  // a corruption and counts nothing.
  void Inc(uint64_t offset, uint64_t size) {
    if (size == 0) return;
    if (offset > UINT64_MAX - size || offset + size >= file_len_ + g_.cluster_size) {
      Once();
      return;
    }
    const uint64_t first_cluster = offset >> g_.cluster_bits;
    const uint64_t last_cluster = (offset + size - 1) >> g_.cluster_bits;
    grown_ = std::max(grown_, last_cluster + 1);
    const uint64_t a = std::max(first_cluster, lo_), b = std::min(last_cluster + 1, hi_);
    for (uint64_t k = a; k < b; ++k) {
      uint32_t& c = counts_[k - lo_];
      if (c >= count_max_) {
        ++res_.corruptions;  // "ERROR: overflow cluster offset=..."
        continue;
      }
      ++c;
    }
  }

  uint64_t Count(uint64_t cluster) const {
    return cluster >= lo_ && cluster < hi_ ? counts_[cluster - lo_] : 0;
  }

  // ---- The walk of calculate_refcounts ----

  Status RunPasses() {
    KVMFS_ASSIGN_OR_RETURN(file_len_, e_.file_->Size());
    nb_clusters_ = (file_len_ + g_.cluster_size - 1) >> g_.cluster_bits;
    KVMFS_RETURN_IF_ERROR(LoadReftable());
    const uint64_t count_bytes = options_.max_count_bytes ? options_.max_count_bytes : kDefaultCountBytes;
    const uint64_t window = std::max<uint64_t>(1, count_bytes / sizeof(uint32_t));
    count_max_ = static_cast<uint32_t>(std::min<uint64_t>(refcount_max_, UINT32_MAX));
    // A range may end up to a cluster past the end: one cluster more.
    const uint64_t span = nb_clusters_ + 1;
    passes_ = (span + window - 1) / window;
    KVMFS_RETURN_IF_ERROR(CountTables());
    BudgetCharge charge(e_.budget(), std::min(window, span) * sizeof(uint32_t));
    for (uint64_t p = 0; p < passes_; ++p) {
      lo_ = p * window;
      hi_ = std::min(span, lo_ + window);
      counts_.assign(hi_ - lo_, 0);
      KVMFS_RETURN_IF_ERROR(Walk());
      KVMFS_RETURN_IF_ERROR(Compare());
    }
    counts_.clear();
    counts_.shrink_to_fit();
    return Status::OK();
  }

  Status Walk() {
    const Header& h = e_.header_;
    Inc(0, g_.cluster_size);
    KVMFS_RETURN_IF_ERROR(CheckL1(h.raw.l1_table_offset, h.raw.l1_size, true));
    if (h.has_data_file() && !e_.snapshots_.empty()) Once();
    uint64_t snapshots_end = h.raw.snapshots_offset;
    for (const Snapshot& s : e_.snapshots_) {
      snapshots_end = ((snapshots_end + 7) & ~uint64_t{7}) + sizeof(SnapshotHeaderRaw) +
                      s.extra_data_size + s.info.id.size() + s.info.name.size();
      if (s.l1_table_offset & (g_.cluster_size - 1)) {
        Once();  // "L1 table is not cluster aligned; snapshot table entry corrupted"
        continue;
      }
      if (uint64_t{s.l1_size} * 8 > kMaxL1Bytes) {
        Once();  // "L1 table is too large"
        continue;
      }
      KVMFS_RETURN_IF_ERROR(CheckL1(s.l1_table_offset, s.l1_size, false));
    }
    if (!e_.snapshots_.empty()) Inc(h.raw.snapshots_offset, snapshots_end - h.raw.snapshots_offset);
    Inc(h.raw.refcount_table_offset, uint64_t{h.raw.refcount_table_clusters} * g_.cluster_size);
    if (h.crypto && h.crypto->length) Inc(h.crypto->offset, h.crypto->length);
    KVMFS_RETURN_IF_ERROR(CheckBitmaps());
    CheckRefblocks();
    return Status::OK();
  }

  // Reads an L1 (or bitmap) table of `entries` words at `offset`, host order.
  Status ReadWords(uint64_t offset, uint64_t entries, std::vector<uint64_t>& words) {
    words.resize(entries);
    if (entries == 0) return Status::OK();
    KVMFS_RETURN_IF_ERROR(e_.file_->ReadAt(offset, words.data(), entries * 8));
    for (uint64_t& w : words) w = LoadBE64(reinterpret_cast<const uint8_t*>(&w));
    return Status::OK();
  }

  // check_refcounts_l1.
  Status CheckL1(uint64_t offset, uint32_t size, bool active) {
    if (size == 0) return Status::OK();
    Inc(offset, uint64_t{size} * 8);
    std::vector<uint64_t> l1;
    BudgetCharge charge(e_.budget(), uint64_t{size} * 8);
    KVMFS_RETURN_IF_ERROR(ReadWords(offset, size, l1));  // "I/O error in check_refcounts_l1"
    for (uint64_t entry : l1) {
      if (entry == 0) continue;
      if (entry & kL1ReservedMask) Once();
      const uint64_t l2_offset = entry & kL1OffsetMask;
      Inc(l2_offset, g_.cluster_size);
      if (l2_offset & (g_.cluster_size - 1)) Once();
      KVMFS_RETURN_IF_ERROR(CheckL2(l2_offset, active));
    }
    return Status::OK();
  }

  enum class Type { kCompressed, kZeroPlain, kZeroAlloc, kNormal, kUnallocated };

  // qcow2_get_cluster_type.
  Type TypeOf(uint64_t entry) const {
    if (entry & kOflagCompressed) return Type::kCompressed;
    if ((entry & kOflagZero) && !g_.extended_l2)
      return (entry & kL2OffsetMask) ? Type::kZeroAlloc : Type::kZeroPlain;
    if (!(entry & kL2OffsetMask))
      return e_.header_.has_data_file() && (entry & kOflagCopied) ? Type::kNormal : Type::kUnallocated;
    return Type::kNormal;
  }

  Status ReadL2(uint64_t offset) {
    l2_.resize(g_.cluster_size / 8);
    KVMFS_RETURN_IF_ERROR(e_.file_->ReadAt(offset, l2_.data(), g_.cluster_size));
    for (uint64_t& w : l2_) w = LoadBE64(reinterpret_cast<const uint8_t*>(&w));
    if (options_.progress) options_.progress(++done_, total_);
    return Status::OK();
  }

  // check_refcounts_l2 (CHECK_FRAG_INFO for the active tables).
  Status CheckL2(uint64_t offset, bool frag) {
    KVMFS_RETURN_IF_ERROR(ReadL2(offset));  // "I/O error in check_refcounts_l2"
    const bool data_file = e_.header_.has_data_file();
    const uint64_t stride = g_.extended_l2 ? 2 : 1;
    const bool count_frag = frag && first();
    uint64_t next_contiguous = 0;
    for (uint64_t i = 0; i < g_.l2_entries; ++i) {
      uint64_t entry = l2_[i * stride];
      const uint64_t bitmap = g_.extended_l2 ? l2_[i * stride + 1] : 0;
      const Type type = TypeOf(entry);
      if (type != Type::kCompressed && (entry & kL2StdReservedMask)) Once();
      switch (type) {
        case Type::kCompressed: {
          if (entry & kOflagCopied) {
            Once();  // "copied flag must never be set for compressed clusters"
            entry &= ~kOflagCopied;
          }
          if (data_file || bitmap) {
            Once();
            break;
          }
          const uint64_t coffset = entry & g_.compressed_offset_mask;
          const uint64_t sectors = ((entry >> g_.csize_shift) & g_.csize_mask) + 1;
          Inc(coffset, sectors * kCompressedSectorSize - (coffset & (kCompressedSectorSize - 1)));
          if (count_frag) {
            ++res_.allocated_clusters;
            ++res_.compressed_clusters;
            ++res_.fragmented_clusters;  // compressed clusters are fragmented by nature
          }
          break;
        }
        case Type::kZeroAlloc:
        case Type::kNormal: {
          const uint64_t host = entry & kL2OffsetMask;
          if ((bitmap >> 32) & bitmap) Once();
          if (host & (g_.cluster_size - 1)) Once();
          if (count_frag) {
            ++res_.allocated_clusters;
            if (next_contiguous != 0 && host != next_contiguous) ++res_.fragmented_clusters;
            next_contiguous = host + g_.cluster_size;
          }
          if (!data_file) Inc(host, g_.cluster_size);
          break;
        }
        case Type::kZeroPlain:
          break;
        case Type::kUnallocated:
          if (bitmap & kBitmapAllAlloc) Once();
          break;
      }
    }
    return Status::OK();
  }

  // qcow2_check_bitmaps_refcounts. A directory QEMU cannot load fails the
  // check (EINVAL), as it does.
  Status CheckBitmaps() {
    const Header& h = e_.header_;
    if (!h.bitmaps || h.bitmaps->nb_bitmaps == 0) return Status::OK();
    const BitmapsExtension& ext = *h.bitmaps;
    Inc(ext.bitmap_directory_offset, ext.bitmap_directory_size);
    auto invalid = [&]() {
      Once();
      return Status::InvalidArgument(e_.name_ + ": bitmap directory cannot be loaded");
    };
    if (ext.bitmap_directory_size > kMaxBitmapDirectoryBytes ||
        ext.bitmap_directory_offset & (g_.cluster_size - 1))
      return invalid();
    std::vector<uint8_t> dir(ext.bitmap_directory_size);
    BudgetCharge charge(e_.budget(), dir.size());
    KVMFS_RETURN_IF_ERROR(e_.file_->ReadAt(ext.bitmap_directory_offset, dir.data(), dir.size()));
    size_t pos = 0;
    for (uint32_t n = 0; n < ext.nb_bitmaps; ++n) {
      if (dir.size() - pos < kBitmapEntryHeader) return invalid();
      const uint8_t* p = dir.data() + pos;
      const uint64_t table_offset = LoadBE64(p);
      const uint32_t table_size = LoadBE32(p + 8);
      const uint16_t name_size = LoadBE16(p + 18);
      const uint32_t extra = LoadBE32(p + 20);
      const uint64_t entry_size = (kBitmapEntryHeader + uint64_t{extra} + name_size + 7) & ~uint64_t{7};
      if (entry_size > dir.size() - pos || table_size > kBmeMaxTableSize ||
          table_offset & (g_.cluster_size - 1))
        return invalid();
      pos += entry_size;
      Inc(table_offset, uint64_t{table_size} * 8);
      std::vector<uint64_t> words;
      for (uint64_t at = 0; at < table_size; at += kTableChunk) {
        const uint64_t n_words = std::min<uint64_t>(kTableChunk, table_size - at);
        KVMFS_RETURN_IF_ERROR(ReadWords(table_offset + at * 8, n_words, words));
        for (uint64_t entry : words) {
          const uint64_t off = entry & kBmeOffsetMask;
          if ((entry & kBmeReservedMask) || (off & (g_.cluster_size - 1)) ||
              ((entry & kBmeAllOnes) && off != 0)) {
            Once();
            continue;
          }
          if (off != 0) Inc(off, g_.cluster_size);
        }
      }
    }
    return Status::OK();
  }

  // check_refblocks: each refcount block counted, and its count must be 1.
  void CheckRefblocks() {
    const uint64_t nb = std::max(nb_clusters_, grown_);
    for (uint64_t e : reftable_) {
      const uint64_t offset = e & kReftableOffsetMask;
      const uint64_t cluster = offset >> g_.cluster_bits;
      if ((e & kReftableReservedMask) || (offset & (g_.cluster_size - 1)) || cluster >= nb) {
        Once();
        continue;
      }
      if (offset == 0) continue;
      Inc(offset, g_.cluster_size);
      if (cluster >= lo_ && cluster < hi_ && Count(cluster) != 1) ++res_.corruptions;
    }
  }

  // ---- On-disk refcounts ----

  Status LoadReftable() {
    const Header& h = e_.header_;
    const uint64_t entries = uint64_t{h.raw.refcount_table_clusters} << (g_.cluster_bits - 3);
    reftable_charge_.Set(e_.budget(), entries * 8);
    return ReadWords(h.raw.refcount_table_offset, entries, reftable_);
  }

  // qcow2_get_refcount of `cluster` as the file says; kIOError (EIO) for a
  // refcount block that is not cluster aligned.
  Result<uint64_t> DiskRefcount(uint64_t cluster) {
    const uint32_t rb_bits = e_.rb_bits();
    const uint64_t rt = cluster >> rb_bits;
    if (rt >= reftable_.size()) return uint64_t{0};
    const uint64_t off = reftable_[rt] & kReftableOffsetMask;
    if (off == 0) return uint64_t{0};
    if (off & (g_.cluster_size - 1)) return Status::FromErrno(EIO, e_.name_ + ": refblock unaligned");
    if (block_offset_ != off) {
      block_.resize(g_.cluster_size);
      block_offset_ = UINT64_MAX;
      KVMFS_RETURN_IF_ERROR(e_.file_->ReadAt(off, block_.data(), block_.size()));
      block_offset_ = off;
    }
    return GetRefcountEntry(block_.data(), e_.header_.refcount_order,
                            cluster & ((uint64_t{1} << rb_bits) - 1));
  }

  // compare_refcounts over this window.
  Status Compare() {
    const uint64_t end = std::min(hi_, std::max(nb_clusters_, grown_));
    for (uint64_t i = lo_; i < end; ++i) {
      Result<uint64_t> on_disk = DiskRefcount(i);
      if (!on_disk.ok()) {
        ++res_.check_errors;  // "Can't get refcount for cluster"
        continue;
      }
      const uint64_t computed = Count(i);
      if (*on_disk > 0 || computed > 0) highest_ = i;
      if (*on_disk < computed) ++res_.corruptions;
      else if (*on_disk > computed) ++res_.leaks;
    }
    return Status::OK();
  }

  // check_oflag_copied: COPIED on the active tables says refcount == 1.
  Status CheckCopied() {
    const bool data_file = e_.header_.has_data_file();
    const uint64_t stride = g_.extended_l2 ? 2 : 1;
    for (uint64_t l1_entry : e_.l1_) {
      const uint64_t l2_offset = l1_entry & kL1OffsetMask;
      if (l2_offset == 0) continue;
      Result<uint64_t> rc = DiskRefcount(l2_offset >> g_.cluster_bits);
      if (rc.ok() && (*rc == 1) != ((l1_entry & kOflagCopied) != 0)) ++res_.corruptions;
      Status read = ReadL2(l2_offset);
      if (!read.ok()) {
        ++res_.check_errors;  // "Could not read L2 table"
        return read;
      }
      for (uint64_t j = 0; j < g_.l2_entries; ++j) {
        const uint64_t entry = l2_[j * stride];
        const Type type = TypeOf(entry);
        if (type != Type::kNormal && type != Type::kZeroAlloc) continue;
        uint64_t refcount = 1;
        if (!data_file) {
          Result<uint64_t> r = DiskRefcount((entry & kL2OffsetMask) >> g_.cluster_bits);
          if (!r.ok()) continue;
          refcount = *r;
        }
        if ((refcount == 1) != ((entry & kOflagCopied) != 0)) ++res_.corruptions;
      }
    }
    return Status::OK();
  }

  // Units of progress: L2 tables read, in every pass and by CheckCopied.
  Status CountTables() {
    uint64_t tables = 0;
    auto count = [&](uint64_t offset, uint32_t size) -> Status {
      std::vector<uint64_t> l1;
      BudgetCharge charge(e_.budget(), uint64_t{size} * 8);
      KVMFS_RETURN_IF_ERROR(ReadWords(offset, size, l1));
      for (uint64_t e : l1) tables += e != 0;
      return Status::OK();
    };
    KVMFS_RETURN_IF_ERROR(count(e_.header_.raw.l1_table_offset, e_.header_.raw.l1_size));
    const uint64_t active = tables;  // read again by CheckCopied
    for (const Snapshot& s : e_.snapshots_)
      if (!(s.l1_table_offset & (g_.cluster_size - 1)) && uint64_t{s.l1_size} * 8 <= kMaxL1Bytes)
        KVMFS_RETURN_IF_ERROR(count(s.l1_table_offset, s.l1_size));
    total_ = tables * passes_ + active;
    return Status::OK();
  }

  Engine& e_;
  const Geometry& g_;
  const CheckOptions& options_;
  const uint64_t refcount_max_;
  CheckResult res_;
  uint64_t file_len_ = 0;
  uint64_t nb_clusters_ = 0;    // clusters of the file
  uint64_t grown_ = 0;          // one past the highest cluster referenced
  uint64_t highest_ = 0;        // the highest cluster referenced or refcounted
  uint64_t passes_ = 1;
  uint64_t lo_ = 0, hi_ = 0;    // the window of clusters counted now
  uint32_t count_max_ = 0;
  std::vector<uint32_t> counts_;
  std::vector<uint64_t> reftable_;
  BudgetCharge reftable_charge_;
  std::vector<uint64_t> l2_;
  std::vector<uint8_t> block_;  // the refcount block read last
  uint64_t block_offset_ = UINT64_MAX;
  uint64_t done_ = 0, total_ = 0;
};

Result<CheckResult> Engine::Check(const CheckOptions& options) {
  std::unique_lock<std::shared_mutex> lock = LockExclusive();
  // The file says what the engine knows: allocations in flight linked,
  // the write-back caches written (pending decrements included).
  alloc_cv_.wait(lock, [&] { return in_flight_.empty(); });
  if (writing_.load() && ReadOnlyReason().empty() &&
      (synced_gen_.load() < write_gen_.load() || MetadataDirtyLocked()))
    KVMFS_RETURN_IF_ERROR(FlushLocked());
  // Metadata changes wait for the walk; readers and in-place writes go on.
  walk_active_ = true;
  lock.unlock();
  CheckResult result;
  {
    std::shared_lock<std::shared_mutex> walk(rw_);
    Verifier verifier(*this, options);
    result = verifier.Run();
  }
  lock.lock();
  walk_active_ = false;
  walk_cv_.notify_all();
  return result;
}

}  // namespace kvmfs::qcow2
