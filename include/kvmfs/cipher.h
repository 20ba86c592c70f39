// The cipher layer: what format drivers use to read and write encrypted
// images (LUKS, standalone or inside qcow2; QEMU's legacy qcow AES), on
// OpenSSL's EVP interface (AES-NI; no hand-written cipher or KDF).
//
//   Secret          key material: locked in RAM, left out of core dumps,
//                   wiped when dropped, never printable
//   SectorCipher    encrypts/decrypts runs of 512-byte sectors as QEMU's
//                   crypto/ does (cipher, mode, IV generator)
//   CryptBatch()    the sector runs of one request, in parallel
//   LUKS1           header decode/validation, key slot unlock, info fields
//   QcowAesCipher() the legacy qcow/qcow2 AES (crypt_method 1)
//   KeyLookup       how a driver asks for the passphrase of the image it opens
//
// Nothing here logs; no message carries key material, only file names,
// offsets and algorithm names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvmfs/image.h"
#include "kvmfs/status.h"

namespace kvmfs {

// ==== Secret ================================================================

// Bytes that must stay secret (passphrases, master and slot keys). The bytes
// live in their own anonymous mapping: mlock()ed (best effort: RLIMIT_MEMLOCK
// may refuse), MADV_DONTDUMP (never in a core dump) and MADV_WIPEONFORK, and
// are wiped with OPENSSL_cleanse before unmapping. Move-only; there is no
// conversion to a string or a stream, so a secret cannot reach a log by
// accident. Not thread-safe for writing; const access may be shared.
class Secret {
 public:
  Secret() = default;  // empty
  ~Secret();
  Secret(Secret&& other) noexcept;
  Secret& operator=(Secret&& other) noexcept;
  Secret(const Secret&) = delete;
  Secret& operator=(const Secret&) = delete;

  // `len` zero bytes. Errors: kIOError(ENOMEM).
  static Result<Secret> Allocate(size_t len);
  // A copy of `len` bytes at `data`.
  static Result<Secret> Copy(const uint8_t* data, size_t len);

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // Drops (and wipes) the bytes past `len` (<= size()).
  void Truncate(size_t len);
  // Whether both hold the same bytes (constant time for equal sizes).
  bool Equals(const Secret& other) const;

 private:
  void Release();
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;  // bytes mapped (whole pages), 0 when empty
};

// ==== Algorithms ============================================================

// Names as QEMU spells them in `qemu-img info` and its -o options.
enum class CipherAlg { kAes128, kAes192, kAes256, kOther };
enum class CipherMode { kEcb, kCbc, kCtr, kXts };
enum class IvGen { kPlain, kPlain64, kEssiv };
enum class HashAlg { kMd5, kSha1, kSha224, kSha256, kSha384, kSha512, kRipemd160 };

const char* CipherModeName(CipherMode mode);
const char* IvGenName(IvGen ivgen);
const char* HashName(HashAlg hash);
// Digest length in bytes.
size_t HashSize(HashAlg hash);
// Parses QEMU's hash names ("sha256"); false when unknown.
bool ParseHashName(const std::string& name, HashAlg* out);

// One data encryption as QEMU's QCryptoBlock does it: a block cipher in a
// mode, keyed by the master key, with an IV generator per 512-byte sector.
struct CipherSpec {
  std::string cipher_name = "aes";  // LUKS cipher name ("aes", "serpent", ...)
  CipherAlg alg = CipherAlg::kAes256;
  CipherMode mode = CipherMode::kXts;
  IvGen ivgen = IvGen::kPlain64;
  HashAlg ivgen_hash = HashAlg::kSha256;  // essiv only
  size_t key_bytes = 64;                  // the whole key (both halves for XTS)
  // Bytes encrypted as one unit with one IV: 512, or 4096 for LUKS2
  // containers made with --sector-size 4096. IVs count 512-byte sectors
  // whatever the unit (dm-crypt without iv_large_sectors).
  uint32_t sector_size = 512;

  // "aes-256" (QEMU's cipher-alg), or "<name>-<bits>" for others.
  std::string AlgName() const;
  // Whether OpenSSL computes this: OK, or kNotSupported naming what is not
  // (a serpent/twofish/cast5 cipher, AES-192 in XTS mode, an ESSIV hash whose
  // digest is no AES key size).
  Status Supported() const;
};

// PBKDF2-HMAC-`hash` (PKCS5_PBKDF2_HMAC) of `pass` into `out`.
// Requires iterations >= 1. Thread-safe.
Status Pbkdf2(HashAlg hash, const uint8_t* pass, size_t pass_len, const uint8_t* salt,
              size_t salt_len, uint32_t iterations, uint8_t* out, size_t out_len);

// ==== Sector cipher =========================================================

inline constexpr size_t kCryptSectorSize = 512;

// Encrypts and decrypts in place runs of whole sectors (spec.sector_size
// bytes, 512 unless LUKS2 says otherwise), the first one at 512-byte sector
// `sector` (what the IV generator sees: QEMU's standalone LUKS
// and legacy AES use the guest sector, qcow2's LUKS the host sector, i.e.
// host offset / 512). Keeps its own copy of the key in a Secret; OpenSSL
// contexts (which hold the expanded key) live only during a call and are
// wiped when freed. Thread-safe: calls may run concurrently.
class SectorCipher {
 public:
  // Errors: kNotSupported (spec.Supported()), kInvalidArgument (the key
  // length is not spec.key_bytes).
  static Result<std::unique_ptr<SectorCipher>> Create(const CipherSpec& spec, const Secret& key);
  ~SectorCipher();
  SectorCipher(const SectorCipher&) = delete;
  SectorCipher& operator=(const SectorCipher&) = delete;

