// VHDX: the private map of the driver (after QEMU's block/vhdx.h).
//
// On-disk structures (little-endian, GUIDs in Microsoft's mixed-endian
// layout), QEMU 7.2's limits, and the validated state an Image is built from.
// Byte-level reference: formats-vhd.md §2. The files of this directory:
//   crc32c.cpp  CRC-32C (Castagnoli), table-driven
//   header.cpp  headers (two copies), region table, metadata, parent
//               locator, BAT: parsed and checked as vhdx_open does
//   log.cpp     the log: search as QEMU does, replay (to disk, or in memory
//               for reads until the first writer), and BAT updates written
//               through the log as QEMU writes them
//   vhdx.cpp    driver entry and the Image (reads, block status, writes)
//
// Writing (QEMU's order, §2.9): on the first write of a session both headers
// get a new data write GUID; a new block is appended at the end of the file
// (rounded to 1 MiB), the guest data written there, the file flushed, and only
// then the BAT entry committed through a log entry (log GUID set in both
// headers, entry written, flush, entry replayed in place, flush, log GUID
// cleared). A crash leaves either the old BAT entry (the block is leaked) or
// a log entry that the next read-write open replays.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/format.h"
#include "kvmfs/status.h"

namespace kvmfs::vhdx {

// ---- Constants and limits -----------------------------------------------------

inline constexpr uint64_t kMiB = 1ull << 20;
inline constexpr uint64_t kHeader1Offset = 64 * 1024;
inline constexpr uint64_t kHeader2Offset = 128 * 1024;
inline constexpr uint64_t kRegionTableOffset = 192 * 1024;
inline constexpr size_t kHeaderBlockSize = 4096;         // CRC covers 4 KiB
inline constexpr size_t kHeaderStructSize = 80;          // what QEMU writes
inline constexpr size_t kTableBlockSize = 64 * 1024;     // region / metadata table
inline constexpr uint32_t kMaxRegionEntries = 2047;
inline constexpr uint32_t kMinBlockSize = 1u << 20;
inline constexpr uint32_t kMaxBlockSize = 256u << 20;
inline constexpr uint64_t kMaxSectorsPerBlock = 1ull << 23;  // chunk ratio numerator
inline constexpr uint32_t kLogSector = 4096;
inline constexpr uint64_t kSectorBitmapBlock = 1ull << 20;
inline constexpr uint64_t kBatOffsetMask = 0xfffffffffff00000ull;
inline constexpr uint64_t kBatStateMask = 7;
// Parsing a log costs memory per descriptor; more than this many in the run
// to replay is refused (QEMU logs hold one or a few).
inline constexpr uint64_t kMaxReplayDescriptors = 1u << 20;
// No replayed write may reach past this file offset (a hostile zero
// descriptor must not make the file terabytes long).
inline constexpr uint64_t kMaxReplayEnd = 1ull << 46;

// Payload block states (BAT entry bits 0-2).
enum BlockState : uint64_t {
  kNotPresent = 0,
  kUndefined = 1,
  kZero = 2,
  kUnmapped = 3,
  kReserved4 = 4,
  kUnmappedV095 = 5,
  kFullyPresent = 6,
  kPartiallyPresent = 7,
};

// ---- GUIDs ----------------------------------------------------------------

// 16 bytes exactly as stored.
using Guid = std::array<uint8_t, 16>;
// From the textual form's fields (data1 LE32, data2 LE16, data3 LE16, data4).
Guid MakeGuid(uint32_t d1, uint16_t d2, uint16_t d3, std::array<uint8_t, 8> d4);
bool IsZero(const Guid& g);
// "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}" (lower case, braces).
std::string GuidText(const Guid& g);
Guid NewRandomGuid();

extern const Guid kBatRegionGuid;
extern const Guid kMetadataRegionGuid;
extern const Guid kFileParametersGuid;
extern const Guid kVirtualDiskSizeGuid;
extern const Guid kPage83Guid;
extern const Guid kLogicalSectorGuid;
extern const Guid kPhysicalSectorGuid;
extern const Guid kParentLocatorGuid;
extern const Guid kVhdxParentTypeGuid;

// CRC-32C (Castagnoli): standard, as crc32c("123456789") = 0xe3069283.
// Crc32cUpdate continues a running value (start with 0xffffffff, finish by
// inverting); Crc32c is the whole thing.
uint32_t Crc32cUpdate(uint32_t crc, const uint8_t* p, size_t len);
uint32_t Crc32c(const uint8_t* p, size_t len);
// The CRC of `len` bytes at `p` with the 4 bytes at `crc_off` as zeros.
uint32_t ChecksumWithZeroField(const uint8_t* p, size_t len, size_t crc_off);

// ---- Headers --------------------------------------------------------------

struct Header {
  static constexpr size_t kOffSignature = 0;
  static constexpr size_t kOffChecksum = 4;
  static constexpr size_t kOffSequence = 8;
  static constexpr size_t kOffFileWriteGuid = 16;
  static constexpr size_t kOffDataWriteGuid = 32;
  static constexpr size_t kOffLogGuid = 48;
  static constexpr size_t kOffLogVersion = 64;
  static constexpr size_t kOffVersion = 66;
  static constexpr size_t kOffLogLength = 68;
  static constexpr size_t kOffLogOffset = 72;

