// qcow mapping and reads: L1/L2 lookup with every entry validated, the L2
// table cache, normal and compressed clusters.
#include <algorithm>
#include <cstring>

#include "base/endian.h"
#include "format/qcow/qcow.h"
#include "kvmfs/codec.h"

namespace kvmfs::qcow {

Engine::Engine(std::shared_ptr<Backend> file, Header header, std::string name, uint64_t file_size,
               std::vector<uint64_t> l1)
    : file_(std::move(file)),
      header_(std::move(header)),
      name_(std::move(name)),
      file_size_(file_size),
      l1_(std::move(l1)) {}

Engine::~Engine() {
  // The pool ends every write session with EndWrites(); this is the last
  // chance for one that did not (tests, a failed shutdown).
  if (writing_.load()) (void)Flush();
}

std::string Engine::Where(uint64_t guest_off, uint64_t l1_index, uint64_t l2_index) const {
  return name_ + ": guest offset " + std::to_string(guest_off) + " (L1 index " +
         std::to_string(l1_index) + ", L2 index " + std::to_string(l2_index) + ")";
}

bool Engine::PastEof(uint64_t off, uint64_t len) {
  if (off > UINT64_MAX - len) return true;  // no file is that long
  const uint64_t end = off + len;
  if (end <= file_size_.load(std::memory_order_relaxed)) return false;
  Result<uint64_t> now = file_->Size();
  if (!now.ok()) return true;
  file_size_.store(*now, std::memory_order_relaxed);
  return end > *now;
}

uint64_t Engine::BytesInFile(uint64_t host, uint64_t n) {
  (void)PastEof(host, n);  // refreshes the known size when needed
  const uint64_t known = file_size_.load(std::memory_order_relaxed);
  return host >= known ? 0 : std::min<uint64_t>(n, known - host);
}

Result<std::shared_ptr<L2Table>> Engine::GetL2(uint64_t offset, uint64_t l1_index) {
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = index_.find(offset);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return *it->second;
    }
  }
  // Only the first use of a table checks where it is: every table in the
  // cache was checked, or written by this engine.
  if (offset < header_.meta_end || PastEof(offset, header_.l2_bytes))
    return Status::Corruption(name_ + ": L1 entry " + std::to_string(l1_index) + " = " +
                              Hex(offset) + ": the L2 table (" +
                              std::to_string(header_.l2_bytes) + " bytes) is " +
                              (offset < header_.meta_end ? "inside the header or L1 table"
                                                         : "past the end of the file"));
  std::vector<uint8_t> raw(header_.l2_bytes);
  KVMFS_RETURN_IF_ERROR(file_->ReadAt(offset, raw.data(), raw.size()).WithContext(name_));
  auto table = std::make_shared<L2Table>();
  table->offset = offset;
  table->entries.resize(header_.l2_entries);
  for (uint64_t i = 0; i < header_.l2_entries; ++i) table->entries[i] = LoadBE64(&raw[8 * i]);

  std::lock_guard<std::mutex> lock(cache_mu_);
  auto it = index_.find(offset);
  if (it != index_.end()) return *it->second;  // another reader was first
  lru_.push_front(table);
  index_[offset] = lru_.begin();
  // Evict clean tables from the cold end; dirty ones wait for Flush().
  for (auto victim = lru_.end(); lru_.size() > kL2CacheTables && victim != lru_.begin();) {
    --victim;
    if ((*victim)->dirty || *victim == table) continue;
    index_.erase((*victim)->offset);
    victim = lru_.erase(victim);
  }
  return table;
}