  // `len` must be a multiple of spec().sector_size and `sector` a multiple
  // of sector_size / 512 (kInvalidArgument otherwise). kIOError when OpenSSL
  // fails (out of memory).
  Status Encrypt(uint64_t sector, uint8_t* data, size_t len) const;
  Status Decrypt(uint64_t sector, uint8_t* data, size_t len) const;

  const CipherSpec& spec() const { return spec_; }

  struct Impl;

 private:
  explicit SectorCipher(std::unique_ptr<Impl> impl, CipherSpec spec);
  Status Crypt(bool encrypt, uint64_t sector, uint8_t* data, size_t len) const;
  std::unique_ptr<Impl> impl_;
  CipherSpec spec_;
};

// One run of a batch: `len` bytes (whole cipher sectors) at `data`, first
// 512-byte sector `sector`. `status` is set by CryptBatch().
struct CryptJob {
  uint64_t sector = 0;
  uint8_t* data = nullptr;
  size_t len = 0;
  Status status;
};

// Encrypts (or decrypts) every job of `jobs` concurrently: the caller works
// through them with the helpers of a process-wide pool (one thread per core
// but one, started on first use), as DecompressBatch() does. Returns the
// first failing job's status, OK when all succeeded. Runs must not overlap.
// Thread-safe.
Status CryptBatch(const SectorCipher& cipher, bool encrypt, std::span<CryptJob> jobs);

// Splits [data, data+len) (whole cipher sectors, first 512-byte sector
// `sector`) into runs of about `chunk` bytes and CryptBatch()es them: the
// one call an engine makes for a contiguous buffer.
Status CryptRange(const SectorCipher& cipher, bool encrypt, uint64_t sector, uint8_t* data,
                  size_t len, size_t chunk = 64 * 1024);

// ==== Legacy qcow AES (crypt_method 1) ======================================

// QEMU's block-qcow.c: AES-128-CBC, IV plain64 of the guest sector, key =
// the passphrase's bytes (up to its first NUL) zero-padded or cut to 16.
Result<std::unique_ptr<SectorCipher>> QcowAesCipher(const Secret& passphrase);

// ==== LUKS1 =================================================================

inline constexpr size_t kLuksHeaderSize = 592;
inline constexpr size_t kLuksKeySlots = 8;
inline constexpr uint32_t kLuksStripes = 4000;
// Key slot and master key PBKDF2 iteration counts above this are refused
// (kNotSupported) rather than computed: QEMU does not bound them (any u32),
// and 2^32 iterations take hours. QEMU's own images hold ~1-20 million
// (iter-time 2 s); this is ~30 s of SHA-256 on a 2020s core.
inline constexpr uint32_t kLuksMaxIterations = 100'000'000;

struct LuksKeySlot {
  bool active = false;
  uint32_t iterations = 0;
  uint8_t salt[32] = {};
  uint32_t key_offset = 0;  // in 512-byte sectors from the start of the LUKS area
  uint32_t stripes = 0;
};

// A decoded, validated LUKS1 header.
struct LuksHeader {
  std::string cipher_name;  // as stored ("aes")
  std::string cipher_mode;  // as stored ("xts-plain64")
  std::string hash_spec;    // as stored ("sha256")
  uint32_t payload_offset = 0;  // 512-byte sectors
  uint32_t key_bytes = 0;
  uint8_t mk_digest[20] = {};
  uint8_t mk_salt[32] = {};
  uint32_t mk_iterations = 0;
  std::string uuid;
  LuksKeySlot slots[kLuksKeySlots];

  CipherSpec spec;  // the data cipher the strings describe
  bool names_known = false;  // cipher, mode, IV generator and hash are names QEMU knows
  HashAlg hash = HashAlg::kSha256;
  // OK, or kNotSupported when the header is valid but names something
  // kvmfs cannot compute (spec.Supported()): the image can be described,
  // not read.
  Status support;

