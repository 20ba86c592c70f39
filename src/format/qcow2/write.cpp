// Writing the active disk (QEMU qcow2.c / qcow2-cluster.c): in-place
// overwrites, allocating writes with copy-on-write from the backing chain,
// compressed and shared clusters, zero clusters and discard, resize, and the
// write-back of the metadata caches in crash-safe order (Flush).
//
// Locking: Write() first tries the in-place path under the shared lock
// (every touched cluster is a normal cluster with COPIED set, so nothing but
// guest data changes: no metadata I/O at all). Anything else retries under
// the exclusive lock.
#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {
namespace {

// At most this many clusters (and bytes) go into one allocating run.
constexpr uint64_t kMaxRunBytes = 32ull << 20;

}  // namespace

bool Engine::writable() const {
  return writing_.load(std::memory_order_acquire) && ReadOnlyReason().empty();
}

std::string Engine::ReadOnlyReason() const {
  std::lock_guard<std::mutex> lock(reason_mu_);
  return read_only_reason_;
}

void Engine::SetOpenedWritable(bool writable, std::string read_only_reason) {
  opened_writable_ = writable;
  std::lock_guard<std::mutex> lock(reason_mu_);
  read_only_reason_ = std::move(read_only_reason);
}

Status Engine::CheckWritable() const {
  const std::string reason = ReadOnlyReason();
  if (!reason.empty()) return Status::ReadOnly(name_ + ": " + reason);
  if (!writing_.load(std::memory_order_acquire))
    return Status::ReadOnly(name_ + ": not open for writing");
  return Status::OK();
}

void Engine::MarkDirty(L2Table& t) {
  if (!t.dirty) {
    t.dirty = true;
    ++dirty_l2_count_;
  }
}

Status Engine::WriteHeaderLocked(bool sync) {
  uint8_t buf[kHeaderSize];
  header_.raw.incompatible_features = header_.incompatible;
  header_.raw.compatible_features = header_.compatible;
  header_.raw.autoclear_features = header_.autoclear;
  header_.raw.Encode(buf);
  const size_t len = header_.version == 2 ? HeaderRaw::kV2Size
                                          : std::min<size_t>(header_.header_length, kHeaderSize);
  KVMFS_RETURN_IF_ERROR(file_->WriteAt(0, buf, len));
  header_dirty_ = false;
  return sync ? file_->Flush() : Status::OK();
}

Status Engine::SignalCorruption(Status why) {
  {
    std::lock_guard<std::mutex> lock(reason_mu_);
    if (!read_only_reason_.empty()) return why;  // already signalled
    read_only_reason_ = "corruption found while writing; image marked corrupt (" +
                        why.message() + "); repair it with 'qemu-img check -r all'";
  }
  if (header_.version >= 3) {
    header_.incompatible |= kIncompatCorrupt;
    (void)WriteHeaderLocked(true);  // best effort: the writer gets `why` anyway
  }
  return why;
}

Status Engine::Fatal(Status st) {
  if (st.IsCorruption()) return SignalCorruption(std::move(st));
  return st;
}

void Engine::RebuildMetadataIndex() {
  const uint64_t cs = geo_.cluster_size;
  meta_ranges_.clear();
  meta_clusters_.clear();
  meta_ranges_.push_back({0, cs});
  if (!l1_.empty()) meta_ranges_.push_back({l1_offset_, l1_offset_ + l1_.size() * 8});
  meta_ranges_.push_back({reftable_offset_, reftable_offset_ + reftable_clusters_ * cs});
  // The LUKS header and key slots of an encrypted image.
  if (header_.crypto && header_.crypto->length > 0) {
    const uint64_t at = header_.crypto->offset, bytes = header_.crypto->length;
    meta_ranges_.push_back({at, at + bytes});
  }
  if (header_.raw.nb_snapshots > 0) {
    const uint64_t bytes = EncodeSnapshotTable(snapshots_).size();
    const uint64_t at = header_.raw.snapshots_offset;
    meta_ranges_.push_back({at, at + bytes});
  }
  for (const Snapshot& s : snapshots_)
    if (s.l1_size > 0)
      meta_ranges_.push_back({s.l1_table_offset, s.l1_table_offset + uint64_t{s.l1_size} * 8});
  for (uint64_t e : l1_)
    if (e & kL1OffsetMask) meta_clusters_.insert((e & kL1OffsetMask) >> geo_.cluster_bits);
  for (uint64_t e : reftable_)
    if (e) meta_clusters_.insert(e >> geo_.cluster_bits);
}

bool Engine::OverlapsMetadata(uint64_t host, uint64_t len) const {
  if (len == 0) return false;
  for (const auto& r : meta_ranges_)
    if (host < r.second && r.first < host + len) return true;
  const uint64_t first = host >> geo_.cluster_bits, last = (host + len - 1) >> geo_.cluster_bits;
  for (uint64_t c = first; c <= last; ++c)
    if (meta_clusters_.count(c)) return true;
  return false;
}

// ---- Begin / End / Flush ----------------------------------------------------------

Status Engine::BeginWrites() {
  std::unique_lock<std::shared_mutex> lock = LockExclusive();
  const std::string reason = ReadOnlyReason();
  if (!reason.empty()) return Status::ReadOnly(name_ + ": " + reason);
  if (!opened_writable_) return Status::ReadOnly(name_ + ": opened read-only");
  KVMFS_RETURN_IF_ERROR(DataStatus());
  if (writing_.load()) return Status::OK();
  if (!file_->writable() || !data_->writable())
    return Status::ReadOnly(name_ + ": the file is not open for writing");
  KVMFS_RETURN_IF_ERROR(LoadRefcountTable());
  RebuildMetadataIndex();
  if (header_.incompatible & kIncompatDirty) {
    // As QEMU on a read-write open: rebuild the refcounts from the tables,
    // make that durable, and only then clear the dirty bit.
    Status st = RebuildRefcounts();
    if (st.ok()) st = RecomputeCopied();
    if (st.ok()) st = FlushLocked();
    if (!st.ok()) {
      DropRefcounts();
      return st.IsCorruption() ? Status::ReadOnly(name_ + ": dirty image cannot be repaired: " +
                                                  st.message())
                               : st;
    }
    header_.incompatible &= ~kIncompatDirty;
    KVMFS_RETURN_IF_ERROR(WriteHeaderLocked(true));
    RebuildMetadataIndex();
  }
  // Tables reached twice or shared behind a COPIED flag: refuse to write.
  if (Status st = CheckActiveTables(); !st.ok()) {
    DropRefcounts();
    if (!st.IsCorruption()) return st;
    return Status::ReadOnly(SignalCorruption(std::move(st)).message());
  }
  writing_.store(true, std::memory_order_release);
  return Status::OK();
}

