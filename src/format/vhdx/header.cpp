// VHDX headers, region table, metadata (with the parent locator) and BAT:
// read and checked in vhdx_open's order, with its verdicts (EINVAL becomes
// kCorruption, ENOTSUP kNotSupported), before anything they say is followed.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>

#include "base/endian.h"
#include "format/vhdx/vhdx.h"

namespace kvmfs::vhdx {

Guid MakeGuid(uint32_t d1, uint16_t d2, uint16_t d3, std::array<uint8_t, 8> d4) {
  Guid g{};
  StoreLE32(g.data(), d1);
  g[4] = uint8_t(d2);
  g[5] = uint8_t(d2 >> 8);
  g[6] = uint8_t(d3);
  g[7] = uint8_t(d3 >> 8);
  std::copy(d4.begin(), d4.end(), g.begin() + 8);
  return g;
}

const Guid kBatRegionGuid =
    MakeGuid(0x2dc27766, 0xf623, 0x4200, {0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08});
const Guid kMetadataRegionGuid =
    MakeGuid(0x8b7ca206, 0x4790, 0x4b9a, {0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e});
const Guid kFileParametersGuid =
    MakeGuid(0xcaa16737, 0xfa36, 0x4d43, {0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b});
const Guid kVirtualDiskSizeGuid =
    MakeGuid(0x2fa54224, 0xcd1b, 0x4876, {0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8});
const Guid kPage83Guid =
    MakeGuid(0xbeca12ab, 0xb2e6, 0x4523, {0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46});
const Guid kLogicalSectorGuid =
    MakeGuid(0x8141bf1d, 0xa96f, 0x4709, {0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f});
const Guid kPhysicalSectorGuid =
    MakeGuid(0xcda348c7, 0x445d, 0x4471, {0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56});
const Guid kParentLocatorGuid =
    MakeGuid(0xa8d35f2d, 0xb30b, 0x454d, {0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c});
const Guid kVhdxParentTypeGuid =
    MakeGuid(0xb04aefb7, 0xd19e, 0x4a81, {0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13});

bool IsZero(const Guid& g) {
  return std::all_of(g.begin(), g.end(), [](uint8_t b) { return b == 0; });
}

std::string GuidText(const Guid& g) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "{%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x}",
                LoadLE32(g.data()), LoadLE16(g.data() + 4), LoadLE16(g.data() + 6), g[8], g[9],
                g[10], g[11], g[12], g[13], g[14], g[15]);
  return buf;
}

Guid NewRandomGuid() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  Guid g{};
  for (size_t i = 0; i < g.size(); i += 8) StoreLE64(g.data() + i, rng());
  g[7] = uint8_t((g[7] & 0x0f) | 0x40);  // version 4 (data3's high byte)
  g[8] = uint8_t((g[8] & 0x3f) | 0x80);
  return g;
}

Header Header::Decode(const uint8_t* p) {
  Header h;
  std::memcpy(h.raw, p, kHeaderStructSize);
  h.sequence = LoadLE64(p + kOffSequence);
  std::memcpy(h.file_write_guid.data(), p + kOffFileWriteGuid, 16);
  std::memcpy(h.data_write_guid.data(), p + kOffDataWriteGuid, 16);
  std::memcpy(h.log_guid.data(), p + kOffLogGuid, 16);
  h.log_version = LoadLE16(p + kOffLogVersion);
  h.version = LoadLE16(p + kOffVersion);
  h.log_length = LoadLE32(p + kOffLogLength);
  h.log_offset = LoadLE64(p + kOffLogOffset);
  return h;
}

