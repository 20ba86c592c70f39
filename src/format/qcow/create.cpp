// Creating an empty qcow (version 1) image as `qemu-img create -f qcow` of
// QEMU 7.2 does (qcow_co_create): the 48-byte header (mtime 0, no
// encryption), the backing file name right after it (QEMU records no backing
// format in qcow), the L1 table at the next multiple of 8, all zeros, written
// in whole sectors: the file ends there. Without a backing file clusters are
// 4 KiB with 4 KiB L2 tables; with one, 512-byte clusters (nothing of the
// backing file is copied on partial writes) with 32 KiB L2 tables.
#include <algorithm>
#include <string>
#include <vector>

#include "format/qcow/qcow.h"

namespace kvmfs::qcow {

Status CreateImage(Backend& file, const CreateOptions& options) {
  const std::string& name = file.name();
  const uint64_t size = (options.size + kSectorSize - 1) / kSectorSize * kSectorSize;
  if (size == 0)
    return Status::InvalidArgument(name + ": image size is too small, cannot be zero length "
                                          "(QEMU's qcow driver)");
  if (options.backing_file.size() > kMaxBackingNameLen)
    return Status::InvalidArgument(name + ": backing file name longer than " +
                                   std::to_string(kMaxBackingNameLen) + " bytes");
  const bool backing = !options.backing_file.empty();
  HeaderRaw h{};
  h.magic = kMagic;
  h.version = kVersion;
  h.size = size;
  h.cluster_bits = backing ? 9 : 12;
  h.l2_bits = backing ? 12 : 9;
  h.crypt_method = kCryptNone;
  uint64_t header_size = kHeaderSize;
  if (backing) {
    h.backing_file_offset = kHeaderSize;
    h.backing_file_size = static_cast<uint32_t>(options.backing_file.size());
    header_size += options.backing_file.size();
  }
  header_size = (header_size + 7) & ~uint64_t{7};
  h.l1_table_offset = header_size;
  const uint32_t shift = h.cluster_bits + h.l2_bits;
  const uint64_t l1_entries = (size + (uint64_t{1} << shift) - 1) >> shift;
  // QEMU creates larger ones, then cannot open them ("Image too large").
  if (l1_entries > kMaxL1Entries)
    return Status::TooLarge(name + ": image size " + std::to_string(size) +
                            " needs more L1 entries than QEMU's qcow driver opens (" +
                            std::to_string(kMaxL1Entries) + ")");

  std::vector<uint8_t> head(header_size, 0);
  h.Encode(head.data());
  std::copy(options.backing_file.begin(), options.backing_file.end(), head.begin() + kHeaderSize);
  KVMFS_RETURN_IF_ERROR(file.WriteAt(0, head.data(), head.size()).WithContext(name));
  // The zeroed L1 (up to 2 GiB) by growing the file: the same bytes.
  const uint64_t l1_bytes = (l1_entries * 8 + kSectorSize - 1) / kSectorSize * kSectorSize;
  return file.Truncate(header_size + l1_bytes).WithContext(name);
}

}  // namespace kvmfs::qcow
