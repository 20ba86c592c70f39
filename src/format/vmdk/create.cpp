// Creating an empty monolithicSparse VMDK as `qemu-img create -f vmdk` of
// QEMU 7.2 does (vmdk_co_do_create, vmdk_init_extent; formats.md §5.3): a
// version 1 sparse header (newline test and redundant grain directory flags,
// 64 KiB grains, 512 entries per grain table, capacity = size / 512), the
// descriptor at sector 1 in 20 sectors, the redundant grain directory at
// sector 21 with its grain tables after it, the grain directory and its
// tables after those, and the first grain at the next grain boundary, where
// the file ends. The tables are zeros (no grain allocated): the file is
// grown over them. The descriptor names the file itself as the extent, and
// for an overlay its parent's name and CID.
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "base/endian.h"
#include "format/vmdk/vmdk.h"

namespace kvmfs::vmdk {
namespace {

constexpr uint64_t kCreateGrainSectors = 128;
constexpr uint32_t kCreateGtes = 512;
constexpr uint64_t kDescOffset = 1;
constexpr uint64_t kDescSectors = 20;
constexpr uint32_t kNoParentCid = 0xffffffff;
// QEMU 7.2 counts grains in 32 bits: from 2^32 grains (256 TiB) on, its
// layout loses the grain tables. Nothing at or past that is made.
constexpr uint64_t kMaxCreateSectors = 0xffffffffull * kCreateGrainSectors;

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%x", v);  // as QEMU: "%" PRIx32, no padding
  return buf;
}

// The parent's CID, from what its driver says of it (qemu-img info's "cid").
Result<uint32_t> ParentCid(const std::string& name, const CreateOptions& o) {
  if (o.backing_format != "vmdk")
    return Status::NotSupported(name + ": a VMDK overlay needs a VMDK parent (QEMU: invalid backing "
                                       "file format " + o.backing_format + ")");
  if (o.backing_image == nullptr)
    return Status::InvalidArgument(name + ": a VMDK overlay needs its parent's CID (the parent "
                                          "is not open)");
  for (const InfoField& f : o.backing_image->Info().format_specific)
    if (const int64_t* v = std::get_if<int64_t>(&f.value); v && f.key == "cid")
      return static_cast<uint32_t>(*v);
  return Status::InvalidArgument(name + ": the parent " + o.backing_file + " states no CID");
}

std::string NewDescriptor(const std::string& file_name, uint64_t size, uint32_t parent_cid,
                       const std::string& parent_hint) {
  const uint32_t cid = std::random_device{}();
  std::string d = "# Disk DescriptorFile\nversion=1\nCID=" + Hex32(cid) + "\nparentCID=" +
                  Hex32(parent_cid) + "\ncreateType=\"monolithicSparse\"\n";
  if (!parent_hint.empty()) d += "parentFileNameHint=\"" + parent_hint + "\"";
  d += "\n# Extent description\nRW " + std::to_string(size / kSector) + " SPARSE \"" + file_name +
       "\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n"
       "ddb.geometry.cylinders = \"" + std::to_string(size / (63 * 16 * kSector)) +
       "\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\n"
       "ddb.adapterType = \"ide\"\nddb.toolsVersion = \"2147483647\"\n";
  return d;
}

// Writes a grain directory of `gt_count` entries at sector `at`, its
// tables right after it (gd_sectors on), in pieces of at most 1 MiB.
Status WriteDirectory(Backend& file, uint64_t at, uint64_t gd_sectors, uint64_t gt_count,
                      uint64_t gt_sectors) {
  constexpr uint64_t kPiece = 256 * 1024;  // entries
  std::vector<uint8_t> buf;
  for (uint64_t i = 0; i < gd_sectors * kSector / 4; i += kPiece) {
    const uint64_t n = std::min(kPiece, gd_sectors * kSector / 4 - i);
    buf.assign(n * 4, 0);
    for (uint64_t j = 0; j < n && i + j < gt_count; ++j)
      StoreLE32(&buf[4 * j], static_cast<uint32_t>(at + gd_sectors + (i + j) * gt_sectors));
    KVMFS_RETURN_IF_ERROR(file.WriteAt(at * kSector + i * 4, buf.data(), buf.size()));
  }
  return Status::OK();
}

}  // namespace