void Header::Encode(uint8_t* p) const {
  std::memcpy(p, raw, kHeaderStructSize);
  std::memcpy(p + kOffSignature, "head", 4);
  StoreLE64(p + kOffSequence, sequence);
  std::memcpy(p + kOffFileWriteGuid, file_write_guid.data(), 16);
  std::memcpy(p + kOffDataWriteGuid, data_write_guid.data(), 16);
  std::memcpy(p + kOffLogGuid, log_guid.data(), 16);
  p[kOffLogVersion] = uint8_t(log_version);
  p[kOffLogVersion + 1] = uint8_t(log_version >> 8);
  p[kOffVersion] = uint8_t(version);
  p[kOffVersion + 1] = uint8_t(version >> 8);
  StoreLE32(p + kOffLogLength, log_length);
  StoreLE64(p + kOffLogOffset, log_offset);
}

LogEntryHeader LogEntryHeader::Decode(const uint8_t* p) {
  LogEntryHeader h;
  h.signature_ok = std::memcmp(p, "loge", 4) == 0;
  h.checksum = LoadLE32(p + 4);
  h.entry_length = LoadLE32(p + 8);
  h.tail = LoadLE32(p + 12);
  h.sequence = LoadLE64(p + 16);
  h.descriptor_count = LoadLE32(p + 24);
  std::memcpy(h.log_guid.data(), p + 32, 16);
  h.flushed_file_offset = LoadLE64(p + 48);
  h.last_file_offset = LoadLE64(p + 56);
  return h;
}

std::string State::Locator(const std::string& key) const {
  auto it = meta.parent_locator.find(key);
  return it == meta.parent_locator.end() ? std::string() : it->second;
}

namespace {

Status Bad(const std::string& name, const std::string& why) {
  return Status::Corruption(name + ": " + why);
}

// QEMU's vhdx_parse_header: a header counts when its CRC (over 4 KiB), its
// signature and its version are right; the higher sequence wins; equal ones
// only when the two structs are identical (Disk2vhd).
Status ReadHeaders(Backend& file, const std::string& name, State& s) {
  bool valid[2];
  for (int i = 0; i < 2; ++i) {
    uint8_t buf[kHeaderBlockSize];
    KVMFS_RETURN_IF_ERROR(file.ReadAt(i == 0 ? kHeader1Offset : kHeader2Offset, buf, sizeof buf));
    s.headers[i] = Header::Decode(buf);
    valid[i] = ChecksumWithZeroField(buf, sizeof buf, Header::kOffChecksum) ==
                   LoadLE32(buf + Header::kOffChecksum) &&
               std::memcmp(buf, "head", 4) == 0 && s.headers[i].version == 1;
  }
  if (!valid[0] && !valid[1]) return Bad(name, "No valid VHDX header found");
  if (valid[0] != valid[1]) {
    s.current = valid[0] ? 0 : 1;
  } else if (s.headers[0].sequence != s.headers[1].sequence) {
    s.current = s.headers[0].sequence > s.headers[1].sequence ? 0 : 1;
  } else if (std::memcmp(s.headers[0].raw, s.headers[1].raw, kHeaderStructSize) == 0) {
    s.current = 0;
  } else {
    return Bad(name, "No valid VHDX header found (both headers have sequence number " +
                         std::to_string(s.headers[0].sequence) + " but differ)");
  }
  // The log's range is reserved even when there is no log to replay.
  const Header& h = s.header();
  s.regions.push_back({h.log_offset, h.log_offset + h.log_length});
  return Status::OK();
}

// vhdx_region_check (with QEMU's wrapping end).
Status CheckOverlap(const State& s, uint64_t start, uint64_t length, const std::string& what,
                    const std::string& name) {
  const uint64_t end = start + length;
  for (const Region& r : s.regions)
    if (!(start >= r.end || end <= r.start))
      return Bad(name, what + ": VHDX region " + std::to_string(start) + "-" +
                           std::to_string(end) + " overlaps with region " +
                           std::to_string(r.start) + "-" + std::to_string(r.end));
  return Status::OK();
}

// vhdx_open_region_tables: only the first table is read.
Status ReadRegionTable(Backend& reads, const std::string& name, State& s) {
  std::vector<uint8_t> buf(kTableBlockSize);
  KVMFS_RETURN_IF_ERROR(reads.ReadAt(kRegionTableOffset, buf.data(), buf.size()));
  if (ChecksumWithZeroField(buf.data(), buf.size(), 4) != LoadLE32(buf.data() + 4))
    return Bad(name, "region table checksum mismatch");
  if (std::memcmp(buf.data(), "regi", 4) != 0) return Bad(name, "region table signature is not 'regi'");
  const uint32_t count = LoadLE32(buf.data() + 8);
  if (count > kMaxRegionEntries)
    return Bad(name, "region table has " + std::to_string(count) + " entries (at most 2047)");
  bool bat_found = false, meta_found = false;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* e = buf.data() + 16 + 32 * size_t(i);
    Guid guid;
    std::memcpy(guid.data(), e, 16);
    const uint64_t offset = LoadLE64(e + 16);
    const uint32_t length = LoadLE32(e + 24);
    const uint32_t flags = LoadLE32(e + 28);
    KVMFS_RETURN_IF_ERROR(
        CheckOverlap(s, offset, length, "region table entry " + std::to_string(i), name));
    s.regions.push_back({offset, offset + length});
    if (guid == kBatRegionGuid || guid == kMetadataRegionGuid) {
      bool& found = guid == kBatRegionGuid ? bat_found : meta_found;
      if (found) return Bad(name, "region table lists the BAT or the metadata region twice");
      found = true;
      // Where QEMU's reads would fail (past INT64_MAX), refuse up front.
      if (offset > (uint64_t(1) << 62))
        return Bad(name, "region " + std::to_string(i) + " at " + std::to_string(offset) +
                             " is past any file");
      if (guid == kBatRegionGuid) {
        s.bat_offset = offset;
        s.bat_region_length = length;
      } else {
        s.metadata_offset = offset;
      }
    } else if (flags & 1) {
      return Status::NotSupported(name + ": unknown required region " + GuidText(guid));
    }
  }
  if (!bat_found || !meta_found) return Bad(name, "region table lacks the BAT or the metadata region");
  return Status::OK();
}

