// A VHDX file in memory for crafting test cases: finds the current header,
// the region table's BAT and metadata, and fixes CRCs after patching.
#pragma once

#include <cstring>
#include <string>
#include <vector>

#include "base/endian.h"
#include "format/vhdx/vhdx.h"
#include "tests/unit/format/vpc/qemu_util.h"

namespace kvmfs::test {

inline void PutLE16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}

struct VhdxFile {
  std::vector<uint8_t> d;
  int current = 0;
  uint64_t bat = 0, meta = 0;
  uint32_t bat_length = 0;

  explicit VhdxFile(const std::string& path) : d(ReadFileBytes(path)) {
    const uint64_t s1 = LoadLE64(&d[vhdx::kHeader1Offset + 8]);
    const uint64_t s2 = LoadLE64(&d[vhdx::kHeader2Offset + 8]);
    current = s2 > s1 ? 1 : 0;
    for (uint32_t i = 0; i < LoadLE32(&d[vhdx::kRegionTableOffset + 8]); ++i) {
      const uint8_t* e = &d[vhdx::kRegionTableOffset + 16 + 32 * i];
      vhdx::Guid g;
      std::memcpy(g.data(), e, 16);
      if (g == vhdx::kBatRegionGuid) {
        bat = LoadLE64(e + 16);
        bat_length = LoadLE32(e + 24);
      }
      if (g == vhdx::kMetadataRegionGuid) meta = LoadLE64(e + 16);
    }
  }
  void Save(const std::string& path) const { WriteFileBytes(path, d); }

  uint64_t HeaderOffset(int i) const { return i == 0 ? vhdx::kHeader1Offset : vhdx::kHeader2Offset; }
  uint8_t* Header(int i) { return &d[HeaderOffset(i)]; }
  uint8_t* Cur() { return Header(current); }
  void FixHeader(int i) {
    StoreLE32(Header(i) + 4, vhdx::ChecksumWithZeroField(Header(i), vhdx::kHeaderBlockSize, 4));
  }
  void FixRegionTable() {
    uint8_t* t = &d[vhdx::kRegionTableOffset];
    StoreLE32(t + 4, vhdx::ChecksumWithZeroField(t, vhdx::kTableBlockSize, 4));
  }
  uint64_t Bat(uint64_t i) const { return LoadLE64(&d[bat + 8 * i]); }
  void SetBat(uint64_t i, uint64_t v) { StoreLE64(&d[bat + 8 * i], v); }
  uint64_t LogOffset() { return LoadLE64(Cur() + vhdx::Header::kOffLogOffset); }
  // Metadata item `guid`: its offset in the file, or 0.
  uint64_t Item(const vhdx::Guid& guid) {
    const uint32_t n = LoadLE16(&d[meta + 10]);
    for (uint32_t i = 0; i < n; ++i) {
      uint8_t* e = &d[meta + 32 + 32 * i];
      if (std::memcmp(e, guid.data(), 16) == 0) return meta + LoadLE32(e + 16);
    }
    return 0;
  }
  uint8_t* MetaEntry(const vhdx::Guid& guid) {
    const uint32_t n = LoadLE16(&d[meta + 10]);
    for (uint32_t i = 0; i < n; ++i) {
      uint8_t* e = &d[meta + 32 + 32 * i];
      if (std::memcmp(e, guid.data(), 16) == 0) return e;
    }
    return nullptr;
  }
};

}  // namespace kvmfs::test
