// vpc (VHD) driver entry: probing, opening, and the Image of a fixed or
// dynamic VHD, read and written as QEMU 7.2's block/vpc.c does.
//
// What QEMU does and kvmfs therefore does (formats-vhd.md §1):
// - a differencing VHD (type 4) is a standalone dynamic disk: no parent is
//   followed, unallocated blocks read as zeros;
// - sector bitmaps are never read: an allocated block is its whole data area;
// - writes set the whole bitmap of a block to 0xff the first time a request
//   touches a block other than the last one written;
// - a new block goes at free_data_block_offset: bitmap (synced), then the
//   footer moved past it (synced), then the BAT entry (synced), then the data.
//   A crash in between leaves at worst an unreferenced block before the footer.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <shared_mutex>

#include "base/endian.h"
#include "format/vpc/vpc.h"
#include "kvmfs/format.h"

namespace kvmfs {
namespace vpc {
namespace {

class VpcImage final : public Image {
 public:
  VpcImage(std::shared_ptr<Backend> file, Layout layout, std::string name, uint64_t file_size)
      : file_(std::move(file)), l_(std::move(layout)), name_(std::move(name)),
        file_size_(file_size) {}
  uint64_t FileSize() const { return file_size_.load(std::memory_order_acquire); }

  uint64_t size() const override { return l_.virtual_size; }

  Status Read(uint64_t off, void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(CheckRange(off, len, "read"));
    // QEMU reads a fixed disk without any length check: past the data area
    // come the footer's bytes, then zeros (the backend reads zeros past EOF).
    if (l_.fixed_io) return file_->ReadAt(off, buf, len);
    auto* p = static_cast<uint8_t*>(buf);
    while (len > 0) {
      const size_t n = ChunkInBlock(off, len);
      const uint64_t host = HostOffset(off);
      if (host == 0) std::memset(p, 0, n);
      else KVMFS_RETURN_IF_ERROR(file_->ReadAt(host, p, n));
      off += n;
      p += n;
      len -= n;
    }
    return Status::OK();
  }

  // Data of a file opened read-only becomes file pieces (nothing of kvmfs
  // writes it while this image lives); zeros and bytes past EOF are memory.
  Status PlanRead(uint64_t off, size_t len, ReadPlan& plan) override {
    const int fd = file_->writable() ? -1 : file_->fd();
    if (fd < 0) return Image::PlanRead(off, len, plan);
    KVMFS_RETURN_IF_ERROR(CheckRange(off, len, "read"));
    while (len > 0) {
      const size_t n = l_.fixed_io ? len : ChunkInBlock(off, len);
      const uint64_t host = l_.fixed_io ? off : HostOffset(off);
      if (!l_.fixed_io && host == 0) {
        KVMFS_RETURN_IF_ERROR(plan.AddMemory(n, true).status());
      } else {
        const uint64_t fsize = FileSize();
        const uint64_t in_file = host >= fsize ? 0 : std::min<uint64_t>(n, fsize - host);
        plan.AddFile(fd, host, in_file);
        if (in_file < n) KVMFS_RETURN_IF_ERROR(plan.AddMemory(n - in_file, true).status());
      }
      off += n;
      len -= n;
    }
    return Status::OK();
  }

  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    if (off >= size() || len == 0)
      return Status::InvalidArgument(name_ + ": block status at " + std::to_string(off) +
                                     " past the virtual size " + std::to_string(size()));
    len = std::min(len, size() - off);
    // A fixed disk is all data, as qemu-img map shows it (BDRV_BLOCK_RAW:
    // QEMU marks host holes zero but still data).
    if (l_.fixed_io) return BlockStatus{Allocation::kData, len};
    std::shared_lock lock(mu_);
    const bool allocated = HostOffsetLocked(off) != 0;
    // Allocated runs never span two blocks (the bitmap lies between them);
    // unallocated ones run on, as QEMU's vpc_co_block_status.
    uint64_t run = 0;
    do {
      const uint64_t n = std::min<uint64_t>(l_.block_size - (off + run) % l_.block_size, len - run);
      run += n;
      if (allocated) break;
    } while (run < len && HostOffsetLocked(off + run) == 0);
    // No layer below a VHD is ever consulted: unallocated reads as zeros.
    return BlockStatus{allocated ? Allocation::kData : Allocation::kZero, run};
  }

