// Creating an empty dynamic VDI image as `qemu-img create -f vdi` of QEMU 7.2
// does (vdi_co_do_create): the 512-byte header (QEMU's text, version 1.1,
// header_size 0x180, block map at 0x200, 1 MiB blocks, no geometry, random
// image and last-snapshot UUIDs, no link or parent), then the block map with
// every entry 0xffffffff, padded with zeros to a sector. The file ends there:
// offset_data is the end of the block map and no block is allocated.
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "base/endian.h"
#include "format/vdi/vdi.h"

namespace kvmfs::vdi {
namespace {

constexpr char kQemuText[] = "<<< QEMU VM Virtual Disk Image >>>\n";

// A random (version 4) UUID as QEMU stores it in a VDI header: generated in
// RFC 4122 byte order, then its first three fields byte-swapped to little
// endian (vdi_header_to_le's uuid conversion).
void NewUuid(uint8_t* p) {
  std::random_device rd;
  for (int i = 0; i < 16; i += 4) StoreLE32(p + i, rd());
  p[6] = uint8_t((p[6] & 0x0f) | 0x40);
  p[8] = uint8_t((p[8] & 0x3f) | 0x80);
  std::swap(p[0], p[3]);
  std::swap(p[1], p[2]);
  std::swap(p[4], p[5]);
  std::swap(p[6], p[7]);
}

}  // namespace

Status CreateImage(Backend& file, const CreateOptions& options) {
  const std::string& name = file.name();
  if (!options.backing_file.empty())
    return Status::NotSupported(name + ": VDI images have no backing files (QEMU's vdi driver)");
  if (options.size > kMaxDiskSize)
    return Status::TooLarge(name + ": unsupported VDI image size " + std::to_string(options.size) +
                            " (max supported is " + std::to_string(kMaxDiskSize) + ")");
  const uint64_t size = (options.size + kSectorSize - 1) / kSectorSize * kSectorSize;
  const uint64_t blocks = (size + kBlockSize - 1) / kBlockSize;
  const uint64_t bmap_bytes = (blocks * 4 + kSectorSize - 1) / kSectorSize * kSectorSize;

  uint8_t h[kHeaderSize] = {};
  std::memcpy(h, kQemuText, sizeof kQemuText - 1);
  StoreLE32(h + 64, kSignature);
  StoreLE32(h + 68, kVersion11);
  StoreLE32(h + 72, kMinHeaderSize);
  StoreLE32(h + 76, kTypeDynamic);
  StoreLE32(h + 340, kHeaderSize);                                     // offset_bmap
  StoreLE32(h + 344, static_cast<uint32_t>(kHeaderSize + bmap_bytes));  // offset_data
  StoreLE32(h + 360, kSectorSize);
  StoreLE64(h + 368, size);
  StoreLE32(h + 376, kBlockSize);
  StoreLE32(h + 384, static_cast<uint32_t>(blocks));
  NewUuid(h + 392);  // uuid_image
  NewUuid(h + 408);  // uuid_last_snap
  KVMFS_RETURN_IF_ERROR(file.WriteAt(0, h, sizeof h).WithContext(name));
  // The block map (up to 2 GiB) in pieces of at most 1 MiB.
  std::vector<uint8_t> piece;
  for (uint64_t done = 0; done < bmap_bytes;) {
    const uint64_t n = std::min<uint64_t>(bmap_bytes - done, kBlockSize);
    const uint64_t entries = std::min<uint64_t>(blocks * 4 - std::min(blocks * 4, done), n);
    piece.assign(n, 0);
    std::memset(piece.data(), 0xff, entries);
    KVMFS_RETURN_IF_ERROR(file.WriteAt(kHeaderSize + done, piece.data(), n).WithContext(name));
    done += n;
  }
  return Status::OK();
}

}  // namespace kvmfs::vdi
