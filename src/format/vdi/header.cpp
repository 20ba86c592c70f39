// VDI header: decode and validation (QEMU's vdi_open checks and VirtualBox's
// layout rules), the block map and its consistency scan.
#include <cstdio>
#include <cstring>
#include <string>

#include "base/endian.h"
#include "format/vdi/vdi.h"

namespace kvmfs::vdi {
namespace {

Status Bad(const std::string& name, const std::string& what) {
  return Status::Corruption(name + ": invalid VDI header: " + what);
}

Status Unsupported(const std::string& name, const std::string& what) {
  return Status::NotSupported(name + ": unsupported VDI image (" + what + ")");
}

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

bool Uuid::IsNull() const {
  for (uint8_t b : bytes)
    if (b != 0) return false;
  return true;
}

HeaderRaw HeaderRaw::Decode(const uint8_t* p) {
  HeaderRaw h{};
  std::memcpy(&h, p, sizeof h);  // text, description, UUIDs and padding as they are
  h.signature = LoadLE32(p + 64);
  h.version = LoadLE32(p + 68);
  h.header_size = LoadLE32(p + 72);
  h.image_type = LoadLE32(p + 76);
  h.image_flags = LoadLE32(p + 80);
  h.offset_bmap = LoadLE32(p + 340);
  h.offset_data = LoadLE32(p + 344);
  h.cylinders = LoadLE32(p + 348);
  h.heads = LoadLE32(p + 352);
  h.sectors = LoadLE32(p + 356);
  h.sector_size = LoadLE32(p + 360);
  h.unused1 = LoadLE32(p + 364);
  h.disk_size = LoadLE64(p + 368);
  h.block_size = LoadLE32(p + 376);
  h.block_extra = LoadLE32(p + 380);
  h.blocks_in_image = LoadLE32(p + 384);
  h.blocks_allocated = LoadLE32(p + 388);
  return h;
}

Result<Header> ReadHeader(Backend& file, uint64_t file_size, const std::string& name) {
  if (file_size < kHeaderSize)
    return Bad(name, "the file is " + std::to_string(file_size) + " bytes, shorter than the " +
                         std::to_string(kHeaderSize) + "-byte header");
  uint8_t buf[kHeaderSize];
  KVMFS_RETURN_IF_ERROR(file.ReadAt(0, buf, sizeof buf).WithContext(name));
  Header h;
  h.raw = HeaderRaw::Decode(buf);
  const HeaderRaw& r = h.raw;
  if (r.signature != kSignature) return Bad(name, "signature " + Hex(r.signature) + " is not 0xbeda107f");
  if (r.version != kVersion11)
    return Unsupported(name, "version " + std::to_string(r.version >> 16) + "." +
                                 std::to_string(r.version & 0xffff) + "; only 1.1 is");
  if (r.disk_size > kMaxDiskSize)
    return Status::TooLarge(name + ": unsupported VDI image size " + std::to_string(r.disk_size) +
                            " (max supported is " + std::to_string(kMaxDiskSize) + ")");
  if (r.header_size < kMinHeaderSize || r.header_size > kMaxHeaderSize)
    return Bad(name, "header_size " + std::to_string(r.header_size) + " is not between " +
                         std::to_string(kMinHeaderSize) + " and " + std::to_string(kMaxHeaderSize));
  if (r.offset_bmap % kSectorSize != 0)
    return Bad(name, "block map offset " + Hex(r.offset_bmap) + " is not 512-byte aligned");
  if (r.offset_data % kSectorSize != 0)
    return Bad(name, "data offset " + Hex(r.offset_data) + " is not 512-byte aligned");
  if (r.sector_size != kSectorSize)
    return Unsupported(name, "sector size " + std::to_string(r.sector_size) + " is not 512");
  if (r.block_size != kBlockSize)
    return Unsupported(name, "block size " + std::to_string(r.block_size) + " is not " +
                                 std::to_string(kBlockSize));
  if (r.blocks_in_image > kMaxBlocks)
    return Status::TooLarge(name + ": unsupported VDI image (too many blocks " +
                            std::to_string(r.blocks_in_image) + ", max is " +
                            std::to_string(kMaxBlocks) + ")");
  // Odd sizes ('VBoxManage convertfromraw') are rounded up to a sector.
  h.virtual_size = (r.disk_size + kSectorSize - 1) / kSectorSize * kSectorSize;
  const uint64_t room = uint64_t{r.blocks_in_image} * r.block_size;
  if (h.virtual_size > room)
    return Bad(name, "disk size " + std::to_string(r.disk_size) + " is larger than the " +
                         std::to_string(r.blocks_in_image) + " blocks of the block map (" +
                         std::to_string(room) + " bytes)");
  if (!r.uuid_link.IsNull()) return Unsupported(name, "non-NULL link UUID: a differencing image");
  if (!r.uuid_parent.IsNull()) return Unsupported(name, "non-NULL parent UUID: a differencing image");

  h.blocks = r.blocks_in_image;
  h.allocated = r.blocks_allocated;
  h.offset_bmap = r.offset_bmap;
  h.offset_data = r.offset_data;
  const uint64_t bmap_bytes = uint64_t{h.blocks} * 4;
  if (h.offset_bmap < kPreHeaderSize + r.header_size)
    return Bad(name, "block map offset " + Hex(h.offset_bmap) + " is inside the header");
  if (h.offset_bmap > file_size || bmap_bytes > file_size - h.offset_bmap)
    return Bad(name, "block map at " + Hex(h.offset_bmap) + " (" + std::to_string(bmap_bytes) +
                         " bytes) passes the end of the file (" + std::to_string(file_size) +
                         " bytes)");
  if (h.offset_data < h.offset_bmap + bmap_bytes)
    return Bad(name, "data offset " + Hex(h.offset_data) + " is inside the block map (" +
                         Hex(h.offset_bmap) + ", " + std::to_string(bmap_bytes) + " bytes)");
  if (h.allocated > h.blocks)
    return Bad(name, "blocks_allocated " + std::to_string(h.allocated) +
                         " is more than blocks_in_image " + std::to_string(h.blocks));
  return h;
}

Result<std::vector<uint32_t>> ReadBlockMap(Backend& file, const Header& h, const std::string& name) {
  if (h.blocks == 0) return std::vector<uint32_t>{};  // a 0-byte disk, as qemu-img creates one
  std::vector<uint8_t> raw(uint64_t{h.blocks} * 4);
  KVMFS_RETURN_IF_ERROR(file.ReadAt(h.offset_bmap, raw.data(), raw.size()).WithContext(name));
  std::vector<uint32_t> bmap(h.blocks);
  for (uint32_t i = 0; i < h.blocks; ++i) bmap[i] = LoadLE32(&raw[4 * uint64_t{i}]);
  return bmap;
}

std::string ScanBlockMap(const std::vector<uint32_t>& bmap, const Header& h) {
  std::vector<bool> used(h.blocks, false);
  uint64_t count = 0;
  for (uint32_t i = 0; i < bmap.size(); ++i) {
    const uint32_t e = bmap[i];
    if (!IsAllocated(e)) continue;
    if (e >= h.blocks)
      return "block map entry " + std::to_string(i) + " = " + std::to_string(e) +
             " is not below blocks_in_image " + std::to_string(h.blocks);
    if (used[e])
      return "data block " + std::to_string(e) + " is used by more than one guest block (" +
             std::to_string(i) + " and an earlier one)";
    used[e] = true;
    ++count;
  }
  if (count != h.allocated)
    return "the block map allocates " + std::to_string(count) + " blocks, the header says " +
           std::to_string(h.allocated);
  return "";
}

CheckResult CheckBlockMap(const std::vector<uint32_t>& bmap, const Header& h,
                          const CheckOptions& options) {
  CheckResult res;
  // One bit per data block (QEMU keeps a u32 each): at most 64 MiB for the
  // largest map, whose entries alone take 2 GiB.
  std::vector<bool> used(h.blocks, false);
  uint64_t count = 0;
  constexpr uint32_t kProgressEvery = 1u << 16;
  for (uint32_t i = 0; i < bmap.size(); ++i) {
    if (options.progress && i % kProgressEvery == 0) options.progress(i, bmap.size());
    const uint32_t e = bmap[i];
    if (!IsAllocated(e)) continue;
    if (e >= h.blocks) {
      ++res.corruptions;  // "block index too large"
      continue;
    }
    ++count;
    if (used[e])
      ++res.corruptions;  // "block index also used by"
    else
      used[e] = true;
  }
  if (count != h.allocated) ++res.corruptions;  // "allocated blocks mismatch"
  if (options.progress) options.progress(bmap.size(), bmap.size());
  return res;
}

}  // namespace kvmfs::vdi
