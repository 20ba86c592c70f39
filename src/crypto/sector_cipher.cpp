// SectorCipher: QEMU's QCryptoBlock data encryption (crypto/block.c,
// crypto/ivgen-*.c) on EVP: one IV per 512-byte sector, the cipher reset at
// every sector boundary.
#include <openssl/evp.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "base/endian.h"
#include "crypto/openssl_util.h"
#include "crypto/stats.h"
#include "kvmfs/cipher.h"

namespace kvmfs {

using crypto::CipherCtx;

struct SectorCipher::Impl {
  const EVP_CIPHER* cipher = nullptr;
  Secret key;
  size_t iv_len = 0;  // 0 for ECB
  // ESSIV: IV = AES-ECB(hash(key))(sector, little-endian, zero-padded).
  const EVP_CIPHER* essiv_cipher = nullptr;
  Secret essiv_key;
};

namespace {

Status SslError(const char* what) { return Status::FromErrno(EIO, crypto::OpenSslError(what)); }

// The ESSIV key: hash(master key), cut to the IV cipher's key length (the
// digest length, see CipherSpec::Supported()).
Result<Secret> EssivKey(HashAlg hash, const Secret& key) {
  const EVP_MD* md = crypto::Digest(hash);
  if (md == nullptr) return Status::NotSupported(std::string("hash ") + HashName(hash) + " unavailable");
  KVMFS_ASSIGN_OR_RETURN(Secret out, Secret::Allocate(EVP_MAX_MD_SIZE));
  unsigned int len = 0;
  if (EVP_Digest(key.data(), key.size(), out.data(), &len, md, nullptr) != 1)
    return SslError("ESSIV key digest");
  out.Truncate(len);
  return out;
}

}  // namespace

SectorCipher::SectorCipher(std::unique_ptr<Impl> impl, CipherSpec spec)
    : impl_(std::move(impl)), spec_(std::move(spec)) {}

SectorCipher::~SectorCipher() = default;

Result<std::unique_ptr<SectorCipher>> SectorCipher::Create(const CipherSpec& spec,
                                                           const Secret& key) {
  KVMFS_RETURN_IF_ERROR(spec.Supported());
  if (spec.sector_size < kCryptSectorSize || spec.sector_size > 4096 ||
      (spec.sector_size & (spec.sector_size - 1)) != 0)
    return Status::NotSupported("encryption sector size " + std::to_string(spec.sector_size) +
                                " is not supported (512 to 4096, a power of two)");
  if (key.size() != spec.key_bytes)
    return Status::InvalidArgument("cipher " + spec.AlgName() + ": key of " +
                                   std::to_string(key.size()) + " bytes, expected " +
                                   std::to_string(spec.key_bytes));
  auto impl = std::make_unique<Impl>();
  impl->cipher = crypto::AesCipher(spec.mode, spec.key_bytes);
  impl->iv_len = size_t(EVP_CIPHER_get_iv_length(impl->cipher));
  KVMFS_ASSIGN_OR_RETURN(impl->key, Secret::Copy(key.data(), key.size()));
  if (spec.ivgen == IvGen::kEssiv) {
    KVMFS_ASSIGN_OR_RETURN(impl->essiv_key, EssivKey(spec.ivgen_hash, key));
    impl->essiv_cipher = crypto::AesCipher(CipherMode::kEcb, impl->essiv_key.size());
    if (impl->essiv_cipher == nullptr)
      return Status::NotSupported("essiv: no AES cipher with a " +
                                  std::to_string(impl->essiv_key.size()) + "-byte key");
  }
  return std::unique_ptr<SectorCipher>(new SectorCipher(std::move(impl), spec));
}

// ---- Totals for the metrics (crypto/stats.h) ------------------------------------------
// Relaxed atomics, one set per direction: a call covers a run of sectors.
namespace {

struct Totals {
  std::atomic<uint64_t> calls{0}, errors{0}, bytes{0}, nanos{0};
};
Totals g_totals[2];  // [0] decrypt, [1] encrypt

uint64_t Nanos() {
  struct timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

Status Timed(bool encrypt, size_t len, uint64_t t0, Status st) {
  Totals& t = g_totals[encrypt ? 1 : 0];
  t.nanos.fetch_add(Nanos() - t0, std::memory_order_relaxed);
  t.calls.fetch_add(1, std::memory_order_relaxed);
  if (st.ok())
    t.bytes.fetch_add(len, std::memory_order_relaxed);
  else
    t.errors.fetch_add(1, std::memory_order_relaxed);
  return st;
}

}  // namespace

CryptTotals CipherTotals(bool encrypt) {
  const Totals& t = g_totals[encrypt ? 1 : 0];
  return {t.calls.load(std::memory_order_relaxed), t.errors.load(std::memory_order_relaxed),
          t.bytes.load(std::memory_order_relaxed), t.nanos.load(std::memory_order_relaxed)};
}

Status SectorCipher::Encrypt(uint64_t sector, uint8_t* data, size_t len) const {
  const uint64_t t0 = Nanos();
  return Timed(true, len, t0, Crypt(true, sector, data, len));
}

Status SectorCipher::Decrypt(uint64_t sector, uint8_t* data, size_t len) const {
  const uint64_t t0 = Nanos();
  return Timed(false, len, t0, Crypt(false, sector, data, len));
}

Status SectorCipher::Crypt(bool encrypt, uint64_t sector, uint8_t* data, size_t len) const {
  const size_t unit = spec_.sector_size;
  const uint64_t step = unit / kCryptSectorSize;  // IVs count 512-byte sectors
  if (len % unit != 0 || sector % step != 0)
    return Status::InvalidArgument("encrypted I/O of " + std::to_string(len) + " bytes at sector " +
                                   std::to_string(sector) + " is not a whole number of " +
                                   std::to_string(unit) + "-byte sectors");
  if (len == 0) return Status::OK();
  // The contexts hold the expanded key: they live for this call only.
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return SslError("cipher context");
  if (EVP_CipherInit_ex2(ctx.get(), impl_->cipher, impl_->key.data(), nullptr, encrypt ? 1 : 0,
                         nullptr) != 1)
    return SslError("cipher init");
  EVP_CIPHER_CTX_set_padding(ctx.get(), 0);
  CipherCtx essiv;
  if (impl_->essiv_cipher != nullptr) {
    essiv.reset(EVP_CIPHER_CTX_new());
    if (!essiv || EVP_CipherInit_ex2(essiv.get(), impl_->essiv_cipher, impl_->essiv_key.data(),
                                     nullptr, 1, nullptr) != 1)
      return SslError("essiv init");
    EVP_CIPHER_CTX_set_padding(essiv.get(), 0);
  }
  uint8_t iv[16];
  for (size_t done = 0; done < len; done += unit, sector += step) {
    if (impl_->iv_len > 0) {
      std::memset(iv, 0, sizeof iv);
      switch (spec_.ivgen) {
        case IvGen::kPlain: StoreLE32(iv, uint32_t(sector)); break;
        case IvGen::kPlain64: StoreLE64(iv, sector); break;
        case IvGen::kEssiv: {
          StoreLE64(iv, sector);
          int out = 0;
          if (EVP_CipherUpdate(essiv.get(), iv, &out, iv, 16) != 1 || out != 16)
            return SslError("essiv");
          break;
        }
      }
      // Resets the mode's chaining/counter state: every sector stands alone.
      if (EVP_CipherInit_ex2(ctx.get(), nullptr, nullptr, iv, -1, nullptr) != 1)
        return SslError("cipher iv");
    }
    int out = 0;
    if (EVP_CipherUpdate(ctx.get(), data + done, &out, data + done, int(unit)) != 1 ||
        out != int(unit))
      return SslError(encrypt ? "encrypt" : "decrypt");
  }
  return Status::OK();
}

Result<std::unique_ptr<SectorCipher>> QcowAesCipher(const Secret& passphrase) {
  KVMFS_ASSIGN_OR_RETURN(Secret key, Secret::Allocate(16));
  size_t n = 0;
  while (n < passphrase.size() && n < 16 && passphrase.data()[n] != 0) ++n;
  if (n > 0) std::memcpy(key.data(), passphrase.data(), n);
  CipherSpec spec;
  spec.cipher_name = "aes";
  spec.alg = CipherAlg::kAes128;
  spec.mode = CipherMode::kCbc;
  spec.ivgen = IvGen::kPlain64;
  spec.key_bytes = 16;
  return SectorCipher::Create(spec, key);
}

}  // namespace kvmfs
