// Guest-to-host mapping through the L1 and L2 tables (QEMU qcow2-cluster.c
// and qcow2_co_block_status), and the Engine that owns the shared state of
// one open file. Compressed clusters are read in compressed.cpp.
//
// Every table entry is validated before it is followed: reserved bits,
// alignment, and offsets past the end of the file are reported as corruption
// naming the image, the guest offset and the table index, never read as
// zeros (except inside the file's last, partial cluster).
#include <algorithm>
#include <cstring>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {

Engine::Engine(std::shared_ptr<Backend> file, std::shared_ptr<Backend> data, Header header,
               std::vector<Snapshot> snapshots, const Qcow2Options& options, std::string name,
               uint64_t file_size, uint64_t data_size)
    : file_(std::move(file)),
      data_(data ? std::move(data) : file_),
      header_(std::move(header)),
      geo_(Geometry::For(header_.cluster_bits, header_.extended_l2())),
      snapshots_(std::move(snapshots)),
      name_(std::move(name)),
      compression_(header_.compression_type == kCompressionZstd ? CompressionType::kZstd
                                                                : CompressionType::kDeflate),
      file_size_(file_size),
      data_size_(data_size),
      l2_cache_(options.budget ? options.budget : CacheBudget::Global(), geo_.cluster_size),
      cluster_cache_(options.budget ? options.budget : CacheBudget::Global(), geo_.cluster_size,
                     options.decompressed_cache_bytes / geo_.cluster_size) {
  for (Snapshot& s : snapshots_) s.serial = next_serial_++;
  virtual_size_.store(header_.virtual_size);
  l1_offset_ = header_.raw.l1_table_offset;
}

Status Engine::LoadActiveL1() {
  KVMFS_ASSIGN_OR_RETURN(l1_, LoadL1(header_.raw.l1_table_offset, header_.raw.l1_size,
                                     "Active L1 table"));
  ChargeTables();
  return Status::OK();
}

bool Engine::PastEof(Backend& b, std::atomic<uint64_t>& size, uint64_t offset, uint64_t slack) {
  uint64_t known = size.load(std::memory_order_relaxed);
  if (offset < known || offset - known < slack) return false;
  // The file may have grown since open (a shared reader, or a future writer).
  Result<uint64_t> now = b.Size();
  if (!now.ok()) return false;  // let the read itself report the host error
  size.store(*now, std::memory_order_relaxed);
  return !(offset < *now || offset - *now < slack);
}

Result<L1Table> Engine::LoadL1(uint64_t offset, uint32_t entries, const std::string& what) {
  L1Table l1(entries);
  if (entries == 0) return l1;
  const uint64_t bytes = uint64_t{entries} * 8;
  if (PastEof(*file_, file_size_, offset + bytes - 1, 0))
    return Status::Corruption(name_ + ": " + what + " at " + Hex(offset) + " (" +
                              std::to_string(entries) +
                              " entries) extends past the end of the file");
  std::vector<uint8_t> raw(bytes);
  KVMFS_RETURN_IF_ERROR(file_->ReadAt(offset, raw.data(), raw.size()));
  for (uint32_t i = 0; i < entries; ++i) l1[i] = LoadBE64(raw.data() + uint64_t{i} * 8);
  return l1;
}

Result<std::shared_ptr<const L2Table>> Engine::GetL2(uint64_t l2_offset, uint64_t l1_index,
                                                     bool cold) {
  if (auto hit = cold ? l2_cache_.Peek(l2_offset) : l2_cache_.Lookup(l2_offset)) return hit;
  if (PastEof(*file_, file_size_, l2_offset, 0))
    return Status::Corruption(name_ + ": L2 table offset " + Hex(l2_offset) +
                              " (L1 index: " + Hex(l1_index) + ") is past the end of the file");
  // I/O happens outside the cache lock; two readers may load the same table
  // and the cache keeps the first.
  std::vector<uint8_t> raw(geo_.cluster_size);
  KVMFS_RETURN_IF_ERROR(file_->ReadAt(l2_offset, raw.data(), raw.size()));
  std::shared_ptr<L2Table> table = l2_cache_.NewTable(geo_.cluster_size / 8);
  table->host_offset = l2_offset;
  for (size_t i = 0; i < table->words.size(); ++i) table->words[i] = LoadBE64(raw.data() + i * 8);
  return cold ? l2_cache_.InsertCold(std::move(table)) : l2_cache_.Insert(std::move(table));
}

