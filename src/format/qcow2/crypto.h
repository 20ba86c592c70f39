// qcow2 encryption glue: the cipher of an encrypted qcow2 image, set up as
// QEMU's qcow2_do_open does (crypt_method 1: legacy AES keyed by the
// passphrase, guest sector IVs; 2: LUKS1 in the area the crypto header
// extension names, host sector IVs). The engine's reads and writes of
// guest data clusters call Decrypt()/Encrypt() here and nowhere else.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "format/qcow2/qcow2.h"
#include "kvmfs/cipher.h"
#include "kvmfs/format.h"

namespace kvmfs::qcow2 {

struct Encryption {
  uint32_t method = kCryptNone;      // kCryptAes or kCryptLuks
  std::optional<LuksHeader> luks;    // kCryptLuks: the header in the crypto area
  std::unique_ptr<SectorCipher> cipher;  // set only when status is OK
  // OK, or why guest data cannot be read (no key, wrong key, unreadable key
  // file: kPermission; cipher not computable: kNotSupported). The image is
  // still described (Image::DataStatus()).
  Status status;

  // Whether IVs count host sectors (LUKS) rather than guest sectors (AES).
  bool host_sector_iv() const { return method == kCryptLuks; }

  // Decrypts (Encrypt: encrypts) in place `len` bytes (a multiple of 512)
  // of one contiguous run of guest data at guest offset `guest_off`, stored
  // at host offset `host_off`, its sectors in parallel (CryptRange).
  // Requires status OK. Thread-safe.
  Status Decrypt(uint64_t guest_off, uint64_t host_off, uint8_t* buf, size_t len) const;
  Status Encrypt(uint64_t guest_off, uint64_t host_off, uint8_t* buf, size_t len) const;

  // qemu-img info's format-specific "encrypt" object: {"format": "aes"},
  // or the LUKS fields with "format": "luks".
  InfoObject Info() const;
};

// Sets up the encryption of header `h` (crypt_method != 0) in `file`: the
// LUKS header is decoded and validated against the crypto area (kCorruption,
// kNotSupported as DecodeLuksHeader), then the passphrase is asked of
// ctx.key and the master key unlocked. Key problems do not fail this call:
// they are the returned Encryption's status. I/O errors do.
Result<Encryption> OpenEncryption(Backend& file, const Header& h, const OpenContext& ctx,
                                  const std::string& name);

}  // namespace kvmfs::qcow2
