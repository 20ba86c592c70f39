// qcow driver entry: probing, peeking, opening, and the Image.
#include <algorithm>
#include <cstring>

#include "base/endian.h"
#include "format/qcow/qcow.h"
#include "kvmfs/format.h"

namespace kvmfs {
namespace qcow {
namespace {

class QcowImage final : public Image, private BackingReader {
 public:
  explicit QcowImage(std::shared_ptr<Engine> engine) : engine_(std::move(engine)) {}

  uint64_t size() const override { return engine_->header().virtual_size; }

  Status DataStatus() const override { return engine_->DataStatus(); }

  Status Read(uint64_t off, void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(engine_->DataStatus());
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    KVMFS_RETURN_IF_ERROR(CheckRange(off, len));
    auto* p = static_cast<uint8_t*>(buf);
    while (len > 0) {
      KVMFS_ASSIGN_OR_RETURN(Extent e, engine_->Map(off, len, MapMode::kRead));
      const size_t n = static_cast<size_t>(e.length);
      switch (e.type) {
        case Extent::Type::kUnallocated:
          KVMFS_RETURN_IF_ERROR(ReadBacking(off, p, n));
          break;
        case Extent::Type::kData:
          KVMFS_RETURN_IF_ERROR(engine_->ReadData(off, e.host, p, n));
          break;
        case Extent::Type::kCompressed:
          KVMFS_RETURN_IF_ERROR(engine_->ReadCompressed(
              e.entry, off & (engine_->header().cluster_size - 1), p, n, off));
          break;
      }
      off += n;
      p += n;
      len -= n;
    }
    return Status::OK();
  }

  // Read() as a plan: normal clusters of a file nothing of kvmfs writes are
  // handed out as file pieces (the bytes cannot change while this image
  // lives); everything else is read into memory under the lock. Encrypted
  // data is only ever decrypted into memory.
  Status PlanRead(uint64_t off, size_t len, ReadPlan& plan) override {
    KVMFS_RETURN_IF_ERROR(engine_->DataStatus());
    Backend& file = engine_->file();
    const int fd = file.writable() || engine_->encrypted() ? -1 : file.fd();
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    KVMFS_RETURN_IF_ERROR(CheckRange(off, len));
    while (len > 0) {
      KVMFS_ASSIGN_OR_RETURN(Extent e, engine_->Map(off, len, MapMode::kRead));
      const size_t n = static_cast<size_t>(e.length);
      if (e.type == Extent::Type::kUnallocated) {
        KVMFS_RETURN_IF_ERROR(PlanBacking(off, n, plan));
      } else if (e.type == Extent::Type::kData && fd >= 0) {
        // The last cluster may end past the end of the file: zeros there.
        const uint64_t in_file = engine_->BytesInFile(e.host, n);
        if (in_file > 0) plan.AddFile(fd, e.host, in_file);
        if (in_file < n) KVMFS_RETURN_IF_ERROR(plan.AddMemory(n - in_file, true).status());
      } else {
        KVMFS_ASSIGN_OR_RETURN(uint8_t* p, plan.AddMemory(n, false));
        if (e.type == Extent::Type::kData) {
          KVMFS_RETURN_IF_ERROR(engine_->ReadData(off, e.host, p, n));
        } else {
          KVMFS_RETURN_IF_ERROR(engine_->ReadCompressed(
              e.entry, off & (engine_->header().cluster_size - 1), p, n, off));
        }
      }
      off += n;
      len -= n;
    }
    return Status::OK();
  }

  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    if (off >= size())
      return Status::InvalidArgument(engine_->name() + ": block status at " + std::to_string(off) +
                                     " past the virtual size " + std::to_string(size()));
    len = std::min(len, size() - off);
    if (len == 0) return Status::InvalidArgument(engine_->name() + ": block status of 0 bytes");
    KVMFS_ASSIGN_OR_RETURN(Extent e, engine_->Map(off, len, MapMode::kStatus));
    return BlockStatus{e.type == Extent::Type::kUnallocated ? Allocation::kUnallocated
                                                            : Allocation::kData,
                       e.length};
  }

  bool writable() const override { return engine_->writable(); }
  Status BeginWrites() override {
    KVMFS_RETURN_IF_ERROR(engine_->DataStatus());
    return engine_->BeginWrites();
  }
  Status EndWrites() override { return engine_->EndWrites(); }
  Status Write(uint64_t off, const void* buf, size_t len) override {
    return engine_->Write(off, static_cast<const uint8_t*>(buf), len, *this);
  }
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    return engine_->WriteZeroes(off, len, unmap, *this);
  }
  Status Flush() override { return engine_->Flush(); }
  // QEMU's qcow driver cannot resize ("Image format driver does not support
  // resize").
  Status Resize(uint64_t) override {
    if (!writable()) return Status::ReadOnly(engine_->name() + ": image is read-only");
    return Status::NotSupported(engine_->name() + ": qcow images cannot be resized (QEMU's qcow "
                                                  "driver does not support resize either)");
  }

