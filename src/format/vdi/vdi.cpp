// VDI driver: mapping through the block map, reads, writes as QEMU's vdi
// driver makes them, the Image and the driver entry.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <shared_mutex>

#include "base/endian.h"
#include "format/vdi/vdi.h"
#include "kvmfs/format.h"
#include "kvmfs/image.h"

namespace kvmfs {
namespace vdi {
namespace {

// A run of guest bytes: in data block host offset `host` (allocated), or
// reading as zeros.
struct Run {
  bool allocated = false;
  uint64_t host = 0;
  uint64_t length = 0;
};

class VdiImage final : public Image {
 public:
  VdiImage(std::shared_ptr<Backend> file, Header h, std::vector<uint32_t> bmap, std::string name,
           uint64_t file_size, std::string read_only_reason)
      : file_(std::move(file)),
        h_(std::move(h)),
        bmap_(std::move(bmap)),
        name_(std::move(name)),
        file_size_(file_size),
        read_only_reason_(std::move(read_only_reason)) {}

  ~VdiImage() override {
    if (writing_.load()) (void)file_->Flush();
  }

  uint64_t size() const override { return h_.virtual_size; }

  Status Read(uint64_t off, void* buf, size_t len) override {
    std::shared_lock<std::shared_mutex> lock(rw_);
    KVMFS_RETURN_IF_ERROR(CheckRange(off, len, "read"));
    auto* p = static_cast<uint8_t*>(buf);
    while (len > 0) {
      KVMFS_ASSIGN_OR_RETURN(Run r, Map(off, len, true));
      if (r.allocated) KVMFS_RETURN_IF_ERROR(file_->ReadAt(r.host, p, r.length).WithContext(name_));
      else std::memset(p, 0, r.length);
      off += r.length;
      p += r.length;
      len -= r.length;
    }
    return Status::OK();
  }

  // Blocks of a file nothing of kvmfs writes are handed out as file pieces.
  Status PlanRead(uint64_t off, size_t len, ReadPlan& plan) override {
    const int fd = file_->writable() ? -1 : file_->fd();
    std::shared_lock<std::shared_mutex> lock(rw_);
    KVMFS_RETURN_IF_ERROR(CheckRange(off, len, "read"));
    while (len > 0) {
      KVMFS_ASSIGN_OR_RETURN(Run r, Map(off, len, true));
      if (!r.allocated) {
        KVMFS_RETURN_IF_ERROR(plan.AddMemory(r.length, true).status());
      } else if (fd >= 0) {
        // A block may end past the end of the file: zeros there.
        const uint64_t known = file_size_.load(std::memory_order_relaxed);
        const uint64_t in_file = std::min<uint64_t>(r.length, known - r.host);  // host < known (Map)
        plan.AddFile(fd, r.host, in_file);
        if (in_file < r.length) KVMFS_RETURN_IF_ERROR(plan.AddMemory(r.length - in_file, true).status());
      } else {
        KVMFS_ASSIGN_OR_RETURN(uint8_t* p, plan.AddMemory(r.length, false));
        KVMFS_RETURN_IF_ERROR(file_->ReadAt(r.host, p, r.length).WithContext(name_));
      }
      off += r.length;
      len -= r.length;
    }
    return Status::OK();
  }

  // Unallocated and discarded blocks read as zeros in this layer, which has
  // no backing (qemu-img map: "present": true, "zero": true).
  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    std::shared_lock<std::shared_mutex> lock(rw_);
    if (off >= size())
      return Status::InvalidArgument(name_ + ": block status at " + std::to_string(off) +
                                     " past the virtual size " + std::to_string(size()));
    len = std::min(len, size() - off);
    if (len == 0) return Status::InvalidArgument(name_ + ": block status of 0 bytes");
    KVMFS_ASSIGN_OR_RETURN(Run r, Map(off, len, false));
    return BlockStatus{r.allocated ? Allocation::kData : Allocation::kZero, r.length};
  }

