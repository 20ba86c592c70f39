// LUKS1 (cryptsetup's on-disk format 1.2.1, as QEMU's crypto/block-luks.c
// reads it): header decode and validation, key slot unlock, the anti-forensic
// merge, and the fields `qemu-img info` shows.
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/endian.h"
#include "crypto/luks_internal.h"
#include "crypto/openssl_util.h"
#include "kvmfs/cipher.h"

namespace kvmfs {
namespace {

constexpr uint8_t kMagic[6] = {'L', 'U', 'K', 'S', 0xBA, 0xBE};
constexpr uint32_t kSlotEnabled = 0x00AC71F3;
constexpr uint32_t kSlotDisabled = 0x0000DEAD;
constexpr uint64_t kKeySlotOffset = 4096;  // key material starts past the header's 4 KiB
constexpr uint64_t kHeaderSectors = kKeySlotOffset / kCryptSectorSize;
constexpr uint32_t kMaxKeyBytes = 256;

// Field offsets of the on-disk header (big-endian), kLuksHeaderSize bytes.
namespace off {
constexpr size_t kVersion = 6, kCipherName = 8, kCipherMode = 40, kHashSpec = 72,
                 kPayloadOffset = 104, kKeyBytes = 108, kMkDigest = 112, kMkSalt = 132,
                 kMkIterations = 164, kUuid = 168, kSlots = 208;
constexpr size_t kSlotSize = 48, kSlotActive = 0, kSlotIterations = 4, kSlotSalt = 8,
                 kSlotKeyOffset = 40, kSlotStripes = 44;
}  // namespace off
static_assert(off::kSlots + kLuksKeySlots * off::kSlotSize == kLuksHeaderSize);

// A NUL-terminated string field of `n` bytes, or nullopt when it has no NUL.
bool Field(const uint8_t* p, size_t n, std::string* out) {
  const void* nul = std::memchr(p, 0, n);
  if (nul == nullptr) return false;
  out->assign(reinterpret_cast<const char*>(p), static_cast<const uint8_t*>(nul) - p);
  return true;
}

// Key material of one slot in sectors, rounded up to the 4 KiB header
// alignment (QEMU's qcrypto_block_luks_splitkeylen_sectors), in 64 bits.
uint64_t SplitKeySectors(uint32_t key_bytes, uint32_t stripes) {
  uint64_t bytes = uint64_t(key_bytes) * stripes;
  uint64_t sectors = (bytes + kCryptSectorSize - 1) / kCryptSectorSize;
  return (sectors + kHeaderSectors - 1) / kHeaderSectors * kHeaderSectors;
}

// "xts-plain64", "cbc-essiv:sha256" -> spec.mode/ivgen/ivgen_hash. Unknown
// names are kNotSupported, a malformed string kCorruption.
Status ParseMode(const std::string& text, const std::string& name, CipherSpec* spec) {
  size_t dash = text.find('-');
  if (dash == std::string::npos)
    return Status::Corruption(name + ": unexpected LUKS cipher mode string format '" + text + "'");
  std::string mode = text.substr(0, dash);
  std::string ivgen = text.substr(dash + 1);
  std::string ivhash;
  size_t colon = ivgen.find(':');
  if (colon != std::string::npos) {
    ivhash = ivgen.substr(colon + 1);
    ivgen.resize(colon);
    if (!ParseHashName(ivhash, &spec->ivgen_hash))
      return Status::NotSupported(name + ": LUKS hash algorithm " + ivhash + " not supported");
  }
  static const std::pair<const char*, CipherMode> kModes[] = {
      {"ecb", CipherMode::kEcb}, {"cbc", CipherMode::kCbc}, {"ctr", CipherMode::kCtr},
      {"xts", CipherMode::kXts}};
  auto m = std::find_if(std::begin(kModes), std::end(kModes),
                        [&](const auto& e) { return mode == e.first; });
  if (m == std::end(kModes))
    return Status::NotSupported(name + ": LUKS cipher mode " + mode + " not supported");
  spec->mode = m->second;
  if (ivgen == "plain") {
    spec->ivgen = IvGen::kPlain;
  } else if (ivgen == "plain64") {
    spec->ivgen = IvGen::kPlain64;
  } else if (ivgen == "essiv") {
    spec->ivgen = IvGen::kEssiv;
    if (ivhash.empty())
      return Status::Corruption(name + ": LUKS essiv IV generator without a hash specification");
  } else {
    return Status::NotSupported(name + ": LUKS IV generator " + ivgen + " not supported");
  }
  return Status::OK();
}

// The cipher name and key size -> spec.alg (kOther: QEMU knows it, OpenSSL
// does not compute it for us).
Status ParseCipher(const std::string& cipher_name, uint32_t key_bytes, const std::string& name,
                   CipherSpec* spec) {
  spec->cipher_name = cipher_name;
  spec->key_bytes = key_bytes;
  uint32_t bytes = key_bytes;
  if (spec->mode == CipherMode::kXts) {
    if (bytes % 2 != 0)
      return Status::NotSupported(name + ": LUKS XTS key of " + std::to_string(bytes) + " bytes");
    bytes /= 2;
  }
  const bool aes_size = bytes == 16 || bytes == 24 || bytes == 32;
  if (cipher_name == "aes" && aes_size) {
    spec->alg = bytes == 16 ? CipherAlg::kAes128 : bytes == 24 ? CipherAlg::kAes192 : CipherAlg::kAes256;
  } else if ((cipher_name == "serpent" || cipher_name == "twofish") && aes_size) {
    spec->alg = CipherAlg::kOther;
  } else if (cipher_name == "cast5" && bytes == 16) {
    spec->alg = CipherAlg::kOther;
  } else {
    return Status::NotSupported(name + ": LUKS algorithm " + cipher_name + " with key size " +
                                std::to_string(bytes) + " bytes not supported");
  }
  return Status::OK();
}

Status DecodeSlots(const uint8_t* buf, LuksHeader& h, uint64_t area_size, const std::string& name) {
  for (size_t i = 0; i < kLuksKeySlots; ++i) {
    const uint8_t* p = buf + off::kSlots + i * off::kSlotSize;
    LuksKeySlot& s = h.slots[i];
    const uint32_t state = LoadBE32(p + off::kSlotActive);
    s.iterations = LoadBE32(p + off::kSlotIterations);
    std::memcpy(s.salt, p + off::kSlotSalt, sizeof s.salt);
    s.key_offset = LoadBE32(p + off::kSlotKeyOffset);
    s.stripes = LoadBE32(p + off::kSlotStripes);
    const std::string slot = name + ": LUKS key slot " + std::to_string(i);
    if (s.stripes != kLuksStripes)
      return Status::Corruption(slot + " is corrupted (stripes " + std::to_string(s.stripes) +
                                " != " + std::to_string(kLuksStripes) + ")");
    if (state != kSlotEnabled && state != kSlotDisabled)
      return Status::Corruption(slot + " state (active/disabled) is corrupted");
    s.active = state == kSlotEnabled;
    if (s.active && s.iterations == 0) return Status::Corruption(slot + " iteration count is zero");
    if (s.active && s.iterations > kLuksMaxIterations)
      return Status::NotSupported(slot + " asks for " + std::to_string(s.iterations) +
                                  " PBKDF2 iterations, more than kvmfs computes (" +
                                  std::to_string(kLuksMaxIterations) + ")");
    const uint64_t start = s.key_offset;
    const uint64_t len = SplitKeySectors(h.key_bytes, s.stripes);
    if (start < kHeaderSectors) return Status::Corruption(slot + " is overlapping with the LUKS header");
    if (start + len > h.payload_offset)
      return Status::Corruption(slot + " is overlapping with the encrypted payload");
    const uint64_t material_end = start * kCryptSectorSize + uint64_t(h.key_bytes) * s.stripes;
    if (s.active && material_end > area_size)
      return Status::Corruption(slot + " key material ends at byte " + std::to_string(material_end) +
                                ", past the end of the LUKS area (" + std::to_string(area_size) +
                                " bytes)");
    for (size_t j = 0; j < i; ++j) {
      const uint64_t start2 = h.slots[j].key_offset;
      const uint64_t len2 = SplitKeySectors(h.key_bytes, h.slots[j].stripes);
      if (start < start2 + len2 && start2 < start + len)
        return Status::Corruption(name + ": LUKS key slots " + std::to_string(j) + " and " +
                                  std::to_string(i) + " are overlapping in the header");
    }
  }
  return Status::OK();
}

// diffuse(): every digest-sized chunk j of `block` becomes
// hash(BE32(j) || chunk) cut to the chunk's length.
Status Diffuse(const EVP_MD* md, size_t digest_len, uint8_t* block, size_t block_len) {
  crypto::MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx) return Status::FromErrno(ENOMEM, "AF merge digest");
  uint8_t digest[EVP_MAX_MD_SIZE];
  Status st;
  for (size_t pos = 0, j = 0; pos < block_len; pos += digest_len, ++j) {
    const size_t n = std::min(digest_len, block_len - pos);
    uint8_t iv[4];
    StoreBE32(iv, uint32_t(j));
    unsigned int out = 0;
    if (EVP_DigestInit_ex2(ctx.get(), md, nullptr) != 1 || EVP_DigestUpdate(ctx.get(), iv, 4) != 1 ||
        EVP_DigestUpdate(ctx.get(), block + pos, n) != 1 ||
        EVP_DigestFinal_ex(ctx.get(), digest, &out) != 1 || out != digest_len) {
      st = Status::FromErrno(EIO, crypto::OpenSslError("AF merge digest"));
      break;
    }
    std::memcpy(block + pos, digest, n);
  }
  OPENSSL_cleanse(digest, sizeof digest);
  return st;
}

// One key slot: the master key when `passphrase` opens it, an empty Secret
// when it does not.
Result<Secret> TrySlot(const LuksHeader& h, const LuksKeySlot& slot, const Secret& passphrase,
                       size_t pass_len, const LuksReadFn& read) {
  KVMFS_ASSIGN_OR_RETURN(Secret slot_key, Secret::Allocate(h.key_bytes));
  KVMFS_RETURN_IF_ERROR(Pbkdf2(h.hash, passphrase.data(), pass_len, slot.salt, sizeof slot.salt,
                               slot.iterations, slot_key.data(), slot_key.size()));
  const size_t material = size_t(h.key_bytes) * slot.stripes;
  const size_t padded = (material + kCryptSectorSize - 1) / kCryptSectorSize * kCryptSectorSize;
  KVMFS_ASSIGN_OR_RETURN(Secret split, Secret::Allocate(padded));
  KVMFS_RETURN_IF_ERROR(read(uint64_t(slot.key_offset) * kCryptSectorSize, split.data(), material));
  KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<SectorCipher> cipher, SectorCipher::Create(h.spec, slot_key));
  // Key material sectors are numbered from 0 at the slot's start.
  KVMFS_RETURN_IF_ERROR(CryptRange(*cipher, false, 0, split.data(), padded));
  KVMFS_ASSIGN_OR_RETURN(Secret candidate, Secret::Allocate(h.key_bytes));
  KVMFS_RETURN_IF_ERROR(AfMerge(h.hash, h.key_bytes, slot.stripes, split.data(), candidate.data()));
  uint8_t digest[sizeof h.mk_digest];
  KVMFS_RETURN_IF_ERROR(Pbkdf2(h.hash, candidate.data(), candidate.size(), h.mk_salt,
                               sizeof h.mk_salt, h.mk_iterations, digest, sizeof digest));
  const bool match = CRYPTO_memcmp(digest, h.mk_digest, sizeof digest) == 0;
  OPENSSL_cleanse(digest, sizeof digest);
  if (!match) return Secret();
  return candidate;
}

}  // namespace

