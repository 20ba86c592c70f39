// qcow2 encryption: the cipher set up at open (OpenEncryption), and the
// engine's road of guest data through it (Engine::ReadData/WriteData).
#include "format/qcow2/crypto.h"

#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <vector>

namespace kvmfs::qcow2 {
namespace {

Result<std::shared_ptr<const Secret>> Passphrase(const OpenContext& ctx, const std::string& name) {
  if (!ctx.key) return Status::Permission(name + ": no key configured");
  return ctx.key();
}

// LUKS: the header in [crypto.offset, +length); reads outside the area are
// refused as QEMU's qcow2_crypto_hdr_read_func does.
Status OpenLuks(Backend& file, const Header& h, const OpenContext& ctx, const std::string& name,
                Encryption& enc) {
  if (!h.crypto) return Status::Corruption(name + ": missing CRYPTO header for crypt method 2");
  const uint64_t area = h.crypto->offset, area_len = h.crypto->length;
  uint8_t head[kLuksHeaderSize] = {};
  if (area_len >= kLuksHeaderSize) KVMFS_RETURN_IF_ERROR(file.ReadAt(area, head, sizeof head));
  KVMFS_ASSIGN_OR_RETURN(enc.luks, DecodeLuksHeader(head, sizeof head, area_len, name));
  if (!enc.luks->support.ok()) {
    enc.status = enc.luks->support;
    return Status::OK();
  }
  auto pass = Passphrase(ctx, name);
  if (!pass.ok()) {
    enc.status = pass.status();
    return Status::OK();
  }
  auto read = [&file, area, area_len, &name](uint64_t off, uint8_t* buf, size_t len) -> Status {
    if (off > area_len || len > area_len - off)
      return Status::Corruption(name + ": request for data outside of the LUKS header area");
    return file.ReadAt(area + off, buf, len);
  };
  auto master = LuksUnlock(*enc.luks, **pass, read, name);
  if (!master.ok()) {
    if (master.status().code() != Status::Code::kPermission) return master.status();
    enc.status = master.status();
    return Status::OK();
  }
  KVMFS_ASSIGN_OR_RETURN(enc.cipher, LuksCipher(*enc.luks, *master));
  return Status::OK();
}

}  // namespace

Result<Encryption> OpenEncryption(Backend& file, const Header& h, const OpenContext& ctx,
                                  const std::string& name) {
  Encryption enc;
  enc.method = h.raw.crypt_method;
  if (enc.method == kCryptLuks) {
    KVMFS_RETURN_IF_ERROR(OpenLuks(file, h, ctx, name, enc));
  } else if (enc.method == kCryptAes) {
    // No key check value: a wrong passphrase reads as noise, as in QEMU.
    auto pass = Passphrase(ctx, name);
    if (!pass.ok()) {
      enc.status = pass.status();
    } else {
      KVMFS_ASSIGN_OR_RETURN(enc.cipher, QcowAesCipher(**pass));
    }
  } else {
    return Status::NotSupported(name + ": unsupported encryption method " +
                                std::to_string(enc.method));
  }
  return enc;
}

Status Encryption::Decrypt(uint64_t guest_off, uint64_t host_off, uint8_t* buf, size_t len) const {
  KVMFS_RETURN_IF_ERROR(status);
  const uint64_t off = host_sector_iv() ? host_off : guest_off;
  return CryptRange(*cipher, false, off / kCryptSectorSize, buf, len);
}

Status Encryption::Encrypt(uint64_t guest_off, uint64_t host_off, uint8_t* buf, size_t len) const {
  KVMFS_RETURN_IF_ERROR(status);
  const uint64_t off = host_sector_iv() ? host_off : guest_off;
  return CryptRange(*cipher, true, off / kCryptSectorSize, buf, len);
}

InfoObject Encryption::Info() const {
  if (method == kCryptLuks && luks) return luks->InfoFields(true);
  return {{"format", std::string("aes")}};
}

// ---- The engine's road of guest data ----------------------------------------------

namespace {

constexpr uint64_t kSector = kCryptSectorSize;

uint64_t SectorUp(uint64_t v) { return (v + kSector - 1) / kSector * kSector; }

}  // namespace

void Engine::SetEncryption(std::shared_ptr<const Encryption> enc) { enc_ = std::move(enc); }

Status Engine::DataStatus() const { return enc_ ? enc_->status : Status::OK(); }

Status Engine::ReadData(uint64_t guest, uint64_t host, uint8_t* out, size_t n) {
  if (!enc_) return data_->ReadAt(host, out, n);
  KVMFS_RETURN_IF_ERROR(enc_->status);
  // Clusters (and subclusters) are whole sectors at both ends, so the
  // sectors around a piece are in the same cluster.
  const uint64_t head = guest % kSector;
  if (host % kSector != head)
    return Status::Corruption(name_ + ": guest offset " + Hex(guest) + " and host offset " +
                              Hex(host) + " are not in the same place of a sector");
  const uint64_t len = SectorUp(head + n);
  if (head == 0 && len == n) {
    KVMFS_RETURN_IF_ERROR(data_->ReadAt(host, out, n));
    return enc_->Decrypt(guest, host, out, n);
  }
  std::vector<uint8_t> tmp(len);
  KVMFS_RETURN_IF_ERROR(data_->ReadAt(host - head, tmp.data(), len));
  KVMFS_RETURN_IF_ERROR(enc_->Decrypt(guest - head, host - head, tmp.data(), len));
  std::memcpy(out, tmp.data() + head, n);
  return Status::OK();
}

Status Engine::WriteData(uint64_t guest, uint64_t host, const uint8_t* in, size_t n) {
  if (!enc_) return data_->WriteAt(host, in, n);
  KVMFS_RETURN_IF_ERROR(enc_->status);
  if (n == 0) return Status::OK();
  const uint64_t head = guest % kSector;
  if (host % kSector != head)
    return Status::Corruption(name_ + ": guest offset " + Hex(guest) + " and host offset " +
                              Hex(host) + " are not in the same place of a sector");
  const uint64_t len = SectorUp(head + n);
  const uint64_t g0 = guest - head, h0 = host - head;
  std::vector<uint8_t> tmp(len);
  auto seal = [&]() -> Status {
    KVMFS_RETURN_IF_ERROR(enc_->Encrypt(g0, h0, tmp.data(), len));
    return data_->WriteAt(h0, tmp.data(), len);
  };
  if (head == 0 && len == n) {
    // Whole sectors: no other write's bytes are touched, so these run
    // concurrently (a reader of a sector being written sees old or new).
    std::shared_lock<std::shared_mutex> lock(rmw_mu_);
    std::memcpy(tmp.data(), in, n);
    return seal();
  }
  // A partial sector is read, patched and sealed again, as QEMU's block
  // layer does for unaligned requests; writers that could touch the same
  // sector wait (FUSE writes are page-aligned, so this path is rare).
  std::unique_lock<std::shared_mutex> lock(rmw_mu_);
  auto old_sector = [&](uint64_t at) -> Status {
    KVMFS_RETURN_IF_ERROR(data_->ReadAt(h0 + at, tmp.data() + at, kSector));
    return enc_->Decrypt(g0 + at, h0 + at, tmp.data() + at, kSector);
  };
  if (head != 0) KVMFS_RETURN_IF_ERROR(old_sector(0));
  const uint64_t last = len - kSector;
  if ((head + n) % kSector != 0 && (last != 0 || head == 0))
    KVMFS_RETURN_IF_ERROR(old_sector(last));
  std::memcpy(tmp.data() + head, in, n);
  return seal();
}

}  // namespace kvmfs::qcow2