Status Engine::EndWrites() {
  std::unique_lock<std::shared_mutex> lock = LockExclusive();
  if (!writing_.load()) return Status::OK();
  alloc_cv_.wait(lock, [&] { return in_flight_.empty(); });
  const std::string reason = ReadOnlyReason();
  if (!reason.empty()) {
    writing_.store(false, std::memory_order_release);
    return Status::ReadOnly(name_ + ": " + reason);
  }
  // The dirty check backs up the flag for paths that change metadata
  // without a write (repair, snapshots, resize).
  if (synced_gen_.load() < write_gen_.load() || MetadataDirtyLocked())
    KVMFS_RETURN_IF_ERROR(FlushLocked());
  writing_.store(false, std::memory_order_release);
  return Status::OK();
}

bool Engine::MetadataDirtyLocked() const {
  if (dirty_l2_count_ > 0 || l1_dirty_ || header_dirty_ || reftable_dirty_) return true;
  for (const auto& [rt, b] : refblocks_)
    if (b->dirty || !b->disk.empty()) return true;
  return !l2_cache_.DirtyTables().empty();
}

Status Engine::Flush() {
  // Every write finished before this call is durable already (close() of a
  // handle that only read, or a second fsync): no lock, no fdatasync.
  const uint64_t gen = write_gen_.load(std::memory_order_acquire);
  if (synced_gen_.load(std::memory_order_acquire) >= gen) return Status::OK();
  std::unique_lock<std::shared_mutex> lock = LockExclusive();
  if (synced_gen_.load(std::memory_order_acquire) >= gen) return Status::OK();  // one just did
  if (!refcounts_loaded_) return Status::OK();
  // After corruption (or a failed commit) memory is not to be trusted:
  // nothing more is written.
  const std::string reason = ReadOnlyReason();
  if (!reason.empty()) return Status::ReadOnly(name_ + ": " + reason);
  return FlushLocked();
}

Status Engine::FlushLocked() {
  // The writes finished before this point are synced when it succeeds.
  const uint64_t gen = write_gen_.load(std::memory_order_acquire);
  // 1. Guest data and refcount increments (decrements held back).
  if (data_ != file_) KVMFS_RETURN_IF_ERROR(data_->Flush());
  KVMFS_RETURN_IF_ERROR(WriteRefBlocks(true));
  if (reftable_dirty_) {
    // New blocks are on disk before the table entries naming them.
    KVMFS_RETURN_IF_ERROR(file_->Flush());
    std::vector<uint8_t> raw(reftable_clusters_ * geo_.cluster_size, 0);
    for (size_t i = 0; i < reftable_.size() && 8 * i < raw.size(); ++i)
      StoreBE64(raw.data() + 8 * i, reftable_[i]);
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(reftable_offset_, raw.data(), raw.size()));
    reftable_dirty_ = false;
  }
  KVMFS_RETURN_IF_ERROR(file_->Flush());
  // 2. L2 tables, which may now point at the new clusters.
  std::vector<std::shared_ptr<L2Table>> dirty = l2_cache_.DirtyTables();
  if (!dirty.empty()) {
    std::vector<uint8_t> raw(geo_.cluster_size);
    for (const auto& t : dirty) {
      for (size_t i = 0; i < t->words.size(); ++i) StoreBE64(raw.data() + 8 * i, t->words[i]);
      KVMFS_RETURN_IF_ERROR(file_->WriteAt(t->host_offset, raw.data(), raw.size()));
      t->dirty = false;
      --dirty_l2_count_;
    }
    KVMFS_RETURN_IF_ERROR(file_->Flush());
  }
  dirty_l2_count_ = 0;
  // 3. The L1 table, then the header.
  if (l1_dirty_ && !l1_.empty()) {
    std::vector<uint8_t> raw(l1_.size() * 8);
    for (size_t i = 0; i < l1_.size(); ++i) StoreBE64(raw.data() + 8 * i, l1_[i]);
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(l1_offset_, raw.data(), raw.size()));
    l1_dirty_ = false;
    KVMFS_RETURN_IF_ERROR(file_->Flush());
  }
  l1_dirty_ = false;
  if (header_dirty_) KVMFS_RETURN_IF_ERROR(WriteHeaderLocked(true));
  // 4. Nothing durable names the released clusters any more: the decrements
  //    may reach the disk and the clusters be reused.
  if (HasPending()) {
    ApplyPending();
    KVMFS_RETURN_IF_ERROR(WriteRefBlocks(false));
    KVMFS_RETURN_IF_ERROR(file_->Flush());
  }
  // Keep the refcount cache bounded (clean blocks are re-read on demand).
  KVMFS_RETURN_IF_ERROR(TrimRefBlocks());
  if (synced_gen_.load(std::memory_order_relaxed) < gen)
    synced_gen_.store(gen, std::memory_order_release);
  return Status::OK();
}

Status Engine::MaybeWriteBack() {
  // Bounds the dirty L2 tables the cache must keep (it never evicts them)
  // and the refcount blocks held dirty; QEMU writes a dirty L2 back on
  // eviction after its refcount dependency, this writes all in that order.
  // Dirty tables cannot be evicted: write them back as soon as they keep
  // the process-wide cache budget over its limit.
  const uint64_t limit = std::max<uint64_t>(8, l2_cache_.capacity() / 2);
  if (dirty_l2_count_ > limit || pending_blocks_ * 2 > RefBlockCap() ||
      (dirty_l2_count_ > 0 && l2_cache_.OverBudget()))
    return FlushLocked();
  return Status::OK();
}

// ---- Reading the current view (COW source) ------------------------------------------

Status Engine::ReadCurrent(uint64_t off, uint8_t* p, size_t n, const BackingView& backing) {
  const uint64_t vs = virtual_size();
  if (off >= vs) {
    std::memset(p, 0, n);
    return Status::OK();
  }
  if (n > vs - off) {
    std::memset(p + (vs - off), 0, n - (vs - off));
    n = static_cast<size_t>(vs - off);
  }
  const uint64_t cluster_mask = geo_.cluster_size - 1;
  while (n > 0) {
    KVMFS_ASSIGN_OR_RETURN(Extent e, Map(l1_, off, n, MapMode::kRead));
    const size_t k = static_cast<size_t>(e.length);
    switch (e.type) {
      case Extent::Type::kUnallocated:
        if (backing.read) {
          KVMFS_RETURN_IF_ERROR(backing.read(off, p, k));
        } else {
          std::memset(p, 0, k);
        }
        break;
      case Extent::Type::kZero:
        std::memset(p, 0, k);
        break;
      case Extent::Type::kData:
        KVMFS_RETURN_IF_ERROR(ReadData(off, e.host, p, k));
        break;
      case Extent::Type::kCompressed:
        KVMFS_RETURN_IF_ERROR(ReadCompressed(e.l2_entry, off & cluster_mask, p, k, off));
        break;
    }
    off += k;
    p += k;
    n -= k;
  }
  return Status::OK();
}