  uint8_t raw[kHeaderStructSize] = {};  // the 80-byte struct as read
  uint64_t sequence = 0;
  Guid file_write_guid{};
  Guid data_write_guid{};
  Guid log_guid{};
  uint16_t log_version = 0;
  uint16_t version = 0;
  uint32_t log_length = 0;
  uint64_t log_offset = 0;

  static Header Decode(const uint8_t* p);
  // The 80-byte struct with these fields (checksum left to the writer).
  void Encode(uint8_t* p) const;
};

// ---- Log structures ---------------------------------------------------------

struct LogEntryHeader {
  static constexpr size_t kSize = 64;
  uint32_t checksum = 0;
  uint32_t entry_length = 0;
  uint32_t tail = 0;
  uint64_t sequence = 0;
  uint32_t descriptor_count = 0;
  Guid log_guid{};
  uint64_t flushed_file_offset = 0;
  uint64_t last_file_offset = 0;
  bool signature_ok = false;  // "loge"

  static LogEntryHeader Decode(const uint8_t* p);
};

// One write a log entry asks for: a 4 KiB sector (data) or a run of zeros.
struct LogWrite {
  uint64_t file_offset = 0;
  uint64_t zero_length = 0;       // > 0: zeros, else `data`
  std::vector<uint8_t> data;      // kLogSector bytes for a data descriptor
};

// The active log sequence, ready to be replayed (QEMU's vhdx_log_flush).
struct LogReplay {
  std::vector<LogWrite> writes;   // in replay order
  uint64_t final_size = 0;        // the file size after replay
  uint64_t next_sequence = 0;     // the sequence a new entry continues with
};

// What the log of `header` holds (QEMU's vhdx_parse_log without writing):
// nothing to replay (no GUID, no length, or no valid entry), or the replay.
// Errors as QEMU's: kCorruption for a bad log offset, version or length, a
// descriptor that fails its checks in an entry whose header is valid, a data
// sector whose sequence does not match, a FlushedFileOffset past the file.
Result<std::unique_ptr<LogReplay>> FindLogReplay(Backend& file, uint64_t file_size,
                                                 const Header& header, const std::string& name);

// A read-only view of `base` as it will be once `replay` is written to it.
std::unique_ptr<Backend> NewReplayOverlay(std::shared_ptr<Backend> base,
                                          std::shared_ptr<const LogReplay> replay);

// ---- Metadata ---------------------------------------------------------------

struct Metadata {
  uint32_t block_size = 0;
  bool leave_blocks_allocated = false;
  bool has_parent = false;
  uint64_t virtual_disk_size = 0;
  uint32_t logical_sector_size = 0;
  uint32_t physical_sector_size = 0;
  // Parent locator key/value pairs (UTF-8), differencing disks only.
  std::map<std::string, std::string> parent_locator;
};

// ---- The validated state of an open file --------------------------------------

struct Region {
  uint64_t start = 0;
  uint64_t end = 0;
};

struct State {
  Header headers[2];
  int current = 0;                 // index of the current header
  std::vector<Region> regions;     // log, then region table entries
  uint64_t bat_offset = 0;
  uint32_t bat_region_length = 0;
  uint64_t metadata_offset = 0;
  Metadata meta;
  uint64_t virtual_size = 0;       // floored to whole sectors
  uint64_t chunk_ratio = 0;        // payload blocks per sector bitmap block
  uint32_t chunk_ratio_bits = 0;
  uint64_t bat_entries = 0;
  // The BAT's entries within the file (host order); entries past the end of
  // the file read as 0 (not present) and are added when written.
  std::vector<uint64_t> bat;
  uint64_t file_size = 0;
  // Set when this load replayed the log to disk: the session's first
  // visible write already updated the headers, and where its log continues.
  bool replayed = false;
  uint64_t next_log_sequence = 0;

