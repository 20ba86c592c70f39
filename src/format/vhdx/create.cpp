// Creating an empty dynamic VHDX as `qemu-img create -f vhdx` of QEMU 7.2
// does with default options (vhdx_co_create; formats-vhd.md §2.10): 1 MiB
// log, block size by the size (8 MiB up to 1 GiB, 16 MiB up to 100 GiB,
// 32 MiB up to 32 TiB, 64 MiB above), block_state_zero=on.
//
//   0        file identifier: "vhdxfile" and the creator (UTF-16LE; QEMU
//            writes "QEMU v<version>", kvmfs "kvmfs")
//   64 KiB   header 1, sequence a random 32-bit number; 128 KiB header 2,
//            that number + 1; the same random file and data write GUIDs,
//            no log GUID, the log at 1 MiB
//   192 KiB  region table, and its copy at 256 KiB: the BAT and the metadata
//   1 MiB    the log (empty)
//   2 MiB    the BAT: every payload entry ZERO, sector bitmap entries 0, as
//            long as QEMU's (32-bit) entry count says, rounded up to 1 MiB
//   after it the metadata region (1 MiB): table, then the five items at 64 KiB
//   BAT end + 5 MiB: the end of the file (the first block goes there)
#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "base/endian.h"
#include "format/vhdx/vhdx.h"

