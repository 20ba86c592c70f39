// vhdx driver entry: probing, opening, and the Image of a VHDX file, read
// as QEMU 7.2's block/vhdx.c reads it (block states 0, 1, 2, 3, 5 read as
// zeros, 6 from the file, 4 and 7 fail), written as it writes (vhdx.h), and,
// beyond QEMU, differencing disks read through their parent locator.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <mutex>
#include <shared_mutex>

#include "base/endian.h"
#include "format/vhdx/vhdx.h"
#include "kvmfs/format.h"

namespace kvmfs {
namespace vhdx {
namespace {

class VhdxImage final : public Image {
 public:
  VhdxImage(std::shared_ptr<Backend> file, std::shared_ptr<Backend> reads,
            std::unique_ptr<State> state, std::string name, bool opened_writable)
      : file_(std::move(file)), reads_(std::move(reads)), s_(std::move(state)),
        name_(std::move(name)), opened_writable_(opened_writable),
        size_(s_->virtual_size), block_size_(s_->meta.block_size),
        differencing_(s_->meta.has_parent) {}

  uint64_t size() const override { return size_; }

  // The data write GUID of the current header (a child's parent_linkage).
  std::string DataWriteGuid() const {
    std::shared_lock lock(mu_);
    return GuidText(s_->header().data_write_guid);
  }

  Status Read(uint64_t off, void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(CheckRange(off, len, "read"));
    std::shared_lock lock(mu_);
    auto* p = static_cast<uint8_t*>(buf);
    while (len > 0) {
      const size_t n = Chunk(off, len);
      const uint64_t e = Entry(off);
      switch (e & kBatStateMask) {
        case kFullyPresent:
          KVMFS_RETURN_IF_ERROR(reads_->ReadAt(HostOffset(e, off), p, n));
          break;
        case kPartiallyPresent:
          KVMFS_RETURN_IF_ERROR(ReadPartial(off, p, n));
          break;
        case kNotPresent:
          if (differencing_) {
            KVMFS_RETURN_IF_ERROR(ParentRead(off, p, n));
            break;
          }
          [[fallthrough]];
        default:
          KVMFS_RETURN_IF_ERROR(CheckState(e, off));
          std::memset(p, 0, n);
      }
      off += n;
      p += n;
      len -= n;
    }
    return Status::OK();
  }

  // Present blocks of a file nothing of kvmfs writes (opened read-only, no
  // replay overlay) become file pieces.
  Status PlanRead(uint64_t off, size_t len, ReadPlan& plan) override {
    const int fd = file_->writable() || reads_ != file_ ? -1 : file_->fd();
    if (fd < 0) return Image::PlanRead(off, len, plan);
    KVMFS_RETURN_IF_ERROR(CheckRange(off, len, "read"));
    std::shared_lock lock(mu_);
    while (len > 0) {
      const size_t n = Chunk(off, len);
      const uint64_t e = Entry(off);
      const uint64_t state = e & kBatStateMask;
      if (state == kFullyPresent) {
        const uint64_t host = HostOffset(e, off);
        const uint64_t in_file = host >= s_->file_size ? 0 : std::min<uint64_t>(n, s_->file_size - host);
        plan.AddFile(fd, host, in_file);
        if (in_file < n) KVMFS_RETURN_IF_ERROR(plan.AddMemory(n - in_file, true).status());
      } else if (state == kNotPresent && differencing_) {
        KVMFS_RETURN_IF_ERROR(CheckParent());
        KVMFS_RETURN_IF_ERROR(PlanBacking(off, n, plan));
      } else if (state == kPartiallyPresent) {
        KVMFS_ASSIGN_OR_RETURN(uint8_t* p, plan.AddMemory(n, false));
        KVMFS_RETURN_IF_ERROR(ReadPartial(off, p, n));
      } else {
        KVMFS_RETURN_IF_ERROR(CheckState(e, off));
        KVMFS_RETURN_IF_ERROR(plan.AddMemory(n, true).status());
      }
      off += n;
      len -= n;
    }
    return Status::OK();
  }

  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    if (off >= size_ || len == 0)
      return Status::InvalidArgument(name_ + ": block status at " + std::to_string(off) +
                                     " past the virtual size " + std::to_string(size_));
    len = std::min(len, size_ - off);
    std::shared_lock lock(mu_);
    const uint64_t e = Entry(off);
    const uint64_t state = e & kBatStateMask;
    const uint64_t n = Chunk(off, len);
    switch (state) {
      case kFullyPresent:
        return BlockStatus{Allocation::kData, n};
      case kPartiallyPresent: {
        KVMFS_ASSIGN_OR_RETURN(SectorRun run, BitmapRun(off, n));
        return BlockStatus{run.present ? Allocation::kData : Allocation::kUnallocated, run.length};
      }
      case kNotPresent:
        if (differencing_) return BlockStatus{Allocation::kUnallocated, n};
        [[fallthrough]];
      default:
        KVMFS_RETURN_IF_ERROR(CheckState(e, off));
        return BlockStatus{Allocation::kZero, n};
    }
  }