// ---- L2 tables -----------------------------------------------------------------------

Result<std::shared_ptr<L2Table>> Engine::WritableL2(uint64_t l1_index) {
  if (l1_index >= l1_.size())
    return Status::Corruption(name_ + ": L1 index " + Hex(l1_index) + " past the L1 table (" +
                              std::to_string(l1_.size()) + " entries)");
  const uint64_t l1e = l1_[l1_index];
  if (l1e & kL1ReservedMask)
    return Status::Corruption(name_ + ": L1 entry " + Hex(l1e) +
                              " has reserved bits set (L1 index: " + Hex(l1_index) + ")");
  const uint64_t off = l1e & kL1OffsetMask;
  if (off & (geo_.cluster_size - 1))
    return Status::Corruption(name_ + ": L2 table offset " + Hex(off) +
                              " unaligned (L1 index: " + Hex(l1_index) + ")");
  if (off == 0) {
    // A new, empty table; the L1 entry reaches the disk after it (Flush).
    KVMFS_ASSIGN_OR_RETURN(uint64_t fresh, AllocClusters(1));
    auto t = std::make_shared<L2Table>();
    t->host_offset = fresh;
    t->words.assign(geo_.cluster_size / 8, 0);
    MarkDirty(*t);
    l2_cache_.Put(t);
    l1_[l1_index] = fresh | kOflagCopied;
    l1_dirty_ = true;
    meta_clusters_.insert(fresh >> geo_.cluster_bits);
    return t;
  }
  if (!(l1e & kOflagCopied)) {
    KVMFS_ASSIGN_OR_RETURN(uint64_t rc, GetRefcount(off >> geo_.cluster_bits));
    if (rc == 0)
      return Status::Corruption(name_ + ": L2 table at " + Hex(off) +
                                " has refcount 0 (L1 index: " + Hex(l1_index) + ")");
    if (rc > 1) {
      // Shared with a snapshot: the active disk gets its own copy.
      KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<const L2Table> old, GetL2(off, l1_index));
      KVMFS_ASSIGN_OR_RETURN(uint64_t fresh, AllocClusters(1));
      auto t = std::make_shared<L2Table>();
      t->host_offset = fresh;
      t->words = old->words;
      MarkDirty(*t);
      l2_cache_.Put(t);
      l1_[l1_index] = fresh | kOflagCopied;
      l1_dirty_ = true;
      meta_clusters_.erase(off >> geo_.cluster_bits);
      meta_clusters_.insert(fresh >> geo_.cluster_bits);
      KVMFS_RETURN_IF_ERROR(UpdateRefcount(off >> geo_.cluster_bits, -1));
      return t;
    }
    l1_[l1_index] = off | kOflagCopied;  // COPIED was stale
    l1_dirty_ = true;
  }
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<const L2Table> loaded, GetL2(off, l1_index));
  (void)loaded;
  std::shared_ptr<L2Table> t = l2_cache_.LookupForWrite(off);
  if (!t) return Status::FromErrno(EIO, name_ + ": L2 table at " + Hex(off) + " vanished from the cache");
  return t;
}

Status Engine::ReleaseEntry(uint64_t entry) {
  if (header_.has_data_file()) return Status::OK();  // data-file clusters are not refcounted
  if (entry & kOflagCompressed) {
    const uint64_t desc = entry & kL2CompressedMask;
    const uint64_t coffset = desc & geo_.compressed_offset_mask;
    const uint64_t sectors = ((desc >> geo_.csize_shift) & geo_.csize_mask) + 1;
    return UpdateRefcountRange(coffset & ~uint64_t{kCompressedSectorSize - 1},
                               sectors * kCompressedSectorSize, -1);
  }
  const uint64_t host = entry & kL2OffsetMask;
  if (host == 0) return Status::OK();
  return UpdateRefcount(host >> geo_.cluster_bits, -1);
}

// ---- Writes ----------------------------------------------------------------------------

namespace {

struct EntryKind {
  bool compressed = false;
  bool allocated = false;  // normal or zero-alloc with a host cluster
  bool copied = false;
  bool zero_flag = false;  // standard L2 bit 0
  uint64_t host = 0;
};

// Bumps the write generation when the write is over, whatever its outcome:
// only a flush starting after that may count it as synced.
class WriteDoneOnReturn {
 public:
  explicit WriteDoneOnReturn(std::atomic<uint64_t>& gen) : gen_(gen) {}
  ~WriteDoneOnReturn() { gen_.fetch_add(1, std::memory_order_acq_rel); }
  WriteDoneOnReturn(const WriteDoneOnReturn&) = delete;
  WriteDoneOnReturn& operator=(const WriteDoneOnReturn&) = delete;

 private:
  std::atomic<uint64_t>& gen_;
};

}  // namespace



