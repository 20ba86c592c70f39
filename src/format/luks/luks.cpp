// luks: a raw LUKS container as QEMU's "luks" block driver serves it
// (block/crypto.c): the guest disk is the payload past the header and key
// material, encrypted per 512-byte sector with the guest sector number as IV.
//
// Every byte of guest data goes through ReadData()/WriteData(), which
// decrypt/encrypt the sectors of a request in parallel (CryptRange). Data
// is always read into memory: decrypted bytes are never file pieces
// (PlanRead's default), so nothing is spliced from a host file.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "base/endian.h"
#include "kvmfs/cipher.h"
#include "kvmfs/format.h"

namespace kvmfs {
namespace {

constexpr uint64_t kSector = kCryptSectorSize;

uint64_t AlignDown(uint64_t v) { return v / kSector * kSector; }
uint64_t AlignUp(uint64_t v) { return (v + kSector - 1) / kSector * kSector; }

class LuksImage final : public Image {
 public:
  LuksImage(std::shared_ptr<Backend> file, LuksHeader header, uint64_t size,
            std::unique_ptr<SectorCipher> cipher, Status data_status)
      : file_(std::move(file)),
        header_(std::move(header)),
        payload_(header_.payload_bytes()),
        size_(size),
        cipher_(std::move(cipher)),
        data_status_(std::move(data_status)) {}

  uint64_t size() const override { return size_.load(std::memory_order_acquire); }

  Status DataStatus() const override { return data_status_; }

  Status Read(uint64_t off, void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(data_status_);
    KVMFS_RETURN_IF_ERROR(CheckRange("read", off, len));
    if (len == 0) return Status::OK();
    auto* out = static_cast<uint8_t*>(buf);
    if (off % kSector == 0 && len % kSector == 0) return ReadData(off, out, len);
    // Whole sectors around the range, decrypted, then the asked-for part.
    const uint64_t start = AlignDown(off), end = AlignUp(off + len);
    std::vector<uint8_t> tmp(end - start);
    KVMFS_RETURN_IF_ERROR(ReadData(start, tmp.data(), tmp.size()));
    std::memcpy(out, tmp.data() + (off - start), len);
    return Status::OK();
  }

  bool writable() const override { return writing_.load(std::memory_order_acquire); }

  Status BeginWrites() override {
    KVMFS_RETURN_IF_ERROR(data_status_);
    if (!file_->writable()) return Status::ReadOnly(file_->name() + ": opened read-only");
    writing_.store(true, std::memory_order_release);
    return Status::OK();
  }

  Status EndWrites() override { return Flush(); }

  Status Write(uint64_t off, const void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(CheckWrite(off, len));
    if (len == 0) return Status::OK();
    const auto* in = static_cast<const uint8_t*>(buf);
    const uint64_t start = AlignDown(off), end = AlignUp(off + len);
    std::vector<uint8_t> tmp(end - start);
    if (start == off && end == off + len) {
      // Whole sectors: no other write's bytes are touched, so these run
      // concurrently (readers of a sector being written see old or new).
      std::shared_lock lock(rmw_mu_);
      std::memcpy(tmp.data(), in, len);
      return WriteData(start, tmp.data(), tmp.size());
    }
    // A partial sector is read, patched and written back; writers that
    // could touch the same sector wait (FUSE writes are page-aligned, so
    // this path is rare).
    std::unique_lock lock(rmw_mu_);
    if (start != off) KVMFS_RETURN_IF_ERROR(ReadData(start, tmp.data(), kSector));
    if (end != off + len && (end - kSector != start || start == off))
      KVMFS_RETURN_IF_ERROR(ReadData(end - kSector, tmp.data() + tmp.size() - kSector, kSector));
    std::memcpy(tmp.data() + (off - start), in, len);
    return WriteData(start, tmp.data(), tmp.size());
  }

  Status Flush() override { return file_->Flush(); }

  // Growing extends the file as QEMU's luks driver does (block/crypto.c
  // truncates the file, preallocation off): the new sectors hold no
  // encrypted data, so QEMU and kvmfs alike read them as whatever
  // decrypting a hole gives. Shrinking is refused, as for raw.
  Status Resize(uint64_t new_size) override {
    if (!writable()) return Status::ReadOnly(file_->name() + ": image is read-only");
    if (new_size % kSector != 0)
      return Status::InvalidArgument(file_->name() + ": a LUKS image grows by whole 512-byte sectors");
    if (new_size < size())
      return Status::InvalidArgument(file_->name() + ": shrinking a LUKS image is refused "
                                     "(use qemu-img resize --shrink)");
    if (new_size == size()) return Status::OK();
    KVMFS_RETURN_IF_ERROR(file_->Truncate(payload_ + new_size));
    size_.store(new_size, std::memory_order_release);
    return Status::OK();
  }

  // QEMU reports the whole payload as data (encrypted bytes have no holes:
  // a host hole decrypts to noise, not zeros).
  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    return BlockStatus{Allocation::kData, std::min(len, size() - off)};
  }

