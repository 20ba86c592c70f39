// CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), table-driven, as
// VHDX headers, region tables and log entries use it. zlib has only CRC-32,
// and no Debian 12 library offers CRC-32C to C++ without more baggage than
// these few lines.
#include <array>

#include "format/vhdx/vhdx.h"

namespace kvmfs::vhdx {
namespace {

// Eight tables for slicing-by-8 (log entries and 64 KiB tables are CRCed on
// every open and every allocation).
using Tables = std::array<std::array<uint32_t, 256>, 8>;

Tables MakeTables() {
  Tables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i)
    for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  return t;
}

const Tables& T() {
  static const Tables tables = MakeTables();
  return tables;
}

}  // namespace

uint32_t Crc32cUpdate(uint32_t crc, const uint8_t* p, size_t len) {
  const Tables& t = T();
  while (len >= 8) {
    const uint32_t lo = crc ^ (uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 |
                               uint32_t(p[3]) << 24);
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
          t[3][p[4]] ^ t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
    p += 8;
    len -= 8;
  }
  while (len-- > 0) crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

uint32_t Crc32c(const uint8_t* p, size_t len) { return ~Crc32cUpdate(0xffffffffu, p, len); }

uint32_t ChecksumWithZeroField(const uint8_t* p, size_t len, size_t crc_off) {
  static const uint8_t zeros[4] = {};
  uint32_t crc = Crc32cUpdate(0xffffffffu, p, crc_off);
  crc = Crc32cUpdate(crc, zeros, 4);
  crc = Crc32cUpdate(crc, p + crc_off + 4, len - crc_off - 4);
  return ~crc;
}

}  // namespace kvmfs::vhdx