Status Engine::Write(uint64_t off, const uint8_t* buf, size_t len, const BackingView& backing) {
  if (len == 0) return CheckWritable();
  WriteDoneOnReturn write_done(write_gen_);
  {
    std::shared_lock<std::shared_mutex> lock(rw_);
    KVMFS_RETURN_IF_ERROR(CheckWritable());
    const uint64_t vs = virtual_size();
    if (off > vs || len > vs - off)
      return Status::InvalidArgument(name_ + ": write of " + std::to_string(len) + " bytes at " +
                                     std::to_string(off) + " past the virtual size " +
                                     std::to_string(vs));
    // In-place path: every cluster a COPIED normal cluster (every touched
    // subcluster allocated); then only guest data is written.
    const Geometry& g = geo_;
    const uint64_t mask = g.cluster_size - 1;
    const bool in_image = data_ == file_;
    struct Piece {
      uint64_t guest, host, length;
    };
    std::vector<Piece> pieces;
    bool in_place = true;
    for (uint64_t pos = off, end = off + len; pos < end && in_place;) {
      const uint64_t l1_index = pos >> g.l1_shift();
      const uint64_t l1e = l1_index < l1_.size() ? l1_[l1_index] : 0;
      if (!(l1e & kOflagCopied) || (l1e & kL1ReservedMask) || (l1e & kL1OffsetMask & mask)) {
        in_place = false;
        break;
      }
      Result<std::shared_ptr<const L2Table>> t = GetL2(l1e & kL1OffsetMask, l1_index);
      if (!t.ok()) {
        in_place = false;  // the exclusive path reports it (and may mark the image corrupt)
        break;
      }
      const uint64_t l1_end = std::min(end, (l1_index + 1) << g.l1_shift());
      while (pos < l1_end) {
        const uint64_t l2_index = (pos >> g.cluster_bits) & (g.l2_entries - 1);
        const uint64_t cstart = pos & ~mask;
        const uint64_t cend = std::min(l1_end, cstart + g.cluster_size);
        const uint64_t entry = (*t)->words[l2_index * (g.extended_l2 ? 2 : 1)];
        const uint64_t host = entry & kL2OffsetMask;
        if (!(entry & kOflagCopied) || (entry & kOflagCompressed) || (entry & kL2StdReservedMask) ||
            (host & mask) || (host == 0 && in_image) || (!g.extended_l2 && (entry & kOflagZero)) ||
            (header_.has_data_file() && host != cstart)) {  // refused below, as QEMU does
          in_place = false;
          break;
        }
        if (g.extended_l2) {
          const uint64_t bitmap = (*t)->words[l2_index * 2 + 1];
          const uint32_t a = static_cast<uint32_t>((pos - cstart) >> g.subcluster_bits);
          const uint32_t b = static_cast<uint32_t>((cend - 1 - cstart) >> g.subcluster_bits);
          const uint64_t want = ((b == 31 ? ~0u : (1u << (b + 1)) - 1) & ~((1u << a) - 1));
          // A subcluster both allocated and zero is corruption: the
          // exclusive path reports it.
          if ((bitmap & want) != want || ((bitmap >> 32) & bitmap)) {
            in_place = false;
            break;
          }
        }
        const uint64_t h = host + (pos - cstart);
        if (!pieces.empty() && pieces.back().host + pieces.back().length == h)
          pieces.back().length += cend - pos;
        else
          pieces.push_back({pos, h, cend - pos});
        pos = cend;
      }
    }
    if (in_place) {
      for (const Piece& piece : pieces)
        if (in_image && OverlapsMetadata(piece.host, piece.length)) {
          in_place = false;  // the exclusive path reports it
          break;
        }
    }
    if (in_place) {
      for (const Piece& piece : pieces)
        KVMFS_RETURN_IF_ERROR(WriteData(piece.guest, piece.host, buf + (piece.guest - off),
                                        static_cast<size_t>(piece.length)));
      return Status::OK();
    }
  }
  return WriteAllocating(off, buf, len, backing);
}

Status Engine::WriteAllocating(uint64_t off, const uint8_t* buf, size_t len,
                               const BackingView& backing) {
  const uint64_t first = off >> geo_.cluster_bits;
  const uint64_t end = ((off + len - 1) >> geo_.cluster_bits) + 1;
  std::vector<AllocRun> runs;
  {
    // 1. Plan (exclusive): after the allocations in flight on these clusters
    //    (QEMU's handle_dependencies), allocate the new clusters and
    //    register them; in-place parts are written here.
    std::unique_lock<std::shared_mutex> lock = LockExclusive();
    alloc_cv_.wait(lock, [&] { return alloc_pauses_ == 0 && !InFlightOverlaps(first, end); });
    KVMFS_RETURN_IF_ERROR(CheckWritable());
    const uint64_t vs = virtual_size();
    if (off > vs || len > vs - off)
      return Status::InvalidArgument(name_ + ": write past the virtual size");
    Status st = WriteLocked(off, buf, len, backing, &runs);
    if (!st.ok()) {
      for (const AllocRun& r : runs) UndoRun(r);
      return Fatal(std::move(st));
    }
    if (runs.empty()) return Fatal(MaybeWriteBack());
    in_flight_.push_back({first, end});
  }
  // 2. Fill (no exclusive lock): the COW of partial clusters is read from the
  //    current view, which nobody changes on these clusters meanwhile; the
  //    data goes to clusters nothing refers to yet. On the first failure the
  //    runs from there on are given back.
  Status st;
  size_t ok = runs.size();
  std::vector<std::vector<uint8_t>> partial(runs.size());
  std::vector<std::vector<uint8_t>> packed;  // compressed runs' bytes
  {
    std::shared_lock<std::shared_mutex> lock(rw_);
    for (size_t i = 0; i < runs.size() && st.ok(); ++i)
      if (runs[i].partial) {
        st = BuildPartialCluster(runs[i], partial[i], backing);
        if (!st.ok()) ok = i;
      }
  }
  if (std::any_of(runs.begin(), runs.begin() + static_cast<ptrdiff_t>(ok),
                  [](const AllocRun& r) { return r.compress; })) {
    // Compressed runs (compress_write.cpp): compressed with no lock, then
    // given their host bytes under the exclusive lock.
    packed.resize(runs.size());
    CompressRuns(runs, ok, packed, partial);
    std::unique_lock<std::shared_mutex> lock = LockExclusive();
    Status placed;
    const size_t n = PlaceCompressedRuns(runs, packed, partial, ok, &placed);
    if (n < ok) {
      st = std::move(placed);  // before any failure further on
      ok = n;
    }
  }
  for (size_t i = 0; i < ok; ++i) {
    Status written =
        WriteRunData(runs[i], runs[i].compress ? packed[i] : partial[i]);
    if (!written.ok()) {
      st = std::move(written);  // the first failure in guest order
      ok = i;
    }
  }
  // 3. Link (exclusive): the data is written before any table points to it.
  std::unique_lock<std::shared_mutex> lock = LockExclusive();
  for (size_t i = 0; i < runs.size(); ++i) {
    if (i >= ok) {
      UndoRun(runs[i]);
      continue;
    }
    Status linked = LinkRun(runs[i]);
    if (!linked.ok()) {
      if (st.ok()) st = std::move(linked);
      ok = i + 1;  // LinkRun gave back run i itself when it could not start
    }
  }
  in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), std::make_pair(first, end)));
  alloc_cv_.notify_all();
  KVMFS_RETURN_IF_ERROR(Fatal(std::move(st)));
  return Fatal(MaybeWriteBack());
}

Status Engine::WriteLocked(uint64_t off, const uint8_t* buf, size_t len,
                           const BackingView& backing, std::vector<AllocRun>* defer) {
  uint64_t pos = off;
  const uint64_t end = off + len;
  while (pos < end) {
    uint64_t done = 0;
    KVMFS_RETURN_IF_ERROR(WriteRun(pos, buf + (pos - off), end - pos, backing, &done, defer));
    pos += done;
  }
  return Status::OK();
}