  ImageInfo Info() const override {
    ImageInfo info;
    info.format = "vhdx";
    info.virtual_size = size_;
    info.cluster_size = block_size_;
    if (differencing_) info.backing_filename = ParentName();
    return info;
  }

  Result<uint64_t> ActualSize() override { return file_->AllocatedBytes(); }

  // ---- Writing ----

  bool writable() const override { return writing_.load(std::memory_order_acquire); }

  std::string ReadOnlyReason() const override {
    if (opened_writable_ && differencing_)
      return "kvmfs does not write differencing VHDX images (QEMU cannot open them at all)";
    return {};
  }

  // The writer holds QEMU's write lock now: a log the open found pending is
  // replayed as QEMU replays it on a read-write open, and everything is read
  // again from the file.
  Status BeginWrites() override {
    if (!opened_writable_ || !file_->writable()) return Status::ReadOnly(name_ + ": opened read-only");
    if (differencing_) return Status::ReadOnly(name_ + ": " + ReadOnlyReason());
    std::unique_lock lock(mu_);
    if (writing_.load(std::memory_order_acquire)) return Status::OK();
    session_ = NewRandomGuid();
    std::shared_ptr<Backend> reads;
    KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<State> fresh,
                           LoadState(file_, name_, LogMode::kReplayToDisk, session_, &reads));
    if (fresh->virtual_size != size_ || fresh->meta.block_size != block_size_)
      return Status::Corruption(name_ + ": the VHDX image changed under kvmfs");
    s_ = std::move(fresh);
    reads_ = file_;
    first_visible_write_ = !s_->replayed;
    cursor_ = LogCursor{0, s_->next_log_sequence, 0};
    writing_.store(true, std::memory_order_release);
    return Status::OK();
  }

  Status EndWrites() override { return Flush(); }
  Status Flush() override { return file_->Flush(); }

  Status Write(uint64_t off, const void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(CheckWritable(off, len));
    std::unique_lock lock(mu_);
    KVMFS_RETURN_IF_ERROR(FirstVisibleWrite());
    auto* p = static_cast<const uint8_t*>(buf);
    while (len > 0) {
      const size_t n = Chunk(off, len);
      KVMFS_RETURN_IF_ERROR(WriteInBlock(off, p, n));
      off += n;
      p += n;
      len -= n;
    }
    return Status::OK();
  }

  // QEMU writes zeros as data, allocating blocks. A block that reads as
  // zeros already is left alone (nothing below a non-differencing VHDX).
  Status WriteZeroes(uint64_t off, uint64_t len, bool /*unmap*/) override {
    KVMFS_RETURN_IF_ERROR(CheckWritable(off, len));
    static const std::vector<uint8_t> zeros(1 << 20);
    while (len > 0) {
      const size_t n = std::min<uint64_t>(Chunk(off, len), zeros.size());
      bool present;
      {
        std::shared_lock lock(mu_);
        present = (Entry(off) & kBatStateMask) == kFullyPresent;
      }
      if (present) KVMFS_RETURN_IF_ERROR(Write(off, zeros.data(), n));
      off += n;
      len -= n;
    }
    return Status::OK();
  }

  Status Resize(uint64_t) override {
    if (!writable()) return Status::ReadOnly(name_ + ": image is read-only");
    return Status::NotSupported(name_ + ": VHDX images cannot be resized (QEMU's vhdx driver "
                                        "does not support resize either)");
  }

 private:
  struct SectorRun {
    bool present = false;
    uint64_t length = 0;
  };

