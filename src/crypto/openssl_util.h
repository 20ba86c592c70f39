// OpenSSL glue shared by the cipher layer's files: algorithms fetched once,
// RAII for contexts.
#pragma once

#include <openssl/evp.h>

#include <memory>

#include "kvmfs/cipher.h"

namespace kvmfs::crypto {

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
// EVP_CIPHER_CTX_free() wipes the expanded key (the providers' freectx
// clear their state before freeing).
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

// The digest for `hash`, fetched once per process; nullptr when OpenSSL's
// default provider lacks it.
const EVP_MD* Digest(HashAlg hash);

// AES with a key of `key_bytes` (16, 24, 32; XTS: 32 or 64) in `mode`,
// fetched once; nullptr when OpenSSL has no such cipher (AES-192-XTS).
const EVP_CIPHER* AesCipher(CipherMode mode, size_t key_bytes);

// The last OpenSSL error as text (for kIOError messages; never key bytes).
std::string OpenSslError(const char* what);

}  // namespace kvmfs::crypto