Status Engine::CheckEntry(uint64_t entry, uint64_t guest_off, uint64_t l1_index,
                          uint64_t l2_index) {
  const uint64_t cs = header_.cluster_size;
  if (entry & kOflagCompressed) {
    const uint64_t coffset = entry & header_.compressed_offset_mask();
    const uint64_t csize = header_.CompressedSize(entry);
    if (csize == 0)
      return Status::Corruption(Where(guest_off, l1_index, l2_index) + ": compressed cluster " +
                                Hex(entry) + " has a size of 0 bytes");
    if (coffset < header_.meta_end || PastEof(coffset, csize))
      return Status::Corruption(Where(guest_off, l1_index, l2_index) + ": compressed cluster at " +
                                Hex(coffset) + " (" + std::to_string(csize) + " bytes) is " +
                                (coffset < header_.meta_end ? "inside the header or L1 table"
                                                            : "past the end of the file"));
    return Status::OK();
  }
  if (entry % kSectorSize != 0)
    return Status::Corruption(Where(guest_off, l1_index, l2_index) + ": cluster offset " +
                              Hex(entry) + " is not 512-byte aligned");
  // A cluster may end past the end of the file (that part reads as zeros);
  // it may not start there.
  if (entry < header_.meta_end || PastEof(entry, 1))
    return Status::Corruption(Where(guest_off, l1_index, l2_index) + ": cluster offset " +
                              Hex(entry) + " is " +
                              (entry < header_.meta_end ? "inside the header or L1 table"
                                                        : "past the end of the file") +
                              " (cluster size " + std::to_string(cs) + ")");
  return Status::OK();
}

Result<Extent> Engine::Map(uint64_t off, uint64_t len, MapMode mode) {
  const uint64_t cs = header_.cluster_size;
  const uint64_t l1_index = off >> header_.l1_shift();
  if (l1_index >= l1_.size())
    return Status::Corruption(name_ + ": guest offset " + std::to_string(off) +
                              " is past the L1 table (" + std::to_string(l1_.size()) + " entries)");
  // The run stays within this L2 table.
  const uint64_t table_span = uint64_t{1} << header_.l1_shift();
  len = std::min(len, table_span - (off & (table_span - 1)));
  Extent e;
  const uint64_t l2_offset = l1_[l1_index];
  if (l2_offset == 0) {
    e.length = len;
    return e;
  }
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<L2Table> table, GetL2(l2_offset, l1_index));
  uint64_t l2_index = (off >> header_.cluster_bits) & (header_.l2_entries - 1);
  const uint64_t in_cluster = off & (cs - 1);
  const uint64_t first = table->entries[l2_index];
  if (first != 0) KVMFS_RETURN_IF_ERROR(CheckEntry(first, off, l1_index, l2_index));
  auto kind = [](uint64_t entry) {
    if (entry == 0) return Extent::Type::kUnallocated;
    return (entry & kOflagCompressed) ? Extent::Type::kCompressed : Extent::Type::kData;
  };
  e.type = kind(first);
  if (e.type == Extent::Type::kData) e.host = first + in_cluster;
  if (e.type == Extent::Type::kCompressed) e.entry = first;
  e.length = std::min(len, cs - in_cluster);
  if (e.type == Extent::Type::kCompressed && mode == MapMode::kRead) return e;
  // Extend over the following clusters of the same kind.
  uint64_t expect_host = first + cs;
  while (e.length < len && ++l2_index < header_.l2_entries) {
    const uint64_t next = table->entries[l2_index];
    const Extent::Type k = kind(next);
    const bool same = mode == MapMode::kStatus
                          ? (k == Extent::Type::kUnallocated) == (e.type == Extent::Type::kUnallocated)
                          : k == e.type && (k == Extent::Type::kUnallocated || next == expect_host);
    if (!same) break;
    if (next != 0)
      KVMFS_RETURN_IF_ERROR(CheckEntry(next, off + e.length, l1_index, l2_index));
    e.length = std::min(len, e.length + cs);
    expect_host = next + cs;
  }
  return e;
}

void Engine::SetEncryption(std::unique_ptr<SectorCipher> cipher, Status why) {
  cipher_ = std::move(cipher);
  data_status_ = std::move(why);
}

namespace {

uint64_t SectorUp(uint64_t v) { return (v + kSectorSize - 1) / kSectorSize * kSectorSize; }

}  // namespace

Status Engine::ReadData(uint64_t guest_off, uint64_t host, uint8_t* out, size_t n) {
  if (!encrypted()) return file_->ReadAt(host, out, n).WithContext(name_);
  KVMFS_RETURN_IF_ERROR(data_status_);
  // Clusters start on sectors in both spaces: the sectors around the bytes
  // are in the same cluster.
  const uint64_t head = guest_off % kSectorSize;
  const uint64_t len = SectorUp(head + n);
  if (head == 0 && len == n) {
    KVMFS_RETURN_IF_ERROR(file_->ReadAt(host, out, n).WithContext(name_));
    return CryptRange(*cipher_, false, guest_off / kSectorSize, out, n);
  }
  std::vector<uint8_t> tmp(len);
  KVMFS_RETURN_IF_ERROR(file_->ReadAt(host - head, tmp.data(), len).WithContext(name_));
  KVMFS_RETURN_IF_ERROR(CryptRange(*cipher_, false, guest_off / kSectorSize, tmp.data(), len));
  std::memcpy(out, tmp.data() + head, n);
  return Status::OK();
}