bool Engine::InFlightOverlaps(uint64_t first, uint64_t end) const {
  for (const auto& [f, e] : in_flight_)
    if (first < e && f < end) return true;
  return false;
}

void Engine::PauseAllocations() {
  std::unique_lock<std::shared_mutex> lock(rw_);
  ++alloc_pauses_;
  alloc_cv_.wait(lock, [&] { return in_flight_.empty(); });
}

void Engine::ResumeAllocations() {
  {
    std::unique_lock<std::shared_mutex> lock(rw_);
    --alloc_pauses_;
  }
  alloc_cv_.notify_all();
}

// ---- Allocating runs ----------------------------------------------------------------------

Status Engine::BuildPartialCluster(const AllocRun& r, std::vector<uint8_t>& buf,
                                   const BackingView& backing) {
  const Geometry& g = geo_;
  const uint64_t cs = g.cluster_size, pos = r.pos, n = r.n, cstart = r.cstart;
  buf.assign(cs, 0);
  if (!r.subclusters) {
    if (pos > cstart) KVMFS_RETURN_IF_ERROR(ReadCurrent(cstart, buf.data(), pos - cstart, backing));
    if (pos + n < cstart + cs)
      KVMFS_RETURN_IF_ERROR(ReadCurrent(pos + n, buf.data() + (pos + n - cstart),
                                        cstart + cs - (pos + n), backing));
  } else {
    // Only the touched subclusters, plus those the old (shared) cluster had
    // allocated, are allocated in the new one: only they need their bytes.
    const uint64_t sc_size = uint64_t{1} << g.subcluster_bits;
    for (uint32_t sc = 0; sc < 32; ++sc) {
      if (!(r.alloc & (1ull << sc))) continue;
      const uint64_t s = cstart + sc * sc_size, e = s + sc_size;
      if (s < pos)
        KVMFS_RETURN_IF_ERROR(ReadCurrent(s, buf.data() + (s - cstart), std::min(e, pos) - s, backing));
      if (e > pos + n) {
        const uint64_t from = std::max(s, pos + n);
        KVMFS_RETURN_IF_ERROR(ReadCurrent(from, buf.data() + (from - cstart), e - from, backing));
      }
    }
  }
  std::memcpy(buf.data() + (pos - cstart), r.p, n);
  return Status::OK();
}

Status Engine::WriteRunData(const AllocRun& r, const std::vector<uint8_t>& partial) {
  if (r.compress) {
    KVMFS_RETURN_IF_ERROR(data_->WriteAt(r.host, partial.data(), r.csize));
    // The reader takes bytes past the known file size as zeros (a
    // compressed cluster's last sector may pass the end): make it know the
    // file holds these.
    const uint64_t end = r.host + r.csize;
    uint64_t known = file_size_.load(std::memory_order_relaxed);
    while (known < end && !file_size_.compare_exchange_weak(known, end, std::memory_order_relaxed)) {
    }
    return Status::OK();
  }
  // Encrypted: the whole new clusters, COW parts included, are sealed with
  // their new host sectors (QEMU's do_perform_cow_encrypt).
  if (r.partial) return WriteData(r.cstart, r.host, partial.data(), partial.size());
  return WriteData(r.cstart, r.host, r.p, r.nclusters * geo_.cluster_size);
}

Status Engine::LinkRun(const AllocRun& r) {
  const Geometry& g = geo_;
  // Looked up again: the table may have been written back and evicted, or
  // copied, since the run was planned.
  Result<std::shared_ptr<L2Table>> table = WritableL2(r.l1_index);
  if (!table.ok()) {
    UndoRun(r);
    return table.status();
  }
  L2Table& t = **table;
  const uint64_t stride = g.extended_l2 ? 2 : 1;
  // Point the entries at the new clusters; release what they pointed to.
  MarkDirty(t);
  if (r.compress) {
    const uint64_t entry = CompressedEntry(r.host, r.csize);
    const uint64_t old = t.words[r.l2_index * stride];
    t.words[r.l2_index * stride] = entry;
    if (g.extended_l2) t.words[r.l2_index * 2 + 1] = 0;  // QEMU: no bitmap
    // A descriptor used before (its bytes freed and reused since) must not
    // read back what the cache decoded then.
    cluster_cache_.Erase(entry & kL2CompressedMask);
    return ReleaseEntry(old);
  }
  for (uint64_t i = 0; i < r.nclusters; ++i) {
    const uint64_t idx = r.l2_index + i;
    const uint64_t old = t.words[idx * stride];
    t.words[idx * stride] = (r.host + i * g.cluster_size) | kOflagCopied;
    if (g.extended_l2) t.words[idx * 2 + 1] = r.partial ? r.new_bitmap : kBitmapAllAlloc;
    KVMFS_RETURN_IF_ERROR(ReleaseEntry(old));
  }
  return Status::OK();
}

void Engine::UndoRun(const AllocRun& r) {
  // No table names the clusters: they go back (a pending decrement, so they
  // are reused only after the next flush, as any freed cluster).
  if (header_.has_data_file()) return;
  if (r.compress) {
    if (r.host != 0) (void)UpdateRefcountRange(r.host, r.csize, -1);  // placed
    return;
  }
  for (uint64_t i = 0; i < r.nclusters; ++i)
    (void)UpdateRefcount((r.host >> geo_.cluster_bits) + i, -1);
}