Status ParseLuksCipher(const std::string& cipher_name, const std::string& cipher_mode,
                       uint32_t key_bytes, const std::string& name, CipherSpec* spec) {
  KVMFS_RETURN_IF_ERROR(ParseMode(cipher_mode, name, spec));
  return ParseCipher(cipher_name, key_bytes, name, spec);
}

bool IsLuksMagic(const uint8_t* head, size_t len) {
  return len >= sizeof kMagic && std::memcmp(head, kMagic, sizeof kMagic) == 0;
}

Result<LuksHeader> DecodeLuksHeader(const uint8_t* buf, size_t len, uint64_t area_size,
                                    const std::string& name) {
  if (len < kLuksHeaderSize || area_size < kLuksHeaderSize)
    return Status::Corruption(name + ": LUKS header truncated (" +
                              std::to_string(std::min<uint64_t>(len, area_size)) + " of " +
                              std::to_string(kLuksHeaderSize) + " bytes)");
  if (!IsLuksMagic(buf, len)) return Status::Corruption(name + ": volume is not in LUKS format");
  const uint16_t version = LoadBE16(buf + off::kVersion);
  if (version != 1)
    return Status::NotSupported(name + ": LUKS version " + std::to_string(version) +
                                " is not supported");
  LuksHeader h;
  if (!Field(buf + off::kCipherName, 32, &h.cipher_name))
    return Status::Corruption(name + ": LUKS header cipher name is not NUL terminated");
  if (!Field(buf + off::kCipherMode, 32, &h.cipher_mode))
    return Status::Corruption(name + ": LUKS header cipher mode is not NUL terminated");
  if (!Field(buf + off::kHashSpec, 32, &h.hash_spec))
    return Status::Corruption(name + ": LUKS header hash spec is not NUL terminated");
  std::string uuid;
  Field(buf + off::kUuid, 40, &uuid);  // QEMU prints it as a C string
  h.uuid = uuid.empty() ? std::string(reinterpret_cast<const char*>(buf + off::kUuid), 40) : uuid;
  h.payload_offset = LoadBE32(buf + off::kPayloadOffset);
  h.key_bytes = LoadBE32(buf + off::kKeyBytes);
  std::memcpy(h.mk_digest, buf + off::kMkDigest, sizeof h.mk_digest);
  std::memcpy(h.mk_salt, buf + off::kMkSalt, sizeof h.mk_salt);
  h.mk_iterations = LoadBE32(buf + off::kMkIterations);

  if (h.payload_offset < kHeaderSectors)
    return Status::Corruption(name + ": LUKS payload is overlapping with the header");
  if (h.mk_iterations == 0) return Status::Corruption(name + ": LUKS key iteration count is zero");
  if (h.mk_iterations > kLuksMaxIterations)
    return Status::NotSupported(name + ": LUKS master key digest asks for " +
                                std::to_string(h.mk_iterations) +
                                " PBKDF2 iterations, more than kvmfs computes (" +
                                std::to_string(kLuksMaxIterations) + ")");
  if (h.key_bytes == 0 || h.key_bytes > kMaxKeyBytes)
    return Status::NotSupported(name + ": LUKS key size of " + std::to_string(h.key_bytes) +
                                " bytes not supported");
  KVMFS_RETURN_IF_ERROR(DecodeSlots(buf, h, area_size, name));

  // Names last: a structurally sound header with algorithms kvmfs cannot
  // compute is still described (info.json), just not opened.
  Status names = ParseLuksCipher(h.cipher_name, h.cipher_mode, h.key_bytes, name, &h.spec);
  if (names.ok() && !ParseHashName(h.hash_spec, &h.hash))
    names = Status::NotSupported(name + ": LUKS hash algorithm " + h.hash_spec + " not supported");
  if (names.ok() && crypto::Digest(h.hash) == nullptr)
    names = Status::NotSupported(name + ": LUKS hash " + h.hash_spec + " is not available in OpenSSL");
  h.names_known = names.ok();
  if (names.ok()) {
    names = h.spec.Supported();
    if (!names.ok()) names = names.WithContext(name);
  }
  if (names.IsCorruption()) return names;
  h.support = names;
  return h;
}

