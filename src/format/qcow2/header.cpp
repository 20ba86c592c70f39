// qcow2 header and header extensions: decode, then validate every field the
// way QEMU's qcow2_do_open / qcow2_read_extensions do, before anything is
// followed. Messages keep QEMU's wording where there is one.
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <limits>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(v));
  return buf;
}

// ---- Decoders and encoders -------------------------------------------------------

// The big-endian integer fields of HeaderRaw, in disk order: one list for
// Decode and Encode, so the two cannot drift apart.
#define KVMFS_QCOW2_HEADER_FIELDS(X) \
  X(magic, 32)                       \
  X(version, 32)                     \
  X(backing_file_offset, 64)         \
  X(backing_file_size, 32)           \
  X(cluster_bits, 32)                \
  X(size, 64)                        \
  X(crypt_method, 32)                \
  X(l1_size, 32)                     \
  X(l1_table_offset, 64)             \
  X(refcount_table_offset, 64)       \
  X(refcount_table_clusters, 32)     \
  X(nb_snapshots, 32)                \
  X(snapshots_offset, 64)            \
  X(incompatible_features, 64)       \
  X(compatible_features, 64)         \
  X(autoclear_features, 64)          \
  X(refcount_order, 32)              \
  X(header_length, 32)

HeaderRaw HeaderRaw::Decode(const uint8_t* p, size_t length) {
  // Fields at or past `length` are absent and read as 0.
  uint8_t buf[sizeof(HeaderRaw)] = {};
  std::memcpy(buf, p, length < sizeof buf ? length : sizeof buf);
  HeaderRaw h{};
#define KVMFS_BE(field, bits) h.field = LoadBE##bits(buf + offsetof(HeaderRaw, field));
  KVMFS_QCOW2_HEADER_FIELDS(KVMFS_BE)
#undef KVMFS_BE
  h.compression_type = buf[offsetof(HeaderRaw, compression_type)];
  return h;
}

void HeaderRaw::Encode(uint8_t* p) const {
  std::memset(p, 0, sizeof(HeaderRaw));
#define KVMFS_BE(field, bits) StoreBE##bits(p + offsetof(HeaderRaw, field), field);
  KVMFS_QCOW2_HEADER_FIELDS(KVMFS_BE)
#undef KVMFS_BE
  p[offsetof(HeaderRaw, compression_type)] = compression_type;
  std::memcpy(p + offsetof(HeaderRaw, padding), padding, sizeof padding);
}
#undef KVMFS_QCOW2_HEADER_FIELDS

ExtensionHeader ExtensionHeader::Decode(const uint8_t* p) {
  return ExtensionHeader{LoadBE32(p + offsetof(ExtensionHeader, type)),
                         LoadBE32(p + offsetof(ExtensionHeader, len))};
}

FeatureNameEntry FeatureNameEntry::Decode(const uint8_t* p) {
  FeatureNameEntry e{};
  e.type = p[offsetof(FeatureNameEntry, type)];
  e.bit = p[offsetof(FeatureNameEntry, bit)];
  std::memcpy(e.name, p + offsetof(FeatureNameEntry, name), sizeof e.name);
  return e;
}

std::string FeatureNameEntry::Name() const { return std::string(name, strnlen(name, sizeof name)); }

BitmapsExtension BitmapsExtension::Decode(const uint8_t* p) {
  BitmapsExtension b{};
  b.nb_bitmaps = LoadBE32(p + offsetof(BitmapsExtension, nb_bitmaps));
  b.reserved32 = LoadBE32(p + offsetof(BitmapsExtension, reserved32));
  b.bitmap_directory_size = LoadBE64(p + offsetof(BitmapsExtension, bitmap_directory_size));
  b.bitmap_directory_offset = LoadBE64(p + offsetof(BitmapsExtension, bitmap_directory_offset));
  return b;
}

