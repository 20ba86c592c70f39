// VHD footer, dynamic header and BAT: decoded and checked as QEMU 7.2's
// vpc_open does, before anything they say is followed.
#include <cstring>

#include "base/endian.h"
#include "format/vpc/vpc.h"

namespace kvmfs::vpc {
namespace {

bool Creator(const Footer& f, const char (&app)[5]) {
  return std::memcmp(f.creator_app, app, 4) == 0;
}

Status Invalid(const std::string& name, const std::string& why) {
  return Status::Corruption(name + ": " + why);
}

}  // namespace

Footer Footer::Decode(const uint8_t* p) {
  Footer f;
  std::memcpy(f.raw, p, kFooterSize);
  std::memcpy(f.creator_app, p + kOffCreatorApp, 4);
  f.data_offset = LoadBE64(p + kOffDataOffset);
  f.current_size = LoadBE64(p + kOffCurrentSize);
  f.cylinders = LoadBE16(p + kOffCylinders);
  f.heads = p[kOffHeads];
  f.sectors_per_track = p[kOffSectors];
  f.type = LoadBE32(p + kOffType);
  f.checksum = LoadBE32(p + kOffChecksum);
  return f;
}

bool Footer::HasCookie() const { return std::memcmp(raw + kOffCookie, "conectix", 8) == 0; }

DynHeader DynHeader::Decode(const uint8_t* p) {
  DynHeader h;
  h.cookie_ok = std::memcmp(p + kOffCookie, "cxsparse", 8) == 0;
  h.table_offset = LoadBE64(p + kOffTableOffset);
  h.max_table_entries = LoadBE32(p + kOffMaxTableEntries);
  h.block_size = LoadBE32(p + kOffBlockSize);
  return h;
}

uint32_t Checksum(const uint8_t* p, size_t len, size_t checksum_off) {
  uint32_t sum = 0;
  for (size_t i = 0; i < len; ++i)
    if (i < checksum_off || i >= checksum_off + 4) sum += p[i];
  return ~sum;
}

uint64_t VirtualSectors(const Footer& f) {
  // strncmp(.., 4) on literals without an inner NUL is memcmp; "tap" is
  // compared with its NUL (QEMU uses memcmp for it), so "tap " is CHS.
  const bool use_chs = !Creator(f, "win ") && !Creator(f, "qem2") && !Creator(f, "d2v ") &&
                       !Creator(f, "CTXS") && std::memcmp(f.creator_app, "tap\0", 4) != 0;
  const uint64_t chs = f.ChsSectors();
  if (!use_chs || chs == kMaxGeometry) return f.current_size / kSector;
  return chs;
}

namespace {

// The dynamic header and BAT (QEMU vpc_open, the VHD_DYNAMIC branch).
Status ReadDynamic(Backend& file, uint64_t file_len, const std::string& name, Layout& l) {
  const uint64_t hdr_off = l.footer.data_offset;
  // QEMU's read fails only where the block layer refuses the request (an
  // offset past INT64_MAX, e.g. a fixed disk's all-ones); past EOF reads zeros.
  if (hdr_off > uint64_t(INT64_MAX) - kDynHeaderSize)
    return Invalid(name, "Error reading dynamic VHD header (data offset " +
                             std::to_string(hdr_off) + ")");
  uint8_t buf[kDynHeaderSize];
  KVMFS_RETURN_IF_ERROR(file.ReadAt(hdr_off, buf, sizeof buf));
  const DynHeader h = DynHeader::Decode(buf);
  if (!h.cookie_ok)
    return Invalid(name, "Invalid header magic (dynamic header at " + std::to_string(hdr_off) + ")");
  if (h.block_size < kSector || (h.block_size & (h.block_size - 1)) != 0)
    return Invalid(name, "Invalid block size " + std::to_string(h.block_size));
  l.block_size = h.block_size;
  l.bitmap_size = ((h.block_size / (8 * 512)) + 511) & ~511u;
  if (l.virtual_size / h.block_size > 0xffffffffull) return Invalid(name, "Too many blocks");
  if (uint64_t(h.max_table_entries) * h.block_size < l.virtual_size)
    return Invalid(name, "Page table too small (" + std::to_string(h.max_table_entries) +
                             " entries of " + std::to_string(h.block_size) + " bytes for " +
                             std::to_string(l.virtual_size) + " bytes)");
  if (h.max_table_entries > uint32_t(INT32_MAX) / 4)
    return Invalid(name, "Max Table Entries too large (" + std::to_string(h.max_table_entries) + ")");
  const uint64_t bat_bytes = uint64_t(h.max_table_entries) * 4;
  if (h.table_offset > uint64_t(INT64_MAX) - bat_bytes)
    return Invalid(name, "Error reading pagetable (offset " + std::to_string(h.table_offset) + ")");
  l.bat_offset = h.table_offset;
  // QEMU reads the table first and finds it past the end afterwards; the
  // same verdict before reading keeps memory bounded by the file size.
  uint64_t free_off = (h.table_offset + bat_bytes + 511) & ~uint64_t(511);
  if (free_off > file_len)
    return Invalid(name, "block-vpc: free_data_block_offset points after the end of file. The "
                         "image has been truncated. (BAT of " + std::to_string(bat_bytes) +
                         " bytes at " + std::to_string(h.table_offset) + ")");
  std::vector<uint8_t> raw(bat_bytes);
  KVMFS_RETURN_IF_ERROR(file.ReadAt(h.table_offset, raw.data(), raw.size()));
  l.bat.resize(h.max_table_entries);
  for (uint32_t i = 0; i < h.max_table_entries; ++i) {
    const uint32_t e = LoadBE32(raw.data() + 4 * uint64_t(i));
    l.bat[i] = e;
    if (e == kUnallocated) continue;
    const uint64_t end = kSector * e + l.bitmap_size + h.block_size;
    if (end > file_len)
      return Invalid(name, "block-vpc: free_data_block_offset points after the end of file. The "
                           "image has been truncated. (BAT entry " + std::to_string(i) +
                           " block at " + std::to_string(kSector * e) + " ends at " +
                           std::to_string(end) + ", file length " + std::to_string(file_len) +
                           ")");
    free_off = std::max(free_off, end);
  }
  l.free_data_block_offset = free_off;
  l.dynamic = true;
  return Status::OK();
}

}  // namespace

Result<Layout> ReadLayout(Backend& file, uint64_t file_size, const std::string& name) {
  // QEMU sees the file length in whole sectors, rounded up.
  const uint64_t file_len = (file_size + kSector - 1) & ~(kSector - 1);
  Layout l;
  uint8_t buf[kFooterSize];
  KVMFS_RETURN_IF_ERROR(file.ReadAt(0, buf, sizeof buf));
  l.footer = Footer::Decode(buf);
  bool dynamic_path = true;
  if (!l.footer.HasCookie()) {
    // Not at 0: a fixed disk keeps its only footer in the last 512 bytes.
    if (file_len < kFooterSize) return Invalid(name, "File too small for a VHD header");
    KVMFS_RETURN_IF_ERROR(file.ReadAt(file_len - kFooterSize, buf, sizeof buf));
    l.footer = Footer::Decode(buf);
    if (!l.footer.HasCookie() || l.footer.type != kTypeFixed)
      return Invalid(name, "invalid VPC image (no 'conectix' footer at offset 0 or at the end)");
    dynamic_path = false;
  }
  if (Checksum(l.footer.raw, kFooterSize, Footer::kOffChecksum) != l.footer.checksum)
    return Invalid(name, "Incorrect header checksum (footer)");
  const uint64_t sectors = VirtualSectors(l.footer);
  if (sectors > kMaxSectors)
    return Status::TooLarge(name + ": File too large (" + std::to_string(sectors) +
                            " sectors; the VHD limit is " + std::to_string(kMaxSectors) + ")");
  l.virtual_size = sectors * kSector;
  // The I/O path follows the type field (QEMU tests footer->type on every
  // request), the open path follows where the footer was found.
  l.fixed_io = l.footer.type == kTypeFixed;
  if (dynamic_path) KVMFS_RETURN_IF_ERROR(ReadDynamic(file, file_len, name, l));
  return l;
}

}  // namespace kvmfs::vpc