Status AfMerge(HashAlg hash, size_t block_len, uint32_t stripes, const uint8_t* split, uint8_t* out) {
  const EVP_MD* md = crypto::Digest(hash);
  if (md == nullptr) return Status::NotSupported(std::string("hash ") + HashName(hash) + " unavailable");
  if (stripes == 0 || block_len == 0) return Status::InvalidArgument("AF merge of nothing");
  KVMFS_ASSIGN_OR_RETURN(Secret block, Secret::Allocate(block_len));
  uint8_t* d = block.data();
  for (uint32_t i = 0; i + 1 < stripes; ++i) {
    const uint8_t* s = split + size_t(i) * block_len;
    for (size_t k = 0; k < block_len; ++k) d[k] ^= s[k];
    KVMFS_RETURN_IF_ERROR(Diffuse(md, HashSize(hash), d, block_len));
  }
  const uint8_t* last = split + size_t(stripes - 1) * block_len;
  for (size_t k = 0; k < block_len; ++k) out[k] = d[k] ^ last[k];
  return Status::OK();
}

Result<Secret> LuksUnlock(const LuksHeader& header, const Secret& passphrase,
                          const LuksReadFn& read, const std::string& name) {
  KVMFS_RETURN_IF_ERROR(header.support);
  // QEMU hands the secret to PBKDF2 as a C string: up to its first NUL.
  size_t pass_len = 0;
  while (pass_len < passphrase.size() && passphrase.data()[pass_len] != 0) ++pass_len;
  for (const LuksKeySlot& slot : header.slots) {
    if (!slot.active) continue;
    KVMFS_ASSIGN_OR_RETURN(Secret key, TrySlot(header, slot, passphrase, pass_len, read));
    if (!key.empty()) return key;
  }
  return Status::Permission(name + ": wrong key: the configured passphrase opens no LUKS key slot");
}