  // ---- Writing ----

  bool writable() const override { return writing_.load(std::memory_order_acquire); }
  std::string ReadOnlyReason() const override { return read_only_reason_; }

  Status BeginWrites() override {
    if (!file_->writable()) return Status::ReadOnly(name_ + ": opened read-only");
    if (!read_only_reason_.empty()) return Status::ReadOnly(name_ + ": " + read_only_reason_);
    writing_.store(true, std::memory_order_release);
    return Status::OK();
  }

  // Metadata is written as blocks are allocated: flushing is all there is.
  Status EndWrites() override { return Flush(); }
  Status Flush() override {
    if (!writing_.load()) return Status::OK();
    return file_->Flush().WithContext(name_);
  }

  Status Write(uint64_t off, const void* buf, size_t len) override {
    const auto* p = static_cast<const uint8_t*>(buf);
    {
      // In-place writes of allocated blocks share the lock with readers.
      std::shared_lock<std::shared_mutex> lock(rw_);
      KVMFS_RETURN_IF_ERROR(CheckWrite(off, len));
      KVMFS_ASSIGN_OR_RETURN(Run r, Map(off, len, true));
      if (r.allocated && r.length == len)
        return file_->WriteAt(r.host, p, len).WithContext(name_);
    }
    std::unique_lock<std::shared_mutex> lock(rw_);
    KVMFS_RETURN_IF_ERROR(CheckWrite(off, len));
    return WriteLocked(off, p, len);
  }

  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    std::unique_lock<std::shared_mutex> lock(rw_);
    KVMFS_RETURN_IF_ERROR(CheckWrite(off, len));
    // Unallocated blocks already read as zeros; allocated ones are zeroed in
    // place (the host may release them: a static image keeps its blocks).
    while (len > 0) {
      KVMFS_ASSIGN_OR_RETURN(Run r, Map(off, len, true));
      if (r.allocated) KVMFS_RETURN_IF_ERROR(file_->WriteZeroes(r.host, r.length, unmap).WithContext(name_));
      off += r.length;
      len -= r.length;
    }
    return Status::OK();
  }
  // QEMU's vdi driver cannot resize ("Image format driver does not support
  // resize").
  Status Resize(uint64_t) override {
    if (!writable()) return Status::ReadOnly(name_ + ": image is read-only");
    return Status::NotSupported(name_ + ": VDI images cannot be resized (QEMU's vdi driver does "
                                        "not support resize either)");
  }

  ImageInfo Info() const override {
    ImageInfo info;
    info.format = "vdi";
    info.virtual_size = h_.virtual_size;
    info.cluster_size = h_.raw.block_size;
    return info;
  }

  Result<uint64_t> ActualSize() override { return file_->AllocatedBytes(); }

  // The block map as this image holds it (what it reads and writes by),
  // under the readers' lock: writes in place go on, allocation waits.
  Result<CheckResult> Check(const CheckOptions& options) override {
    std::shared_lock<std::shared_mutex> lock(rw_);
    return CheckBlockMap(bmap_, h_, options);
  }

 private:
  Status CheckRange(uint64_t off, uint64_t len, const char* what) const {
    if (off > size() || len > size() - off)
      return Status::InvalidArgument(name_ + ": " + what + " of " + std::to_string(len) +
                                     " bytes at " + std::to_string(off) +
                                     " past the virtual size " + std::to_string(size()));
    return Status::OK();
  }
  Status CheckWrite(uint64_t off, uint64_t len) const {
    if (!writing_.load()) return Status::ReadOnly(name_ + ": image is read-only");
    return CheckRange(off, len, "write");
  }