  Status CheckRange(uint64_t off, uint64_t len, const char* what) const {
    if (off > size_ || len > size_ - off)
      return Status::InvalidArgument(name_ + ": " + what + " of " + std::to_string(len) +
                                     " bytes at " + std::to_string(off) +
                                     " past the virtual size " + std::to_string(size_));
    return Status::OK();
  }
  Status CheckWritable(uint64_t off, uint64_t len) const {
    if (!writable()) return Status::ReadOnly(name_ + ": image is read-only");
    return CheckRange(off, len, "write");
  }
  size_t Chunk(uint64_t off, uint64_t len) const {
    return static_cast<size_t>(std::min<uint64_t>(len, block_size_ - off % block_size_));
  }
  uint64_t Index(uint64_t off) const { return s_->PayloadIndex(off / block_size_); }
  uint64_t Entry(uint64_t off) const { return s_->BatEntry(Index(off)); }
  // QEMU adds the in-block offset only to a non-zero FileOffsetMB: a present
  // block "at 0" reads the file's first bytes for every position in it.
  uint64_t HostOffset(uint64_t e, uint64_t off) const {
    const uint64_t base = e & kBatOffsetMask;
    return base == 0 ? 0 : base + off % block_size_;
  }
  // States QEMU fails on (4 always, 7 without a parent).
  Status CheckState(uint64_t e, uint64_t off) const {
    const uint64_t state = e & kBatStateMask;
    if (state == kReserved4 || state == kPartiallyPresent)
      return Status::Corruption(name_ + ": BAT entry " + std::to_string(Index(off)) +
                                " (guest offset " + std::to_string(off) + ") has block state " +
                                std::to_string(state) + ", which QEMU cannot read");
    return Status::OK();
  }

  // ---- Differencing disks ----

  std::string ParentName() const {
    // relative_path first, as [MS-VHDX] resolves them; Windows separators.
    std::string path = s_->Locator("relative_path");
    if (path.empty()) path = s_->Locator("absolute_win32_path");
    if (path.empty()) path = s_->Locator("volume_path");
    if (path.rfind("\\\\?\\", 0) == 0) path = path.substr(4);
    std::replace(path.begin(), path.end(), '\\', '/');
    return path;
  }

  // The parent must still be the disk the child was made from: its current
  // data write GUID is the child's parent_linkage (or parent_linkage2).
  Status CheckParent() {
    int verdict = parent_ok_.load(std::memory_order_acquire);
    if (verdict == 1) return Status::OK();
    Image* parent = backing().get();
    auto* vhdx_parent = dynamic_cast<VhdxImage*>(parent);
    std::string why;
    if (vhdx_parent == nullptr) {
      why = parent == nullptr ? "its parent is not open" : "its parent is not a VHDX image";
    } else {
      const std::string guid = vhdx_parent->DataWriteGuid();
      auto same = [&](const std::string& v) {
        return !v.empty() && std::equal(v.begin(), v.end(), guid.begin(), guid.end(),
                                        [](char a, char b) { return std::tolower(a) == std::tolower(b); });
      };
      if (same(s_->Locator("parent_linkage")) || same(s_->Locator("parent_linkage2"))) {
        parent_ok_.store(1, std::memory_order_release);
        return Status::OK();
      }
      why = "its parent changed since it was made (parent_linkage " +
            s_->Locator("parent_linkage") + ", parent data write GUID " + guid + ")";
    }
    return Status::Corruption(name_ + ": differencing disk cannot be read: " + why);
  }

  Status ParentRead(uint64_t off, uint8_t* p, size_t n) {
    KVMFS_RETURN_IF_ERROR(CheckParent());
    return ReadBacking(off, p, n);
  }

  // The sector bitmap of `off`'s chunk: where its bit run ends within `n`.
  Result<SectorRun> BitmapRun(uint64_t off, uint64_t n) const {
    const uint64_t block = off / block_size_;
    const uint64_t sb = s_->BatEntry(s_->BitmapIndex(block));
    if ((sb & kBatStateMask) != kFullyPresent || (sb & kBatOffsetMask) == 0)
      return Status::Corruption(name_ + ": block " + std::to_string(block) +
                                " is partially present but its sector bitmap block is not");
    // Sector of `off` within its chunk (2^23 sectors per bitmap block).
    const uint64_t sector = (off / 512) % kMaxSectorsPerBlock;
    const uint64_t last = (off + n - 1) / 512 - off / 512 + sector;  // inclusive
    const uint64_t first_byte = sector / 8, bytes = last / 8 - first_byte + 1;
    std::vector<uint8_t> bits(bytes);
    KVMFS_RETURN_IF_ERROR(reads_->ReadAt((sb & kBatOffsetMask) + first_byte, bits.data(), bytes));
    auto bit = [&](uint64_t s) { return (bits[s / 8 - first_byte] >> (s % 8)) & 1; };
    const bool present = bit(sector);
    uint64_t s = sector + 1;
    while (s <= last && bit(s) == present) ++s;
    const uint64_t end = std::min(off + n, (off / 512 + (s - sector)) * 512);
    return SectorRun{present, end - off};
  }

  Status ReadPartial(uint64_t off, uint8_t* p, size_t n) {
    if (!differencing_) return CheckState(kPartiallyPresent, off);
    const uint64_t e = Entry(off);
    while (n > 0) {
      KVMFS_ASSIGN_OR_RETURN(SectorRun run, BitmapRun(off, n));
      if (run.present) KVMFS_RETURN_IF_ERROR(reads_->ReadAt(HostOffset(e, off), p, run.length));
      else KVMFS_RETURN_IF_ERROR(ParentRead(off, p, run.length));
      off += run.length;
      p += run.length;
      n -= run.length;
    }
    return Status::OK();
  }

