// VDI (VirtualBox) driver: the private map (after QEMU's block/vdi.c and
// VirtualBox's VDICore.h).
//
// A VDI file is a 512-byte little-endian header (a 72-byte pre-header and
// VDIHEADER1), a block map of u32 entries, one per 1 MiB guest block, and the
// data blocks: entry i < 0xfffffffe places guest block i at offset_data +
// entry * block_size; 0xffffffff (never allocated) and 0xfffffffe (discarded)
// read as zeros. Dynamic images (type 1) allocate blocks as they are written;
// static ones (type 2) have every block allocated at creation. There is no
// backing file (QEMU refuses differencing images) and no compression.
//
// Files: header.cpp (decode, validate, block-map scan), vdi.cpp (mapping,
// reads, writes, the Image and the driver).
//
// Writing, as QEMU's vdi driver: an allocated block is written in place; an
// unallocated one becomes block number blocks_allocated, written whole
// (zeros around the new bytes) at the end of the data area, then
// blocks_allocated in the header and the block-map sectors are rewritten.
// Locking: Engine::mutex() is shared by readers and in-place writers,
// exclusive for allocation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/format.h"
#include "kvmfs/image.h"
#include "kvmfs/status.h"

namespace kvmfs::vdi {

// ---- Limits and constants (QEMU block/vdi.c) --------------------------------------

inline constexpr uint32_t kSignature = 0xbeda107f;
inline constexpr uint32_t kVersion11 = 0x00010001;
inline constexpr uint32_t kTypeDynamic = 1;
inline constexpr uint32_t kTypeStatic = 2;
inline constexpr uint32_t kUnallocated = 0xffffffff;
inline constexpr uint32_t kDiscarded = 0xfffffffe;
inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint32_t kBlockSize = 1u << 20;  // the only block size QEMU accepts
// (INT_MAX + 1 - 512) / 4: the block map, rounded up to a sector, fits an int.
inline constexpr uint32_t kMaxBlocks = (0x80000000u - kSectorSize) / 4;
inline constexpr uint64_t kMaxDiskSize = uint64_t{kMaxBlocks} * kBlockSize;
inline constexpr uint32_t kPreHeaderSize = 72;  // text[64], signature, version
// VDIHEADER1 (QEMU) and VDIHEADER1PLUS (VirtualBox, with LCHS geometry).
inline constexpr uint32_t kMinHeaderSize = 0x180;
inline constexpr uint32_t kMaxHeaderSize = 512 - kPreHeaderSize;

inline bool IsAllocated(uint32_t entry) { return entry < kDiscarded; }

// ---- On-disk header (little-endian, 512 bytes) --------------------------------------

struct [[gnu::packed]] Uuid {
  uint8_t bytes[16];
  bool IsNull() const;
};

struct [[gnu::packed]] HeaderRaw {
  char text[64];
  uint32_t signature;
  uint32_t version;
  uint32_t header_size;
  uint32_t image_type;
  uint32_t image_flags;
  char description[256];
  uint32_t offset_bmap;
  uint32_t offset_data;
  uint32_t cylinders;
  uint32_t heads;
  uint32_t sectors;
  uint32_t sector_size;
  uint32_t unused1;
  uint64_t disk_size;
  uint32_t block_size;
  uint32_t block_extra;
  uint32_t blocks_in_image;
  uint32_t blocks_allocated;
  Uuid uuid_image;
  Uuid uuid_last_snap;
  Uuid uuid_link;
  Uuid uuid_parent;
  uint8_t rest[56];  // LCHS geometry (VDIHEADER1PLUS) and padding

  static HeaderRaw Decode(const uint8_t* p);  // 512 bytes at p
};
static_assert(sizeof(HeaderRaw) == 512);
inline constexpr size_t kHeaderSize = sizeof(HeaderRaw);
inline constexpr uint64_t kOffBlocksAllocated = 388;  // where blocks_allocated is stored

// ---- Parsed, validated header --------------------------------------------------------

struct Header {
  HeaderRaw raw{};
  uint64_t virtual_size = 0;  // disk_size rounded up to 512, as QEMU
  uint32_t blocks = 0;        // blocks_in_image
  uint32_t allocated = 0;     // blocks_allocated (changes while writing)
  uint64_t offset_bmap = 0;
  uint64_t offset_data = 0;
  bool is_static() const { return raw.image_type == kTypeStatic; }
};

// Reads and validates the header of `file` (`file_size` bytes) as QEMU's
// vdi_open does, plus VirtualBox's layout rules (the block map after the
// header, the data area after the block map, the map within the file).
// Errors name `name` and the field: kCorruption (invalid field),
// kNotSupported (version, block size, sector size, differencing images),
// kTooLarge (QEMU's size limits).
Result<Header> ReadHeader(Backend& file, uint64_t file_size, const std::string& name);

// Reads the block map (host order).
Result<std::vector<uint32_t>> ReadBlockMap(Backend& file, const Header& h, const std::string& name);

// Why writing to an image with this block map would damage it (entries past
// blocks_in_image, two blocks sharing one, blocks_allocated not matching the
// map: what `qemu-img check` calls corruption); empty when it is consistent.
std::string ScanBlockMap(const std::vector<uint32_t>& bmap, const Header& h);

// What `qemu-img check` says of a VDI image (QEMU's vdi_co_check, which looks
// at the block map only): one corruption per allocated entry not below
// blocks_in_image, per entry naming a data block an earlier entry named, and
// one when blocks_allocated differs from the entries below blocks_in_image.
// No leaks, image end or cluster counts (qemu-img prints none for VDI).
// `options.progress` hears of entries scanned.
CheckResult CheckBlockMap(const std::vector<uint32_t>& bmap, const Header& h,
                          const CheckOptions& options);

// Writes an empty dynamic image of options.size bytes into `file` (writable,
// empty) as `qemu-img create -f vdi` does (create.cpp). Errors: kTooLarge
// (past QEMU's VDI size limit), kNotSupported (a backing file), the
// backend's own errors.
Status CreateImage(Backend& file, const CreateOptions& options);

}  // namespace kvmfs::vdi
