// VHD (QEMU's "vpc" driver): the private map of the driver.
//
// On-disk structures (the hard-disk footer and the dynamic disk header, both
// big-endian), the virtual size rule QEMU 7.2 applies (CHS product or the
// footer's current size, chosen by creator application), and the validated
// layout an Image is built from. Byte-level reference: formats-vhd.md §1.
//   footer.cpp  decode and validate footer, dynamic header and BAT
//   vpc.cpp     driver entry (Probe, Peek, Open) and the Image
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/format.h"
#include "kvmfs/status.h"

namespace kvmfs::vpc {

// ---- Limits and constants (QEMU block/vpc.c) ----------------------------------

inline constexpr size_t kFooterSize = 512;
inline constexpr size_t kDynHeaderSize = 1024;
inline constexpr uint32_t kTypeFixed = 2;
inline constexpr uint32_t kTypeDynamic = 3;
inline constexpr uint32_t kTypeDifferencing = 4;
inline constexpr uint64_t kMaxSectors = 0xff000000ull;  // VHD_MAX_SECTORS: 2040 GiB
inline constexpr uint64_t kMaxGeometry = 65535ull * 16 * 255;  // VHD_MAX_GEOMETRY
inline constexpr uint32_t kUnallocated = 0xffffffffu;  // a BAT entry with no block
inline constexpr uint64_t kSector = 512;

// ---- The hard-disk footer, 512 bytes -------------------------------------------

struct Footer {
  // Field offsets.
  static constexpr size_t kOffCookie = 0;
  static constexpr size_t kOffDataOffset = 16;
  static constexpr size_t kOffCreatorApp = 28;
  static constexpr size_t kOffOrigSize = 40;
  static constexpr size_t kOffCurrentSize = 48;
  static constexpr size_t kOffCylinders = 56;
  static constexpr size_t kOffHeads = 58;
  static constexpr size_t kOffSectors = 59;
  static constexpr size_t kOffType = 60;
  static constexpr size_t kOffChecksum = 64;

  uint8_t raw[kFooterSize] = {};  // as read: QEMU writes this copy back verbatim
  char creator_app[4] = {};
  uint64_t data_offset = 0;
  uint64_t current_size = 0;
  uint16_t cylinders = 0;
  uint8_t heads = 0;
  uint8_t sectors_per_track = 0;
  uint32_t type = 0;
  uint32_t checksum = 0;

  static Footer Decode(const uint8_t* p);
  bool HasCookie() const;
  uint64_t ChsSectors() const { return uint64_t(cylinders) * heads * sectors_per_track; }
};
static_assert(sizeof(Footer::raw) == kFooterSize);

// ---- The dynamic disk header, 1024 bytes ---------------------------------------

struct DynHeader {
  static constexpr size_t kOffCookie = 0;
  static constexpr size_t kOffTableOffset = 16;
  static constexpr size_t kOffMaxTableEntries = 28;
  static constexpr size_t kOffBlockSize = 32;
  static constexpr size_t kOffChecksum = 36;

  bool cookie_ok = false;  // "cxsparse"
  uint64_t table_offset = 0;
  uint32_t max_table_entries = 0;
  uint32_t block_size = 0;

  static DynHeader Decode(const uint8_t* p);
};

// The VHD checksum: one's complement of the byte sum, with the 4 bytes at
// `checksum_off` counted as zero.
uint32_t Checksum(const uint8_t* p, size_t len, size_t checksum_off);

// Which of the two sizes QEMU 7.2 believes (vpc_open): current_size for the
// creators that write it (Hyper-V "win ", "qem2", "d2v ", "CTXS", "tap\0")
// or a maximal CHS geometry, else the CHS product. In sectors.
uint64_t VirtualSectors(const Footer& f);

// ---- The validated layout -----------------------------------------------------

struct Layout {
  Footer footer;             // the footer QEMU uses (offset 0, else the end)
  bool fixed_io = false;     // footer.type == 2: guest offset = file offset
  uint64_t virtual_size = 0;
  // Dynamic (and differencing) images only.
  bool dynamic = false;      // a dynamic header and BAT were read
  uint32_t block_size = 0;
  uint32_t bitmap_size = 0;  // round_up(block_size / 4096, 512), 0 below 4 KiB
  uint64_t bat_offset = 0;
  std::vector<uint32_t> bat;  // max_table_entries entries, host order
  // Where the next block goes (QEMU's free_data_block_offset): past the BAT
  // and every allocated block; the trailing footer lives there.
  uint64_t free_data_block_offset = 0;
};

// Reads and validates everything QEMU's vpc_open reads, with its checks and
// errors (formats-vhd.md §1.4, §1.14), each naming `name`. Every BAT entry
// is within the file when this returns.
Result<Layout> ReadLayout(Backend& file, uint64_t file_size, const std::string& name);

// Writes an empty dynamic VHD of at least options.size bytes into `file`
// (writable, empty) as `qemu-img create -f vpc` does (create.cpp): the size
// grows to the first CHS geometry that holds it. Errors: kTooLarge (past
// 2040 GiB), kNotSupported (a backing file), the backend's own errors.
Status CreateImage(Backend& file, const CreateOptions& options);

}  // namespace kvmfs::vpc
