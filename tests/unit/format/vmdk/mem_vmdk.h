// Builds small VMDK files in memory for malformed-input tests and the fuzzer.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/endian.h"
#include "kvmfs/backend.h"
#include "kvmfs/format.h"

namespace kvmfs::test {

// KDMV header offsets (formats.md §5.2).
enum VmdkOffset : uint64_t {
  kVOffVersion = 4,
  kVOffFlags = 8,
  kVOffCapacity = 12,
  kVOffGrain = 20,
  kVOffDescOffset = 28,
  kVOffDescSize = 36,
  kVOffGtes = 44,
  kVOffRgd = 48,
  kVOffGd = 56,
  kVOffGrainOffset = 64,
  kVOffCompress = 77,
};

// A valid monolithicSparse image laid out as QEMU does (descriptor at
// sector 1, GD at 21, its GTs after it, grains from grain_offset), without
// a redundant GD. Gte() and Grain() fill it in.
struct MemVmdk {
  std::vector<uint8_t> b;
  uint64_t capacity;  // sectors
  uint64_t grain;     // sectors
  uint32_t gtes;
  uint64_t gd_sector = 21;
  uint64_t gt_count;
  uint64_t grain_offset;
  uint64_t next_grain;

  explicit MemVmdk(uint64_t capacity_sectors = 2048 + 7, uint64_t grain_sectors = 128,
                   uint32_t gtes_per_gt = 512, std::string descriptor = "")
      : capacity(capacity_sectors), grain(grain_sectors), gtes(gtes_per_gt) {
    const uint64_t grains = (capacity + grain - 1) / grain;
    gt_count = (grains + gtes - 1) / gtes;
    const uint64_t gd_sectors = (gt_count * 4 + 511) / 512;
    const uint64_t gt_sectors = (uint64_t{gtes} * 4 + 511) / 512;
    const uint64_t end = gd_sector + gd_sectors + gt_count * gt_sectors;
    grain_offset = (end + grain - 1) / grain * grain;
    next_grain = grain_offset;
    b.assign(grain_offset * 512, 0);
    std::memcpy(b.data(), "KDMV", 4);
    Le32(kVOffVersion, 1);
    Le32(kVOffFlags, 1);
    Le64(kVOffCapacity, capacity);
    Le64(kVOffGrain, grain);
    Le64(kVOffDescOffset, 1);
    Le64(kVOffDescSize, 20);
    Le32(kVOffGtes, gtes);
    Le64(kVOffGd, gd_sector);
    Le64(kVOffGrainOffset, grain_offset);
    b[73] = 0x0a; b[74] = 0x20; b[75] = 0x0d; b[76] = 0x0a;
    for (uint64_t i = 0; i < gt_count; ++i)
      Le32(gd_sector * 512 + 4 * i, static_cast<uint32_t>(gd_sector + gd_sectors + i * gt_sectors));
    if (descriptor.empty())
      descriptor = "# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\n"
                   "createType=\"monolithicSparse\"\n\nRW " + std::to_string(capacity) +
                   " SPARSE \"x.vmdk\"\n";
    std::memcpy(b.data() + 512, descriptor.data(), std::min<size_t>(descriptor.size(), 20 * 512));
  }

  void Le16(uint64_t off, uint16_t v) { b[off] = uint8_t(v); b[off + 1] = uint8_t(v >> 8); }
  void Le32(uint64_t off, uint32_t v) {
    if (b.size() < off + 4) b.resize(off + 4);
    StoreLE32(b.data() + off, v);
  }
  void Le64(uint64_t off, uint64_t v) {
    if (b.size() < off + 8) b.resize(off + 8);
    StoreLE64(b.data() + off, v);
  }
  // Byte offset of GT entry `grain_index`.
  uint64_t GteAt(uint64_t grain_index) const {
    const uint64_t gt = grain_index / gtes;
    return uint64_t{LoadLE32(b.data() + gd_sector * 512 + 4 * gt)} * 512 + 4 * (grain_index % gtes);
  }
  void Gte(uint64_t grain_index, uint32_t v) { Le32(GteAt(grain_index), v); }
  // Appends grain `grain_index` filled with `fill`; returns its sector.
  uint64_t Grain(uint64_t grain_index, uint8_t fill) {
    const uint64_t sector = next_grain;
    next_grain += grain;
    b.resize(next_grain * 512, 0);
    std::memset(b.data() + sector * 512, fill, grain * 512);
    Gte(grain_index, static_cast<uint32_t>(sector));
    return sector;
  }
};

// An OpenContext whose related files come from `files` (name -> bytes).
inline OpenContext MemContext(const std::string& name,
                              std::shared_ptr<std::map<std::string, std::vector<uint8_t>>> files) {
  OpenContext ctx;
  ctx.name = name;
  ctx.open_related = [files](const std::string& n) -> Result<std::shared_ptr<Backend>> {
    if (!n.empty() && n[0] == '/')
      return Status::Permission("related file '" + n + "' is outside the pool");
    auto it = files->find(n);
    if (it == files->end()) return Status::NotFound("related file '" + n + "' not found");
    return std::shared_ptr<Backend>(NewMemBackend(n, it->second, false));
  };
  return ctx;
}

}  // namespace kvmfs::test
