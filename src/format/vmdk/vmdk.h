// VMDK: the private map of the driver (descriptor, sparse extents, the
// engine every view shares). Byte layouts: /work/shared/reference/formats.md
// §5; behaviour as QEMU's block/vmdk.c (7.2).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/mutex.h"

#include "kvmfs/backend.h"
#include "kvmfs/codec.h"
#include "kvmfs/format.h"
#include "kvmfs/image.h"

namespace kvmfs::vmdk {

constexpr uint64_t kSector = 512;
// "KDMV" and "COWD" as big-endian u32 at offset 0 (QEMU's probe).
constexpr uint32_t kMagicVmdk4 = 0x4b444d56;
constexpr uint32_t kMagicVmdk3 = 0x434f5744;

// SparseExtentHeader flags.
constexpr uint32_t kFlagNewlineDetect = 1u << 0;
constexpr uint32_t kFlagRedundantGd = 1u << 1;
constexpr uint32_t kFlagZeroGrain = 1u << 2;
constexpr uint32_t kFlagCompressed = 1u << 16;
constexpr uint32_t kFlagMarkers = 1u << 17;
constexpr uint16_t kCompressionDeflate = 1;
constexpr uint64_t kGdAtEnd = ~uint64_t{0};
constexpr uint32_t kGteZeroed = 1;

// QEMU's limits (vmdk_add_extent, vmdk_open_vmdk4, vmdk_read_desc).
constexpr uint64_t kMaxGrainSectors = 0x200000;      // 1 GiB grains
constexpr uint32_t kMaxGtesPerGt = 512;
constexpr uint64_t kMaxGdEntries = 32ull << 20;
constexpr size_t kMaxDescriptorBytes = (1u << 20) - 1;  // a descriptor is read up to this
constexpr size_t kDescWindow = 20 * 512;  // where CID, parentCID and the parent hint are read
constexpr size_t kMaxNameBytes = 511;     // an extent file name (sscanf %511[...])
constexpr size_t kMaxParentHint = 4095;   // PATH_MAX - 1
constexpr uint32_t kCowdGtes = 4096;      // VMDK3 grain tables (QEMU hard-codes it)
constexpr uint64_t kMaxGrainSector = 1ull << 32;  // a GTE is a u32 sector number
// Not QEMU's: bounds on what one descriptor may make kvmfs open.
constexpr size_t kMaxExtents = 4096;
constexpr uint64_t kMaxSectors = uint64_t{INT64_MAX} / kSector;
constexpr uint64_t kMaxCompressedGrain = 16u << 20;  // decoded grains held in memory

// The hosted sparse extent header (KDMV), decoded; the magic is at 0, the
// fields follow it (79 bytes in all).
struct SparseHeader {
  uint32_t version = 0;
  uint32_t flags = 0;
  uint64_t capacity = 0;        // sectors
  uint64_t grain_sectors = 0;   // "granularity"
  uint64_t desc_offset = 0;     // sectors
  uint64_t desc_size = 0;       // sectors
  uint32_t gtes_per_gt = 0;
  uint64_t rgd_offset = 0;      // sectors
  uint64_t gd_offset = 0;       // sectors, or kGdAtEnd
  uint64_t grain_offset = 0;    // sectors ("overHead")
  uint16_t compress_algorithm = 0;
  static constexpr size_t kBytes = 79;
  static SparseHeader Decode(const uint8_t* p);  // p: kBytes from the magic on
};

// The VMDK3 header (COWD), decoded: magic at 0.
struct CowdHeader {
  uint32_t version = 0;
  uint32_t flags = 0;
  uint32_t disk_sectors = 0;
  uint32_t grain_sectors = 0;
  uint32_t gd_offset = 0;  // sectors
  uint32_t gd_entries = 0;
  static constexpr size_t kBytes = 28;
  static CowdHeader Decode(const uint8_t* p);
};

// ---- Descriptor -------------------------------------------------------------

struct ExtentLine {
  uint64_t sectors = 0;
  std::string type;       // FLAT, SPARSE, VMFS, VMFSSPARSE, SESPARSE
  std::string file_name;  // as written (relative to the descriptor's directory)
  uint64_t flat_offset = 0;  // sectors (FLAT; 0 for VMFS)
  int line = 0;              // 1-based, for messages
};

// What kvmfs uses of a descriptor. `text` is read as QEMU reads it: up to
// the first NUL, at most kMaxDescriptorBytes.
struct Descriptor {
  std::optional<std::string> create_type;
  std::vector<ExtentLine> extents;  // the RW lines QEMU uses, in order
};

// The identity fields, read from the first kDescWindow bytes of the text as
// QEMU's vmdk_read_cid / vmdk_parent_open do.
struct DescriptorIds {
  std::optional<uint32_t> cid;
  std::optional<uint32_t> parent_cid;
  size_t cid_pos = 0;  // offset and length of the CID's hex digits in the text
  size_t cid_len = 0;
  std::optional<std::string> parent_hint;  // parentFileNameHint
};

// Parses createType and the extent lines. kCorruption (naming `name` and the
// line) for an extent line QEMU calls invalid; lines QEMU skips are skipped.
Result<Descriptor> ParseDescriptor(std::string_view text, const std::string& name);
// Parses CID, parentCID and parentFileNameHint from `text` (the window).
// kCorruption when CID or parentCID is missing or the hint is unterminated.
Result<DescriptorIds> ParseDescriptorIds(std::string_view text, const std::string& name);
// QEMU's vmdk_probe on leading bytes: 100 for a sparse magic or a text whose
// first line that is not a comment or blank is version=1|2|3.
int ProbeVmdk(const uint8_t* head, size_t len);
// Whether `head` (the whole file when len < kProbeBytes) names a parent.
FormatPeek PeekVmdk(const uint8_t* head, size_t len);
// `text` up to its first NUL.
std::string_view CString(std::string_view text);

// ---- Extents ---------------------------------------------------------------

// One grain table, host order.
using GrainTable = std::vector<uint32_t>;

// One extent of the disk: a flat range of a file, or a sparse file
// (KDMV/COWD) with its grain directory and a cache of grain tables.
struct Extent {
  enum class Kind { kFlat, kSparse };
  Kind kind = Kind::kFlat;
  std::shared_ptr<Backend> file;
  std::string type;      // as qemu-img's "format" of the extent ("" for a monolithic file)
  std::string filename;  // as qemu-img shows it
  uint64_t start = 0;    // first guest byte
  uint64_t bytes = 0;    // guest bytes (sectors * 512)
  uint64_t flat_offset = 0;  // kFlat: byte offset in the file