  // ---- Writes (mu_ held exclusively) ----

  // vhdx_user_visible_write: new data write GUIDs before the first change.
  Status FirstVisibleWrite() {
    if (!first_visible_write_) return Status::OK();
    first_visible_write_ = false;
    return UpdateHeaders(*file_, *s_, session_, true, nullptr);
  }

  Status WriteInBlock(uint64_t off, const uint8_t* p, size_t n) {
    const uint64_t index = Index(off);
    const uint64_t e = s_->BatEntry(index);
    switch (e & kBatStateMask) {
      case kFullyPresent: {
        // vhdx_co_writev refuses a write address inside the header section.
        const uint64_t host = HostOffset(e, off);
        if (host < kMiB)
          return Status::Corruption(name_ + ": BAT entry " + std::to_string(index) +
                                    " places guest offset " + std::to_string(off) +
                                    " in the header section");
        return file_->WriteAt(host, p, n);
      }
      case kReserved4:
      case kPartiallyPresent:
        return CheckState(e, off);
      default:
        return AllocateAndWrite(index, off, p, n);
    }
  }

  // vhdx_allocate_block: the new block at the end of the file rounded up to
  // 1 MiB; the file grown to cover it (reading as zeros); the data; then
  // the BAT entry through the log.
  Status AllocateAndWrite(uint64_t index, uint64_t off, const uint8_t* p, size_t n) {
    KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file_->Size());
    const uint64_t block = (file_size + kMiB - 1) / kMiB * kMiB;
    if (block > kBatOffsetMask)
      return Status::NoSpace(name_ + ": no room for another block");
    KVMFS_RETURN_IF_ERROR(file_->Truncate(block + block_size_));
    KVMFS_RETURN_IF_ERROR(file_->WriteAt(block + off % block_size_, p, n));
    if (index >= s_->bat.size()) s_->bat.resize(index + 1, 0);
    const uint64_t old = s_->bat[index];
    s_->bat[index] = block | kFullyPresent;
    s_->file_size = block + block_size_;
    Status st = WriteBatEntryThroughLog(*file_, *s_, session_, cursor_, index, name_);
    if (!st.ok()) s_->bat[index] = old;  // as QEMU: the table keeps the old entry
    return st;
  }

  const std::shared_ptr<Backend> file_;
  std::shared_ptr<Backend> reads_;  // GUARDED_BY(mu_): the file, or its replay overlay
  std::unique_ptr<State> s_;        // GUARDED_BY(mu_)
  const std::string name_;
  const bool opened_writable_;
  const uint64_t size_;
  const uint32_t block_size_;
  const bool differencing_;
  mutable std::shared_mutex mu_;
  std::atomic<bool> writing_{false};
  std::atomic<int> parent_ok_{0};
  Guid session_{};                    // GUARDED_BY(mu_)
  bool first_visible_write_ = true;   // GUARDED_BY(mu_)
  LogCursor cursor_;                  // GUARDED_BY(mu_)
};

class VhdxDriver final : public FormatDriver {
 public:
  const char* name() const override { return "vhdx"; }
  FormatCaps caps() const override {
    return {.writable = true, .backing_files = true, .create = true};
  }
  Status Create(Backend& file, const CreateOptions& options) const override {
    return CreateImage(file, options);
  }
  std::vector<std::string> extensions() const override { return {"vhdx"}; }
  int Probe(const uint8_t* head, size_t len) const override {
    return len >= 8 && std::memcmp(head, "vhdxfile", 8) == 0 ? 100 : 0;
  }
  // The first 512 bytes are the file identifier only: whether a disk has a
  // parent is in its metadata region. Unknown.
  FormatPeek Peek(const uint8_t*, size_t) const override { return {}; }
  Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend> file,
                                      const OpenContext& ctx) const override {
    const bool writable = ctx.writable && file->writable();
    std::shared_ptr<Backend> reads;
    KVMFS_ASSIGN_OR_RETURN(
        std::unique_ptr<State> state,
        LoadState(file, ctx.name, writable ? LogMode::kInMemory : LogMode::kRefuse, Guid{}, &reads));
    return std::unique_ptr<Image>(std::make_unique<VhdxImage>(
        std::move(file), std::move(reads), std::move(state), ctx.name, writable));
  }
};

}  // namespace
}  // namespace vhdx

const FormatDriver& KvmfsFormat_vhdx() {
  static const vhdx::VhdxDriver driver;
  return driver;
}

}  // namespace kvmfs