// UTF-16LE (no terminator) to UTF-8.
std::string Utf16ToUtf8(const uint8_t* p, size_t bytes) {
  std::string out;
  for (size_t i = 0; i + 1 < bytes; i += 2) {
    uint32_t c = LoadLE16(p + i);
    if (c >= 0xd800 && c < 0xdc00 && i + 3 < bytes) {
      const uint32_t lo = LoadLE16(p + i + 2);
      if (lo >= 0xdc00 && lo < 0xe000) {
        c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
        i += 2;
      }
    }
    if (c < 0x80) {
      out += char(c);
    } else if (c < 0x800) {
      out += char(0xc0 | (c >> 6));
      out += char(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
      out += char(0xe0 | (c >> 12));
      out += char(0x80 | ((c >> 6) & 0x3f));
      out += char(0x80 | (c & 0x3f));
    } else {
      out += char(0xf0 | (c >> 18));
      out += char(0x80 | ((c >> 12) & 0x3f));
      out += char(0x80 | ((c >> 6) & 0x3f));
      out += char(0x80 | (c & 0x3f));
    }
  }
  return out;
}

// [MS-VHDX] 2.6.2.6: a 20-byte header (locator type, count) and 12-byte
// key/value entries pointing into the item.
Status ParseParentLocator(Backend& reads, uint64_t offset, uint32_t length,
                          const std::string& name, Metadata& m) {
  if (length < 20 || length > kMiB)
    return Bad(name, "parent locator of " + std::to_string(length) + " bytes");
  std::vector<uint8_t> item(length);
  KVMFS_RETURN_IF_ERROR(reads.ReadAt(offset, item.data(), item.size()));
  Guid type;
  std::memcpy(type.data(), item.data(), 16);
  if (type != kVhdxParentTypeGuid)
    return Status::NotSupported(name + ": parent locator type " + GuidText(type) +
                                " is not VHDX's");
  const uint32_t count = LoadLE16(item.data() + 18);
  if (20 + 12 * uint64_t(count) > length)
    return Bad(name, "parent locator lists " + std::to_string(count) + " entries in " +
                         std::to_string(length) + " bytes");
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* e = item.data() + 20 + 12 * size_t(i);
    const uint64_t key_off = LoadLE32(e), value_off = LoadLE32(e + 4);
    const uint64_t key_len = LoadLE16(e + 8), value_len = LoadLE16(e + 10);
    if (key_off + key_len > length || value_off + value_len > length)
      return Bad(name, "parent locator entry " + std::to_string(i) + " points past the item");
    m.parent_locator[Utf16ToUtf8(item.data() + key_off, key_len)] =
        Utf16ToUtf8(item.data() + value_off, value_len);
  }
  if (m.parent_locator.count("parent_linkage") == 0)
    return Bad(name, "parent locator has no parent_linkage");
  return Status::OK();
}