Status Engine::WriteCopied(L2Table& t, uint64_t l2_index, uint64_t host, bool zero_flag,
                           uint64_t pos, uint64_t cend, const uint8_t* p,
                           const BackingView& backing) {
  const Geometry& g = geo_;
  const uint64_t cs = g.cluster_size;
  const uint64_t cstart = pos & ~(cs - 1);
  const uint64_t stride = g.extended_l2 ? 2 : 1;
  const uint64_t n = cend - pos;
  uint64_t& entry = t.words[l2_index * stride];
  if (!g.extended_l2) {
    if (zero_flag) {
      // Zero-alloc: the rest of the cluster must read as zeros.
      std::vector<uint8_t> buf(cs, 0);
      std::memcpy(buf.data() + (pos - cstart), p, n);
      KVMFS_RETURN_IF_ERROR(WriteData(cstart, host, buf.data(), buf.size()));
      entry &= ~kOflagZero;
      MarkDirty(t);
    } else {
      KVMFS_RETURN_IF_ERROR(WriteData(pos, host + (pos - cstart), p, n));
    }
    return Status::OK();
  }
  // Extended L2: fill the touched subclusters that were not allocated.
  uint64_t& bitmap = t.words[l2_index * 2 + 1];
  const uint64_t sc_size = uint64_t{1} << g.subcluster_bits;
  const uint32_t a = static_cast<uint32_t>((pos - cstart) >> g.subcluster_bits);
  const uint32_t b = static_cast<uint32_t>((cend - 1 - cstart) >> g.subcluster_bits);
  const uint64_t span_start = cstart + a * sc_size;
  const uint64_t span_end = cstart + (uint64_t{b} + 1) * sc_size;
  std::vector<uint8_t> buf(span_end - span_start);
  for (uint32_t sc = a; sc <= b; ++sc) {
    const uint64_t s = cstart + sc * sc_size, e = s + sc_size;
    uint8_t* dst = buf.data() + (s - span_start);
    if (bitmap & (1ull << sc)) {
      // Allocated: keep the old bytes around the write.
      if (s < pos) KVMFS_RETURN_IF_ERROR(ReadData(s, host + (s - cstart), dst, pos - s));
      if (e > pos + n)
        KVMFS_RETURN_IF_ERROR(ReadData(pos + n, host + (pos + n - cstart), dst + (pos + n - s),
                                       e - (pos + n)));
    } else {
      if (s < pos) KVMFS_RETURN_IF_ERROR(ReadCurrent(s, dst, pos - s, backing));
      if (e > pos + n)
        KVMFS_RETURN_IF_ERROR(ReadCurrent(pos + n, dst + (pos + n - s), e - (pos + n), backing));
    }
  }
  std::memcpy(buf.data() + (pos - span_start), p, n);
  KVMFS_RETURN_IF_ERROR(
      WriteData(span_start, host + (span_start - cstart), buf.data(), buf.size()));
  const uint64_t bits = (b == 31 ? 0xffffffffull : ((1ull << (b + 1)) - 1)) & ~((1ull << a) - 1);
  const uint64_t nb = (bitmap | bits) & ~(bits << 32);
  if (nb != bitmap) {
    bitmap = nb;
    MarkDirty(t);
  }
  return Status::OK();
}

Status Engine::WriteRun(uint64_t pos, const uint8_t* p, size_t len, const BackingView& backing,
                        uint64_t* done, std::vector<AllocRun>* defer) {
  const Geometry& g = geo_;
  const uint64_t cs = g.cluster_size;
  const uint64_t mask = cs - 1;
  const bool data_file = header_.has_data_file();
  const uint64_t l1_index = pos >> g.l1_shift();
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<L2Table> t, WritableL2(l1_index));
  const uint64_t stride = g.extended_l2 ? 2 : 1;
  const uint64_t end = pos + len;
  const uint64_t l1_end = std::min(end, (l1_index + 1) << g.l1_shift());

  auto classify = [&](uint64_t l2_index, EntryKind* k) -> Status {
    const uint64_t entry = t->words[l2_index * stride];
    const uint64_t bitmap = g.extended_l2 ? t->words[l2_index * 2 + 1] : 0;
    auto where = [&] {
      return " (L2 offset: " + Hex(t->host_offset) + ", L2 index: " + Hex(l2_index) + ")";
    };
    *k = EntryKind{};
    if (entry & kOflagCompressed) {
      if (data_file)
        return Status::Corruption(name_ + ": compressed cluster in image with data file" +
                                  where());
      k->compressed = true;
      return Status::OK();
    }
    if (entry & kL2StdReservedMask)
      return Status::Corruption(name_ + ": L2 entry " + Hex(entry) + " has reserved bits set" +
                                where());
    k->host = entry & kL2OffsetMask;
    k->copied = entry & kOflagCopied;
    k->allocated = k->host != 0 || (data_file && k->copied);
    k->zero_flag = !g.extended_l2 && (entry & kOflagZero);
    if (k->zero_flag && header_.version < 3)
      return Status::Corruption(name_ + ": zero cluster in a v2 image" + where());
    if (k->allocated && (k->host & mask))
      return Status::Corruption(name_ + ": cluster allocation offset " + Hex(k->host) +
                                " unaligned" + where());
    // As Map() and QEMU: a data-file cluster lives at its own guest offset
    // (where an allocating write puts it); an in-place write anywhere else
    // would land on another guest cluster's slot.
    const uint64_t guest_cluster = ((pos >> g.l1_shift()) << g.l1_shift()) + l2_index * cs;
    if (k->allocated && data_file && k->host != guest_cluster)
      return Status::Corruption(name_ + ": external data file host cluster offset " +
                                Hex(k->host) + " does not match guest cluster offset " +
                                Hex(guest_cluster) + where());
    if (g.extended_l2 && !k->allocated && (bitmap & kBitmapAllAlloc))
      return Status::Corruption(name_ + ": unallocated cluster has subclusters allocated" +
                                where());
    // As Map() and QEMU (which refuses the write with EIO and marks the
    // image corrupt): a write would be acknowledged and then not read back.
    if (g.extended_l2 && k->allocated && ((bitmap >> 32) & bitmap))
      return Status::Corruption(name_ + ": subcluster both allocated and zero" + where());
    if (k->allocated && !data_file && OverlapsMetadata(k->host, cs))
      return Status::Corruption(name_ + ": data cluster at " + Hex(k->host) +
                                " overlaps metadata" + where());
    return Status::OK();
  };

  const uint64_t cstart = pos & ~mask;
  const uint64_t l2_index = (pos >> g.cluster_bits) & (g.l2_entries - 1);
  const uint64_t cend = std::min(l1_end, cstart + cs);
  EntryKind k;
  KVMFS_RETURN_IF_ERROR(classify(l2_index, &k));

  // ---- in place: a COPIED normal (or zero-alloc) cluster ----
  if (k.allocated && k.copied) {
    *done = cend - pos;
    return WriteCopied(*t, l2_index, k.host, k.zero_flag, pos, cend, p, backing);
  }
  // ---- compressed: a whole cluster with no host cluster here ----
  if (defer != nullptr && CompressEligible(pos, cend, k.allocated, k.compressed)) {
    AllocRun r;
    r.compress = true;
    r.pos = pos;
    r.n = cend - pos;
    r.p = p;
    r.cstart = cstart;
    r.l1_index = l1_index;
    r.l2_index = l2_index;
    *done = r.n;
    defer->push_back(r);  // compressed, placed, written and linked by WriteAllocating()
    return Status::OK();
  }
  // ---- allocating: a run of clusters that all need a new host cluster ----
  AllocRun r;
  r.pos = pos;
  r.p = p;
  r.cstart = cstart;
  r.l1_index = l1_index;
  r.l2_index = l2_index;
  r.partial = pos != cstart || cend - pos < cs;
  if (!r.partial) {
    // Extend over the following clusters that are wholly written and also
    // need allocation, so a sequential write becomes one host write.
    for (uint64_t c = cstart + cs; c + cs <= l1_end && (c + cs - cstart) <= kMaxRunBytes;
         c += cs) {
      EntryKind next;
      KVMFS_RETURN_IF_ERROR(classify(l2_index + r.nclusters, &next));
      if (next.allocated && next.copied) break;
      if (defer != nullptr && CompressEligible(c, c + cs, next.allocated, next.compressed)) break;
      ++r.nclusters;
    }
  }
  r.n = r.partial ? cend - pos : r.nclusters * cs;
  if (data_file) {
    r.host = cstart;  // external data file: guest offset == host offset
  } else {
    KVMFS_ASSIGN_OR_RETURN(r.host, AllocClusters(r.nclusters));
    if (OverlapsMetadata(r.host, r.nclusters * cs))
      return Status::Corruption(name_ + ": newly allocated cluster " + Hex(r.host) +
                                " overlaps metadata (refcounts are wrong)");
  }
  if (r.partial && g.extended_l2 && !k.compressed) {
    const uint64_t old_bitmap = t->words[l2_index * 2 + 1];
    const uint32_t a = static_cast<uint32_t>((pos - cstart) >> g.subcluster_bits);
    const uint32_t b = static_cast<uint32_t>((cend - 1 - cstart) >> g.subcluster_bits);
    const uint64_t touched =
        (b == 31 ? 0xffffffffull : ((1ull << (b + 1)) - 1)) & ~((1ull << a) - 1);
    r.subclusters = true;
    r.alloc = (k.allocated ? (old_bitmap & kBitmapAllAlloc) : 0) | touched;
    const uint64_t zero = (old_bitmap >> 32) & ~touched & ~r.alloc;
    r.new_bitmap = r.alloc | (zero << 32);
  }
  *done = r.n;
  if (defer != nullptr && !data_file) {
    defer->push_back(r);  // filled and linked by WriteAllocating()
    return Status::OK();
  }
  std::vector<uint8_t> partial;
  Status st = r.partial ? BuildPartialCluster(r, partial, backing) : Status::OK();
  if (st.ok()) st = WriteRunData(r, partial);
  if (!st.ok()) {
    UndoRun(r);
    return st;
  }
  return LinkRun(r);
}

