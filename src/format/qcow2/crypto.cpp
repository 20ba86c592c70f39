#include "format/qcow2/crypto.h"

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

}  // namespace kvmfs::qcow2