// vhdx_parse_metadata: the five basic items exactly once each; a parent
// locator only with HasParent (QEMU refuses both; kvmfs reads differencing
// disks).
Status ReadMetadata(Backend& reads, const std::string& name, State& s) {
  std::vector<uint8_t> buf(kTableBlockSize);
  KVMFS_RETURN_IF_ERROR(reads.ReadAt(s.metadata_offset, buf.data(), buf.size()));
  if (std::memcmp(buf.data(), "metadata", 8) != 0) return Bad(name, "metadata signature is wrong");
  const uint32_t count = LoadLE16(buf.data() + 10);
  if (uint64_t(count) * 32 > kTableBlockSize - 32)
    return Bad(name, "metadata table has " + std::to_string(count) + " entries");
  const Guid* known[] = {&kFileParametersGuid, &kVirtualDiskSizeGuid, &kPage83Guid,
                         &kLogicalSectorGuid,  &kPhysicalSectorGuid,  &kParentLocatorGuid};
  uint64_t item_offset[6] = {};
  uint32_t item_length[6] = {};
  unsigned present = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* e = buf.data() + 32 + 32 * size_t(i);
    Guid guid;
    std::memcpy(guid.data(), e, 16);
    const auto it = std::find_if(std::begin(known), std::end(known),
                                 [&](const Guid* g) { return *g == guid; });
    if (it == std::end(known)) {
      if (LoadLE32(e + 24) & 4)
        return Status::NotSupported(name + ": unknown required metadata item " + GuidText(guid));
      continue;
    }
    const size_t k = size_t(it - std::begin(known));
    if (present & (1u << k)) return Bad(name, "metadata item " + GuidText(guid) + " appears twice");
    present |= 1u << k;
    item_offset[k] = s.metadata_offset + LoadLE32(e + 16);
    item_length[k] = LoadLE32(e + 20);
  }
  if ((present & 0x1f) != 0x1f)
    return Status::NotSupported(name + ": metadata lacks a required item");
  Metadata& m = s.meta;
  uint8_t b[8];
  KVMFS_RETURN_IF_ERROR(reads.ReadAt(item_offset[0], b, 8));
  m.block_size = LoadLE32(b);
  m.leave_blocks_allocated = LoadLE32(b + 4) & 1;
  m.has_parent = LoadLE32(b + 4) & 2;
  const bool locator = present & (1u << 5);
  if (m.has_parent && !locator) return Bad(name, "differencing disk without a parent locator");
  if (!m.has_parent && locator)
    return Status::NotSupported(name + ": parent locator in a disk that has no parent");
  KVMFS_RETURN_IF_ERROR(reads.ReadAt(item_offset[1], b, 8));
  m.virtual_disk_size = LoadLE64(b);
  KVMFS_RETURN_IF_ERROR(reads.ReadAt(item_offset[3], b, 4));
  m.logical_sector_size = LoadLE32(b);
  KVMFS_RETURN_IF_ERROR(reads.ReadAt(item_offset[4], b, 4));
  m.physical_sector_size = LoadLE32(b);
  if (m.block_size < kMinBlockSize || m.block_size > kMaxBlockSize ||
      (m.block_size & (m.block_size - 1)) != 0)
    return Bad(name, "block size " + std::to_string(m.block_size) +
                         " is not a power of two from 1 MiB to 256 MiB");
  if (m.logical_sector_size != 512)
    return Status::NotSupported(name + ": logical sector size " +
                                std::to_string(m.logical_sector_size) + " (only 512 is supported)");
  if (m.has_parent)
    KVMFS_RETURN_IF_ERROR(ParseParentLocator(reads, item_offset[5], item_length[5], name, m));
  return Status::OK();
}