  // The run starting at guest `off`, at most `len` bytes; `contiguous`: an
  // allocated run also continues on the host. Validates every entry it
  // uses. Requires rw_ held.
  Result<Run> Map(uint64_t off, uint64_t len, bool contiguous) {
    uint64_t block = off / kBlockSize;
    const uint64_t in_block = off % kBlockSize;
    Run r;
    KVMFS_ASSIGN_OR_RETURN(uint64_t host, BlockHost(block));
    r.allocated = host != UINT64_MAX;
    r.host = r.allocated ? host + in_block : 0;
    r.length = std::min<uint64_t>(len, kBlockSize - in_block);
    while (r.length < len) {
      KVMFS_ASSIGN_OR_RETURN(uint64_t next, BlockHost(++block));
      if ((next != UINT64_MAX) != r.allocated) break;
      if (r.allocated && contiguous && next != host + kBlockSize) break;
      host = next;
      r.length = std::min<uint64_t>(len, r.length + kBlockSize);
    }
    return r;
  }

  // Host offset of guest block `block`, UINT64_MAX when it reads as zeros.
  Result<uint64_t> BlockHost(uint64_t block) {
    if (block >= bmap_.size())
      return Status::Corruption(name_ + ": guest block " + std::to_string(block) +
                                " is past the block map (" + std::to_string(bmap_.size()) + " entries)");
    const uint32_t e = bmap_[block];
    if (!IsAllocated(e)) return UINT64_MAX;
    if (e >= h_.blocks)
      return Status::Corruption(name_ + ": block map entry " + std::to_string(block) + " = " +
                                std::to_string(e) + " is not below blocks_in_image " +
                                std::to_string(h_.blocks));
    const uint64_t host = h_.offset_data + uint64_t{e} * kBlockSize;
    // A block may end past the end of the file (that part reads as zeros);
    // it may not start there.
    if (host >= file_size_.load(std::memory_order_relaxed)) {
      KVMFS_ASSIGN_OR_RETURN(uint64_t now, file_->Size());
      file_size_.store(now, std::memory_order_relaxed);
      if (host >= now)
        return Status::Corruption(name_ + ": block map entry " + std::to_string(block) + " = " +
                                  std::to_string(e) + ": data block at " + std::to_string(host) +
                                  " is past the end of the file (" + std::to_string(now) + " bytes)");
    }
    return host;
  }

  // Writes [off, off+len), allocating blocks at the end of the data area;
  // then the header's blocks_allocated and the changed block-map sectors.
  // Requires rw_ held exclusively.
  Status WriteLocked(uint64_t off, const uint8_t* p, uint64_t len) {
    uint64_t first_changed = UINT64_MAX, last_changed = 0;
    Status st;
    std::vector<uint8_t> block;
    while (len > 0) {
      Result<Run> r = Map(off, len, true);
      if (!r.ok()) {
        st = r.status();
        break;
      }
      uint64_t n = r->length;
      if (r->allocated) {
        st = file_->WriteAt(r->host, p, n).WithContext(name_);
      } else {
        const uint64_t b = off / kBlockSize;
        const uint64_t in_block = off % kBlockSize;
        n = std::min<uint64_t>(n, kBlockSize - in_block);
        st = AllocateBlock(b, in_block, p, n, block);
        if (st.ok()) {
          first_changed = std::min(first_changed, b);
          last_changed = std::max(last_changed, b);
        }
      }
      if (!st.ok()) break;
      off += n;
      p += n;
      len -= n;
    }
    if (first_changed != UINT64_MAX) {
      Status meta = WriteMetadata(first_changed, last_changed);
      if (st.ok()) st = meta;
    }
    return st;
  }

  // Guest block `b` becomes data block blocks_allocated, written whole.
  Status AllocateBlock(uint64_t b, uint64_t in_block, const uint8_t* p, uint64_t n,
                       std::vector<uint8_t>& block) {
    const uint32_t index = h_.allocated;
    if (index >= h_.blocks)
      return Status::Corruption(name_ + ": no free data block (blocks_allocated " +
                                std::to_string(index) + " of " + std::to_string(h_.blocks) + ")");
    block.assign(kBlockSize, 0);
    std::memcpy(block.data() + in_block, p, n);
    const uint64_t host = h_.offset_data + uint64_t{index} * kBlockSize;
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(host, block.data(), block.size()).WithContext(name_));
    file_size_.store(std::max(file_size_.load(), host + kBlockSize));
    bmap_[b] = index;
    h_.allocated = index + 1;
    return Status::OK();
  }