// ---- Zeroes and discard ------------------------------------------------------------------

Status Engine::WriteZeroes(uint64_t off, uint64_t len, bool unmap, const BackingView& backing) {
  WriteDoneOnReturn write_done(write_gen_);
  std::unique_lock<std::shared_mutex> lock = LockExclusive();
  if (len > 0) {
    // After the allocations in flight on these clusters (they would link
    // their clusters over the zeroes).
    const uint64_t first = off >> geo_.cluster_bits;
    const uint64_t end = off + len < off ? UINT64_MAX : ((off + len - 1) >> geo_.cluster_bits) + 1;
    alloc_cv_.wait(lock, [&] { return !InFlightOverlaps(first, end); });
  }
  KVMFS_RETURN_IF_ERROR(CheckWritable());
  const uint64_t vs = virtual_size();
  if (off > vs || len > vs - off)
    return Status::InvalidArgument(name_ + ": zeroing " + std::to_string(len) + " bytes at " +
                                   std::to_string(off) + " past the virtual size " +
                                   std::to_string(vs));
  KVMFS_RETURN_IF_ERROR(Fatal(ZeroLocked(off, len, unmap, backing)));
  return Fatal(MaybeWriteBack());
}

Status Engine::ZeroLocked(uint64_t off, uint64_t len, bool unmap, const BackingView& backing) {
  const Geometry& g = geo_;
  const uint64_t cs = g.cluster_size;
  const uint64_t vs = virtual_size();
  const bool data_file = header_.has_data_file();
  const bool v3 = header_.version >= 3;
  static const std::vector<uint8_t> zeros(1 << 20, 0);
  auto write_zeros = [&](uint64_t at, uint64_t n) -> Status {
    while (n > 0) {
      const size_t k = static_cast<size_t>(std::min<uint64_t>(n, zeros.size()));
      KVMFS_RETURN_IF_ERROR(WriteLocked(at, zeros.data(), k, backing));
      at += k;
      n -= k;
    }
    return Status::OK();
  };
  // Whether [at, at+n) reads as zeros already with nothing to change.
  auto reads_zero = [&](uint64_t at, uint64_t n) -> Result<bool> {
    while (n > 0) {
      KVMFS_ASSIGN_OR_RETURN(Extent e, Map(l1_, at, n, MapMode::kStatus));
      if (e.type == Extent::Type::kZero) {
      } else if (e.type == Extent::Type::kUnallocated) {
        if (backing.present && at < backing.size) return false;
      } else {
        return false;
      }
      at += e.length;
      n -= e.length;
    }
    return true;
  };

  uint64_t pos = off;
  const uint64_t end = off + len;
  while (pos < end) {
    const uint64_t cstart = pos & ~(cs - 1);
    const uint64_t cend = std::min(end, cstart + cs);
    const uint64_t n = cend - pos;
    const bool full = pos == cstart && cend >= std::min(cstart + cs, vs);
    KVMFS_ASSIGN_OR_RETURN(bool already, reads_zero(pos, n));
    if (already) {
      pos = cend;
      continue;
    }
    if (!full || data_file || (!v3 && backing.present)) {
      // Real zero bytes: partial clusters, raw data files, v2 over a backing.
      KVMFS_RETURN_IF_ERROR(write_zeros(pos, n));
      pos = cend;
      continue;
    }
    const uint64_t l1_index = pos >> g.l1_shift();
    const uint64_t l2_index = (pos >> g.cluster_bits) & (g.l2_entries - 1);
    KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<L2Table> t, WritableL2(l1_index));
    const uint64_t stride = g.extended_l2 ? 2 : 1;
    const uint64_t old = t->words[l2_index * stride];
    const uint64_t old_bitmap = g.extended_l2 ? t->words[l2_index * 2 + 1] : 0;
    const uint64_t host = old & kL2OffsetMask;
    const bool compressed = old & kOflagCompressed;
    const bool keep = !unmap && !compressed && host != 0 && (old & kOflagCopied);
    uint64_t entry, bitmap = 0;
    if (!v3) {
      // v2 without a backing file: unallocated reads as zeros.
      if (keep) {
        KVMFS_RETURN_IF_ERROR(write_zeros(pos, n));
        pos = cend;
        continue;
      }
      entry = 0;
    } else if (g.extended_l2) {
      entry = keep ? old : 0;
      bitmap = (unmap && !backing.present) ? 0 : kBitmapAllZero;
      if (keep) bitmap = kBitmapAllZero;
    } else if (keep) {
      entry = (old & kL2OffsetMask) | kOflagCopied | kOflagZero;
    } else {
      entry = (unmap && !backing.present) ? 0 : kOflagZero;
    }
    if (entry != old || bitmap != old_bitmap) {
      t->words[l2_index * stride] = entry;
      if (g.extended_l2) t->words[l2_index * 2 + 1] = bitmap;
      MarkDirty(*t);
      if (!keep) KVMFS_RETURN_IF_ERROR(ReleaseEntry(old));
    }
    pos = cend;
  }
  return Status::OK();
}