// Sizes, the BAT, and vhdx_check_bat_entries' checks of present blocks.
Status ReadBat(Backend& reads, uint64_t file_size, const std::string& name, State& s) {
  const Metadata& m = s.meta;
  s.virtual_size = m.virtual_disk_size / 512 * 512;
  s.chunk_ratio = kMaxSectorsPerBlock * 512 / m.block_size;
  s.chunk_ratio_bits = uint32_t(__builtin_ctzll(s.chunk_ratio));
  const uint64_t data_blocks = (m.virtual_disk_size + m.block_size - 1) / m.block_size;
  if (m.virtual_disk_size > (uint64_t(1) << 62) || data_blocks > 0xffffffffull)
    return Status::TooLarge(name + ": virtual disk size " + std::to_string(m.virtual_disk_size) +
                            " needs more blocks than a VHDX BAT can count");
  if (m.has_parent) {
    s.bat_entries = (data_blocks + s.chunk_ratio - 1) / s.chunk_ratio * (s.chunk_ratio + 1);
  } else {
    // QEMU's 32-bit arithmetic, whose underflow gives a 0-byte disk a BAT.
    s.bat_entries = data_blocks + (uint32_t(uint32_t(data_blocks) - 1) >> s.chunk_ratio_bits);
  }
  if (s.bat_entries > s.bat_region_length / 8)
    return Bad(name, "BAT region of " + std::to_string(s.bat_region_length) + " bytes is too small for " +
                         std::to_string(s.bat_entries) + " entries");
  // Memory follows the file: entries past its end read as not present.
  const uint64_t in_file =
      s.bat_offset >= file_size ? 0 : std::min(s.bat_entries, (file_size - s.bat_offset + 7) / 8);
  std::vector<uint8_t> raw(in_file * 8);
  KVMFS_RETURN_IF_ERROR(reads.ReadAt(s.bat_offset, raw.data(), raw.size()));
  s.bat.resize(in_file);
  const uint64_t file_len = (file_size + 511) / 512 * 512;
  for (uint64_t i = 0; i < in_file; ++i) {
    const uint64_t e = s.bat[i] = LoadLE64(raw.data() + 8 * i);
    const uint64_t state = e & kBatStateMask;
    const bool bitmap_slot = (i + 1) % (s.chunk_ratio + 1) == 0;
    if (state != kFullyPresent && !(state == kPartiallyPresent && m.has_parent && !bitmap_slot))
      continue;
    const uint64_t offset = e & kBatOffsetMask;
    const uint64_t extent = bitmap_slot && m.has_parent ? kSectorBitmapBlock : m.block_size;
    const uint64_t length = std::min<uint64_t>(extent, s.virtual_size - i * m.block_size);
    const std::string what = "VHDX BAT entry " + std::to_string(i);
    if (offset >= file_len)
      return Bad(name, what + " start offset " + std::to_string(offset) +
                           " points after end of file (" + std::to_string(file_len) +
                           "). Image has probably been truncated.");
    if (offset + length > file_len)
      return Bad(name, what + " end offset " + std::to_string(offset + length - 1) +
                           " points after end of file (" + std::to_string(file_len) +
                           "). Image has probably been truncated.");
    KVMFS_RETURN_IF_ERROR(CheckOverlap(s, offset, extent, what, name));
  }
  s.file_size = file_size;
  return Status::OK();
}

}  // namespace