namespace kvmfs::vhdx {
namespace {

constexpr uint64_t kMaxImageSize = 64ull << 40;  // VHDX_MAX_IMAGE_SIZE
constexpr uint64_t kLogSize = kMiB;
constexpr uint64_t kLogOffset = kMiB;  // the end of the header section
constexpr uint64_t kRegionTable2Offset = 256 * 1024;
constexpr uint32_t kSectorSize = 512;
constexpr char kCreator[] = "kvmfs";
// Metadata entry flags.
constexpr uint32_t kMetaVirtualDisk = 2;
constexpr uint32_t kMetaRequired = 4;

uint32_t DefaultBlockSize(uint64_t size) {
  if (size > 32ull << 40) return 64 * kMiB;
  if (size > 100ull << 30) return 32 * kMiB;
  if (size > 1ull << 30) return 16 * kMiB;
  return 8 * kMiB;
}

uint64_t RoundUpMiB(uint64_t v) { return (v + kMiB - 1) / kMiB * kMiB; }

Status WriteHeaders(Backend& file) {
  Header h;
  h.sequence = static_cast<uint32_t>(std::random_device{}());
  h.file_write_guid = NewRandomGuid();
  h.data_write_guid = NewRandomGuid();
  h.version = 1;
  h.log_length = kLogSize;
  h.log_offset = kLogOffset;
  for (const uint64_t at : {kHeader1Offset, kHeader2Offset}) {
    std::vector<uint8_t> block(kHeaderBlockSize, 0);
    h.Encode(block.data());
    StoreLE32(block.data() + Header::kOffChecksum,
              ChecksumWithZeroField(block.data(), block.size(), Header::kOffChecksum));
    KVMFS_RETURN_IF_ERROR(file.WriteAt(at, block.data(), kHeaderStructSize));
    ++h.sequence;  // header 2 is the current one
  }
  return Status::OK();
}

void PutEntry(uint8_t* p, const Guid& guid, uint64_t offset, uint32_t length, uint32_t bits) {
  std::memcpy(p, guid.data(), 16);
  StoreLE64(p + 16, offset);
  StoreLE32(p + 24, length);
  StoreLE32(p + 28, bits);
}

void PutMetaEntry(uint8_t* p, const Guid& guid, uint32_t offset, uint32_t length, uint32_t bits) {
  std::memcpy(p, guid.data(), 16);
  StoreLE32(p + 16, offset);
  StoreLE32(p + 20, length);
  StoreLE32(p + 24, bits);
}

Status WriteMetadata(Backend& file, uint64_t at, uint64_t size, uint32_t block_size) {
  std::vector<uint8_t> table(kTableBlockSize, 0);
  std::memcpy(table.data(), "metadata", 8);
  table[10] = 5;  // entry count (LE16)
  constexpr uint32_t kItems = 64 * 1024;
  PutMetaEntry(&table[32], kFileParametersGuid, kItems, 8, kMetaRequired);
  PutMetaEntry(&table[64], kVirtualDiskSizeGuid, kItems + 8, 8, kMetaRequired | kMetaVirtualDisk);
  PutMetaEntry(&table[96], kPage83Guid, kItems + 16, 16, kMetaRequired | kMetaVirtualDisk);
  PutMetaEntry(&table[128], kLogicalSectorGuid, kItems + 32, 4, kMetaRequired | kMetaVirtualDisk);
  PutMetaEntry(&table[160], kPhysicalSectorGuid, kItems + 36, 4, kMetaRequired | kMetaVirtualDisk);
  KVMFS_RETURN_IF_ERROR(file.WriteAt(at, table.data(), table.size()));
  uint8_t items[40] = {};
  StoreLE32(items, block_size);  // file parameters: no flags (dynamic, no parent)
  StoreLE64(items + 8, size);
  const Guid page83 = NewRandomGuid();
  std::memcpy(items + 16, page83.data(), 16);
  StoreLE32(items + 32, kSectorSize);
  StoreLE32(items + 36, kSectorSize);
  return file.WriteAt(at + kItems, items, sizeof items);
}

// The BAT at `at`: entry b + b / ratio of every payload block b ZERO, the
// rest (sector bitmap entries) 0; written in pieces, only where not zero
// (the file was grown over it).
Status WriteBat(Backend& file, uint64_t at, uint64_t blocks, uint64_t ratio) {
  constexpr uint64_t kPieceEntries = kMiB / 8;
  const uint64_t entries = blocks == 0 ? 0 : blocks + (blocks - 1) / ratio;
  std::vector<uint8_t> piece;
  for (uint64_t first = 0; first < entries; first += kPieceEntries) {
    const uint64_t n = std::min(kPieceEntries, entries - first);
    piece.assign(n * 8, 0);
    for (uint64_t i = 0; i < n; ++i)
      if ((first + i) % (ratio + 1) != ratio) StoreLE64(&piece[8 * i], kZero);
    KVMFS_RETURN_IF_ERROR(file.WriteAt(at + first * 8, piece.data(), piece.size()));
  }
  return Status::OK();
}

}  // namespace

Status CreateImage(Backend& file, const CreateOptions& options) {
  const std::string& name = file.name();
  if (!options.backing_file.empty())
    return Status::NotSupported(name + ": QEMU makes no differencing VHDX images");
  const uint64_t size = (options.size + kSectorSize - 1) / kSectorSize * kSectorSize;
  if (size > kMaxImageSize)
    return Status::TooLarge(name + ": image size " + std::to_string(options.size) +
                            " too large; max of 64TB");
  const uint32_t block_size = DefaultBlockSize(size);
  const uint64_t ratio = kMaxSectorsPerBlock * kSectorSize / block_size;
  const uint64_t blocks = (size + block_size - 1) / block_size;
  // QEMU counts BAT entries in 32 bits: for size 0, (0 - 1) / ratio makes
  // a BAT of 2^32 / ratio entries (64 MiB with 8 MiB blocks).
  const uint32_t count = static_cast<uint32_t>(blocks) +
                         ((static_cast<uint32_t>(blocks) - 1) / static_cast<uint32_t>(ratio));
  const uint64_t bat_offset = RoundUpMiB(kLogOffset + kLogSize);
  const uint64_t bat_length = RoundUpMiB(uint64_t{count} * 8);
  const uint64_t metadata_offset = RoundUpMiB(bat_offset + bat_length);
  const uint64_t data_start = bat_offset + bat_length + 5 * kMiB;

  // The file identifier.
  std::vector<uint8_t> id(8 + 2 * (sizeof kCreator - 1), 0);
  std::memcpy(id.data(), "vhdxfile", 8);
  for (size_t i = 0; i + 1 < sizeof kCreator; ++i) id[8 + 2 * i] = uint8_t(kCreator[i]);
  KVMFS_RETURN_IF_ERROR(file.WriteAt(0, id.data(), id.size()).WithContext(name));
  KVMFS_RETURN_IF_ERROR(WriteHeaders(file).WithContext(name));
  KVMFS_RETURN_IF_ERROR(file.Truncate(data_start).WithContext(name));
  KVMFS_RETURN_IF_ERROR(WriteBat(file, bat_offset, blocks, ratio).WithContext(name));

  std::vector<uint8_t> regions(kTableBlockSize, 0);
  std::memcpy(regions.data(), "regi", 4);
  StoreLE32(regions.data() + 8, 2);  // entry count
  PutEntry(&regions[16], kBatRegionGuid, bat_offset, static_cast<uint32_t>(bat_length), 0);
  PutEntry(&regions[48], kMetadataRegionGuid, metadata_offset, kMiB, 0);
  StoreLE32(regions.data() + 4, ChecksumWithZeroField(regions.data(), regions.size(), 4));
  for (const uint64_t at : {kRegionTableOffset, kRegionTable2Offset})
    KVMFS_RETURN_IF_ERROR(file.WriteAt(at, regions.data(), regions.size()).WithContext(name));
  return WriteMetadata(file, metadata_offset, size, block_size).WithContext(name);
}

}  // namespace kvmfs::vhdx