// ---- Resize ----------------------------------------------------------------------------------

// Past the virtual size, QEMU's images hold no mapping (a shrink clears it),
// but a hostile image may hold anything there, and a grow would show it to
// the guest: a mapping out of the file (the read fails), or onto metadata
// (a write in place would overwrite it). So the entries are cleared first.
// They are not released: what they point to was never the guest's, and
// lowering the refcount of a cluster used elsewhere would be worse than a
// leak (`qemu-img check -r leaks` repairs one).
Status Engine::ClearPastSize(uint64_t from, uint64_t to) {
  const Geometry& g = geo_;
  const uint64_t stride = g.extended_l2 ? 2 : 1;
  const uint64_t last = std::min<uint64_t>(l1_.size(), ((to - 1) >> g.l1_shift()) + 1);
  for (uint64_t i = from >> g.l1_shift(); i < last; ++i) {
    const uint64_t l2_off = l1_[i] & kL1OffsetMask;
    const uint64_t table_start = i << g.l1_shift();
    if (l2_off == 0 || table_start >= from) {
      // A whole table past the old size (or only flags in the entry).
      if (l1_[i] != 0) {
        l1_[i] = 0;
        l1_dirty_ = true;
      }
      continue;
    }
    const uint64_t first = (from - table_start) >> g.cluster_bits;
    KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<const L2Table> seen, GetL2(l2_off, i));
    bool stale = false;
    for (uint64_t k = first * stride; k < seen->words.size() && !stale; ++k) stale = seen->words[k] != 0;
    if (!stale) continue;
    KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<L2Table> t, WritableL2(i));
    std::fill(t->words.begin() + static_cast<ptrdiff_t>(first * stride), t->words.end(), 0);
    MarkDirty(*t);
  }
  return Status::OK();
}

Status Engine::Resize(uint64_t new_size, const BackingView& backing) {
  std::unique_lock<std::shared_mutex> lock = LockExclusive();
  KVMFS_RETURN_IF_ERROR(CheckWritable());
  const uint64_t old = virtual_size();
  if (new_size % 512)
    return Status::InvalidArgument(name_ + ": the new size must be a multiple of 512 (" +
                                   std::to_string(new_size) + ")");
  if (new_size < old)
    return Status::InvalidArgument(name_ + ": shrinking a qcow2 image is not supported (" +
                                   std::to_string(old) + " -> " + std::to_string(new_size) + ")");
  if (new_size == old) return Status::OK();
  if (header_.version == 2 && !snapshots_.empty())
    return Status::NotSupported(name_ + ": Can't resize a v2 image which has snapshots");
  const uint64_t need = geo_.SizeToL1(new_size);
  if (need > kMaxL1Bytes / 8 || new_size > static_cast<uint64_t>(INT64_MAX))
    return Status::TooLarge(name_ + ": new size " + std::to_string(new_size) + " is too big");
  // Crash-safe order (as QEMU's qcow2_co_truncate): a bigger L1 table, then
  // the new part made to read as zeros, all durable, and only then the new
  // size in the header. A crash before that leaves the old size (with the
  // unused L1 entries and zero entries past it, which QEMU accepts).
  KVMFS_RETURN_IF_ERROR(Fatal(FlushLocked()));
  if (need > l1_.size()) {
    // The new L1 is written and flushed before the header points to it; the
    // header keeps the old size, which a bigger L1 maps as well.
    const uint64_t k = (need * 8 + geo_.cluster_size - 1) / geo_.cluster_size;
    KVMFS_ASSIGN_OR_RETURN(uint64_t fresh, AllocClusters(k));
    KVMFS_RETURN_IF_ERROR(Fatal(FlushLocked()));
    std::vector<uint8_t> raw(k * geo_.cluster_size, 0);
    for (size_t i = 0; i < l1_.size(); ++i) StoreBE64(raw.data() + 8 * i, l1_[i]);
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(fresh, raw.data(), raw.size()));
    KVMFS_RETURN_IF_ERROR(file_->Flush());
    const uint64_t old_off = l1_offset_;
    const uint64_t old_bytes = l1_.size() * 8;
    header_.raw.l1_table_offset = fresh;
    header_.raw.l1_size = static_cast<uint32_t>(need);
    KVMFS_RETURN_IF_ERROR(WriteHeaderLocked(true));
    l1_.resize(need, 0);
    l1_offset_ = fresh;
    if (old_bytes > 0) KVMFS_RETURN_IF_ERROR(UpdateRefcountRange(old_off, old_bytes, -1));
    RebuildMetadataIndex();
  }
  if (header_.autoclear & kAutoclearDataFileRaw) {
    // The raw data file stays a valid raw image of the disk.
    KVMFS_ASSIGN_OR_RETURN(uint64_t data_size, data_->Size());
    if (data_size < new_size) KVMFS_RETURN_IF_ERROR(data_->Truncate(new_size));
  }
  const uint64_t old_end = (old + geo_.cluster_size - 1) & ~(geo_.cluster_size - 1);
  if (new_size > old_end) KVMFS_RETURN_IF_ERROR(Fatal(ClearPastSize(old_end, new_size)));
  // The new part reads as zeros: the rest of the old last cluster and what
  // a bigger backing file would show through. Zeroed while the size is
  // still the old one (nothing past it is read meanwhile).
  uint64_t zero_end = std::min(new_size, (old + geo_.cluster_size - 1) & ~(geo_.cluster_size - 1));
  if (backing.present && backing.size > old) zero_end = std::max(zero_end, std::min(new_size, backing.size));
  if (zero_end > old) KVMFS_RETURN_IF_ERROR(Fatal(ZeroLocked(old, zero_end - old, false, backing)));
  KVMFS_RETURN_IF_ERROR(Fatal(FlushLocked()));
  header_.raw.size = new_size;
  KVMFS_RETURN_IF_ERROR(WriteHeaderLocked(true));
  header_.virtual_size = new_size;
  virtual_size_.store(new_size, std::memory_order_release);
  RebuildMetadataIndex();
  return Status::OK();
}

}  // namespace kvmfs::qcow2
