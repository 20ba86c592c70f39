// Algorithm names as QEMU spells them, what OpenSSL can compute, PBKDF2.
#include <openssl/err.h>
#include <openssl/evp.h>

#include <cerrno>
#include <climits>
#include <mutex>

#include "crypto/openssl_util.h"
#include "kvmfs/cipher.h"

namespace kvmfs {
namespace crypto {
namespace {

struct HashEntry {
  HashAlg alg;
  const char* qemu_name;
  const char* openssl_name;
  size_t size;
};
constexpr HashEntry kHashes[] = {
    {HashAlg::kMd5, "md5", "MD5", 16},          {HashAlg::kSha1, "sha1", "SHA1", 20},
    {HashAlg::kSha224, "sha224", "SHA224", 28}, {HashAlg::kSha256, "sha256", "SHA256", 32},
    {HashAlg::kSha384, "sha384", "SHA384", 48}, {HashAlg::kSha512, "sha512", "SHA512", 64},
    {HashAlg::kRipemd160, "ripemd160", "RIPEMD160", 20},
};

const HashEntry& EntryOf(HashAlg hash) {
  for (const HashEntry& e : kHashes)
    if (e.alg == hash) return e;
  return kHashes[3];
}

}  // namespace

const EVP_MD* Digest(HashAlg hash) {
  // Fetched once and kept for the process: an implicit fetch per use costs
  // a provider lookup under a lock on every PBKDF2 and AF merge.
  static const EVP_MD* table[std::size(kHashes)] = {};
  static std::once_flag once;
  std::call_once(once, [] {
    for (size_t i = 0; i < std::size(kHashes); ++i)
      table[i] = EVP_MD_fetch(nullptr, kHashes[i].openssl_name, nullptr);
    ERR_clear_error();  // a missing digest is reported by the caller
  });
  for (size_t i = 0; i < std::size(kHashes); ++i)
    if (kHashes[i].alg == hash) return table[i];
  return nullptr;
}

const EVP_CIPHER* AesCipher(CipherMode mode, size_t key_bytes) {
  static const char* const kModes[] = {"ECB", "CBC", "CTR", "XTS"};
  static const size_t kBits[] = {128, 192, 256};
  static const EVP_CIPHER* table[4][3] = {};
  static std::once_flag once;
  std::call_once(once, [] {
    for (int m = 0; m < 4; ++m)
      for (int b = 0; b < 3; ++b) {
        std::string name = "AES-" + std::to_string(kBits[b]) + "-" + kModes[m];
        table[m][b] = EVP_CIPHER_fetch(nullptr, name.c_str(), nullptr);
      }
    ERR_clear_error();
  });
  size_t bytes = mode == CipherMode::kXts ? key_bytes / 2 : key_bytes;
  if (mode == CipherMode::kXts && key_bytes % 2 != 0) return nullptr;
  int b = bytes == 16 ? 0 : bytes == 24 ? 1 : bytes == 32 ? 2 : -1;
  if (b < 0) return nullptr;
  return table[static_cast<int>(mode)][b];
}

std::string OpenSslError(const char* what) {
  unsigned long err = ERR_get_error();
  ERR_clear_error();
  if (err == 0) return std::string(what) + " failed";
  char buf[256];
  ERR_error_string_n(err, buf, sizeof buf);
  return std::string(what) + ": " + buf;
}

}  // namespace crypto

const char* CipherModeName(CipherMode mode) {
  switch (mode) {
    case CipherMode::kEcb: return "ecb";
    case CipherMode::kCbc: return "cbc";
    case CipherMode::kCtr: return "ctr";
    case CipherMode::kXts: return "xts";
  }
  return "?";
}

const char* IvGenName(IvGen ivgen) {
  switch (ivgen) {
    case IvGen::kPlain: return "plain";
    case IvGen::kPlain64: return "plain64";
    case IvGen::kEssiv: return "essiv";
  }
  return "?";
}

const char* HashName(HashAlg hash) { return crypto::EntryOf(hash).qemu_name; }
size_t HashSize(HashAlg hash) { return crypto::EntryOf(hash).size; }

bool ParseHashName(const std::string& name, HashAlg* out) {
  for (const auto& e : crypto::kHashes)
    if (name == e.qemu_name) {
      *out = e.alg;
      return true;
    }
  return false;
}

std::string CipherSpec::AlgName() const {
  size_t bytes = mode == CipherMode::kXts ? key_bytes / 2 : key_bytes;
  return cipher_name + "-" + std::to_string(bytes * 8);
}

Status CipherSpec::Supported() const {
  if (alg == CipherAlg::kOther)
    return Status::NotSupported("cipher " + AlgName() + " is not supported (kvmfs computes AES only)");
  if (crypto::AesCipher(mode, key_bytes) == nullptr)
    return Status::NotSupported("cipher " + AlgName() + " in " + CipherModeName(mode) +
                                " mode is not supported (OpenSSL has no such cipher)");
  if (ivgen == IvGen::kEssiv) {
    // dm-crypt's ESSIV quirk (QEMU's qcrypto_block_luks_essiv_cipher): the
    // IV cipher is AES with a key as long as the hash's digest.
    size_t digest = HashSize(ivgen_hash);
    if (digest != 16 && digest != 24 && digest != 32)
      return Status::NotSupported(std::string("essiv with hash ") + HashName(ivgen_hash) +
                                  " is not supported (no AES cipher with a " +
                                  std::to_string(digest) + "-byte key)");
    if (crypto::Digest(ivgen_hash) == nullptr)
      return Status::NotSupported(std::string("hash ") + HashName(ivgen_hash) +
                                  " is not available in OpenSSL");
  }
  return Status::OK();
}

Status Pbkdf2(HashAlg hash, const uint8_t* pass, size_t pass_len, const uint8_t* salt,
              size_t salt_len, uint32_t iterations, uint8_t* out, size_t out_len) {
  const EVP_MD* md = crypto::Digest(hash);
  if (md == nullptr)
    return Status::NotSupported(std::string("hash ") + HashName(hash) + " is not available in OpenSSL");
  if (iterations == 0 || iterations > INT_MAX || pass_len > INT_MAX || salt_len > INT_MAX ||
      out_len > INT_MAX)
    return Status::InvalidArgument("PBKDF2: parameters out of range");
  static const char kEmpty[1] = {0};
  const char* p = pass_len == 0 ? kEmpty : reinterpret_cast<const char*>(pass);
  if (PKCS5_PBKDF2_HMAC(p, int(pass_len), salt, int(salt_len), int(iterations), md, int(out_len),
                        out) != 1)
    return Status::FromErrno(EIO, crypto::OpenSslError("PBKDF2"));
  return Status::OK();
}

}  // namespace kvmfs