  ImageInfo Info() const override {
    ImageInfo info;
    info.format = "vpc";
    info.virtual_size = size();
    // vpc_get_info: the block size, except for a fixed disk's type field.
    if (!l_.fixed_io && l_.dynamic) info.cluster_size = l_.block_size;
    return info;
  }

  Result<uint64_t> ActualSize() override { return file_->AllocatedBytes(); }

  // ---- Writing ----

  bool writable() const override { return writing_.load(std::memory_order_acquire); }

  Status BeginWrites() override {
    if (!file_->writable()) return Status::ReadOnly(name_ + ": opened read-only");
    writing_.store(true, std::memory_order_release);
    return Status::OK();
  }

  Status EndWrites() override { return Flush(); }

  Status Flush() override { return file_->Flush(); }

  Status Write(uint64_t off, const void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(CheckWritable(off, len));
    if (l_.fixed_io) return file_->WriteAt(off, buf, len);
    auto* p = static_cast<const uint8_t*>(buf);
    std::unique_lock lock(mu_);
    while (len > 0) {
      const size_t n = ChunkInBlock(off, len);
      uint64_t host = HostOffsetLocked(off);
      if (host != 0) {
        KVMFS_RETURN_IF_ERROR(TouchBitmap(off));
      } else {
        KVMFS_ASSIGN_OR_RETURN(host, AllocateBlock(off));
      }
      KVMFS_RETURN_IF_ERROR(file_->WriteAt(host, p, n));
      GrowFileSize(host + n);
      off += n;
      p += n;
      len -= n;
    }
    return Status::OK();
  }

  // QEMU has no zero write for vpc and writes zero buffers. An unallocated
  // block already reads as zeros (nothing lies below a VHD), so only
  // allocated blocks are written.
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    KVMFS_RETURN_IF_ERROR(CheckWritable(off, len));
    if (l_.fixed_io) return file_->WriteZeroes(off, len, unmap && off + len <= DataEnd());
    static const std::vector<uint8_t> zeros(1 << 20);
    while (len > 0) {
      const size_t n = std::min<uint64_t>(ChunkInBlock(off, len), zeros.size());
      bool allocated;
      {
        std::shared_lock lock(mu_);
        allocated = HostOffsetLocked(off) != 0;
      }
      if (allocated) KVMFS_RETURN_IF_ERROR(Write(off, zeros.data(), n));
      off += n;
      len -= n;
    }
    return Status::OK();
  }

  Status Resize(uint64_t) override {
    if (!writable()) return Status::ReadOnly(name_ + ": image is read-only");
    return Status::NotSupported(name_ + ": VHD images cannot be resized (QEMU's vpc driver "
                                        "does not support resize either)");
  }

 private:
  Status CheckRange(uint64_t off, uint64_t len, const char* what) const {
    if (off > size() || len > size() - off)
      return Status::InvalidArgument(name_ + ": " + what + " of " + std::to_string(len) +
                                     " bytes at " + std::to_string(off) +
                                     " past the virtual size " + std::to_string(size()));
    return Status::OK();
  }
  Status CheckWritable(uint64_t off, uint64_t len) const {
    if (!writable()) return Status::ReadOnly(name_ + ": image is read-only");
    return CheckRange(off, len, "write");
  }
  uint64_t DataEnd() const {
    const uint64_t fsize = FileSize();
    return fsize > kFooterSize ? fsize - kFooterSize : 0;
  }
  void GrowFileSize(uint64_t end) {
    if (end > FileSize()) file_size_.store(end, std::memory_order_release);
  }

  size_t ChunkInBlock(uint64_t off, size_t len) const {
    return static_cast<size_t>(std::min<uint64_t>(len, l_.block_size - off % l_.block_size));
  }
  uint64_t HostOffset(uint64_t off) const {
    std::shared_lock lock(mu_);
    return HostOffsetLocked(off);
  }
  // The file offset of guest byte `off` in a dynamic image, 0 when its block
  // is not allocated (no block can start at 0: the footer copy lives there).
  uint64_t HostOffsetLocked(uint64_t off) const {
    const uint64_t index = off / l_.block_size;
    if (index >= l_.bat.size() || l_.bat[index] == kUnallocated) return 0;
    return kSector * l_.bat[index] + l_.bitmap_size + off % l_.block_size;
  }