CryptoHeaderExtension CryptoHeaderExtension::Decode(const uint8_t* p) {
  return CryptoHeaderExtension{LoadBE64(p + offsetof(CryptoHeaderExtension, offset)),
                               LoadBE64(p + offsetof(CryptoHeaderExtension, length))};
}

// ---- Geometry -------------------------------------------------------------------

Geometry Geometry::For(uint32_t cluster_bits, bool extended_l2) {
  Geometry g;
  g.cluster_bits = cluster_bits;
  g.cluster_size = 1ull << cluster_bits;
  g.extended_l2 = extended_l2;
  g.l2_entry_bytes = extended_l2 ? 16 : 8;
  g.l2_bits = cluster_bits - (extended_l2 ? 4 : 3);
  g.l2_entries = 1ull << g.l2_bits;
  g.subclusters = extended_l2 ? kSubclustersPerCluster : 1;
  g.subcluster_bits = extended_l2 ? cluster_bits - 5 : cluster_bits;
  g.csize_shift = 62 - (cluster_bits - 8);
  g.csize_mask = (1ull << (cluster_bits - 8)) - 1;
  g.compressed_offset_mask = (1ull << g.csize_shift) - 1;
  return g;
}

// ---- Validation -------------------------------------------------------------------

Status ValidateTable(uint64_t offset, uint64_t entries, uint64_t entry_bytes, uint64_t max_bytes,
                     uint64_t cluster_size, const std::string& what, const std::string& name) {
  if (entries > max_bytes / entry_bytes)
    return Status::TooLarge(name + ": " + what + " too large (" + std::to_string(entries) +
                            " entries, at most " + std::to_string(max_bytes / entry_bytes) + ")");
  const uint64_t bytes = entries * entry_bytes;
  constexpr uint64_t kInt64Max = std::numeric_limits<int64_t>::max();
  if (kInt64Max - bytes < offset || (offset & (cluster_size - 1)) != 0)
    return Status::Corruption(name + ": " + what + " offset invalid (" + Hex(offset) + ")");
  return Status::OK();
}

namespace {

std::string CString(const uint8_t* p, size_t len) {
  // Names are stored without a NUL; an embedded NUL ends them (as in QEMU).
  return std::string(reinterpret_cast<const char*>(p),
                     strnlen(reinterpret_cast<const char*>(p), len));
}

Status UnsupportedFeatures(const Header& h, uint64_t mask, const std::string& name) {
  std::string features;
  auto add = [&features](const std::string& s) {
    if (!features.empty()) features += ", ";
    features += s;
  };
  for (const FeatureNameEntry& e : h.feature_table) {
    if (e.type != 0 || e.bit >= 64 || !(mask & (1ull << e.bit))) continue;
    add(e.Name());
    mask &= ~(1ull << e.bit);
  }
  if (mask) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "Unknown incompatible feature: %llx",
                  static_cast<unsigned long long>(mask));
    add(buf);
  }
  return Status::NotSupported(name + ": Unsupported qcow2 feature(s): " + features);
}

