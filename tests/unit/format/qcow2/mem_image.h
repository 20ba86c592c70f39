// Builds small qcow2 files in memory for malformed-input tests.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/endian.h"
#include "format/qcow2/options.h"
#include "kvmfs/backend.h"
#include "kvmfs/format.h"

namespace kvmfs::test {

// Header offsets (docs/interop/qcow2.rst).
enum HeaderOffset : uint64_t {
  kOffMagic = 0,
  kOffVersion = 4,
  kOffBackingOffset = 8,
  kOffBackingSize = 16,
  kOffClusterBits = 20,
  kOffSize = 24,
  kOffCryptMethod = 32,
  kOffL1Size = 36,
  kOffL1Offset = 40,
  kOffRefcountTableOffset = 48,
  kOffRefcountTableClusters = 56,
  kOffNbSnapshots = 60,
  kOffSnapshotsOffset = 64,
  kOffIncompat = 72,
  kOffCompat = 80,
  kOffAutoclear = 88,
  kOffRefcountOrder = 96,
  kOffHeaderLength = 100,
  kOffCompressionType = 104,
};

// A valid, empty image: header in cluster 0, refcount table in cluster 1,
// refcount block in cluster 2, L1 in cluster 3. Clusters 4.. are free for
// tests (L2 tables, data); Cluster(n) is the host offset of cluster n.
struct MemImage {
  uint32_t cluster_bits;
  uint64_t cs;
  uint32_t version;
  std::vector<uint8_t> b;
  uint64_t ext_pos;

  explicit MemImage(uint32_t cluster_bits_ = 16, uint32_t version_ = 3, uint64_t size = 1 << 20,
                    bool extended_l2 = false)
      : cluster_bits(cluster_bits_), cs(1ull << cluster_bits_), version(version_) {
    const uint64_t l2_entries = cs / (extended_l2 ? 16 : 8);
    const uint64_t per_l1 = cs * l2_entries;
    const uint64_t l1_entries = (size + per_l1 - 1) / per_l1;
    b.assign(3 * cs + 8 * l1_entries, 0);
    Be32(kOffMagic, 0x514649fb);
    Be32(kOffVersion, version);
    Be32(kOffClusterBits, cluster_bits);
    Be64(kOffSize, size);
    Be32(kOffL1Size, static_cast<uint32_t>(l1_entries));
    Be64(kOffL1Offset, Cluster(3));
    Be64(kOffRefcountTableOffset, Cluster(1));
    Be32(kOffRefcountTableClusters, 1);
    Be64(Cluster(1), Cluster(2));
    if (version >= 3) {
      Be32(kOffRefcountOrder, 4);
      Be32(kOffHeaderLength, 112);
      if (extended_l2) Be64(kOffIncompat, 1ull << 4);
      ext_pos = 112;
    } else {
      ext_pos = 72;
    }
  }

  uint64_t Cluster(uint64_t n) const { return n * cs; }
  void Grow(uint64_t end) {
    if (b.size() < end) b.resize(end);
  }
  void Be16(uint64_t off, uint16_t v) {
    Grow(off + 2);
    StoreBE16(&b[off], v);
  }
  void Be32(uint64_t off, uint32_t v) {
    Grow(off + 4);
    StoreBE32(&b[off], v);
  }
  void Be64(uint64_t off, uint64_t v) {
    Grow(off + 8);
    StoreBE64(&b[off], v);
  }
  void Bytes(uint64_t off, const std::vector<uint8_t>& v) {
    Grow(off + v.size());
    std::copy(v.begin(), v.end(), b.begin() + off);
  }
  void Fill(uint64_t off, uint64_t len, uint8_t byte) {
    Grow(off + len);
    std::fill(b.begin() + off, b.begin() + off + len, byte);
  }

  // Appends a header extension after the header (the end marker is the
  // zeroed space behind it).
  void AddExtension(uint32_t type, const std::vector<uint8_t>& data) {
    Be32(ext_pos, type);
    Be32(ext_pos + 4, static_cast<uint32_t>(data.size()));
    Bytes(ext_pos + 8, data);
    ext_pos += 8 + ((data.size() + 7) & ~size_t{7});
  }
  void AddExtension(uint32_t type, const std::string& s) {
    AddExtension(type, std::vector<uint8_t>(s.begin(), s.end()));
  }
  // L1 entry `i` -> L2 table at cluster `n`.
  void SetL1(uint64_t i, uint64_t entry) { Be64(Cluster(3) + 8 * i, entry); }
  // Entry `i` of the (standard) L2 table at host offset `l2`.
  void SetL2(uint64_t l2, uint64_t i, uint64_t entry) {
    Grow(l2 + cs);
    Be64(l2 + 8 * i, entry);
  }
  void SetL2Ext(uint64_t l2, uint64_t i, uint64_t entry, uint64_t bitmap) {
    Grow(l2 + cs);
    Be64(l2 + 16 * i, entry);
    Be64(l2 + 16 * i + 8, bitmap);
  }

  Result<std::unique_ptr<Image>> Open(OpenContext ctx = {}, Qcow2Options options = {}) const {
    if (ctx.name.empty()) ctx.name = "mem.qcow2";
    return OpenQcow2(std::shared_ptr<Backend>(NewMemBackend(ctx.name, b, false)), ctx, options);
  }
};

}  // namespace kvmfs::test