Status CreateImage(Backend& file, const CreateOptions& options) {
  const std::string& name = file.name();
  const uint64_t size = (options.size + kSector - 1) / kSector * kSector;
  // QEMU makes a 0-byte monolithicSparse it then cannot open.
  if (size == 0) return Status::InvalidArgument(name + ": a VMDK image cannot be of size 0");
  if (size / kSector > kMaxCreateSectors)
    return Status::TooLarge(name + ": image size " + std::to_string(options.size) +
                            " too large for a monolithicSparse VMDK (QEMU's limit: under 256 TiB)");
  uint32_t parent_cid = kNoParentCid;
  if (!options.backing_file.empty()) {
    KVMFS_ASSIGN_OR_RETURN(parent_cid, ParentCid(name, options));
    if (options.backing_file.size() > kMaxParentHint || options.backing_file.find('"') != std::string::npos)
      return Status::InvalidArgument(name + ": backing file name unfit for a VMDK descriptor");
  }
  const std::string file_name = name.substr(name.rfind('/') + 1);  // (npos + 1 = 0)
  const std::string desc = NewDescriptor(file_name, size, parent_cid, options.backing_file);
  if (desc.size() > kDescSectors * kSector || file_name.size() > kMaxNameBytes ||
      file_name.find('"') != std::string::npos)
    return Status::InvalidArgument(name + ": the descriptor does not fit its 20 sectors (file or "
                                          "backing file name too long)");

  const uint64_t capacity = size / kSector;
  const uint64_t grains = (capacity + kCreateGrainSectors - 1) / kCreateGrainSectors;
  const uint64_t gt_sectors = kCreateGtes * 4 / kSector;
  const uint64_t gt_count = (grains + kCreateGtes - 1) / kCreateGtes;
  const uint64_t gd_sectors = (gt_count * 4 + kSector - 1) / kSector;
  const uint64_t rgd_offset = kDescOffset + kDescSectors;
  const uint64_t gd_offset = rgd_offset + gd_sectors + gt_sectors * gt_count;
  const uint64_t grain_offset = (gd_offset + gd_sectors + gt_sectors * gt_count + kCreateGrainSectors - 1) /
                                kCreateGrainSectors * kCreateGrainSectors;

  uint8_t h[kSector] = {};
  StoreBE32(h, kMagicVmdk4);
  StoreLE32(h + 4, 1);  // version
  StoreLE32(h + 8, kFlagNewlineDetect | kFlagRedundantGd);
  StoreLE64(h + 12, capacity);
  StoreLE64(h + 20, kCreateGrainSectors);
  StoreLE64(h + 28, kDescOffset);
  StoreLE64(h + 36, kDescSectors);
  StoreLE32(h + 44, kCreateGtes);
  StoreLE64(h + 48, rgd_offset);
  StoreLE64(h + 56, gd_offset);
  StoreLE64(h + 64, grain_offset);
  h[73] = 0x0a;  // the newline test bytes "\n \r\n"
  h[74] = 0x20;
  h[75] = 0x0d;
  h[76] = 0x0a;
  KVMFS_RETURN_IF_ERROR(file.WriteAt(0, h, sizeof h).WithContext(name));
  KVMFS_RETURN_IF_ERROR(file.Truncate(grain_offset * kSector).WithContext(name));
  KVMFS_RETURN_IF_ERROR(WriteDirectory(file, rgd_offset, gd_sectors, gt_count, gt_sectors).WithContext(name));
  KVMFS_RETURN_IF_ERROR(WriteDirectory(file, gd_offset, gd_sectors, gt_count, gt_sectors).WithContext(name));
  return file.WriteAt(kDescOffset * kSector, desc.data(), desc.size()).WithContext(name);
}

}  // namespace kvmfs::vmdk
