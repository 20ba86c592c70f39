// Creating an empty qcow2 image as `qemu-img create -f qcow2` of QEMU 7.2
// does with default options (qcow2_co_create, then the truncate to the size
// and qcow2_update_header): version 3, 64 KiB clusters, 16-bit refcounts,
// zlib compression type, no lazy refcounts. The file is, byte for byte:
//
//   cluster 0  the header (112 bytes), the backing format extension (with a
//              backing file), the feature name table, the end marker, and
//              the backing file name right after it
//   cluster 1  the refcount table: one entry, for the block in cluster 2
//   cluster 2  the refcount block: 1 for clusters 0, 1, 2 and the L1 table
//   cluster 3  the L1 table (all zeros), written only as long as it is: the
//              file ends with it (no L1 for a size of 0)
#include <cstring>
#include <vector>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {
namespace {

constexpr uint32_t kCreateClusterBits = 16;
constexpr uint64_t kCreateClusterSize = uint64_t{1} << kCreateClusterBits;
constexpr uint32_t kCreateRefcountOrder = 4;
constexpr uint64_t kReftableOffset = kCreateClusterSize;
constexpr uint64_t kRefblockOffset = 2 * kCreateClusterSize;
constexpr uint64_t kL1Offset = 3 * kCreateClusterSize;

struct FeatureName {
  uint8_t type;
  uint8_t bit;
  const char* name;
};

// QEMU 7.2's feature name table, in its order.
constexpr FeatureName kFeatureNames[] = {
    {0, 0, "dirty bit"},           {0, 1, "corrupt bit"},
    {0, 2, "external data file"},  {0, 3, "compression type"},
    {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},             {2, 1, "raw external data"},
};

size_t Align8(size_t n) { return (n + 7) & ~size_t{7}; }

// Appends one header extension (type, length, data padded to 8 bytes).
void AppendExtension(std::vector<uint8_t>& out, uint32_t type, const std::vector<uint8_t>& data) {
  const size_t at = out.size();
  out.resize(at + 8 + Align8(data.size()), 0);
  StoreBE32(out.data() + at, type);
  StoreBE32(out.data() + at + 4, static_cast<uint32_t>(data.size()));
  if (!data.empty()) std::memcpy(out.data() + at + 8, data.data(), data.size());
}

std::vector<uint8_t> FeatureTable() {
  std::vector<uint8_t> table(sizeof(FeatureNameEntry) * std::size(kFeatureNames), 0);
  uint8_t* p = table.data();
  for (const FeatureName& f : kFeatureNames) {
    p[0] = f.type;
    p[1] = f.bit;
    std::memcpy(p + 2, f.name, std::strlen(f.name));
    p += sizeof(FeatureNameEntry);
  }
  return table;
}

}  // namespace

Status CreateImage(Backend& file, const CreateOptions& options) {
  const std::string& name = file.name();
  const uint64_t size = (options.size + 511) & ~uint64_t{511};
  if (options.size > (uint64_t{1} << 62))
    return Status::TooLarge(name + ": image size " + std::to_string(options.size) + " too large");
  const Geometry geo = Geometry::For(kCreateClusterBits, false);
  const uint64_t l1_entries = geo.SizeToL1(size);
  if (l1_entries * 8 > kMaxL1Bytes)
    return Status::TooLarge(name + ": image size " + std::to_string(size) +
                            " needs an L1 table larger than QEMU's 32 MiB limit");
  if (options.backing_file.size() > kMaxBackingNameLen)
    return Status::InvalidArgument(name + ": backing file name longer than " +
                                   std::to_string(kMaxBackingNameLen) + " bytes");
  if (!options.backing_file.empty() && options.backing_format.empty())
    return Status::InvalidArgument(name + ": a backing file needs its format");
  if (options.backing_format.size() >= kBackingFormatBuf)
    return Status::InvalidArgument(name + ": backing format name too long");

  HeaderRaw h{};
  h.magic = kMagic;
  h.version = 3;
  h.cluster_bits = kCreateClusterBits;
  h.size = size;
  h.l1_size = static_cast<uint32_t>(l1_entries);
  h.l1_table_offset = l1_entries > 0 ? kL1Offset : 0;
  h.refcount_table_offset = kReftableOffset;
  h.refcount_table_clusters = 1;
  h.refcount_order = kCreateRefcountOrder;
  h.header_length = static_cast<uint32_t>(kHeaderSize);
  h.compression_type = kCompressionZlib;

  // Cluster 0: header, extensions, end marker, backing file name.
  std::vector<uint8_t> cluster(kHeaderSize, 0);
  if (!options.backing_file.empty())
    AppendExtension(cluster, kExtBackingFormat,
                    std::vector<uint8_t>(options.backing_format.begin(), options.backing_format.end()));
  AppendExtension(cluster, kExtFeatureTable, FeatureTable());
  AppendExtension(cluster, kExtEnd, {});
  if (!options.backing_file.empty()) {
    h.backing_file_offset = cluster.size();
    h.backing_file_size = static_cast<uint32_t>(options.backing_file.size());
    cluster.insert(cluster.end(), options.backing_file.begin(), options.backing_file.end());
  }
  if (cluster.size() > kCreateClusterSize)
    return Status::InvalidArgument(name + ": header and backing file name exceed a cluster");
  cluster.resize(kCreateClusterSize, 0);
  h.Encode(cluster.data());

  // Clusters 1 and 2: the refcount table and its one block.
  const uint64_t l1_clusters = (l1_entries * 8 + kCreateClusterSize - 1) / kCreateClusterSize;
  std::vector<uint8_t> refs(2 * kCreateClusterSize, 0);
  StoreBE64(refs.data(), kRefblockOffset);
  uint8_t* block = refs.data() + kCreateClusterSize;
  for (uint64_t c = 0; c < 3 + l1_clusters; ++c) SetRefcountEntry(block, kCreateRefcountOrder, c, 1);

  KVMFS_RETURN_IF_ERROR(file.WriteAt(0, cluster.data(), cluster.size()));
  KVMFS_RETURN_IF_ERROR(file.WriteAt(kReftableOffset, refs.data(), refs.size()));
  if (l1_entries > 0) {
    const std::vector<uint8_t> l1(l1_entries * 8, 0);
    KVMFS_RETURN_IF_ERROR(file.WriteAt(kL1Offset, l1.data(), l1.size()));
  }
  return Status::OK();
}

}  // namespace kvmfs::qcow2
