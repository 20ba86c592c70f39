// qcow header: decode, encode and validation (QEMU's qcow_open checks, plus
// the table locations checked against the file).
#include <cstring>
#include <string>

#include "base/endian.h"
#include "format/qcow/qcow.h"

namespace kvmfs::qcow {

std::string Hex(uint64_t v) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s;
  do {
    s.insert(s.begin(), kDigits[v & 15]);
    v >>= 4;
  } while (v != 0);
  return "0x" + s;
}

HeaderRaw HeaderRaw::Decode(const uint8_t* p) {
  HeaderRaw h{};
  h.magic = LoadBE32(p + 0);
  h.version = LoadBE32(p + 4);
  h.backing_file_offset = LoadBE64(p + 8);
  h.backing_file_size = LoadBE32(p + 16);
  h.mtime = LoadBE32(p + 20);
  h.size = LoadBE64(p + 24);
  h.cluster_bits = p[32];
  h.l2_bits = p[33];
  h.padding = LoadBE16(p + 34);
  h.crypt_method = LoadBE32(p + 36);
  h.l1_table_offset = LoadBE64(p + 40);
  return h;
}

void HeaderRaw::Encode(uint8_t* p) const {
  StoreBE32(p + 0, magic);
  StoreBE32(p + 4, version);
  StoreBE64(p + 8, backing_file_offset);
  StoreBE32(p + 16, backing_file_size);
  StoreBE32(p + 20, mtime);
  StoreBE64(p + 24, size);
  p[32] = cluster_bits;
  p[33] = l2_bits;
  StoreBE16(p + 34, padding);
  StoreBE32(p + 36, crypt_method);
  StoreBE64(p + 40, l1_table_offset);
}

namespace {

Status Bad(const std::string& name, const std::string& what) {
  return Status::Corruption(name + ": invalid qcow header: " + what);
}

// [off, off+len) within a file of `file_size` bytes, without overflow.
bool InFile(uint64_t off, uint64_t len, uint64_t file_size) {
  return off <= file_size && len <= file_size - off;
}

}  // namespace

Result<Header> ReadHeader(Backend& file, uint64_t file_size, const std::string& name) {
  if (file_size < kHeaderSize)
    return Bad(name, "the file is " + std::to_string(file_size) + " bytes, shorter than the " +
                         std::to_string(kHeaderSize) + "-byte header");
  uint8_t buf[kHeaderSize];
  KVMFS_RETURN_IF_ERROR(file.ReadAt(0, buf, sizeof buf).WithContext(name));
  Header h;
  h.raw = HeaderRaw::Decode(buf);
  const HeaderRaw& r = h.raw;
  if (r.magic != kMagic) return Bad(name, "magic " + Hex(r.magic) + " is not QFI\\xfb");
  if (r.version != kVersion)
    return Status::NotSupported(name + ": qcow version " + std::to_string(r.version) +
                                " is not supported (only 1)");
  if (r.size <= 1)
    return Bad(name, "size " + std::to_string(r.size) + " is too small (must be at least 2 bytes)");
  if (r.cluster_bits < kMinClusterBits || r.cluster_bits > kMaxClusterBits)
    return Bad(name, "cluster_bits " + std::to_string(r.cluster_bits) +
                         ": the cluster size must be between 512 and 64k");
  if (r.l2_bits < kMinL2Bits || r.l2_bits > kMaxL2Bits)
    return Bad(name, "l2_bits " + std::to_string(r.l2_bits) +
                         ": the L2 table size must be between 512 and 64k");
  if (r.crypt_method > kCryptAes)
    return Bad(name, "crypt_method " + std::to_string(r.crypt_method) +
                         " is no encryption method (0 none, 1 AES)");

  h.cluster_bits = r.cluster_bits;
  h.cluster_size = uint64_t{1} << r.cluster_bits;
  h.l2_bits = r.l2_bits;
  h.l2_entries = uint64_t{1} << r.l2_bits;
  h.l2_bytes = h.l2_entries * 8;
  h.virtual_size = r.size & ~(kSectorSize - 1);

  // L1 entries: ceil(size / 2^(cluster_bits + l2_bits)), QEMU's bounds.
  const uint32_t shift = h.l1_shift();
  if (r.size > UINT64_MAX - (uint64_t{1} << shift))
    return Status::TooLarge(name + ": qcow size " + std::to_string(r.size) + " is too large");
  h.l1_entries = (r.size + (uint64_t{1} << shift) - 1) >> shift;
  if (h.l1_entries > kMaxL1Entries)
    return Status::TooLarge(name + ": qcow size " + std::to_string(r.size) +
                            " needs an L1 table of " + std::to_string(h.l1_entries) +
                            " entries, more than QEMU's " + std::to_string(kMaxL1Entries));
  h.l1_offset = r.l1_table_offset;
  const uint64_t l1_bytes = h.l1_entries * 8;
  if (h.l1_offset < kHeaderSize || !InFile(h.l1_offset, l1_bytes, file_size))
    return Bad(name, "l1_table_offset " + Hex(h.l1_offset) + " (" + std::to_string(l1_bytes) +
                         " bytes) is not within the file (" + std::to_string(file_size) +
                         " bytes) after the header");
  h.meta_end = h.l1_offset + l1_bytes;

  // The backing file name: QEMU reads it when the offset is set; a name
  // ends at its first NUL.
  if (r.backing_file_offset != 0) {
    const uint64_t len = r.backing_file_size;
    if (len > kMaxBackingNameLen)
      return Bad(name, "backing_file_size " + std::to_string(len) + " is longer than " +
                           std::to_string(kMaxBackingNameLen) + " bytes");
    if (r.backing_file_offset < kHeaderSize || !InFile(r.backing_file_offset, len, file_size))
      return Bad(name, "backing_file_offset " + Hex(r.backing_file_offset) + " (" +
                           std::to_string(len) + " bytes) is not within the file (" +
                           std::to_string(file_size) + " bytes) after the header");
    std::string backing(len, '\0');
    KVMFS_RETURN_IF_ERROR(
        file.ReadAt(r.backing_file_offset, backing.data(), len).WithContext(name));
    backing.resize(std::strlen(backing.c_str()));
    h.backing_file = std::move(backing);
    h.meta_end = std::max(h.meta_end, r.backing_file_offset + len);
  }
  return h;
}

}  // namespace kvmfs::qcow