namespace {

// Accumulates pieces into one run while they can be merged.
class RunBuilder {
 public:
  explicit RunBuilder(MapMode mode) : mode_(mode) {}
  bool empty() const { return !have_; }
  bool closed() const { return closed_; }
  const Extent& run() const { return run_; }

  // Adds a piece; returns false (and keeps the run) when it does not merge.
  bool Add(Extent::Type type, uint64_t length, uint64_t host = 0, uint64_t entry = 0) {
    if (closed_) return false;
    if (mode_ == MapMode::kStatus && type == Extent::Type::kCompressed) type = Extent::Type::kData;
    if (!have_) {
      run_ = Extent{type, length, host, entry};
      have_ = true;
      // A compressed cluster is read on its own.
      closed_ = type == Extent::Type::kCompressed;
      return true;
    }
    if (type != run_.type) return closed_ = true, false;
    if (mode_ == MapMode::kRead && type == Extent::Type::kData && run_.host + run_.length != host)
      return closed_ = true, false;
    run_.length += length;
    return true;
  }

 private:
  const MapMode mode_;
  Extent run_;
  bool have_ = false;
  bool closed_ = false;
};

// Bounds the work of one block-status query over many allocated L2 tables.
constexpr int kMaxTablesPerStatus = 64;

}  // namespace

