// Writes, where QEMU writes them: flat extents in place; sparse extents
// (hosted sparse, COWD) in place where a grain is allocated, else a new
// grain at the end of the file (the whole grain written first, with the
// backing's bytes or zeros around the new data), then its grain table entry
// in both directories; streamOptimized grains are appended compressed. The
// first write after BeginWrites() gives the image a
// new CID, as QEMU does on the first write after each open, so that overlays
// made against the old content stop reading through it.
#include <algorithm>
#include <cstring>
#include <random>

#include "base/mutex.h"

#include "base/endian.h"
#include "format/vmdk/vmdk.h"
#include "kvmfs/codec.h"

namespace kvmfs::vmdk {
namespace {

std::string Num(uint64_t v) { return std::to_string(v); }

// A CID of `digits` hex digits that is not `old` (the descriptor keeps its
// length, so the new one is written over the old in place).
std::string NewCid(size_t digits, uint32_t old, uint32_t* value) {
  static Mutex mu;
  static std::mt19937 rng(std::random_device{}());
  MutexLock lock(mu);
  for (;;) {
    uint32_t v = rng();
    if (digits < 8) {
      const uint32_t lo = digits == 1 ? 1 : 1u << (4 * (digits - 1));
      const uint32_t hi = (1u << (4 * digits)) - 1;
      v = lo + v % (hi - lo + 1);
    }
    if (v == old) continue;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%0*x", static_cast<int>(digits), v);
    *value = v;
    return std::string(buf);
  }
}

}  // namespace

struct Engine::GteRef {
  uint64_t gd_index = 0;
  uint32_t gt_sector = 0;  // 0: no grain table for this grain
  uint32_t gt_index = 0;
  uint32_t value = 0;
  std::shared_ptr<GrainTable> gt;
};

void Engine::SetWritable(bool opened_writable, std::string read_only_reason) {
  opened_writable_ = opened_writable;
  MutexLock lock(reason_mu_);
  read_only_reason_ = std::move(read_only_reason);
}

std::string Engine::ReadOnlyReason() const {
  MutexLock lock(reason_mu_);
  return read_only_reason_;
}

Status Engine::BeginWrites() {
  if (!opened_writable_) return Status::ReadOnly(name_ + ": opened read-only");
  if (std::string why = ReadOnlyReason(); !why.empty()) return Status::ReadOnly(name_ + ": " + why);
  std::unique_lock<std::shared_mutex> lock(rw_);
  if (!writing_.load(std::memory_order_relaxed)) cid_updated_ = false;
  writing_.store(true, std::memory_order_release);
  return Status::OK();
}

Status Engine::EndWrites() {
  Status st = Flush();
  writing_.store(false, std::memory_order_release);
  return st;
}

Status Engine::Flush() {
  if (!opened_writable_) return Status::OK();
  std::vector<Backend*> done;
  auto flush = [&](Backend* b) -> Status {
    if (!b->writable() || std::find(done.begin(), done.end(), b) != done.end()) return Status::OK();
    done.push_back(b);
    return b->Flush();
  };
  for (const auto& e : extents_) KVMFS_RETURN_IF_ERROR(flush(e->file.get()));
  return flush(file_.get());
}

Status Engine::CheckWritable(uint64_t off, uint64_t len) const {
  if (!writable()) {
    std::string why = ReadOnlyReason();
    return Status::ReadOnly(name_ + ": image is read-only" + (why.empty() ? "" : " (" + why + ")"));
  }
  if (off > size_ || len > size_ - off)
    return Status::InvalidArgument(name_ + ": write of " + Num(len) + " bytes at offset " + Num(off) +
                                   " past the end of the disk (" + Num(size_) + ")");
  return Status::OK();
}

Status Engine::UpdateCid() {
  if (cid_updated_) return Status::OK();
  uint32_t value = 0;
  const std::string digits = NewCid(ids_.cid_len, cid(), &value);
  KVMFS_RETURN_IF_ERROR(file_->WriteAt(desc_base_ + ids_.cid_pos, digits.data(), digits.size()));
  ids_.cid = value;
  cid_.store(value, std::memory_order_release);
  cid_updated_ = true;
  return Status::OK();
}

Status Engine::Write(uint64_t off, const uint8_t* buf, size_t len, const BackingRead& backing,
                     bool has_backing, uint64_t backing_size) {
  KVMFS_RETURN_IF_ERROR(CheckWritable(off, len));
  std::unique_lock<std::shared_mutex> lock(rw_);
  return WriteLocked(off, buf, len, false, backing, has_backing, backing_size);
}

Status Engine::WriteZeroes(uint64_t off, uint64_t len, bool /*unmap*/, const BackingRead& backing,
                           bool has_backing, uint64_t backing_size) {
  KVMFS_RETURN_IF_ERROR(CheckWritable(off, len));
  std::unique_lock<std::shared_mutex> lock(rw_);
  return WriteLocked(off, nullptr, len, true, backing, has_backing, backing_size);
}

Status Engine::WriteLocked(uint64_t off, const uint8_t* buf, size_t len, bool zero,
                           const BackingRead& backing, bool has_backing, uint64_t backing_size) {
  if (len == 0) return Status::OK();
  KVMFS_RETURN_IF_ERROR(UpdateCid());
  while (len > 0) {
    const size_t index = FindExtent(off);
    Extent& e = *extents_[index];
    const uint64_t rel = off - e.start;
    size_t n;
    if (e.kind == Extent::Kind::kFlat) {
      n = static_cast<size_t>(std::min<uint64_t>(len, e.bytes - rel));
      if (zero) {
        KVMFS_RETURN_IF_ERROR(e.file->WriteZeroes(e.flat_offset + rel, n, false));
      } else {
        KVMFS_RETURN_IF_ERROR(e.file->WriteAt(e.flat_offset + rel, buf, n));
      }
    } else {
      n = static_cast<size_t>(std::min<uint64_t>(len, e.grain_bytes - rel % e.grain_bytes));
      n = static_cast<size_t>(std::min<uint64_t>(n, e.bytes - rel));
      KVMFS_RETURN_IF_ERROR(
          WriteGrainPart(e, rel, buf, n, zero, backing, has_backing, backing_size, off));
    }
    off += n;
    len -= n;
    if (buf != nullptr) buf += n;
  }
  return Status::OK();
}

Result<Engine::GteRef> Engine::LookupGte(Extent& e, uint64_t rel) {
  GteRef ref;
  ref.gd_index = rel / e.gt_span;
  if (ref.gd_index >= e.gd.size())
    return Status::Corruption(name_ + ": byte " + Num(rel) + " of extent " + e.filename +
                              " is past its grain directory");
  ref.gt_sector = e.gd[ref.gd_index];
  ref.gt_index = static_cast<uint32_t>((rel / e.grain_bytes) % e.gtes_per_gt);
  if (ref.gt_sector == 0) return ref;
  KVMFS_ASSIGN_OR_RETURN(ref.gt, LoadGt(e, ref.gt_sector, ref.gd_index, false));
  ref.value = (*ref.gt)[ref.gt_index];
  return ref;
}

Status Engine::SetGte(Extent& e, const GteRef& ref, uint32_t value) {
  uint8_t le[4];
  StoreLE32(le, value);
  KVMFS_RETURN_IF_ERROR(
      e.file->WriteAt(uint64_t{ref.gt_sector} * kSector + 4ull * ref.gt_index, le, sizeof le));
  (*ref.gt)[ref.gt_index] = value;  // readers are kept out by the exclusive lock
  // The redundant table, as QEMU keeps it (only where it lies in the file).
  if (ref.gd_index < e.rgd.size() && e.rgd[ref.gd_index] != 0) {
    const uint64_t at = uint64_t{e.rgd[ref.gd_index]} * kSector + 4ull * ref.gt_index;
    if (at + 4 <= e.file_size.load(std::memory_order_relaxed)) {
      KVMFS_RETURN_IF_ERROR(e.file->WriteAt(at, le, sizeof le));
      MutexLock lock(e.gt_mu);  // drop a cached copy of it
      auto it = e.gt_index.find(e.rgd[ref.gd_index]);
      if (it != e.gt_index.end() && it->second->second != ref.gt) {
        e.gt_lru.erase(it->second);
        e.gt_index.erase(it);
      }
    }
  }
  return Status::OK();
}

// streamOptimized, as QEMU writes it: only grains not yet allocated, only
// whole ones (the last grain of the extent may end with it), each appended
// as a compressed grain marker right after the last one.
Status Engine::WriteCompressedGrain(Extent& e, const GteRef& ref, uint64_t rel, const uint8_t* buf,
                                    size_t n, bool zero, bool has_backing, uint64_t backing_size,
                                    uint64_t guest_off) {
  const uint64_t in_grain = rel % e.grain_bytes;
  if (ref.value != 0 && !(e.zero_grain && ref.value == kGteZeroed))
    return Status::FromErrno(EIO, name_ + ": guest offset " + Num(guest_off) +
                                      ": could not write to an allocated grain of a "
                                      "streamOptimized image (as QEMU)");
  // Zeros over an unallocated grain with nothing below: nothing to do.
  if (zero && ref.value == 0 && (!has_backing || guest_off >= backing_size)) return Status::OK();
  if (in_grain != 0 || (n != e.grain_bytes && rel + n != e.bytes))
    return Status::InvalidArgument(name_ + ": guest offset " + Num(guest_off) + ", " + Num(n) +
                                   " bytes: a streamOptimized image takes whole grains only "
                                   "(as QEMU)");
  if (ref.gt_sector == 0)
    return Status::NotSupported(name_ + ": guest offset " + Num(guest_off) + " of extent " +
                                e.filename + " has no grain table");
  std::vector<uint8_t> plain;
  if (zero) {
    plain.assign(n, 0);
    buf = plain.data();
  }
  // QEMU's buffer: two grains (incompressible data grows a little).
  std::vector<uint8_t> marker(12 + 2 * e.grain_bytes, 0);
  KVMFS_ASSIGN_OR_RETURN(size_t clen, CompressZlibStream(buf, n, marker.data() + 12, marker.size() - 12));
  StoreLE64(marker.data(), guest_off / kSector);
  StoreLE32(marker.data() + 8, static_cast<uint32_t>(clen));
  const uint64_t bytes = (12 + clen + kSector - 1) / kSector * kSector;  // whole sectors, zero padded
  const uint64_t sector = e.next_grain_sector;
  if (sector + bytes / kSector > kMaxGrainSector)
    return Status::NoSpace(name_ + ": extent " + e.filename + " is full (grains past sector 2^32)");
  KVMFS_RETURN_IF_ERROR(e.file->WriteAt(sector * kSector, marker.data(), bytes));
  e.next_grain_sector = sector + bytes / kSector;
  const uint64_t end = sector * kSector + bytes;
  if (end > e.file_size.load(std::memory_order_relaxed)) e.file_size.store(end, std::memory_order_relaxed);
  return SetGte(e, ref, static_cast<uint32_t>(sector));
}

Status Engine::WriteGrainPart(Extent& e, uint64_t rel, const uint8_t* buf, size_t n, bool zero,
                              const BackingRead& backing, bool has_backing, uint64_t backing_size,
                              uint64_t guest_off) {
  KVMFS_ASSIGN_OR_RETURN(GteRef ref, LookupGte(e, rel));
  if (e.compressed)
    return WriteCompressedGrain(e, ref, rel, buf, n, zero, has_backing, backing_size, guest_off);
  const uint64_t in_grain = rel % e.grain_bytes;
  const bool zeroed = e.zero_grain && ref.value == kGteZeroed;
  if (ref.value != 0 && !zeroed) {  // an allocated grain: in place
    const uint64_t host = uint64_t{ref.value} * kSector + in_grain;
    KVMFS_RETURN_IF_ERROR(CheckGrain(e, uint64_t{ref.value} * kSector, guest_off));
    // QEMU would write it; kvmfs does not overwrite the header and tables.
    if (uint64_t{ref.value} * kSector < e.data_start)
      return Status::Corruption(name_ + ": grain of guest offset " + Num(guest_off) + " in " +
                                e.filename + " lies in the metadata (sector " + Num(ref.value) +
                                ", grains start at byte " + Num(e.data_start) + "); not written");
    return zero ? e.file->WriteZeroes(host, n, false) : e.file->WriteAt(host, buf, n);
  }
  if (zero) {
    if (zeroed) return Status::OK();
    // Unallocated and nothing below shows through: it reads as zeros now.
    if (!has_backing || guest_off >= backing_size) return Status::OK();
  }
  if (ref.gt_sector == 0)
    return Status::NotSupported(name_ + ": guest offset " + Num(guest_off) + " of extent " +
                                e.filename + " has no grain table (grain directory entry " +
                                Num(ref.gd_index) + " is 0); QEMU cannot allocate one either");
  const bool whole = in_grain == 0 && n == e.grain_bytes;
  if (zero && e.zero_grain && whole) return SetGte(e, ref, kGteZeroed);
  // A new grain at the end of the file: the whole grain, then its entry.
  const uint64_t sector = e.next_grain_sector;
  if (sector + e.grain_sectors > kMaxGrainSector)
    return Status::NoSpace(name_ + ": extent " + e.filename + " is full (grains past sector 2^32)");
  std::vector<uint8_t> grain(e.grain_bytes, 0);
  const uint64_t grain_guest = guest_off - in_grain;
  if (!whole && ref.value == 0 && has_backing) {
    // Copy on write: the layer below around the new bytes, within the disk.
    const uint64_t upto = std::min<uint64_t>(e.grain_bytes, size_ - grain_guest);
    KVMFS_RETURN_IF_ERROR(backing(grain_guest, grain.data(), static_cast<size_t>(upto)));
  }
  if (zero) std::memset(grain.data() + in_grain, 0, n);
  else std::memcpy(grain.data() + in_grain, buf, n);
  KVMFS_RETURN_IF_ERROR(e.file->WriteAt(sector * kSector, grain.data(), grain.size()));
  e.next_grain_sector = sector + e.grain_sectors;
  const uint64_t end = (sector + e.grain_sectors) * kSector;
  if (end > e.file_size.load(std::memory_order_relaxed)) e.file_size.store(end, std::memory_order_relaxed);
  return SetGte(e, ref, static_cast<uint32_t>(sector));
}

}  // namespace kvmfs::vmdk
