// Creating an empty dynamic VHD as `qemu-img create -f vpc` of QEMU 7.2 does
// (vpc_co_create, create_dynamic_disk; formats-vhd.md §1.5, §1.13): the size
// rounded up to the first CHS geometry that holds it (up to 65535/16/255, past
// which the size itself is kept), a footer copy at 0 ("qemu" 5.3 on "Wi2k",
// the time, a random UUID), the dynamic header at 512 (2 MiB blocks), the BAT
// at 1536 in whole sectors of 0xff, and the footer again after it.
#include <algorithm>
#include <ctime>
#include <cstring>
#include <random>
#include <vector>

#include "base/endian.h"
#include "format/vpc/vpc.h"

namespace kvmfs::vpc {
namespace {

constexpr uint32_t kCreateBlockSize = 0x200000;
constexpr uint64_t kBatOffset = 3 * kSector;
constexpr uint32_t kTimestampBase = 946684800;  // 2000-01-01T00:00:00Z

struct Chs {
  uint16_t cylinders = 0;
  uint8_t heads = 0;
  uint8_t sectors = 0;
  uint64_t product() const { return uint64_t{cylinders} * heads * sectors; }
};

// QEMU's calculate_geometry (the VHD specification's algorithm).
Chs Geometry(uint64_t total_sectors) {
  total_sectors = std::min(total_sectors, kMaxGeometry);
  Chs g;
  uint32_t cyls_times_heads;
  if (total_sectors >= 65535ull * 16 * 63) {
    g.sectors = 255;
    g.heads = 16;
    cyls_times_heads = static_cast<uint32_t>(total_sectors / 255);
  } else {
    g.sectors = 17;
    cyls_times_heads = static_cast<uint32_t>(total_sectors / 17);
    uint32_t heads = (cyls_times_heads + 1023) / 1024;
    if (heads < 4) heads = 4;
    if (cyls_times_heads >= heads * 1024 || heads > 16) {
      g.sectors = 31;
      heads = 16;
      cyls_times_heads = static_cast<uint32_t>(total_sectors / 31);
    }
    if (cyls_times_heads >= heads * 1024) {
      g.sectors = 63;
      heads = 16;
      cyls_times_heads = static_cast<uint32_t>(total_sectors / 63);
    }
    g.heads = static_cast<uint8_t>(heads);
  }
  g.cylinders = static_cast<uint16_t>(cyls_times_heads / g.heads);
  return g;
}

void Footer512(uint8_t* f, uint64_t size, const Chs& g) {
  std::memcpy(f + Footer::kOffCookie, "conectix", 8);
  StoreBE32(f + 8, 2);            // features: reserved bit, always set
  StoreBE32(f + 12, 0x00010000);  // file format version
  StoreBE64(f + Footer::kOffDataOffset, kSector);
  StoreBE32(f + 24, static_cast<uint32_t>(std::time(nullptr) - kTimestampBase));
  std::memcpy(f + Footer::kOffCreatorApp, "qemu", 4);
  StoreBE16(f + 32, 5);  // Virtual PC 2007's version, 5.3
  StoreBE16(f + 34, 3);
  std::memcpy(f + 36, "Wi2k", 4);
  StoreBE64(f + Footer::kOffOrigSize, size);
  StoreBE64(f + Footer::kOffCurrentSize, size);
  StoreBE16(f + Footer::kOffCylinders, g.cylinders);
  f[Footer::kOffHeads] = g.heads;
  f[Footer::kOffSectors] = g.sectors;
  StoreBE32(f + Footer::kOffType, kTypeDynamic);
  std::random_device rd;  // a version 4 UUID, RFC 4122 byte order
  for (int i = 0; i < 16; i += 4) StoreLE32(f + 68 + i, rd());
  f[68 + 6] = uint8_t((f[68 + 6] & 0x0f) | 0x40);
  f[68 + 8] = uint8_t((f[68 + 8] & 0x3f) | 0x80);
  StoreBE32(f + Footer::kOffChecksum, Checksum(f, kFooterSize, Footer::kOffChecksum));
}

}  // namespace

Status CreateImage(Backend& file, const CreateOptions& options) {
  const std::string& name = file.name();
  if (!options.backing_file.empty())
    return Status::NotSupported(name + ": VHD images have no backing files (QEMU's vpc driver)");
  const uint64_t requested = (options.size + kSector - 1) / kSector;
  if (requested > kMaxSectors)
    return Status::TooLarge(name + ": the image size " + std::to_string(options.size) +
                            " is too large for file format 'vpc' (max 2040 GiB)");
  // The first geometry at or above the size; the maximal one keeps the size.
  Chs g;
  for (uint64_t i = 0; std::min(kMaxGeometry, requested) > g.product(); ++i) g = Geometry(requested + i);
  const uint64_t sectors = g.product() == kMaxGeometry ? requested : g.product();
  const uint64_t size = sectors * kSector;
  const uint64_t entries = (sectors + kCreateBlockSize / kSector - 1) / (kCreateBlockSize / kSector);
  const uint64_t bat_bytes = (entries * 4 + kSector - 1) / kSector * kSector;

  std::vector<uint8_t> head(kBatOffset + bat_bytes, 0xff);
  std::memset(head.data(), 0, kBatOffset);
  Footer512(head.data(), size, g);
  uint8_t* d = head.data() + kFooterSize;
  std::memcpy(d + DynHeader::kOffCookie, "cxsparse", 8);
  StoreBE64(d + 8, ~uint64_t{0});  // data offset: unused, all ones as Microsoft's tools expect
  StoreBE64(d + DynHeader::kOffTableOffset, kBatOffset);
  StoreBE32(d + 24, 0x00010000);  // header version
  StoreBE32(d + DynHeader::kOffMaxTableEntries, static_cast<uint32_t>(entries));
  StoreBE32(d + DynHeader::kOffBlockSize, kCreateBlockSize);
  StoreBE32(d + DynHeader::kOffChecksum, Checksum(d, kDynHeaderSize, DynHeader::kOffChecksum));
  KVMFS_RETURN_IF_ERROR(file.WriteAt(0, head.data(), head.size()).WithContext(name));
  return file.WriteAt(head.size(), head.data(), kFooterSize).WithContext(name);
}

}  // namespace kvmfs::vpc