  // QEMU's get_image_offset(write = true): a block written for the first
  // time since another was gets its bitmap set to all ones, synced.
  Status TouchBitmap(uint64_t off) {
    const uint64_t bitmap_off = kSector * l_.bat[off / l_.block_size];
    if (bitmap_off == last_bitmap_offset_) return Status::OK();
    last_bitmap_offset_ = bitmap_off;
    if (l_.bitmap_size == 0) return Status::OK();
    const std::vector<uint8_t> ones(l_.bitmap_size, 0xff);
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(bitmap_off, ones.data(), ones.size()));
    return file_->Flush();
  }

  // QEMU's alloc_block: returns the host offset of guest byte `off` in the
  // new block. Order: bitmap, footer, BAT entry, each synced.
  Result<uint64_t> AllocateBlock(uint64_t off) {
    const uint64_t index = off / l_.block_size;
    if (index >= l_.bat.size())
      return Status::Corruption(name_ + ": write at " + std::to_string(off) +
                                " past the block allocation table");
    const uint64_t block = l_.free_data_block_offset;
    if (block / kSector >= kUnallocated)
      return Status::NoSpace(name_ + ": no room for another block (the BAT addresses 2 TiB)");
    const uint64_t next = block + l_.bitmap_size + l_.block_size;
    const std::vector<uint8_t> ones(l_.bitmap_size, 0xff);
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(block, ones.data(), ones.size()));
    // QEMU leaves whatever lies past the old end inside the new data area
    // (the old footer for blocks under 4 KiB, trailing junk): zero it, so
    // the unwritten part of the block reads as zeros as it did before.
    const uint64_t data = block + l_.bitmap_size;
    if (const uint64_t fsize = FileSize(); fsize > data)
      KVMFS_RETURN_IF_ERROR(file_->WriteZeroes(data, std::min(fsize, next) - data, false));
    KVMFS_RETURN_IF_ERROR(file_->Flush());
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(next, l_.footer.raw, kFooterSize));
    KVMFS_RETURN_IF_ERROR(file_->Flush());
    GrowFileSize(next + kFooterSize);
    uint8_t entry[4];
    StoreBE32(entry, static_cast<uint32_t>(block / kSector));
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(l_.bat_offset + 4 * index, entry, sizeof entry));
    KVMFS_RETURN_IF_ERROR(file_->Flush());
    l_.bat[index] = static_cast<uint32_t>(block / kSector);
    l_.free_data_block_offset = next;
    last_bitmap_offset_ = block;
    return data + off % l_.block_size;
  }

  const std::shared_ptr<Backend> file_;
  Layout l_;  // bat and free_data_block_offset GUARDED_BY(mu_)
  const std::string name_;
  std::atomic<uint64_t> file_size_;  // grows with allocations (changed under mu_ exclusive)
  uint64_t last_bitmap_offset_ = UINT64_MAX;  // GUARDED_BY(mu_)
  mutable std::shared_mutex mu_;
  std::atomic<bool> writing_{false};
};

class VpcDriver final : public FormatDriver {
 public:
  const char* name() const override { return "vpc"; }
  // QEMU follows no VHD parent (a differencing VHD reads as a standalone
  // dynamic disk), so neither does kvmfs: no backing files.
  FormatCaps caps() const override { return {.writable = true, .create = true}; }
  std::vector<std::string> extensions() const override { return {"vhd"}; }
  Status Create(Backend& file, const CreateOptions& options) const override {
    return CreateImage(file, options);
  }
  // vpc_probe: "conectix" at offset 0 (dynamic disks). A fixed VHD has its
  // footer only at the end and probes as raw, as in QEMU.
  int Probe(const uint8_t* head, size_t len) const override {
    return len >= 8 && std::memcmp(head, "conectix", 8) == 0 ? 100 : 0;
  }
  // No VHD has snapshots or (in QEMU, hence kvmfs) a backing file.
  FormatPeek Peek(const uint8_t*, size_t) const override { return {.known = true}; }
  Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend> file,
                                      const OpenContext& ctx) const override {
    KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
    KVMFS_ASSIGN_OR_RETURN(Layout layout, ReadLayout(*file, file_size, ctx.name));
    return std::unique_ptr<Image>(
        std::make_unique<VpcImage>(std::move(file), std::move(layout), ctx.name, file_size));
  }
};

}  // namespace
}  // namespace vpc

const FormatDriver& KvmfsFormat_vpc() {
  static const vpc::VpcDriver driver;
  return driver;
}

}  // namespace kvmfs