  // As QEMU: the header first (a crash then leaks a block, never hands one
  // out twice), then the block-map sectors holding entries first..last.
  Status WriteMetadata(uint64_t first, uint64_t last) {
    uint8_t count[4];
    StoreLE32(count, h_.allocated);
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(kOffBlocksAllocated, count, sizeof count).WithContext(name_));
    constexpr uint64_t kPerSector = kSectorSize / 4;
    const uint64_t from = first / kPerSector * kPerSector;
    const uint64_t to = std::min<uint64_t>(bmap_.size(), (last / kPerSector + 1) * kPerSector);
    std::vector<uint8_t> raw(4 * (to - from));
    for (uint64_t i = from; i < to; ++i) StoreLE32(&raw[4 * (i - from)], bmap_[i]);
    return file_->WriteAt(h_.offset_bmap + 4 * from, raw.data(), raw.size()).WithContext(name_);
  }

  const std::shared_ptr<Backend> file_;
  Header h_;                    // allocated: rw_
  std::vector<uint32_t> bmap_;  // rw_
  const std::string name_;
  std::atomic<uint64_t> file_size_;
  const std::string read_only_reason_;
  mutable std::shared_mutex rw_;
  std::atomic<bool> writing_{false};
};

class VdiDriver final : public FormatDriver {
 public:
  const char* name() const override { return "vdi"; }
  FormatCaps caps() const override { return {.writable = true, .create = true, .check = true}; }
  std::vector<std::string> extensions() const override { return {"vdi"}; }
  Status Create(Backend& file, const CreateOptions& options) const override {
    return CreateImage(file, options);
  }
  int Probe(const uint8_t* h, size_t len) const override {
    if (len < 68 || LoadLE32(h + 64) != kSignature) return 0;
    // As QEMU's vdi_probe once the whole header is there; a shorter file is
    // still claimed, so that the driver says what is wrong with it.
    return len >= kHeaderSize ? 100 : 51;
  }
  // No backing files, no snapshots: known without reading.
  FormatPeek Peek(const uint8_t*, size_t) const override { return {.known = true}; }
  Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend> file,
                                      const OpenContext& ctx) const override {
    const std::string& name = ctx.name;
    KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
    KVMFS_ASSIGN_OR_RETURN(Header h, ReadHeader(*file, file_size, name));
    KVMFS_ASSIGN_OR_RETURN(std::vector<uint32_t> bmap, ReadBlockMap(*file, h, name));
    // Reads check each entry as they use it; writing needs the whole map to
    // be consistent (a bad entry would be written through or handed out
    // twice).
    std::string reason;
    if (ctx.writable) {
      reason = ScanBlockMap(bmap, h);
      if (!reason.empty()) {
        reason = "VDI block map is inconsistent (" + reason +
                 "): served read-only; see qemu-img check";
      } else if (h.offset_data > file_size ||
                 (h.allocated > 0 &&
                  h.offset_data + uint64_t{h.allocated - 1} * kBlockSize >= file_size)) {
        // New blocks go after the last one: that far past everything the
        // file holds.
        reason = "VDI data area (" + std::to_string(h.allocated) + " blocks at " +
                 std::to_string(h.offset_data) + ") passes the end of the file (" +
                 std::to_string(file_size) + " bytes): served read-only";
      }
    }
    return std::unique_ptr<Image>(std::make_unique<VdiImage>(
        std::move(file), std::move(h), std::move(bmap), name, file_size, std::move(reason)));
  }
};

}  // namespace
}  // namespace vdi

const FormatDriver& KvmfsFormat_vdi() {
  static const vdi::VdiDriver driver;
  return driver;
}

}  // namespace kvmfs