// Header extensions live in [header_length, end) of cluster 0 (`c0`).
Status ReadExtensions(const std::vector<uint8_t>& c0, uint64_t start, uint64_t end, Header& h,
                      const std::string& name) {
  uint64_t offset = start;
  while (offset < end) {
    if (end - offset < sizeof(ExtensionHeader))
      return Status::Corruption(name + ": Header extension too large (header at " + Hex(offset) +
                                " crosses " + Hex(end) + ")");
    const ExtensionHeader ext = ExtensionHeader::Decode(c0.data() + offset);
    offset += sizeof(ExtensionHeader);
    if (ext.len > end - offset)
      return Status::Corruption(name + ": Header extension too large (type " + Hex(ext.type) +
                                ", length " + std::to_string(ext.len) + " at " +
                                Hex(offset - sizeof(ExtensionHeader)) + ")");
    const uint8_t* data = c0.data() + offset;
    switch (ext.type) {
      case kExtEnd:
        return Status::OK();
      case kExtBackingFormat:
        if (ext.len >= kBackingFormatBuf)
          return Status::Corruption(name + ": ext_backing_format: len=" + std::to_string(ext.len) +
                                    " too large (>=" + std::to_string(kBackingFormatBuf) + ")");
        h.backing_format = CString(data, ext.len);
        break;
      case kExtFeatureTable:
        h.feature_table.clear();
        for (uint64_t i = 0; i + sizeof(FeatureNameEntry) <= ext.len; i += sizeof(FeatureNameEntry))
          h.feature_table.push_back(FeatureNameEntry::Decode(data + i));
        break;
      case kExtCryptoHeader: {
        if (h.raw.crypt_method != kCryptLuks)
          return Status::Corruption(name +
                                    ": CRYPTO header extension only expected with LUKS "
                                    "encryption method");
        if (ext.len != sizeof(CryptoHeaderExtension))
          return Status::Corruption(name + ": CRYPTO header extension size " +
                                    std::to_string(ext.len) + ", but expected size " +
                                    std::to_string(sizeof(CryptoHeaderExtension)));
        CryptoHeaderExtension c = CryptoHeaderExtension::Decode(data);
        if (c.offset & (h.cluster_size - 1))
          return Status::Corruption(
              name + ": Encryption header offset '" + std::to_string(c.offset) +
              "' is not a multiple of cluster size '" + std::to_string(h.cluster_size) + "'");
        h.crypto = c;
        break;
      }
      case kExtBitmaps: {
        if (ext.len != sizeof(BitmapsExtension))
          return Status::Corruption(name + ": bitmaps_ext: Invalid extension length " +
                                    std::to_string(ext.len));
        // Without autoclear bit 0 a program without bitmap support touched the
        // file: the bitmaps are stale and QEMU ignores them.
        if (!(h.autoclear & kAutoclearBitmaps)) break;
        BitmapsExtension b = BitmapsExtension::Decode(data);
        if (b.reserved32 != 0)
          return Status::Corruption(name + ": bitmaps_ext: Reserved field is not zero");
        if (b.nb_bitmaps > kMaxBitmaps)
          return Status::Corruption(
              name + ": bitmaps_ext: Image has " + std::to_string(b.nb_bitmaps) +
              " bitmaps, exceeding the QEMU supported maximum of " + std::to_string(kMaxBitmaps));
        if (b.nb_bitmaps == 0)
          return Status::Corruption(name + ": found bitmaps extension with zero bitmaps");
        if (b.bitmap_directory_offset & (h.cluster_size - 1))
          return Status::Corruption(name + ": bitmaps_ext: invalid bitmap directory offset " +
                                    Hex(b.bitmap_directory_offset));
        if (b.bitmap_directory_size > kMaxBitmapDirectoryBytes)
          return Status::Corruption(name + ": bitmaps_ext: bitmap directory size (" +
                                    std::to_string(b.bitmap_directory_size) +
                                    ") exceeds the maximum supported size (" +
                                    std::to_string(kMaxBitmapDirectoryBytes) + ")");
        h.bitmaps = b;
        break;
      }
      case kExtDataFile:
        h.data_file = CString(data, ext.len);
        break;
      default:
        h.unknown_extensions.push_back(
            UnknownExtension{ext.type, std::vector<uint8_t>(data, data + ext.len)});
        break;
    }
    offset += (uint64_t{ext.len} + 7) & ~uint64_t{7};
  }
  return Status::OK();
}

}  // namespace