  // kSparse
  bool cowd = false;
  uint32_t version = 0;
  uint32_t flags = 0;
  bool compressed = false;
  bool markers = false;
  bool zero_grain = false;
  uint64_t grain_bytes = 0;
  uint64_t grain_sectors = 0;
  uint32_t gtes_per_gt = 0;
  uint64_t gt_span = 0;          // guest bytes one GT maps
  std::vector<uint32_t> gd;      // GT sector offsets (0: none)
  std::vector<uint32_t> rgd;     // the redundant GD (writes keep its GTs in step), may be empty
  std::atomic<uint64_t> file_size{0};
  uint64_t next_grain_sector = 0;  // where the next grain goes (writes; engine lock)
  uint64_t data_start = 0;  // bytes before it are metadata (header, descriptor, tables)

  // Grain tables by GT sector, a bounded LRU.
  Mutex gt_mu;
  std::list<std::pair<uint32_t, std::shared_ptr<GrainTable>>> gt_lru GUARDED_BY(gt_mu);
  std::unordered_map<uint32_t, decltype(gt_lru)::iterator> gt_index GUARDED_BY(gt_mu);
};

// What the file (or, inside a descriptor, the extent) at hand is.
enum class OpenDepth { kTop, kInDescriptor };

// Reads a KDMV or COWD sparse extent in `file` (its first `head` bytes
// given), validating every field against the file size and QEMU's limits.
// `extent->file` and name fields are set by the caller. At the top level a
// KDMV header with capacity 0 naming a descriptor yields *nested_desc (the
// descriptor's byte offset) instead.
Status OpenSparseExtent(Extent& e, const uint8_t* head, size_t head_len, OpenDepth depth,
                        const std::string& name, std::optional<uint64_t>* nested_desc);

// What one run of guest bytes maps to.
struct Run {
  enum class Type { kUnallocated, kZero, kData, kCompressed };
  Type type = Type::kUnallocated;
  uint64_t length = 0;
  uint64_t host = 0;  // kData: byte in the extent file; kCompressed: the grain (marker) offset
  size_t extent = 0;
};

// ---- Engine ------------------------------------------------------------------

// The state every view of one image shares. Reads take mutex() shared,
// metadata changes exclusive.
class Engine {
 public:
  Engine(std::string name, std::shared_ptr<Backend> file, std::string create_type,
         DescriptorIds ids, uint64_t desc_base, std::vector<std::unique_ptr<Extent>> extents);

  const std::string& name() const { return name_; }
  uint64_t size() const { return size_; }
  std::shared_mutex& mutex() const { return rw_; }
  const std::vector<std::unique_ptr<Extent>>& extents() const { return extents_; }
  Backend& file() { return *file_; }
  const std::string& create_type() const { return create_type_; }
  const DescriptorIds& ids() const { return ids_; }  // requires mutex()
  uint32_t cid() const { return cid_.load(std::memory_order_acquire); }

  // The run at guest `off` (at most `len` > 0 bytes, within the disk).
  // `merge_data`: kData runs continue over grains that follow on in the file.
  // Validates every table entry it uses. Requires mutex() held.
  Result<Run> Map(uint64_t off, uint64_t len, bool status_mode);

