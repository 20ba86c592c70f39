// Shared by the LUKS1 (luks.cpp) and LUKS2 (luks2.cpp) readers.
#pragma once

#include <string>

#include "kvmfs/cipher.h"

namespace kvmfs {

// The LUKS cipher strings ("aes", "xts-plain64" or "cbc-essiv:sha256", key
// size) as a CipherSpec: kCorruption for a malformed mode string,
// kNotSupported for names QEMU does not know; a cipher QEMU knows but
// OpenSSL does not compute (serpent, twofish, cast5) is CipherAlg::kOther.
Status ParseLuksCipher(const std::string& cipher_name, const std::string& cipher_mode,
                       uint32_t key_bytes, const std::string& name, CipherSpec* spec);

}  // namespace kvmfs