  uint64_t payload_bytes() const { return uint64_t(payload_offset) * kCryptSectorSize; }
  // qemu-img info's fields of the LUKS object, in its order: ivgen-alg,
  // ivgen-hash-alg (essiv), hash-alg, cipher-alg, uuid, [format,]
  // cipher-mode, slots, payload-offset, master-key-iters. `with_format`
  // adds "format": "luks" (the encrypt object inside qcow2).
  std::vector<InfoField> InfoFields(bool with_format) const;
};

// Whether `head` starts with the LUKS magic (any version).
bool IsLuksMagic(const uint8_t* head, size_t len);

// Decodes and validates the header in `buf` (at least kLuksHeaderSize bytes)
// of a LUKS area `area_size` bytes long (the standalone file, or qcow2's
// crypto extension length), as QEMU's qcrypto_block_luks_check_header does:
// magic and version 1 (kNotSupported for other versions), NUL-terminated
// strings, payload offset past the 4096-byte header, iteration counts >= 1
// and <= kLuksMaxIterations, key slot states, 4000 stripes, key material past
// the header, before the payload, within the area and not overlapping another
// slot. Unknown cipher modes, IV generators and hashes are kNotSupported,
// malformed fields kCorruption; messages start with `name`. A cipher kvmfs
// cannot compute is not an error here (see LuksHeader::support).
Result<LuksHeader> DecodeLuksHeader(const uint8_t* buf, size_t len, uint64_t area_size,
                                    const std::string& name);

// Reads `len` bytes at `off` of the LUKS area (offset 0 = the LUKS magic).
using LuksReadFn = std::function<Status(uint64_t off, uint8_t* buf, size_t len)>;

// Recovers the master key with `passphrase` (QEMU secret data: its bytes up
// to the first NUL), trying every active key slot in order as QEMU does:
// PBKDF2 slot key, key material decrypted with the data cipher (sectors from
// 0), anti-forensic merge, PBKDF2 check against the master key digest.
// Errors: kPermission "<name>: wrong key ..." when no slot opens,
// header.support when the cipher is not computable, read errors.
Result<Secret> LuksUnlock(const LuksHeader& header, const Secret& passphrase,
                          const LuksReadFn& read, const std::string& name);

// The data cipher of an unlocked LUKS volume.
Result<std::unique_ptr<SectorCipher>> LuksCipher(const LuksHeader& header, const Secret& master_key);

// The anti-forensic merge of LUKS1 (cryptsetup's AF_merge, QEMU's
// qcrypto_afsplit_decode): `stripes` blocks of `block_len` bytes in `split`
// into `out` (block_len bytes).
Status AfMerge(HashAlg hash, size_t block_len, uint32_t stripes, const uint8_t* split,
               uint8_t* out);

// ==== LUKS2 (libcryptsetup) =================================================

// A LUKS2 container, read by libcryptsetup (QEMU 7.2 has no LUKS2): its
// header JSON, both copies and their checksums are libcryptsetup's
// business; kvmfs takes the data segment's cipher, offset and sector size.
struct Luks2Volume {
  CipherSpec spec;              // with spec.sector_size from the segment
  uint64_t payload_offset = 0;  // bytes
  std::string uuid;
  std::string cipher;           // as cryptsetup prints it ("aes-xts-plain64")
  // OK, or kNotSupported: authenticated encryption (dm-integrity), a
  // cipher OpenSSL does not compute.
  Status support;

  // The format-specific fields kvmfs shows for LUKS2 (qemu-img has none):
  // version, cipher-alg, cipher-mode, ivgen-alg, sector-size, uuid,
  // payload-offset.
  std::vector<InfoField> InfoFields() const;
};

// Whether this kvmfs was built with libcryptsetup (LUKS2 support).
bool Luks2Supported();

// Reads the LUKS2 header of the open container `fd` (through
// /proc/self/fd: the same file, never a path looked up again). Errors:
// kNotSupported (no libcryptsetup), kCorruption (libcryptsetup refuses the
// header), naming `name`.
Result<Luks2Volume> Luks2Open(int fd, const std::string& name);

// The volume key: libcryptsetup tries the key slots with `passphrase` (all
// its bytes, as cryptsetup --key-file). Key slots whose PBKDF costs more
// than kLuksMaxIterations PBKDF2 iterations, or Argon2 beyond 4 GiB or 100
// passes, are refused (kNotSupported) before any is tried. Errors:
// kPermission "wrong key", kNotSupported, kCorruption.
Result<Secret> Luks2Unlock(int fd, const Luks2Volume& volume, const Secret& passphrase,
                           const std::string& name);

// ==== Keys ==================================================================

// The passphrase of the image being opened (QEMU `secret` data), looked up
// by the chain opener from the image's own path (kvmfs.yaml(5) `keys:`).
// Errors (never carrying key bytes): kPermission "no key configured for
// PATH", kPermission/kIOError for a key file that cannot be read.
using KeyLookup = std::function<Result<std::shared_ptr<const Secret>>()>;

}  // namespace kvmfs