  // Reads [off, off+len) of the guest bytes this layer holds, starting with
  // the compressed grain run `first` (Map() of `off`) and going on over the
  // compressed grains after it, decompressed concurrently. Returns the bytes
  // done (> 0, <= len). Requires mutex() held.
  Result<size_t> ReadCompressedRun(const Run& first, uint64_t off, uint8_t* out, size_t len);

  // The grain table at sector `gt_sector` of extent `e` (cached).
  Result<std::shared_ptr<GrainTable>> LoadGt(Extent& e, uint32_t gt_sector, uint64_t gd_index,
                                             bool backup);
  // Whether the grain is readable data at `host` of `e` (inside the file).
  Status CheckGrain(Extent& e, uint64_t host, uint64_t guest_off);

  // What `qemu-img check` says of the image (check.cpp): every grain looked
  // up in disk order; the first one past the end of its file, or a lookup
  // that fails, sets `failure` (and one corruption) and ends the check.
  // Takes mutex() shared.
  Result<CheckResult> Check(const CheckOptions& options);

  // ---- Writing (write.cpp) ----
  void SetWritable(bool opened_writable, std::string read_only_reason);
  bool writable() const { return writing_.load(std::memory_order_acquire); }
  std::string ReadOnlyReason() const;
  Status BeginWrites();
  Status EndWrites();
  // `backing` reads the layer below (zeros where there is none) for COW.
  using BackingRead = std::function<Status(uint64_t off, void* buf, size_t len)>;
  Status Write(uint64_t off, const uint8_t* buf, size_t len, const BackingRead& backing,
               bool has_backing, uint64_t backing_size);
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap, const BackingRead& backing,
                     bool has_backing, uint64_t backing_size);
  Status Flush();

 private:
  size_t FindExtent(uint64_t off) const;
  struct GteRef;
  Result<GteRef> LookupGte(Extent& e, uint64_t rel);
  Status CheckWritable(uint64_t off, uint64_t len) const;
  Status UpdateCid();
  Status WriteLocked(uint64_t off, const uint8_t* buf, size_t len, bool zero,
                     const BackingRead& backing, bool has_backing, uint64_t backing_size);
  Status WriteGrainPart(Extent& e, uint64_t rel, const uint8_t* buf, size_t n, bool zero,
                        const BackingRead& backing, bool has_backing, uint64_t backing_size,
                        uint64_t guest_off);
  Status SetGte(Extent& e, const GteRef& ref, uint32_t value);
  Status WriteCompressedGrain(Extent& e, const GteRef& ref, uint64_t rel, const uint8_t* buf,
                              size_t n, bool zero, bool has_backing, uint64_t backing_size,
                              uint64_t guest_off);

  // Decompressed grains, keyed by (extent, marker offset): repeated small
  // reads of one grain decode it once.
  struct GrainCacheEntry {
    size_t extent;
    uint64_t host;
    std::shared_ptr<const std::vector<uint8_t>> data;
    size_t valid;  // bytes the stream yielded
  };
  std::shared_ptr<const std::vector<uint8_t>> CachedGrain(size_t extent, uint64_t host,
                                                          size_t* valid);
  void CacheGrain(size_t extent, uint64_t host, std::shared_ptr<const std::vector<uint8_t>> data,
                  size_t valid);

  const std::string name_;
  const std::shared_ptr<Backend> file_;  // the descriptor (or the monolithic file)
  const std::string create_type_;
  DescriptorIds ids_;       // rw_
  const uint64_t desc_base_;  // where the descriptor text starts in file_
  const std::vector<std::unique_ptr<Extent>> extents_;
  uint64_t size_ = 0;
  std::atomic<uint32_t> cid_{0};
  mutable std::shared_mutex rw_;

  Mutex grain_cache_mu_;
  std::list<GrainCacheEntry> grain_cache_ GUARDED_BY(grain_cache_mu_);  // front = newest

  bool opened_writable_ = false;
  std::atomic<bool> writing_{false};
  bool cid_updated_ = false;  // rw_ (exclusive)
  mutable Mutex reason_mu_;
  std::string read_only_reason_ GUARDED_BY(reason_mu_);
};

// Opens an image (vmdk.cpp), for the driver and the tests.
Result<std::unique_ptr<Image>> OpenVmdk(std::shared_ptr<Backend> file, const OpenContext& ctx);

// Writes an empty monolithicSparse image of options.size bytes (an overlay of
// options.backing_file, a VMDK whose CID options.backing_image states, when
// named) into `file` (writable, empty) as `qemu-img create -f vmdk` does
// (create.cpp); the extent line names the last component of file.name().
// Errors: kInvalidArgument (size 0, names that do not fit the descriptor, no
// parent CID), kNotSupported (a parent that is not a VMDK), kTooLarge (256
// TiB and more, where QEMU's own layout breaks), the backend's own errors.
Status CreateImage(Backend& file, const CreateOptions& options);

}  // namespace kvmfs::vmdk