Result<std::unique_ptr<SectorCipher>> LuksCipher(const LuksHeader& header, const Secret& master_key) {
  KVMFS_RETURN_IF_ERROR(header.support);
  return SectorCipher::Create(header.spec, master_key);
}

std::vector<InfoField> LuksHeader::InfoFields(bool with_format) const {
  std::vector<InfoField> f;
  const bool known = names_known;
  auto text = [&](const char* key, std::string value) { f.push_back({key, std::move(value)}); };
  if (known) {
    text("ivgen-alg", IvGenName(spec.ivgen));
    text("hash-alg", HashName(hash));
    text("cipher-alg", spec.AlgName());
  }
  text("uuid", uuid);
  if (known && spec.ivgen == IvGen::kEssiv) text("ivgen-hash-alg", HashName(spec.ivgen_hash));
  if (with_format) text("format", "luks");
  if (known) text("cipher-mode", CipherModeName(spec.mode));
  std::vector<InfoObject> slot_list;
  for (const LuksKeySlot& s : slots) {
    InfoObject o;
    o.push_back({"active", s.active});
    if (s.active) o.push_back({"iters", int64_t(s.iterations)});
    o.push_back({"key-offset", int64_t(s.key_offset) * int64_t(kCryptSectorSize)});
    if (s.active) o.push_back({"stripes", int64_t(s.stripes)});
    slot_list.push_back(std::move(o));
  }
  f.push_back({"slots", std::move(slot_list)});
  f.push_back({"payload-offset", int64_t(payload_bytes())});
  f.push_back({"master-key-iters", int64_t(mk_iterations)});
  return f;
}

}  // namespace kvmfs