  ImageInfo Info() const override {
    ImageInfo info;
    info.format = "luks";
    info.virtual_size = size();
    info.encrypted = true;
    info.format_specific_type = "luks";
    info.format_specific = header_.InfoFields(false);
    return info;
  }

  Result<uint64_t> ActualSize() override { return file_->AllocatedBytes(); }

 private:
  // The one road of guest data: whole sectors, from/to the payload.
  Status ReadData(uint64_t off, uint8_t* buf, size_t len) {
    KVMFS_RETURN_IF_ERROR(file_->ReadAt(payload_ + off, buf, len));
    return CryptRange(*cipher_, false, off / kSector, buf, len);
  }
  Status WriteData(uint64_t off, uint8_t* buf, size_t len) {
    KVMFS_RETURN_IF_ERROR(CryptRange(*cipher_, true, off / kSector, buf, len));
    return file_->WriteAt(payload_ + off, buf, len);
  }

  Status CheckRange(const char* what, uint64_t off, uint64_t len) const {
    const uint64_t size = this->size();
    if (off > size || len > size - off)
      return Status::InvalidArgument(file_->name() + ": " + what + " of " + std::to_string(len) +
                                     " bytes at offset " + std::to_string(off) +
                                     " past the end of the disk (" + std::to_string(size) + ")");
    return Status::OK();
  }
  Status CheckWrite(uint64_t off, uint64_t len) const {
    KVMFS_RETURN_IF_ERROR(data_status_);
    if (!writable()) return Status::ReadOnly(file_->name() + ": image is read-only");
    return CheckRange("write", off, len);
  }

  const std::shared_ptr<Backend> file_;
  const LuksHeader header_;
  const uint64_t payload_;  // bytes before the guest data
  std::atomic<uint64_t> size_;
  const std::unique_ptr<SectorCipher> cipher_;  // null unless data_status_ is OK
  const Status data_status_;
  std::atomic<bool> writing_{false};
  std::shared_mutex rmw_mu_;  // whole-sector writes shared, partial-sector writes exclusive
};

class LuksFormatDriver final : public FormatDriver {
 public:
  const char* name() const override { return "luks"; }
  FormatCaps caps() const override { return {.writable = true}; }
  std::vector<std::string> extensions() const override { return {"luks"}; }
  // QEMU's probe is the magic and version 1. A LUKS2 container is claimed
  // too, so that it is refused with its reason rather than served as raw
  // ciphertext.
  int Probe(const uint8_t* head, size_t len) const override {
    if (!IsLuksMagic(head, len) || len < 8) return 0;
    const uint16_t version = LoadBE16(head + 6);
    return version == 1 || version == 2 ? 100 : 0;
  }
  FormatPeek Peek(const uint8_t*, size_t) const override { return {.known = true}; }

  Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend> file,
                                      const OpenContext& ctx) const override {
    const std::string& name = ctx.name.empty() ? file->name() : ctx.name;
    KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
    uint8_t head[kLuksHeaderSize];
    KVMFS_RETURN_IF_ERROR(file->ReadAt(0, head, sizeof head));
    KVMFS_ASSIGN_OR_RETURN(LuksHeader header,
                           DecodeLuksHeader(head, std::min<uint64_t>(file_size, sizeof head),
                                            file_size, name));
    if (header.payload_bytes() > file_size)
      return Status::Corruption(name + ": LUKS payload offset " +
                                std::to_string(header.payload_bytes()) +
                                " is past the end of the file (" + std::to_string(file_size) +
                                " bytes)");
    const uint64_t size = file_size - header.payload_bytes();
    std::unique_ptr<SectorCipher> cipher;
    Status data_status = Unlock(header, file, ctx, name, &cipher);
    // Only key problems and ciphers kvmfs cannot compute leave an image
    // that is listed and described; anything else (I/O) fails the open.
    if (!data_status.ok() && data_status.code() != Status::Code::kPermission &&
        data_status.code() != Status::Code::kNotSupported)
      return data_status;
    return std::unique_ptr<Image>(std::make_unique<LuksImage>(std::move(file), std::move(header),
                                                              size, std::move(cipher),
                                                              std::move(data_status)));
  }

 private:
  static Status Unlock(const LuksHeader& header, const std::shared_ptr<Backend>& file,
                       const OpenContext& ctx, const std::string& name,
                       std::unique_ptr<SectorCipher>* cipher) {
    KVMFS_RETURN_IF_ERROR(header.support);
    if (!ctx.key) return Status::Permission(name + ": no key configured");
    KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<const Secret> pass, ctx.key());
    auto read = [&file](uint64_t off, uint8_t* buf, size_t len) { return file->ReadAt(off, buf, len); };
    KVMFS_ASSIGN_OR_RETURN(Secret master, LuksUnlock(header, *pass, read, name));
    KVMFS_ASSIGN_OR_RETURN(*cipher, LuksCipher(header, master));
    return Status::OK();
  }
};

}  // namespace

const FormatDriver& KvmfsFormat_luks() {
  static const LuksFormatDriver driver;
  return driver;
}

}  // namespace kvmfs
