// LUKS2 through libcryptsetup: header reading and key slot unlock only;
// the data is encrypted and decrypted by SectorCipher like LUKS1's.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "crypto/luks_internal.h"
#include "kvmfs/cipher.h"

#ifdef KVMFS_HAVE_LIBCRYPTSETUP
#include <libcryptsetup.h>
#endif

namespace kvmfs {

std::vector<InfoField> Luks2Volume::InfoFields() const {
  std::vector<InfoField> f;
  f.push_back({"version", int64_t{2}});
  f.push_back({"cipher-alg", spec.AlgName()});
  f.push_back({"cipher-mode", std::string(CipherModeName(spec.mode))});
  f.push_back({"ivgen-alg", std::string(IvGenName(spec.ivgen))});
  f.push_back({"sector-size", int64_t(spec.sector_size)});
  f.push_back({"uuid", uuid});
  f.push_back({"payload-offset", int64_t(payload_offset)});
  return f;
}

#ifndef KVMFS_HAVE_LIBCRYPTSETUP

bool Luks2Supported() { return false; }
Result<Luks2Volume> Luks2Open(int, const std::string& name) {
  return Status::NotSupported(name + ": LUKS version 2 needs kvmfs built with libcryptsetup");
}
Result<Secret> Luks2Unlock(int, const Luks2Volume&, const Secret&, const std::string& name) {
  return Status::NotSupported(name + ": LUKS version 2 needs kvmfs built with libcryptsetup");
}

#else

namespace {

constexpr uint32_t kMaxArgonPasses = 100;
constexpr uint32_t kMaxArgonMemoryKb = 4u * 1024 * 1024;

// libcryptsetup prints to stderr by default; kvmfs reports through Status.
void DropLog(int, const char*, void*) {}

struct Device {
  crypt_device* cd = nullptr;
  ~Device() {
    if (cd != nullptr) crypt_free(cd);
  }
};

Status Load(int fd, const std::string& name, Device& dev) {
  static std::once_flag once;
  std::call_once(once, [] { crypt_set_log_callback(nullptr, DropLog, nullptr); });
  if (fd < 0) return Status::NotSupported(name + ": LUKS2 needs a host file descriptor");
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  int r = crypt_init(&dev.cd, path);
  if (r < 0) return Status::FromErrno(-r, name + ": libcryptsetup cannot open the container");
  crypt_set_log_callback(dev.cd, DropLog, nullptr);
  r = crypt_load(dev.cd, CRYPT_LUKS2, nullptr);
  if (r < 0)
    return Status::Corruption(name + ": libcryptsetup refuses the LUKS2 header (" +
                              std::strerror(-r) + ")");
  return Status::OK();
}

// Refuses key slots whose PBKDF would take unbounded time or memory.
Status CheckSlots(crypt_device* cd, const std::string& name) {
  const int slots = crypt_keyslot_max(CRYPT_LUKS2);
  for (int i = 0; i < slots; ++i) {
    const crypt_keyslot_info state = crypt_keyslot_status(cd, i);
    if (state != CRYPT_SLOT_ACTIVE && state != CRYPT_SLOT_ACTIVE_LAST) continue;
    crypt_pbkdf_type pbkdf{};
    if (crypt_keyslot_get_pbkdf(cd, i, &pbkdf) < 0 || pbkdf.type == nullptr) continue;
    const std::string slot = name + ": LUKS2 key slot " + std::to_string(i);
    if (std::strcmp(pbkdf.type, CRYPT_KDF_PBKDF2) == 0) {
      if (pbkdf.iterations > kLuksMaxIterations)
        return Status::NotSupported(slot + " asks for " + std::to_string(pbkdf.iterations) +
                                    " PBKDF2 iterations, more than kvmfs computes (" +
                                    std::to_string(kLuksMaxIterations) + ")");
    } else if (pbkdf.iterations > kMaxArgonPasses || pbkdf.max_memory_kb > kMaxArgonMemoryKb) {
      return Status::NotSupported(slot + " asks for " + pbkdf.type + " with " +
                                  std::to_string(pbkdf.iterations) + " passes over " +
                                  std::to_string(pbkdf.max_memory_kb) +
                                  " KiB, more than kvmfs computes");
    }
  }
  return Status::OK();
}

}  // namespace

bool Luks2Supported() { return true; }

Result<Luks2Volume> Luks2Open(int fd, const std::string& name) {
  Device dev;
  KVMFS_RETURN_IF_ERROR(Load(fd, name, dev));
  Luks2Volume v;
  const char* cipher = crypt_get_cipher(dev.cd);
  const char* mode = crypt_get_cipher_mode(dev.cd);
  const char* uuid = crypt_get_uuid(dev.cd);
  const int key_bytes = crypt_get_volume_key_size(dev.cd);
  if (cipher == nullptr || mode == nullptr || key_bytes <= 0)
    return Status::NotSupported(name + ": LUKS2 container without a crypt data segment");
  v.cipher = std::string(cipher) + "-" + mode;
  v.uuid = uuid != nullptr ? uuid : "";
  v.payload_offset = crypt_get_data_offset(dev.cd) * kCryptSectorSize;
  Status names = ParseLuksCipher(cipher, mode, uint32_t(key_bytes), name, &v.spec);
  if (names.IsCorruption()) return names;
  v.spec.sector_size = uint32_t(crypt_get_sector_size(dev.cd));
  crypt_params_integrity integrity{};
  if (names.ok() && crypt_get_integrity_info(dev.cd, &integrity) == 0 &&
      integrity.integrity != nullptr && integrity.integrity[0] != '\0')
    names = Status::NotSupported(name + ": LUKS2 with integrity protection (" +
                                 integrity.integrity + ") is not supported");
  if (names.ok()) {
    names = v.spec.Supported();
    if (!names.ok()) names = names.WithContext(name);
  }
  if (names.ok() && (v.spec.sector_size < kCryptSectorSize || v.spec.sector_size > 4096))
    names = Status::NotSupported(name + ": LUKS2 sector size " +
                                 std::to_string(v.spec.sector_size) + " is not supported");
  v.support = names;
  return v;
}

Result<Secret> Luks2Unlock(int fd, const Luks2Volume& volume, const Secret& passphrase,
                           const std::string& name) {
  KVMFS_RETURN_IF_ERROR(volume.support);
  Device dev;
  KVMFS_RETURN_IF_ERROR(Load(fd, name, dev));
  KVMFS_RETURN_IF_ERROR(CheckSlots(dev.cd, name));
  KVMFS_ASSIGN_OR_RETURN(Secret key, Secret::Allocate(volume.spec.key_bytes));
  size_t size = key.size();
  const int r = crypt_volume_key_get(dev.cd, CRYPT_ANY_SLOT, reinterpret_cast<char*>(key.data()),
                                     &size, reinterpret_cast<const char*>(passphrase.data()),
                                     passphrase.size());
  if (r == -EPERM || r == -ENOENT)
    return Status::Permission(name + ": wrong key: the configured passphrase opens no LUKS2 key slot");
  if (r < 0)
    return Status::Corruption(name + ": libcryptsetup cannot unlock the volume key (" +
                              std::strerror(-r) + ")");
  if (size != volume.spec.key_bytes)
    return Status::Corruption(name + ": LUKS2 volume key of " + std::to_string(size) +
                              " bytes, expected " + std::to_string(volume.spec.key_bytes));
  return key;
}

#endif  // KVMFS_HAVE_LIBCRYPTSETUP

}  // namespace kvmfs