  ImageInfo Info() const override {
    const Header& h = engine_->header();
    ImageInfo info;
    info.format = "qcow";
    info.virtual_size = h.virtual_size;
    info.cluster_size = h.cluster_size;
    info.encrypted = h.raw.crypt_method != kCryptNone;
    info.backing_filename = h.backing_file;  // qcow records no backing format
    return info;
  }

  Result<uint64_t> ActualSize() override { return engine_->file().AllocatedBytes(); }

 private:
  Status CheckRange(uint64_t off, size_t len) const {
    if (off > size() || len > size() - off)
      return Status::InvalidArgument(engine_->name() + ": read of " + std::to_string(len) +
                                     " bytes at " + std::to_string(off) +
                                     " past the virtual size " + std::to_string(size()));
    return Status::OK();
  }

  // BackingReader, for the writer's copy-on-write.
  Status ReadBelow(uint64_t off, void* buf, size_t len) override {
    return ReadBacking(off, buf, len);
  }
  bool ZerosBelow(uint64_t off, uint64_t /*len*/) override {
    const Image* below = backing().get();
    return below == nullptr || off >= below->size();
  }

  const std::shared_ptr<Engine> engine_;
};

class QcowDriver final : public FormatDriver {
 public:
  const char* name() const override { return "qcow"; }
  FormatCaps caps() const override {
    return {.writable = true, .backing_files = true, .compression = true, .create = true,
            .create_backing = true};
  }
  Status Create(Backend& file, const CreateOptions& options) const override {
    return CreateImage(file, options);
  }
  std::vector<std::string> extensions() const override { return {"qcow"}; }
  int Probe(const uint8_t* h, size_t len) const override {
    if (len < 8 || LoadBE32(h) != kMagic || LoadBE32(h + 4) != kVersion) return 0;
    // As QEMU's qcow_probe once the whole header is there; a shorter file
    // is still claimed, so that the driver says what is wrong with it.
    return len >= kHeaderSize ? 100 : 51;
  }
  FormatPeek Peek(const uint8_t* h, size_t len) const override {
    if (h == nullptr || len < kHeaderSize) return {};
    const HeaderRaw r = HeaderRaw::Decode(h);
    bool backing = r.backing_file_offset != 0 && r.backing_file_size != 0;
    // A name that starts with NUL is no name (QEMU reads it as a C string).
    if (backing && r.backing_file_offset < len && h[r.backing_file_offset] == 0) backing = false;
    return {.known = true, .has_backing = backing, .snapshots = 0, .virtual_size = r.size};
  }
  Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend> file,
                                      const OpenContext& ctx) const override {
    const std::string& name = ctx.name;
    KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
    KVMFS_ASSIGN_OR_RETURN(Header h, ReadHeader(*file, file_size, name));
    std::vector<uint8_t> raw(h.l1_entries * 8);
    KVMFS_RETURN_IF_ERROR(file->ReadAt(h.l1_offset, raw.data(), raw.size()).WithContext(name));
    std::vector<uint64_t> l1(h.l1_entries);
    for (uint64_t i = 0; i < h.l1_entries; ++i) l1[i] = LoadBE64(&raw[8 * i]);
    const bool aes = h.raw.crypt_method == kCryptAes;
    auto engine = std::make_shared<Engine>(std::move(file), std::move(h), name, file_size,
                                           std::move(l1));
    if (aes) {
      // Legacy AES: the key is the passphrase itself (no check value: a
      // wrong one reads as noise, as in QEMU). A key problem leaves the
      // image described, its data refused.
      Result<std::shared_ptr<const Secret>> pass = Status::Permission(name + ": no key configured");
      if (ctx.key) pass = ctx.key();
      if (!pass.ok()) {
        engine->SetEncryption(nullptr, pass.status().WithContext("encrypted image (AES)"));
      } else {
        KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<SectorCipher> cipher, QcowAesCipher(**pass));
        engine->SetEncryption(std::move(cipher), Status::OK());
      }
    }
    return std::unique_ptr<Image>(std::make_unique<QcowImage>(std::move(engine)));
  }
};

}  // namespace
}  // namespace qcow

const FormatDriver& KvmfsFormat_qcow() {
  static const qcow::QcowDriver driver;
  return driver;
}

}  // namespace kvmfs