Result<Header> ReadHeader(Backend& file, uint64_t file_size, const std::string& name) {
  uint8_t head[kHeaderSize] = {};
  KVMFS_RETURN_IF_ERROR(file.ReadAt(0, head, sizeof head));
  Header h;
  h.raw = HeaderRaw::Decode(head, sizeof head);
  const HeaderRaw& r = h.raw;
  if (file_size < 4 || r.magic != kMagic)
    return Status::InvalidArgument(name + ": Image is not in qcow2 format");
  // A header cut short by the end of the file is truncation, not zeros.
  if (file_size < HeaderRaw::kV2Size)
    return Status::Corruption(name + ": file too short for a qcow2 header (" +
                              std::to_string(file_size) + " bytes)");
  if (r.version < 2 || r.version > 3)
    return Status::NotSupported(name + ": Unsupported qcow2 version " + std::to_string(r.version));
  h.version = r.version;

  if (r.cluster_bits < kMinClusterBits)
    return Status::Corruption(name + ": Unsupported cluster size: 2^" +
                              std::to_string(r.cluster_bits));
  if (r.cluster_bits > kMaxClusterBits)
    return Status::NotSupported(name + ": Unsupported cluster size: 2^" +
                                std::to_string(r.cluster_bits));
  h.cluster_bits = r.cluster_bits;
  h.cluster_size = 1ull << r.cluster_bits;

  if (h.version == 2) {
    // v2 headers end at 72 bytes; the v3 fields are implicitly zero.
    h.raw = HeaderRaw::Decode(head, HeaderRaw::kV2Size);
    h.refcount_order = 4;
    h.header_length = HeaderRaw::kV2Size;
  } else {
    if (r.header_length < HeaderRaw::kV3MinSize)
      return Status::Corruption(name + ": qcow2 header too short (header_length " +
                                std::to_string(r.header_length) + ")");
    if (r.header_length > h.cluster_size)
      return Status::Corruption(name + ": qcow2 header exceeds cluster size (header_length " +
                                std::to_string(r.header_length) + ")");
    if (file_size < r.header_length)
      return Status::Corruption(name + ": file too short for its qcow2 header (" +
                                std::to_string(file_size) + " bytes)");
    h.raw = HeaderRaw::Decode(head, r.header_length);
    h.refcount_order = h.raw.refcount_order;
    h.header_length = h.raw.header_length;
    h.incompatible = h.raw.incompatible_features;
    h.compatible = h.raw.compatible_features;
    h.autoclear = h.raw.autoclear_features;
  }

  // Cluster 0 holds the header, its extensions and the backing name.
  std::vector<uint8_t> c0(h.cluster_size);
  KVMFS_RETURN_IF_ERROR(file.ReadAt(0, c0.data(), c0.size()));
  if (h.header_length > kHeaderSize)
    h.unknown_header_fields.assign(c0.begin() + kHeaderSize, c0.begin() + h.header_length);

  if (r.backing_file_offset > h.cluster_size)
    return Status::Corruption(name + ": Invalid backing file offset (" +
                              Hex(r.backing_file_offset) + ")");
  const uint64_t ext_end = r.backing_file_offset ? r.backing_file_offset : h.cluster_size;

  // Compression type (additional field, present when header_length > 104).
  h.compression_type = h.header_length > HeaderRaw::kV3MinSize ? h.raw.compression_type : 0;
  if (h.compression_type != kCompressionZlib && h.compression_type != kCompressionZstd)
    return Status::NotSupported(
        name + ": qcow2: unknown compression type: " + std::to_string(h.compression_type));
  if (h.compression_type == kCompressionZlib && (h.incompatible & kIncompatCompression))
    return Status::Corruption(name +
                              ": qcow2: Compression type incompatible feature bit must not be set");
  if (h.compression_type != kCompressionZlib && !(h.incompatible & kIncompatCompression))
    return Status::Corruption(name +
                              ": qcow2: Compression type incompatible feature bit must be set");

  if (h.header_length < ext_end)
    KVMFS_RETURN_IF_ERROR(ReadExtensions(c0, h.header_length, ext_end, h, name));

  if (h.incompatible & ~kIncompatKnownMask)
    return UnsupportedFeatures(h, h.incompatible & ~kIncompatKnownMask, name);

  if (h.refcount_order > kMaxRefcountOrder)
    return Status::Corruption(name +
                              ": Reference count entry width too large; may not exceed 64 bits "
                              "(refcount_order " +
                              std::to_string(h.refcount_order) + ")");
  if (r.crypt_method > kCryptLuks)
    return Status::NotSupported(name + ": Unsupported encryption method " +
                                std::to_string(r.crypt_method));
  if (r.crypt_method == kCryptLuks && !h.crypto)
    return Status::Corruption(name + ": Missing CRYPTO header for crypt method 2");
  // Subclusters of extended L2 entries must be at least 512 bytes.
  if (h.extended_l2() && h.cluster_bits < kMinClusterBits + 5)
    return Status::Corruption(name + ": Unsupported subcluster size: " +
                              std::to_string(h.cluster_size / kSubclustersPerCluster) +
                              " (extended L2 needs clusters of at least 16 KiB)");

  // Refcount table: needed by a writer only, but QEMU refuses bad ones.
  if (r.refcount_table_clusters == 0)
    return Status::Corruption(name + ": Image does not contain a reference count table");
  KVMFS_RETURN_IF_ERROR(ValidateTable(
      r.refcount_table_offset, uint64_t{r.refcount_table_clusters} << (h.cluster_bits - 3), 8,
      kMaxRefcountTableBytes, h.cluster_size, "Reference count table", name));
  if (r.refcount_table_offset >= file_size)
    return Status::Corruption(name + ": Reference count table at " + Hex(r.refcount_table_offset) +
                              " is past the end of the file (" + std::to_string(file_size) +
                              " bytes)");

  KVMFS_RETURN_IF_ERROR(ValidateTable(r.snapshots_offset, r.nb_snapshots, sizeof(SnapshotHeaderRaw),
                                      sizeof(SnapshotHeaderRaw) * kMaxSnapshots, h.cluster_size,
                                      "Snapshot table", name));

  KVMFS_RETURN_IF_ERROR(ValidateTable(r.l1_table_offset, r.l1_size, 8, kMaxL1Bytes, h.cluster_size,
                                      "Active L1 table", name));
  // QEMU keeps whole 512-byte sectors of the virtual size.
  h.virtual_size = r.size & ~uint64_t{511};
  const Geometry geo = Geometry::For(h.cluster_bits, h.extended_l2());
  const uint64_t l1_needed = geo.SizeToL1(h.virtual_size);
  if (l1_needed > static_cast<uint64_t>(std::numeric_limits<int>::max()) ||
      h.virtual_size > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return Status::TooLarge(name + ": Image is too big (virtual size " + std::to_string(r.size) +
                            ")");
  if (r.l1_size < l1_needed)
    return Status::Corruption(name + ": L1 table is too small (" + std::to_string(r.l1_size) +
                              " entries, the virtual size needs " + std::to_string(l1_needed) +
                              ")");
  if (r.l1_size > 0 && r.l1_table_offset + uint64_t{r.l1_size} * 8 > file_size)
    return Status::Corruption(
        name + ": Active L1 table at " + Hex(r.l1_table_offset) + " (" + std::to_string(r.l1_size) +
        " entries) extends past the end of the file (" + std::to_string(file_size) + " bytes)");

  if (r.backing_file_offset != 0) {
    const uint64_t len = r.backing_file_size;
    const uint64_t room = h.cluster_size - r.backing_file_offset;
    if (len > kMaxBackingNameLen || len > room)
      return Status::Corruption(name + ": Backing file name too long (" + std::to_string(len) +
                                " bytes)");
    h.backing_file = CString(c0.data() + r.backing_file_offset, len);
  }

  if ((h.autoclear & kAutoclearDataFileRaw) && !h.has_data_file())
    return Status::Corruption(name + ": data-file-raw requires a data file");
  return h;
}

}  // namespace kvmfs::qcow2