Result<std::unique_ptr<State>> LoadState(std::shared_ptr<Backend> file, const std::string& name,
                                         LogMode mode, const Guid& session,
                                         std::shared_ptr<Backend>* reads_out) {
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
  uint8_t sig[8] = {};
  KVMFS_RETURN_IF_ERROR(file->ReadAt(0, sig, sizeof sig));
  if (file_size < 8 || std::memcmp(sig, "vhdxfile", 8) != 0)
    return Bad(name, "not a VHDX image (no 'vhdxfile' signature)");
  auto s = std::make_unique<State>();
  KVMFS_RETURN_IF_ERROR(ReadHeaders(*file, name, *s));
  KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<LogReplay> replay,
                         FindLogReplay(*file, file_size, s->header(), name));
  std::shared_ptr<Backend> reads = file;
  if (replay) {
    switch (mode) {
      case LogMode::kRefuse:
        return Status::NotSupported(
            name + ": VHDX log needs replay; open it read-write once or run "
                   "'qemu-img check -r all " + name + "' (QEMU refuses read-only opens too)");
      case LogMode::kInMemory:
        reads = NewReplayOverlay(file, std::shared_ptr<const LogReplay>(std::move(replay)));
        break;
      case LogMode::kReplayToDisk:
        KVMFS_RETURN_IF_ERROR(ReplayToDisk(*file, *s, session, *replay, name));
        s->replayed = true;
        s->next_log_sequence = replay->next_sequence;
        break;
    }
  }
  KVMFS_ASSIGN_OR_RETURN(uint64_t reads_size, reads->Size());
  KVMFS_RETURN_IF_ERROR(ReadRegionTable(*reads, name, *s));
  KVMFS_RETURN_IF_ERROR(ReadMetadata(*reads, name, *s));
  KVMFS_RETURN_IF_ERROR(ReadBat(*reads, reads_size, name, *s));
  if (reads_out) *reads_out = reads;
  return s;
}

Status UpdateHeaders(Backend& file, State& s, const Guid& session, bool new_data_guid,
                     const Guid* log_guid) {
  for (int round = 0; round < 2; ++round) {
    const int idx = 1 - s.current;
    const Header& active = s.headers[s.current];
    Header h = s.headers[idx];
    // QEMU keeps the other slot's own fields; the layout ones come from the
    // current header, so that a once-invalid slot cannot bring back garbage.
    h.sequence = active.sequence + 1;
    h.version = 1;
    h.log_version = active.log_version;
    h.log_offset = active.log_offset;
    h.log_length = active.log_length;
    h.log_guid = active.log_guid;
    h.file_write_guid = session;
    if (new_data_guid) h.data_write_guid = NewRandomGuid();
    if (log_guid) h.log_guid = *log_guid;
    const uint64_t off = idx == 0 ? kHeader1Offset : kHeader2Offset;
    uint8_t block[kHeaderBlockSize];
    KVMFS_RETURN_IF_ERROR(file.ReadAt(off, block, sizeof block));
    h.Encode(block);
    StoreLE32(block + Header::kOffChecksum,
              ChecksumWithZeroField(block, sizeof block, Header::kOffChecksum));
    KVMFS_RETURN_IF_ERROR(file.WriteAt(off, block, kHeaderStructSize));
    KVMFS_RETURN_IF_ERROR(file.Flush());
    std::memcpy(h.raw, block, kHeaderStructSize);
    s.headers[idx] = h;
    s.current = idx;
  }
  return Status::OK();
}

}  // namespace kvmfs::vhdx