Status Engine::WriteData(uint64_t guest_off, uint64_t host, const uint8_t* in, size_t n) {
  if (!encrypted()) return file_->WriteAt(host, in, n).WithContext(name_);
  KVMFS_RETURN_IF_ERROR(data_status_);
  if (n == 0) return Status::OK();
  const uint64_t head = guest_off % kSectorSize;
  const uint64_t len = SectorUp(head + n);
  const uint64_t g0 = guest_off - head, h0 = host - head;
  std::vector<uint8_t> tmp(len);
  // A partial head or tail sector keeps its other bytes (the exclusive lock
  // keeps other writers out).
  auto old_sector = [&](uint64_t at) { return ReadData(g0 + at, h0 + at, tmp.data() + at, kSectorSize); };
  if (head != 0) KVMFS_RETURN_IF_ERROR(old_sector(0));
  const uint64_t last = len - kSectorSize;
  if ((head + n) % kSectorSize != 0 && (last != 0 || head == 0))
    KVMFS_RETURN_IF_ERROR(old_sector(last));
  if (in != nullptr) {
    std::memcpy(tmp.data() + head, in, n);
  } else {
    std::memset(tmp.data() + head, 0, n);
  }
  KVMFS_RETURN_IF_ERROR(CryptRange(*cipher_, true, g0 / kSectorSize, tmp.data(), len));
  return file_->WriteAt(h0, tmp.data(), len).WithContext(name_);
}

Status Engine::ZeroData(uint64_t guest_off, uint64_t host, uint64_t n, bool unmap) {
  if (!encrypted()) return file_->WriteZeroes(host, n, unmap).WithContext(name_);
  // Encrypted zeros are not zeros: they are written as data, a bounded
  // piece at a time.
  constexpr uint64_t kPiece = 1u << 20;
  while (n > 0) {
    const uint64_t k = std::min(n, kPiece - guest_off % kSectorSize);
    KVMFS_RETURN_IF_ERROR(WriteData(guest_off, host, nullptr, static_cast<size_t>(k)));
    guest_off += k;
    host += k;
    n -= k;
  }
  return Status::OK();
}

Status Engine::ReadCompressed(uint64_t entry, uint64_t in_cluster, uint8_t* out, size_t n,
                              uint64_t guest_off) {
  const uint64_t cs = header_.cluster_size;
  std::shared_ptr<const std::vector<uint8_t>> data;
  {
    std::lock_guard<std::mutex> lock(cluster_mu_);
    for (auto it = clusters_.begin(); it != clusters_.end(); ++it) {
      if (it->first == entry) {
        data = it->second;
        clusters_.splice(clusters_.begin(), clusters_, it);
        break;
      }
    }
  }
  if (!data) {
    const uint64_t coffset = entry & header_.compressed_offset_mask();
    const uint64_t csize = header_.CompressedSize(entry);  // < cluster size (checked by Map)
    std::vector<uint8_t> in(csize);
    KVMFS_RETURN_IF_ERROR(file_->ReadAt(coffset, in.data(), in.size()).WithContext(name_));
    auto out_cluster = std::make_shared<std::vector<uint8_t>>(cs);
    Status st = Decompress(CompressionType::kDeflate, in.data(), in.size(), out_cluster->data(),
                           out_cluster->size());
    if (!st.ok())
      return Status::Corruption(name_ + ": compressed cluster at " + Hex(coffset) + " (" +
                                std::to_string(csize) + " bytes) for guest offset " +
                                std::to_string(guest_off) + ": " + st.message());
    data = out_cluster;
    std::lock_guard<std::mutex> lock(cluster_mu_);
    clusters_.emplace_front(entry, data);
    if (clusters_.size() > kClusterCacheEntries) clusters_.pop_back();
  }
  std::memcpy(out, data->data() + in_cluster, n);
  return Status::OK();
}

}  // namespace kvmfs::qcow