  const Header& header() const { return headers[current]; }
  uint64_t BatEntry(uint64_t index) const { return index < bat.size() ? bat[index] : 0; }
  // Index of payload block `block` (after each chunk_ratio payload entries
  // comes one sector bitmap entry), and of the bitmap entry of its chunk.
  uint64_t PayloadIndex(uint64_t block) const { return block + (block >> chunk_ratio_bits); }
  uint64_t BitmapIndex(uint64_t block) const {
    return (block >> chunk_ratio_bits) * (chunk_ratio + 1) + chunk_ratio;
  }
  // A parent locator value, or "".
  std::string Locator(const std::string& key) const;
};

// How an open treats a log that needs replaying.
enum class LogMode {
  kRefuse,        // read-only: fail as QEMU does
  kInMemory,      // opened for writing, not yet written: read as if replayed
  kReplayToDisk,  // the writer is here: replay as QEMU does on a read-write open
};

// Reads and validates the whole file as vhdx_open does, in QEMU's order:
// signature, headers, log, region table, metadata, BAT. `reads` is where
// structures are read from (the file, or its replay overlay), `file` where a
// replay is written (kReplayToDisk). Errors name `name`.
// `session` is the file write GUID of header updates a replay makes.
Result<std::unique_ptr<State>> LoadState(std::shared_ptr<Backend> file, const std::string& name,
                                         LogMode mode, const Guid& session,
                                         std::shared_ptr<Backend>* reads);

// ---- Header and log writes ---------------------------------------------------

// QEMU's vhdx_update_headers: the non-current header gets sequence + 1,
// `session` as file write GUID, a new data write GUID when asked, and
// `log_guid` when given; written (80 bytes, CRC over its 4 KiB, synced) and
// made current; twice, so that both copies are fresh.
Status UpdateHeaders(Backend& file, State& s, const Guid& session, bool new_data_guid,
                     const Guid* log_guid);

// Writes the replay to disk as vhdx_log_flush does, then clears the log GUID.
Status ReplayToDisk(Backend& file, State& s, const Guid& session, const LogReplay& replay,
                    const std::string& name);

// Where the next log entry of this session goes.
struct LogCursor {
  uint64_t position = 0;  // offset in the log of the next entry
  uint64_t sequence = 0;  // 0: the first entry is 1
  uint32_t tail = 0;
};

// QEMU's vhdx_log_write_and_flush of the 8-byte BAT entry `index` (already
// updated in s.bat): flush, log GUID into the headers, one log entry (its
// 4 KiB BAT page), flush, the page written in place, flush, log GUID cleared.
Status WriteBatEntryThroughLog(Backend& file, State& s, const Guid& session, LogCursor& cursor,
                               uint64_t index, const std::string& name);

// Writes an empty dynamic VHDX of options.size bytes into `file` (writable,
// empty) as `qemu-img create -f vhdx` does with default options (create.cpp).
// Errors: kTooLarge (past 64 TiB), kNotSupported (a backing file), the
// backend's own errors.
Status CreateImage(Backend& file, const CreateOptions& options);

}  // namespace kvmfs::vhdx