Result<Extent> Engine::Map(const L1Table& l1, uint64_t off, uint64_t len, MapMode mode) {
  const Geometry& g = geo_;
  const uint64_t end = off + len;
  const uint64_t cluster_mask = g.cluster_size - 1;
  RunBuilder run(mode);
  uint64_t pos = off;
  int tables = 0;

  auto corrupt = [&](const std::string& what) {
    return Status::Corruption(name_ + ": " + what + " (guest offset " + Hex(pos) + ")");
  };

  while (pos < end && !run.closed()) {
    const uint64_t l1_index = pos >> g.l1_shift();
    // Entries past a (snapshot) L1 that is shorter than the disk are
    // unallocated: all of them at once (a snapshot may claim petabytes).
    if (l1_index >= l1.size()) {
      run.Add(Extent::Type::kUnallocated, end - pos);
      break;
    }
    const uint64_t l1_end = std::min(end, (l1_index + 1) << g.l1_shift());
    const uint64_t l1e = l1[l1_index];
    if (l1e & kL1ReservedMask)
      return corrupt("L1 entry " + Hex(l1e) + " has reserved bits set (L1 index: " + Hex(l1_index) +
                     ")");
    const uint64_t l2_offset = l1e & kL1OffsetMask;
    if (l2_offset == 0) {
      if (!run.Add(Extent::Type::kUnallocated, l1_end - pos)) break;
      pos = l1_end;
      continue;
    }
    if (l2_offset & cluster_mask)
      return corrupt("L2 table offset " + Hex(l2_offset) +
                     " unaligned (L1 index: " + Hex(l1_index) + ")");
    if (!run.empty() && mode == MapMode::kStatus && ++tables > kMaxTablesPerStatus) break;
    // A status walk (GetBlockStatus over the whole disk for du, SEEK_DATA,
    // st_blocks) must not evict the tables readers and writers use.
    KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<const L2Table> table,
                           GetL2(l2_offset, l1_index, mode == MapMode::kStatus));

    while (pos < l1_end && !run.closed()) {
      const uint64_t l2_index = (pos >> g.cluster_bits) & (g.l2_entries - 1);
      const uint64_t cluster_start = pos & ~cluster_mask;
      const uint64_t cluster_end = std::min(l1_end, cluster_start + g.cluster_size);
      const uint64_t entry = table->words[l2_index * (g.extended_l2 ? 2 : 1)];
      const uint64_t bitmap = g.extended_l2 ? table->words[l2_index * 2 + 1] : 0;
      // Built only for an error message.
      auto where = [&] {
        return "(L2 offset: " + Hex(l2_offset) + ", L2 index: " + Hex(l2_index) + ")";
      };

      if (entry & kOflagCompressed) {
        if (header_.has_data_file())
          return corrupt("Compressed cluster entry found in image with external data file " +
                         where());
        if (!run.Add(Extent::Type::kCompressed, cluster_end - pos, 0, entry & kL2CompressedMask))
          break;
        pos = cluster_end;
        continue;
      }
      if (entry & kL2StdReservedMask)
        return corrupt("L2 entry " + Hex(entry) + " has reserved bits set " + where());
      const uint64_t host = entry & kL2OffsetMask;
      // Offset 0 is a real cluster only in an external data file, where
      // every allocated entry carries COPIED.
      const bool allocated = host != 0 || (header_.has_data_file() && (entry & kOflagCopied));
      if (allocated && (host & cluster_mask))
        return corrupt("Cluster allocation offset " + Hex(host) + " unaligned " + where());
      // QEMU (and a write here) puts a data-file cluster at its own guest
      // offset; one anywhere else is refused as QEMU refuses it, and would
      // alias the slot of another guest cluster.
      if (allocated && header_.has_data_file() && host != cluster_start)
        return corrupt("External data file host cluster offset " + Hex(host) +
                       " does not match guest cluster offset: " + Hex(cluster_start) +
                       ", L2 index: " + Hex(l2_index) + ")");
      const bool zero_entry = !g.extended_l2 && (entry & kOflagZero);
      if (zero_entry && header_.version < 3)
        return corrupt("Zero cluster entry found in pre-v3 image " + where());
      if (g.extended_l2) {
        if (!allocated && (bitmap & kBitmapAllAlloc))
          return corrupt("Unallocated cluster has non-zero subcluster allocation map " + where());
        if (allocated && ((bitmap >> 32) & bitmap))
          return corrupt("Invalid cluster entry found: subcluster both allocated and zero " +
                         where());
      }
      // A data cluster starting a whole cluster or more past the end of the
      // host file is corruption; within that the file reads as zeros.
      if (allocated && !zero_entry && PastEof(*data_, data_size_, host, g.cluster_size))
        return corrupt("Data cluster offset " + Hex(host) + " is past the end of the " +
                       (data_ == file_ ? "file " : "data file ") + where());

      if (!g.extended_l2) {
        const uint64_t n = cluster_end - pos;
        bool added = zero_entry  ? run.Add(Extent::Type::kZero, n)
                     : allocated ? run.Add(Extent::Type::kData, n, host + (pos - cluster_start))
                                 : run.Add(Extent::Type::kUnallocated, n);
        if (!added) break;
        pos = cluster_end;
        continue;
      }
      // Extended L2: one piece per subcluster.
      while (pos < cluster_end) {
        const uint32_t sc = static_cast<uint32_t>((pos - cluster_start) >> g.subcluster_bits);
        const uint64_t sc_end =
            std::min(cluster_end, cluster_start + (uint64_t{sc + 1} << g.subcluster_bits));
        const uint64_t n = sc_end - pos;
        bool added;
        if (bitmap & (1ull << (32 + sc)))
          added = run.Add(Extent::Type::kZero, n);
        else if (allocated && (bitmap & (1ull << sc)))
          added = run.Add(Extent::Type::kData, n, host + (pos - cluster_start));
        else
          added = run.Add(Extent::Type::kUnallocated, n);
        if (!added) break;
        pos = sc_end;
      }
      if (pos < cluster_end) break;
    }
  }
  return run.run();
}

}  // namespace kvmfs::qcow2
