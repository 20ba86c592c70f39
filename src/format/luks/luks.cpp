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

// What Open() found: where the guest data is, how it is encrypted, what
// info.json says.
struct Container {
  uint64_t payload = 0;        // bytes before the guest data
  uint32_t unit = 512;         // bytes encrypted together (LUKS2: up to 4096)
  std::vector<InfoField> info;  // format-specific data
  std::unique_ptr<SectorCipher> cipher;  // set only when data_status is OK
  Status data_status;
};

class LuksImage final : public Image {
 public:
  LuksImage(std::shared_ptr<Backend> file, uint64_t size, Container c)
      : file_(std::move(file)),
        payload_(c.payload),
        unit_(c.unit),
        info_(std::move(c.info)),
        size_(size),
        cipher_(std::move(c.cipher)),
        data_status_(std::move(c.data_status)) {}

  uint64_t size() const override { return size_.load(std::memory_order_acquire); }

  Status DataStatus() const override { return data_status_; }

  Status Read(uint64_t off, void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(data_status_);
    KVMFS_RETURN_IF_ERROR(CheckRange("read", off, len));
    if (len == 0) return Status::OK();
    auto* out = static_cast<uint8_t*>(buf);
    if (off % unit_ == 0 && len % unit_ == 0) return ReadData(off, out, len);
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
    if (start != off) KVMFS_RETURN_IF_ERROR(ReadData(start, tmp.data(), unit_));
    if (end != off + len && (end - unit_ != start || start == off))
      KVMFS_RETURN_IF_ERROR(ReadData(end - unit_, tmp.data() + tmp.size() - unit_, unit_));
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
    if (new_size % unit_ != 0)
      return Status::InvalidArgument(file_->name() + ": a LUKS image grows by whole " +
                                     std::to_string(unit_) + "-byte sectors");
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
    info.format_specific = info_;
    return info;
  }

  Result<uint64_t> ActualSize() override { return file_->AllocatedBytes(); }

 private:
  // The one road of guest data: whole sectors, from/to the payload.
  Status ReadData(uint64_t off, uint8_t* buf, size_t len) {
    KVMFS_RETURN_IF_ERROR(file_->ReadAt(payload_ + off, buf, len));
    return CryptRange(*cipher_, false, off / kCryptSectorSize, buf, len);
  }
  Status WriteData(uint64_t off, uint8_t* buf, size_t len) {
    KVMFS_RETURN_IF_ERROR(CryptRange(*cipher_, true, off / kCryptSectorSize, buf, len));
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

  uint64_t AlignDown(uint64_t v) const { return v / unit_ * unit_; }
  uint64_t AlignUp(uint64_t v) const { return (v + unit_ - 1) / unit_ * unit_; }

  const std::shared_ptr<Backend> file_;
  const uint64_t payload_;  // bytes before the guest data
  const uint64_t unit_;     // encryption sector size
  const std::vector<InfoField> info_;
  std::atomic<uint64_t> size_;
  const std::unique_ptr<SectorCipher> cipher_;  // null unless data_status_ is OK
  const Status data_status_;
  std::atomic<bool> writing_{false};
  std::shared_mutex rmw_mu_;  // whole-sector writes shared, partial-sector writes exclusive
};

class LuksFormatDriver final : public FormatDriver {
 public:
  const char* name() const override { return "luks"; }
  FormatCaps caps() const override { return {.writable = true, .resize = true}; }
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
    Container c;
    if (file_size >= 8 && IsLuksMagic(head, sizeof head) && LoadBE16(head + 6) == 2) {
      KVMFS_RETURN_IF_ERROR(OpenLuks2(*file, ctx, name, c));
    } else {
      KVMFS_RETURN_IF_ERROR(OpenLuks1(*file, head, file_size, ctx, name, c));
    }
    if (c.payload > file_size)
      return Status::Corruption(name + ": LUKS payload offset " + std::to_string(c.payload) +
                                " is past the end of the file (" + std::to_string(file_size) +
                                " bytes)");
    // Only key problems and ciphers kvmfs cannot compute leave an image
    // that is listed and described; anything else (I/O) fails the open.
    if (!c.data_status.ok() && c.data_status.code() != Status::Code::kPermission &&
        c.data_status.code() != Status::Code::kNotSupported)
      return c.data_status;
    const uint64_t size = (file_size - c.payload) / c.unit * c.unit;
    return std::unique_ptr<Image>(std::make_unique<LuksImage>(std::move(file), size, std::move(c)));
  }

 private:
  static Result<std::shared_ptr<const Secret>> Passphrase(const OpenContext& ctx,
                                                          const std::string& name) {
    if (!ctx.key) return Status::Permission(name + ": no key configured");
    return ctx.key();
  }

  static Status OpenLuks1(Backend& file, const uint8_t* head, uint64_t file_size,
                          const OpenContext& ctx, const std::string& name, Container& c) {
    KVMFS_ASSIGN_OR_RETURN(LuksHeader header,
                           DecodeLuksHeader(head, std::min<uint64_t>(file_size, kLuksHeaderSize),
                                            file_size, name));
    c.payload = header.payload_bytes();
    c.info = header.InfoFields(false);
    c.data_status = [&]() -> Status {
      KVMFS_RETURN_IF_ERROR(header.support);
      KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<const Secret> pass, Passphrase(ctx, name));
      auto read = [&file](uint64_t off, uint8_t* buf, size_t len) { return file.ReadAt(off, buf, len); };
      KVMFS_ASSIGN_OR_RETURN(Secret master, LuksUnlock(header, *pass, read, name));
      KVMFS_ASSIGN_OR_RETURN(c.cipher, LuksCipher(header, master));
      return Status::OK();
    }();
    return Status::OK();
  }

  // LUKS2: libcryptsetup reads the header (from the open file) and unlocks
  // the volume key; the data goes through SectorCipher as LUKS1's does.
  static Status OpenLuks2(Backend& file, const OpenContext& ctx, const std::string& name,
                          Container& c) {
    KVMFS_ASSIGN_OR_RETURN(Luks2Volume volume, Luks2Open(file.fd(), name));
    c.payload = volume.payload_offset;
    c.unit = volume.spec.sector_size;
    c.info = volume.InfoFields();
    c.data_status = [&]() -> Status {
      KVMFS_RETURN_IF_ERROR(volume.support);
      KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<const Secret> pass, Passphrase(ctx, name));
      KVMFS_ASSIGN_OR_RETURN(Secret key, Luks2Unlock(file.fd(), volume, *pass, name));
      KVMFS_ASSIGN_OR_RETURN(c.cipher, SectorCipher::Create(volume.spec, key));
      return Status::OK();
    }();
    return Status::OK();
  }
};

}  // namespace

const FormatDriver& KvmfsFormat_luks() {
  static const LuksFormatDriver driver;
  return driver;
}

}  // namespace kvmfs
