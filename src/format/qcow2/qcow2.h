// qcow2 engine: the private map of the driver (after QEMU's block/qcow2.h).
//
// On-disk structures (each declared once, with Decode/Encode and a size
// check), feature bits and limits, the parsed header, the L2 table cache, and
// the Engine that maps guest offsets through an L1 table and writes the
// active disk. The files of this directory are cut by subsystem:
//   header.cpp    parse and validate the header and its extensions
//   snapshot.cpp  the internal snapshot table; snapshot create/delete
//   cache.cpp     the process-wide cache budget, L2 table cache (write-back),
//                 decompressed-cluster cache
//   cluster.cpp   L1/L2 mapping, reads, block status
//   refcount.cpp  refcount blocks and table: get/update, allocation, growth
//   write.cpp     allocating writes, COW, zeroes/discard, resize, Flush
//   compress_write.cpp  compressed writes (the pool's `compress:`): packing
//                 compressed clusters into shared host clusters
//   check.cpp     refcount rebuild of a dirty image, COPIED recomputation
//   commit.cpp    atomic metadata switch for snapshot create/delete
//   crypto.cpp    encryption (LUKS, legacy AES): the cipher set up at open,
//                 and ReadData/WriteData, the one road of guest data of
//                 normal clusters, where it is decrypted and encrypted
//   qcow2.cpp     driver entry: Probe, Open, the Image classes
//
// Writing (QEMU's ordering, reliability.md §3): guest data and COW first,
// then refcount blocks, then L2 tables, then L1 and header; a new table is
// written and flushed before anything points to it. Metadata is cached
// write-back and written in that order by Flush(). Refcount decrements are
// kept apart ("pending") until the tables that stopped using the cluster are
// durable, and a cluster is reused only after that, so a crash at any moment
// leaves at worst leaked clusters. Locking: Engine::mutex() is shared by
// readers and in-place overwrites of COPIED clusters, exclusive for anything
// that changes metadata, taken through Engine::LockExclusive(): a metadata
// walk (snapshot create/delete) holds the lock shared while it streams the
// tables, so readers go on, and every other metadata change waits for it.
//
// Memory: metadata lives in caches charged to one CacheBudget (cache.cpp):
// L2 tables, decompressed clusters, refcount blocks (at most an eighth of
// the budget, refcount.cpp), and, as BudgetCharges, the L1 tables and the
// refcount table. Walks over all tables (snapshot create/delete, refcount
// rebuild, COPIED recomputation) stream them one table at a time and write
// back as they go: none keeps anything per cluster.
//
// Allocating writes hold the lock exclusive only to allocate
// and to link (after QEMU's l2meta): the guest data and copy-on-write go to
// the new clusters in between, in parallel with other requests, while the
// clusters are registered "in flight" (overlapping requests wait).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <functional>
#include <optional>
#include <shared_mutex>
#include <unordered_set>
#include <string>
#include <unordered_map>
#include <vector>

#include "format/qcow2/options.h"
#include "kvmfs/backend.h"
#include "kvmfs/codec.h"
#include "kvmfs/format.h"
#include "kvmfs/image.h"
#include "kvmfs/status.h"

namespace kvmfs::qcow2 {

// ---- Limits (QEMU block/qcow2.h) ---------------------------------------------

inline constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr uint32_t kMinClusterBits = 9;
inline constexpr uint32_t kMaxClusterBits = 21;
inline constexpr uint64_t kMaxL1Bytes = 32ull << 20;            // QCOW_MAX_L1_SIZE
inline constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;  // QCOW_MAX_REFTABLE_SIZE
inline constexpr uint32_t kMaxSnapshots = 65536;                // QCOW_MAX_SNAPSHOTS
inline constexpr uint32_t kMaxSnapshotExtraData = 1024;         // QCOW_MAX_SNAPSHOT_EXTRA_DATA
inline constexpr uint64_t kMaxSnapshotTableBytes = 1024ull * kMaxSnapshots;  // 64 MiB
inline constexpr uint32_t kMaxBackingNameLen = 1023;
inline constexpr uint32_t kBackingFormatBuf = 16;  // QEMU's bs->backing_format[16]
inline constexpr uint32_t kMaxRefcountOrder = 6;
inline constexpr uint32_t kMaxBitmaps = 65535;
inline constexpr uint64_t kMaxBitmapDirectoryBytes = 1024ull * kMaxBitmaps;
inline constexpr uint64_t kMaxHostOffset = (1ull << 56) - 1;
inline constexpr uint32_t kCompressedSectorSize = 512;
inline constexpr int kSubclustersPerCluster = 32;  // extended L2

// ---- Feature bits ---------------------------------------------------------------

inline constexpr uint64_t kIncompatDirty = 1ull << 0;
inline constexpr uint64_t kIncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kIncompatDataFile = 1ull << 2;
inline constexpr uint64_t kIncompatCompression = 1ull << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
inline constexpr uint64_t kIncompatKnownMask = 0x1f;
inline constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;
inline constexpr uint64_t kAutoclearBitmaps = 1ull << 0;
inline constexpr uint64_t kAutoclearDataFileRaw = 1ull << 1;

inline constexpr uint32_t kCryptNone = 0;
inline constexpr uint32_t kCryptAes = 1;
inline constexpr uint32_t kCryptLuks = 2;

inline constexpr uint8_t kCompressionZlib = 0;
inline constexpr uint8_t kCompressionZstd = 1;

// Header extension types.
inline constexpr uint32_t kExtEnd = 0x00000000;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureTable = 0x6803f857;
inline constexpr uint32_t kExtBitmaps = 0x23852875;
inline constexpr uint32_t kExtCryptoHeader = 0x0537be77;
inline constexpr uint32_t kExtDataFile = 0x44415441;

// ---- Table entry bits -----------------------------------------------------------

inline constexpr uint64_t kOflagCopied = 1ull << 63;
inline constexpr uint64_t kOflagCompressed = 1ull << 62;
inline constexpr uint64_t kOflagZero = 1ull << 0;
inline constexpr uint64_t kL1OffsetMask = 0x00fffffffffffe00ull;
inline constexpr uint64_t kL1ReservedMask = 0x7f000000000001ffull;
inline constexpr uint64_t kL2OffsetMask = 0x00fffffffffffe00ull;
inline constexpr uint64_t kL2StdReservedMask = 0x3f000000000001feull;
inline constexpr uint64_t kL2CompressedMask = 0x3fffffffffffffffull;
inline constexpr uint64_t kBitmapAllAlloc = 0x00000000ffffffffull;
inline constexpr uint64_t kBitmapAllZero = 0xffffffff00000000ull;

// ---- On-disk structures (big-endian) ---------------------------------------------
// Each mirrors the on-disk layout (packed, so offsetof() is the disk offset)
// and is filled by Decode() from the raw bytes; fields hold host-order values.

struct [[gnu::packed]] HeaderRaw {
  uint32_t magic;
  uint32_t version;
  uint64_t backing_file_offset;
  uint32_t backing_file_size;
  uint32_t cluster_bits;
  uint64_t size;
  uint32_t crypt_method;
  uint32_t l1_size;
  uint64_t l1_table_offset;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  // v3 (absent fields read as 0)
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  uint32_t refcount_order;
  uint32_t header_length;
  // additional field, present when header_length > 104
  uint8_t compression_type;
  uint8_t padding[7];

  static constexpr size_t kV2Size = 72;
  static constexpr size_t kV3MinSize = 104;
  // `p` holds kSize bytes; fields at or past `length` decode as 0.
  static HeaderRaw Decode(const uint8_t* p, size_t length);
  // Writes all kSize bytes at `p`; the caller writes only the header's own
  // length of them (72 for v2, header_length for v3, at most kSize).
  void Encode(uint8_t* p) const;
};
static_assert(sizeof(HeaderRaw) == 112);
inline constexpr size_t kHeaderSize = sizeof(HeaderRaw);

struct [[gnu::packed]] ExtensionHeader {
  uint32_t type;
  uint32_t len;
  static ExtensionHeader Decode(const uint8_t* p);
};
static_assert(sizeof(ExtensionHeader) == 8);

struct [[gnu::packed]] FeatureNameEntry {
  uint8_t type;  // 0 incompatible, 1 compatible, 2 autoclear
  uint8_t bit;
  char name[46];  // zero padded, not necessarily NUL-terminated
  static FeatureNameEntry Decode(const uint8_t* p);
  std::string Name() const;
};
static_assert(sizeof(FeatureNameEntry) == 48);

struct [[gnu::packed]] BitmapsExtension {
  uint32_t nb_bitmaps;
  uint32_t reserved32;
  uint64_t bitmap_directory_size;
  uint64_t bitmap_directory_offset;
  static BitmapsExtension Decode(const uint8_t* p);
};
static_assert(sizeof(BitmapsExtension) == 24);

struct [[gnu::packed]] CryptoHeaderExtension {
  uint64_t offset;
  uint64_t length;
  static CryptoHeaderExtension Decode(const uint8_t* p);
};
static_assert(sizeof(CryptoHeaderExtension) == 16);

struct [[gnu::packed]] SnapshotHeaderRaw {
  uint64_t l1_table_offset;
  uint32_t l1_size;
  uint16_t id_str_size;
  uint16_t name_size;
  uint32_t date_sec;
  uint32_t date_nsec;
  uint64_t vm_clock_nsec;
  uint32_t vm_state_size;
  uint32_t extra_data_size;
  static SnapshotHeaderRaw Decode(const uint8_t* p);
  void Encode(uint8_t* p) const;
};
static_assert(sizeof(SnapshotHeaderRaw) == 40);

struct [[gnu::packed]] SnapshotExtraData {
  uint64_t vm_state_size_large;
  uint64_t disk_size;
  uint64_t icount;
  // `len` bytes of extra data are at `p`; missing fields decode as 0.
  static SnapshotExtraData Decode(const uint8_t* p, size_t len);
  void Encode(uint8_t* p) const;  // all 24 bytes
};
static_assert(sizeof(SnapshotExtraData) == 24);

// ---- Parsed header ----------------------------------------------------------------

struct UnknownExtension {  // preserved verbatim for a future header rewrite
  uint32_t type;
  std::vector<uint8_t> data;
};

struct Header {
  HeaderRaw raw{};
  uint32_t version = 0;
  uint32_t cluster_bits = 0;
  uint64_t cluster_size = 0;
  uint64_t virtual_size = 0;  // header size rounded down to 512, as QEMU
  uint32_t refcount_order = 4;
  uint32_t header_length = 72;
  uint8_t compression_type = kCompressionZlib;
  uint64_t incompatible = 0;
  uint64_t compatible = 0;
  uint64_t autoclear = 0;
  std::string backing_file;              // empty: none
  std::string backing_format;            // empty: not recorded
  std::optional<std::string> data_file;  // the name extension, when present
  std::vector<FeatureNameEntry> feature_table;
  std::optional<BitmapsExtension> bitmaps;  // only when autoclear bit 0 is set
  std::optional<CryptoHeaderExtension> crypto;
  std::vector<UnknownExtension> unknown_extensions;
  std::vector<uint8_t> unknown_header_fields;  // bytes [112, header_length)

  bool has_data_file() const { return incompatible & kIncompatDataFile; }
  bool extended_l2() const { return incompatible & kIncompatExtendedL2; }
};

// Reads and validates cluster 0 of `file` (`file_size` bytes long) as QEMU's
// qcow2_do_open does, including the table locations. Encryption is parsed
// and validated but not refused here (Open does that). Errors name `name`:
// kCorruption (invalid field), kNotSupported (unknown feature, compression
// or encryption method), kTooLarge (QEMU limits).
Result<Header> ReadHeader(Backend& file, uint64_t file_size, const std::string& name);

// Writes a new empty image into `file` as `qemu-img create -f qcow2` does
// (create.cpp). Errors: kTooLarge past QEMU's L1 limit, kInvalidArgument
// for a backing name QEMU would refuse, the backend's errors.
Status CreateImage(Backend& file, const CreateOptions& options);

// ---- Geometry -----------------------------------------------------------------------

struct Geometry {
  uint32_t cluster_bits = 16;
  uint64_t cluster_size = 1u << 16;
  uint32_t l2_bits = 13;  // log2(entries per L2 table)
  uint64_t l2_entries = 1u << 13;
  uint32_t l2_entry_bytes = 8;  // 16 with extended L2
  bool extended_l2 = false;
  uint32_t subcluster_bits = 16;  // == cluster_bits without extended L2
  uint32_t subclusters = 1;       // per cluster
  // Compressed descriptor decode (QEMU csize_shift / csize_mask / offset mask).
  uint32_t csize_shift = 0;
  uint64_t csize_mask = 0;
  uint64_t compressed_offset_mask = 0;

  static Geometry For(uint32_t cluster_bits, bool extended_l2);
  // Bytes of guest space one L1 entry covers (log2).
  uint32_t l1_shift() const { return cluster_bits + l2_bits; }
  // L1 entries needed for `size` bytes (QEMU size_to_l1), overflow-safe.
  uint64_t SizeToL1(uint64_t size) const {
    return (size >> l1_shift()) + ((size & ((1ull << l1_shift()) - 1)) != 0);
  }
};

// ---- Snapshots -------------------------------------------------------------------------

struct Snapshot {
  SnapshotInfo info;
  uint64_t l1_table_offset = 0;
  uint32_t l1_size = 0;
  uint32_t extra_data_size = 0;
  uint32_t index = 0;  // position in the table
  uint64_t serial = 0;  // unique in the engine's life, for views to detect deletion
  SnapshotHeaderRaw raw{};          // as read, for rewriting the table
  std::vector<uint8_t> extra_data;  // as read (unknown fields preserved)
};

// The on-disk bytes of a snapshot table holding `snapshots` (entries padded
// to 8 bytes; id and name lengths from info.id / info.name).
std::vector<uint8_t> EncodeSnapshotTable(const std::vector<Snapshot>& snapshots);

// Reads the snapshot table the header points to, with QEMU's bounds.
Result<std::vector<Snapshot>> ReadSnapshotTable(Backend& file, uint64_t file_size,
                                                const Header& header, const std::string& name);

// Validates a table of `entries` x `entry_bytes` at `offset` as QEMU's
// qcow2_validate_table: kTooLarge past `max_bytes`, kCorruption when
// unaligned or when offset + size overflows INT64. `what` names the table.
Status ValidateTable(uint64_t offset, uint64_t entries, uint64_t entry_bytes, uint64_t max_bytes,
                     uint64_t cluster_size, const std::string& what, const std::string& name);

// ---- Metadata cache budget ----------------------------------------------------------------
//
// Every cached L2 table and decompressed cluster of every open image is
// charged (its cluster size plus kCacheEntryOverhead) to one CacheBudget, the
// process-wide one unless a test gives its own. When an insert takes the
// budget over its limit, the inserting thread (holding no cache lock) calls
// Reclaim(), which evicts the least recently used entries of all registered
// caches, coldest cache end first, so an active image takes memory back from
// idle ones. Entries that are pinned (a request in progress holds them) or
// dirty (an L2 table not written back yet) are never evicted, so the charged
// bytes exceed the limit by at most those: about two clusters per request in
// progress (the L2 table being mapped, a decompressed cluster), the tables a
// write request dirties before the writer's write-back (MaybeWriteBack
// flushes as soon as dirty tables keep the budget over), and one entry per
// inserting thread (added before it reclaims; when only pinned and dirty
// entries are left, the entry an insert returned stays until the next one).
// Besides, up to limit/16 bytes of evicted L2 tables wait uncharged for
// reuse (CacheBudget::KeepSpare).
//
// Lock order: engine rw_ -> CacheBudget::mu_ -> one cache's mu_. A cache's
// mu_ is a leaf (nothing is locked or waited for under it, the budget's
// counters are atomics), so Reclaim may wait for it; it first only tries.

// Bytes charged per entry on top of its payload: list and index nodes, the
// shared_ptr control block, the vector header.
inline constexpr uint64_t kCacheEntryOverhead = 128;

class CacheBudget;
struct L2Table;
struct CommitPlan;

// A cache whose entries are charged to a CacheBudget.
class BudgetedCache {
 public:
  virtual ~BudgetedCache() = default;
  // The last-use tick of the least recently used entry, read without the
  // cache lock (a hint); UINT64_MAX when empty.
  uint64_t cold_tick() const { return cold_tick_.load(std::memory_order_relaxed); }
  // While the budget is over its limit, evicts evictable entries last used at
  // or before `bound`, least recently used first. Takes the cache lock with
  // try_lock unless `wait`. Returns the bytes freed (0: busy or none).
  virtual uint64_t Evict(uint64_t bound, bool wait) = 0;

 protected:
  std::atomic<uint64_t> cold_tick_{UINT64_MAX};
};

class CacheBudget {
 public:
  explicit CacheBudget(uint64_t limit_bytes) : limit_(limit_bytes) {}
  // The process-wide budget (kDefaultQcow2CacheBytes until SetLimit).
  static const std::shared_ptr<CacheBudget>& Global();

  // Sets the limit and evicts down to it. Any thread holding no cache lock.
  void SetLimit(uint64_t bytes);
  uint64_t limit() const { return limit_.load(std::memory_order_relaxed); }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  // The most ever charged at once since ResetPeak (for tests and logs).
  uint64_t peak() const { return peak_.load(std::memory_order_relaxed); }
  void ResetPeak() { peak_.store(used(), std::memory_order_relaxed); }
  bool over() const { return used() > limit(); }

  // A new last-use tick (a global clock, so ticks compare across caches).
  uint64_t Tick() { return hot_.clock.fetch_add(1, std::memory_order_relaxed) + 1; }

  // Counts for the metrics (Qcow2CacheStatsNow), by cache kind: 0 L2
  // tables, 1 decompressed clusters. Lock-free; the lookup counts share the
  // clock's cache line, which every lookup writes anyway.
  void CountLookup(int kind, bool hit) {
    (hit ? hot_.hits : hot_.misses)[kind].fetch_add(1, std::memory_order_relaxed);
  }
  void CountEvictions(int kind, uint64_t n) {
    evictions_[kind].fetch_add(n, std::memory_order_relaxed);
  }
  uint64_t hits(int kind) const { return hot_.hits[kind].load(std::memory_order_relaxed); }
  uint64_t misses(int kind) const { return hot_.misses[kind].load(std::memory_order_relaxed); }
  uint64_t evictions(int kind) const { return evictions_[kind].load(std::memory_order_relaxed); }
  void Charge(uint64_t bytes);
  void Release(uint64_t bytes) { used_.fetch_sub(bytes, std::memory_order_relaxed); }

  // A cache registers for its lifetime; Unregister waits for a Reclaim that
  // may be evicting from it.
  void Register(BudgetedCache* cache);
  void Unregister(BudgetedCache* cache);
  // Evicts until within the limit or nothing evictable is left. Must be
  // called holding no cache lock.
  void Reclaim();

  // Evicted L2 tables wait here (uncharged: at most kMaxSpareTables and
  // limit/16 bytes) for the next load of a table of the same size, of any
  // image. Steady-state eviction then recycles memory instead of returning
  // it to malloc, whose per-thread arenas would keep it (RSS over budget).
  void KeepSpare(std::shared_ptr<L2Table> table);
  // A spare table of `words` words (contents stale), or null.
  std::shared_ptr<L2Table> TakeSpare(size_t words);

 private:
  static constexpr size_t kMaxSpareTables = 4;
  std::mutex spare_mu_;                              // a leaf, taken under a cache's lock
  std::vector<std::shared_ptr<L2Table>> spare_;  // GUARDED_BY(spare_mu_)
  std::atomic<uint64_t> limit_;
  std::atomic<uint64_t> used_{0};
  std::atomic<uint64_t> peak_{0};
  struct alignas(64) Hot {
    std::atomic<uint64_t> clock{0};
    std::atomic<uint64_t> hits[2]{};
    std::atomic<uint64_t> misses[2]{};
  } hot_;
  std::atomic<uint64_t> evictions_[2]{};
  std::mutex mu_;                        // serialises Reclaim and the registry
  std::vector<BudgetedCache*> caches_;  // GUARDED_BY(mu_)
};

// A bounded LRU of shared values keyed by u64, charged to a CacheBudget (and
// at most `max_entries` of its own). Thread-safe; the lock covers only the
// map operations, the caller does the I/O. Values stay valid while
// referenced. An entry is evictable when nothing outside the cache holds it
// (use_count 1: no request in progress pins it) and it is not dirty.
template <class V>
class BudgetedLru final : public BudgetedCache {
 public:
  BudgetedLru(std::shared_ptr<CacheBudget> budget, uint64_t entry_bytes, size_t max_entries);
  ~BudgetedLru() override;
  BudgetedLru(const BudgetedLru&) = delete;
  BudgetedLru& operator=(const BudgetedLru&) = delete;

  std::shared_ptr<V> Lookup(uint64_t key);
  // Inserts `value` at `key`. When the key is cached already: keeps the
  // cached value and returns it, or replaces it when `replace`. May evict
  // (never `value` itself: the caller holds it).
  std::shared_ptr<V> Insert(uint64_t key, std::shared_ptr<V> value, bool replace);
  // Lookup() that leaves the entry where it is in the LRU order.
  std::shared_ptr<V> Peek(uint64_t key);
  // Insert() (never replacing) at the cold end: evicted before every entry
  // in use, so a scan does not push out the working set.
  std::shared_ptr<V> InsertCold(uint64_t key, std::shared_ptr<V> value);
  void Erase(uint64_t key);
  // Erase() only while `key` holds `value`.
  void EraseIf(uint64_t key, const V* value);
  // The cached values (only the dirty ones when `only_dirty`), least
  // recently used first.
  std::vector<std::shared_ptr<V>> Values(bool only_dirty) const;
  size_t size() const;
  uint64_t entry_bytes() const { return entry_bytes_; }
  CacheBudget& budget() const { return *budget_; }
  const std::shared_ptr<CacheBudget>& shared_budget() const { return budget_; }
  uint64_t Evict(uint64_t bound, bool wait) override;

 private:
  struct Entry {
    uint64_t key;
    std::shared_ptr<V> value;
    uint64_t tick;
  };
  using List = std::list<Entry>;
  void EraseLocked(typename List::iterator it);
  void PublishColdLocked();
  const std::shared_ptr<CacheBudget> budget_;
  const uint64_t entry_bytes_;
  const size_t max_entries_;
  mutable std::mutex mu_;
  List lru_;                                                     // GUARDED_BY(mu_), front = newest
  std::unordered_map<uint64_t, typename List::iterator> index_;  // GUARDED_BY(mu_)
};

// Bytes charged to a CacheBudget while this lives: tables held outside the
// caches (L1 tables, the refcount table, the copies a metadata walk keeps).
// They cannot be evicted, so charging them makes the caches give the room
// back. Move-only; not thread-safe (its owner's lock covers it).
class BudgetCharge {
 public:
  BudgetCharge() = default;
  BudgetCharge(CacheBudget& budget, uint64_t bytes) { Set(budget, bytes); }
  BudgetCharge(BudgetCharge&& o) noexcept : budget_(o.budget_), bytes_(o.bytes_) { o.bytes_ = 0; }
  BudgetCharge& operator=(BudgetCharge&& o) noexcept;
  BudgetCharge(const BudgetCharge&) = delete;
  BudgetCharge& operator=(const BudgetCharge&) = delete;
  ~BudgetCharge() { Release(); }
  // Charges `bytes` instead of what was charged (may reclaim: hold no cache
  // lock).
  void Set(CacheBudget& budget, uint64_t bytes);
  void Release();

 private:
  CacheBudget* budget_ = nullptr;
  uint64_t bytes_ = 0;
};

// ---- L2 cache ---------------------------------------------------------------------------

// One L2 table, decoded to host order: `entries` u64 words (2 per entry with
// extended L2: descriptor, bitmap).
struct L2Table {
  uint64_t host_offset = 0;
  std::vector<uint64_t> words;
  // Changed in memory and not yet written. Set and cleared only under the
  // engine's exclusive lock; a dirty table is never evicted (atomic: the
  // budget's Reclaim reads it from other threads).
  std::atomic<bool> dirty{false};
};

// The L2 tables of one image file keyed by host offset (so active and
// snapshot views share tables), within the budget. Thread-safe; returned
// tables stay valid while referenced. Table contents change only under the
// engine's exclusive lock.
class L2Cache {
 public:
  L2Cache(std::shared_ptr<CacheBudget> budget, uint64_t table_bytes);
  std::shared_ptr<const L2Table> Lookup(uint64_t host_offset);
  // Inserts `table` unless another thread inserted the same offset first;
  // returns the table now cached. May evict clean tables of any image.
  std::shared_ptr<const L2Table> Insert(std::shared_ptr<L2Table> table);
  // For block-status walks, which must not evict the tables readers and
  // writers use: Peek() is Lookup() without marking the table used, and
  // InsertCold() is Insert() at the cold end (the first table evicted).
  std::shared_ptr<const L2Table> Peek(uint64_t host_offset);
  std::shared_ptr<const L2Table> InsertCold(std::shared_ptr<L2Table> table);
  // For the writer (engine exclusive lock held): the cached table, mutable.
  std::shared_ptr<L2Table> LookupForWrite(uint64_t host_offset);
  // Inserts or replaces the table at its offset (a new or copied table).
  void Put(std::shared_ptr<L2Table> table);
  // Drops the table at `host_offset` (the cluster was freed).
  void Erase(uint64_t host_offset);
  // The dirty tables, sorted by host offset.
  std::vector<std::shared_ptr<L2Table>> DirtyTables() const;
  // The tables the whole budget holds (at least 1): the writer's yardstick
  // for how many tables it keeps dirty.
  size_t capacity() const;
  // Whether the budget is still over its limit after evicting what it can
  // (then only dirty or pinned entries keep it over).
  bool OverBudget() const;
  // A clean table of `words` words to load into (recycled when possible).
  std::shared_ptr<L2Table> NewTable(size_t words) const;
  size_t size() const { return lru_.size(); }
  CacheBudget& budget() const { return lru_.budget(); }

 private:
  mutable BudgetedLru<L2Table> lru_;
};

// One compressed cluster of the ClusterCache: waiting to be decoded, being
// decoded, or done. Made with its compressed bytes by the thread that read
// them, then decoded exactly once by whichever thread claims it first: a
// helper of the decode pool (PostDecodeTask) or a reader that needs it. A
// reader never waits for a cluster nobody has started (it claims it), so no
// request waits for another request's clusters or for a pool thread to be
// free. Thread-safe.
class DecodedCluster {
 public:
  // `in` (`in_len` bytes) lies in `input`, kept until decoded.
  DecodedCluster(CompressionType type, size_t cluster_bytes,
                 std::shared_ptr<const uint8_t[]> input, const uint8_t* in, size_t in_len);
  DecodedCluster(const DecodedCluster&) = delete;
  DecodedCluster& operator=(const DecodedCluster&) = delete;

  // Decodes the cluster unless a thread has claimed it already; true when
  // this call did the work.
  bool TryDecode();
  // TryDecode(), then waits until the cluster is decoded. Returns the
  // decoder's status (OK: data() holds the cluster).
  Status Wait();
  bool done() const { return state_.load(std::memory_order_acquire) >= kReady; }
  // The decoded bytes; valid once Wait() returned OK, for as long as this lives.
  const uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  enum : uint32_t { kQueued, kRunning, kReady, kFailed };
  const CompressionType type_;
  const size_t size_;
  // Pooled (image/buffer_pool.h); written by the claimer only, before kReady.
  const std::shared_ptr<uint8_t[]> data_;
  // The claimer's alone once claimed (dropped after decoding).
  std::shared_ptr<const uint8_t[]> input_;
  const uint8_t* in_;
  size_t in_len_;
  Status status_;  // written by the claimer before kFailed
  std::atomic<uint32_t> state_{kQueued};
};

// A small LRU of compressed clusters (decoded or in flight) keyed by the
// compressed descriptor, within the budget. An entry in flight is pinned
// (its task holds it), so it is never evicted before it is decoded.
class ClusterCache {
 public:
  ClusterCache(std::shared_ptr<CacheBudget> budget, uint64_t cluster_bytes, size_t max_clusters);
  std::shared_ptr<DecodedCluster> Lookup(uint64_t key);
  // Lookup() that does not mark the entry used.
  std::shared_ptr<DecodedCluster> Peek(uint64_t key);
  // Caches `cluster` at `key` unless another thread cached one there first;
  // returns the one now cached.
  std::shared_ptr<DecodedCluster> Insert(uint64_t key, std::shared_ptr<DecodedCluster> cluster);
  // Drops `cluster` if it is what `key` holds (a cluster that failed to
  // decode: the next reader reads it again).
  void EraseIf(uint64_t key, const DecodedCluster* cluster);
  // Drops whatever `key` holds (a descriptor linked anew by a write: its
  // bytes are new).
  void Erase(uint64_t key);
  // The most clusters it keeps of its own accord (the budget may keep fewer).
  size_t max_clusters() const { return max_clusters_; }
  CacheBudget& budget() const { return lru_.budget(); }
  // A pin on `cluster` that, when the last holder lets go, gives the budget
  // back what it went over by while the cluster could not be evicted (a
  // decode task or a reply plan held it past the reader's Reclaim()).
  std::shared_ptr<const void> Pin(std::shared_ptr<DecodedCluster> cluster) const;
  // Reclaim() when over the limit; holding no cache lock.
  void ReclaimIfOver() const;

 private:
  const size_t max_clusters_;
  BudgetedLru<DecodedCluster> lru_;
};

// ---- Refcounts -------------------------------------------------------------------------

// One cached refcount block. `data` holds the current (logical) refcounts in
// the on-disk encoding. While decrements are pending (they must not reach
// the disk before the tables that dropped the references are durable),
// `disk` holds what may be written instead: `data` with the decrements left
// out (increments are applied to both). So a block costs at most two
// clusters, however many decrements wait.
struct RefBlock {
  uint64_t rt = 0;  // refcount table index
  uint64_t host_offset = 0;
  std::vector<uint8_t> data;
  std::vector<uint8_t> disk;  // empty: no pending decrement
  bool dirty = false;
  bool busy = false;  // being moved (commit): neither written back nor evicted
  std::list<uint64_t>::iterator lru;  // in Engine::refblock_lru_
};

// Reads / writes entry `i` of a refcount block of 2^order-bit entries.
uint64_t GetRefcountEntry(const uint8_t* block, uint32_t order, uint64_t i);
void SetRefcountEntry(uint8_t* block, uint32_t order, uint64_t i, uint64_t v);

// ---- Engine -------------------------------------------------------------------------------

// What one run of guest bytes maps to, in one layer.
struct Extent {
  enum class Type { kUnallocated, kZero, kData, kCompressed };
  Type type = Type::kUnallocated;
  uint64_t length = 0;    // bytes from the queried offset
  uint64_t host = 0;      // kData: host (or data file) offset of the first byte
  uint64_t l2_entry = 0;  // kCompressed: the descriptor
};

enum class MapMode {
  kRead,    // kData runs need contiguous host offsets; one compressed cluster per run
  kStatus,  // merge by allocation kind only (compressed counts as data)
};

using L1Table = std::vector<uint64_t>;

// One allocating run of WriteRun(): `nclusters` new host clusters at `host`
// for the guest clusters from `cstart`, taking the guest bytes [pos, pos+n)
// from `p`. A partial run is one cluster whose other bytes come from the
// current view (copy-on-write).
struct AllocRun {
  uint64_t pos = 0;
  uint64_t n = 0;
  const uint8_t* p = nullptr;
  uint64_t cstart = 0;
  uint64_t nclusters = 1;
  uint64_t host = 0;
  uint64_t l1_index = 0;
  uint64_t l2_index = 0;
  bool partial = false;
  // Partial runs of extended-L2 images (not replacing a compressed
  // cluster): the subclusters filled from the current view, and the new
  // entry's bitmap.
  bool subclusters = false;
  uint64_t alloc = 0;
  uint64_t new_bitmap = kBitmapAllAlloc;
  // A compressed run (compress_write.cpp): one cluster, whose `csize`
  // compressed bytes go to `host` (any byte offset) once placed (host 0
  // until then).
  bool compress = false;
  uint64_t csize = 0;
};
struct Encryption;  // the cipher of an encrypted image (crypto.h)

// What the writer needs of the layer below: its bytes (zeros past its end or
// without one) and whether there is one.
struct BackingView {
  std::function<Status(uint64_t off, void* buf, size_t len)> read;
  bool present = false;
  uint64_t size = 0;
};

// What a snapshot create or delete switches to (commit.cpp).
struct CommitPlan {
  bool create = false;           // else delete
  std::vector<Snapshot> table;   // the snapshot table after the switch
  L1Table victim_l1;             // delete: the victim's L1 table
  uint64_t victim_l1_offset = 0;
  // Filled by the walk:
  L1Table new_l1;                // the active L1 after the switch
  BudgetCharge charge;           // for victim_l1 and new_l1
  uint64_t l1_offset = 0, table_offset = 0, reftable_offset = 0;
};

// The state every view of one qcow2 file shares: backends, header, caches,
// the active L1 table and, while writing, the refcount cache.
//
// Thread-safety: mutex() is taken shared by every read (of any view) and by
// in-place overwrites, exclusive by every metadata change. Members marked
// "rw_" below are guarded by it.
class Engine {
 public:
  Engine(std::shared_ptr<Backend> file, std::shared_ptr<Backend> data, Header header,
         std::vector<Snapshot> snapshots, const Qcow2Options& options, std::string name,
         uint64_t file_size, uint64_t data_size);

  const std::string& name() const { return name_; }
  const Geometry& geo() const { return geo_; }
  Backend& file() { return *file_; }
  Backend& data() { return *data_; }
  const L2Cache& l2_cache() const { return l2_cache_; }
  CacheBudget& budget() const { return l2_cache_.budget(); }
  std::shared_mutex& mutex() const { return rw_; }
  // mutex() exclusive, once no metadata walk runs (the walk holds mutex()
  // shared while it streams the tables and owns the metadata meanwhile).
  // Every exclusive locker of mutex() must take it this way.
  std::unique_lock<std::shared_mutex> LockExclusive();

  // Requires mutex() held (shared or exclusive).
  const Header& header() const { return header_; }
  const std::vector<Snapshot>& snapshots() const { return snapshots_; }
  const L1Table& active_l1() const { return l1_; }
  // The current virtual size of the active disk. Any thread.
  uint64_t virtual_size() const { return virtual_size_.load(std::memory_order_acquire); }

  // Loads the active L1 (at open). Not thread-safe.
  Status LoadActiveL1();

  // Loads an L1 table of `entries` at `offset` (already validated).
  Result<L1Table> LoadL1(uint64_t offset, uint32_t entries, const std::string& what);

  // The run starting at guest `off` (at most `len` bytes, len > 0). Validates
  // every entry it uses; kCorruption names the image, the guest offset, the
  // table and the index. Requires mutex() held.
  Result<Extent> Map(const L1Table& l1, uint64_t off, uint64_t len, MapMode mode);

  // Reads `n` bytes at `off_in_cluster` of the compressed cluster `entry`
  // (guest offset `guest_off`, for messages). Decompressed clusters are cached.
  Status ReadCompressed(uint64_t entry, uint64_t off_in_cluster, uint8_t* out, size_t n,
                        uint64_t guest_off);

  // Reads the guest bytes [off, off+len) of a view ending at `view_end`
  // that start with the compressed cluster run `first` (Map() of `off`) and
  // go on over the compressed clusters that follow it, as ReadCompressed()
  // each. Returns the bytes read (> 0, <= len): the caller goes on from
  // there. On failure the error of the first bad cluster in guest order.
  //
  // The first call of a request also starts the decoding of every other
  // compressed cluster of [off, off+len) and, when the reads of `l1` go on
  // sequentially, of a readahead window past it (bounded by the cluster
  // cache, see ReadAheadRange): their bytes are read with as few reads as
  // their layout allows and decoded on the shared pool, so a request waits
  // only for the clusters it needs, most of them decoded while the previous
  // reply went out. Requires mutex() held (shared or exclusive).
  Result<size_t> ReadCompressedRun(const L1Table& l1, const Extent& first, uint64_t off,
                                   uint8_t* out, size_t len, uint64_t view_end);
  // ReadCompressedRun() into `plan`: the pieces point at the decoded clusters
  // (the plan holds them) instead of copying them, but for small clusters.
  Result<size_t> PlanCompressedRun(const L1Table& l1, const Extent& first, uint64_t off,
                                   size_t len, uint64_t view_end, ReadPlan& plan);

  // ---- Guest data of normal clusters (crypto.cpp) --------------------------
  // The one road of guest bytes to and from normal (non-compressed) data
  // clusters: every read and write of them goes through these two, so an
  // encrypted image decrypts and encrypts here and nowhere else.

  // Sets the encryption of an encrypted image (at open, before the engine
  // is shared). Not thread-safe.
  void SetEncryption(std::shared_ptr<const Encryption> enc);
  bool encrypted() const { return enc_ != nullptr; }
  const Encryption* encryption() const { return enc_.get(); }
  // OK, or why the guest data of this encrypted image cannot be read or
  // written (a key problem: kPermission; a cipher kvmfs cannot compute:
  // kNotSupported). Any thread.
  Status DataStatus() const;

  // Reads the `n` guest bytes at guest offset `guest`, stored at `host` of
  // the data file (or the image file); `guest` and `host` lie in the same
  // normal cluster (or its run). Encrypted: the whole 512-byte sectors
  // around them are read and decrypted (in parallel, CryptRange), IVs from
  // host sectors (LUKS) or guest sectors (AES). Errors: DataStatus(), I/O.
  // Thread-safe.
  Status ReadData(uint64_t guest, uint64_t host, uint8_t* out, size_t n);
  // Writes them. Encrypted: a copy is encrypted (whole sectors; a partial
  // head or tail sector is read, patched and re-encrypted, with every other
  // write that could touch it kept out meanwhile). Thread-safe.
  Status WriteData(uint64_t guest, uint64_t host, const uint8_t* in, size_t n);

  // ---- Writing (write.cpp, refcount.cpp, snapshot.cpp, check.cpp) ----------
  // All of these take mutex() themselves. Errors name the image and offset;
  // corruption found while writing sets the corrupt bit and makes the engine
  // read-only (ReadOnlyReason()).

  // Whether writes may succeed now (BeginWrites done, not read-only).
  bool writable() const;
  // Why the file is served read-only; empty when it is not.
  std::string ReadOnlyReason() const;
  // Called at open for a writable file: the engine may later be written.
  void SetOpenedWritable(bool writable, std::string read_only_reason);
  // Called at open (before any write): store every wholly written cluster
  // that has no host cluster in this layer compressed, with the image's
  // compression type, as QEMU's compress filter (compress_write.cpp).
  // Ignored for images with an external data file (QEMU refuses them) and
  // for encrypted images.
  void SetWriteCompression(bool on);
  bool write_compression() const { return compress_writes_; }
  // Loads the refcount table, repairs a dirty image. Idempotent.
  Status BeginWrites();
  // Flush, then no more writes until BeginWrites().
  Status EndWrites();
  // Writes run in parallel: in-place overwrites under mutex() shared, and
  // allocating writes to different clusters (the data and COW of each
  // outside the exclusive lock); requests touching the same clusters as an
  // allocation in flight wait for it.
  Status Write(uint64_t off, const uint8_t* buf, size_t len, const BackingView& backing);
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap, const BackingView& backing);
  // Makes every completed write durable. When nothing was written since the
  // last complete flush it returns at once: no lock, no backend flush.
  Status Flush();
  // Waits until no allocating write is in flight and keeps new ones from
  // starting until ResumeAllocations() (snapshot create/delete, resize:
  // operations that change many tables). Calls nest. Takes mutex() itself:
  // call without it.
  void PauseAllocations();
  void ResumeAllocations();
  // The next Flush() must write back and sync (after an operation that may
  // leave metadata dirty). Any thread.
  void MarkUnsynced() { write_gen_.fetch_add(1, std::memory_order_acq_rel); }
  Status Resize(uint64_t new_size, const BackingView& backing);
  Result<SnapshotInfo> CreateSnapshot(const std::string& name);
  // A read-only check as `qemu-img check` without repair (verify.cpp).
  // Writes back what a write session holds first (the file then says what
  // the engine knows), then walks the file with the metadata frozen:
  // readers and in-place writes go on, metadata changes wait. Memory:
  // options.max_count_bytes of reference counters (more passes over the
  // tables for a larger file), one L1 and one L2 table, the refcount table.
  // Errors: only the flush's; a failed walk is CheckResult::failure.
  Result<CheckResult> Check(const CheckOptions& options);
  Status DeleteSnapshot(const std::string& id);
  // Whether snapshot `id` with its L1 at `l1_offset` still exists. Requires
  // mutex() held.
  bool SnapshotAlive(uint64_t serial) const;

 private:
  friend class Writer;
  friend class Verifier;
  // `cold`: for block-status walks; a table not cached is cached cold
  // (L2Cache::InsertCold) and a cached one is not marked used.
  Result<std::shared_ptr<const L2Table>> GetL2(uint64_t l2_offset, uint64_t l1_index,
                                               bool cold = false);
  // One cluster of a compressed run, decoded (compressed.cpp).
  struct RunCluster {
    std::shared_ptr<DecodedCluster> cluster;
    uint64_t entry;
    uint64_t guest_off;  // of the first byte used
    size_t n;            // bytes used, from guest_off
  };
  // The decoded clusters of the run ReadCompressedRun() reads.
  Result<size_t> DecodeCompressedRun(const L1Table& l1, const Extent& first, uint64_t off,
                                     size_t len, uint64_t view_end, std::vector<RunCluster>& run);
  // Waits until `cluster` (of descriptor `entry`, read at `guest_off`) is
  // decoded, decoding it here if nobody has started. kCorruption naming the
  // cluster when it does not decode (it then leaves the cache).
  Status AwaitDecoded(DecodedCluster& cluster, uint64_t entry, uint64_t guest_off);
  // The cached cluster of `entry`, or one read now (not yet decoded).
  Result<std::shared_ptr<DecodedCluster>> LoadCompressed(uint64_t entry, uint64_t guest_off);
  // What of [off, off+len) (and past it) the request should start decoding:
  // [*from, *to), empty when nothing. Follows the sequential streams of reads.
  void ReadAheadRange(const L1Table& l1, uint64_t off, uint64_t len, uint64_t view_end,
                      uint64_t* from, uint64_t* to);
  // Best effort: reads the compressed clusters of [from, to) that are not
  // cached and queues them on the decode pool. Stops at the first error (the
  // reader that needs the cluster reports it).
  void StartCompressed(const L1Table& l1, uint64_t from, uint64_t to);
  // Where the compressed bytes of descriptor `entry` are: [*coffset,
  // *coffset + *csize) of the file, of which the first *in_file exist (the
  // rest reads as zeros); kCorruption naming `guest_off` when invalid.
  Status LocateCompressed(uint64_t entry, uint64_t guest_off, uint64_t* coffset, uint64_t* csize,
                          uint64_t* in_file);
  // Whether `offset` >= the backend's size + `slack`; the size is re-read
  // before saying yes (the file may have grown).
  bool PastEof(Backend& b, std::atomic<uint64_t>& size, uint64_t offset, uint64_t slack);
  uint32_t rb_bits() const { return geo_.cluster_bits + 3 - header_.refcount_order; }
  uint64_t refcount_max() const {
    return header_.refcount_order == 6 ? ~uint64_t{0} : (uint64_t{1} << (1u << header_.refcount_order)) - 1;
  }
  Result<bool> IsFree(uint64_t cluster);

  // ---- writer internals (exclusive lock held unless said otherwise) ----
  Status CheckWritable() const;                  // any lock
  // `defer` null: everything done here (the exclusive lock held throughout).
  // Otherwise allocating runs are only planned (clusters allocated) and
  // appended to *defer for WriteAllocating() to fill and link.
  Status WriteLocked(uint64_t off, const uint8_t* buf, size_t len, const BackingView& backing,
                     std::vector<AllocRun>* defer = nullptr);
  // The exclusive path of Write(): plan under the lock, write the data and
  // COW of the new clusters without it, link them under it again.
  Status WriteAllocating(uint64_t off, const uint8_t* buf, size_t len, const BackingView& backing);
  // AllocRun steps (write.cpp): the partial cluster with its COW from the
  // current view (mutex() held, shared is enough), the data write (no lock
  // needed: nothing refers to the new clusters yet), pointing the L2 entries
  // at the new clusters (exclusive), giving the clusters back (exclusive).
  Status BuildPartialCluster(const AllocRun& r, std::vector<uint8_t>& buf,
                             const BackingView& backing);
  Status WriteRunData(const AllocRun& r, const std::vector<uint8_t>& partial);
  Status LinkRun(const AllocRun& r);
  void UndoRun(const AllocRun& r);
  // compress_write.cpp. Whether the run of WriteRun() at `pos` (`k`: how
  // the cluster is mapped now) is stored compressed: a whole cluster (or
  // the last one up to the virtual size) that has no host cluster here.
  bool CompressEligible(uint64_t pos, uint64_t cend, bool allocated, bool compressed) const;
  // Compresses the guest bytes of compressed run `r` into `out` (no lock
  // needed); an empty `out` when they do not get smaller than a cluster:
  // the run is then stored as a normal cluster, from `padded` when the
  // cluster is the image's last and partly past the virtual size.
  void CompressRun(const AllocRun& r, std::vector<uint8_t>& out, std::vector<uint8_t>& padded);
  // CompressRun() of every compressed run among runs [0, count), spread
  // over the decode pool's helpers (PostDecodeTask) and this thread; returns
  // when all are done. No lock needed.
  void CompressRuns(const std::vector<AllocRun>& runs, size_t count,
                    std::vector<std::vector<uint8_t>>& out,
                    std::vector<std::vector<uint8_t>>& padded);
  // Gives compressed runs [0, count) of `runs` their host bytes
  // (AllocCompressedBytes), or a normal cluster when `out[i]` is empty
  // (then the run becomes a normal one). Exclusive lock held. Returns the
  // runs placed (< count on failure, with the error in *st).
  size_t PlaceCompressedRuns(std::vector<AllocRun>& runs,
                             std::vector<std::vector<uint8_t>>& out,
                             std::vector<std::vector<uint8_t>>& padded, size_t count, Status* st);
  // `size` bytes (<= a cluster) of host space for compressed data, packed
  // after the previous compressed cluster as QEMU's qcow2_alloc_bytes: the
  // refcount of every host cluster the bytes touch is raised by one.
  // Exclusive lock held.
  Result<uint64_t> AllocCompressedBytes(uint64_t size);
  // The L2 descriptor of compressed data of `size` bytes at `host`.
  uint64_t CompressedEntry(uint64_t host, uint64_t size) const;
  // Whether guest clusters [first, end) overlap an allocation in flight.
  bool InFlightOverlaps(uint64_t first, uint64_t end) const;
  // Whether any metadata waits to be written back (exclusive lock held).
  bool MetadataDirtyLocked() const;
  Status ZeroLocked(uint64_t off, uint64_t len, bool unmap, const BackingView& backing);
  Status FlushLocked();
  Status MaybeWriteBack();  // bounds the dirty caches
  Status WriteHeaderLocked(bool sync);
  // Sets the corrupt bit (write + flush) and goes read-only; returns `why`.
  Status SignalCorruption(Status why);
  Status Fatal(Status st);  // corruption -> SignalCorruption, else st
  // True when [host, host+len) of the image file overlaps metadata.
  bool OverlapsMetadata(uint64_t host, uint64_t len) const;  // shared lock is enough
  void RebuildMetadataIndex();
  // The writable L2 table of L1 index `l1_index` (allocated or copied when
  // needed).
  Result<std::shared_ptr<L2Table>> WritableL2(uint64_t l1_index);
  // Clears the active L1/L2 entries of guest clusters [from, to) (past the
  // old size, before a grow shows them), without releasing what they point
  // to (write.cpp).
  Status ClearPastSize(uint64_t from, uint64_t to);
  // Writes part of one cluster whose L2 entry is not a COPIED normal
  // cluster, or a run of such clusters (write.cpp).
  Status WriteRun(uint64_t off, const uint8_t* buf, size_t len, const BackingView& backing,
                  uint64_t* done, std::vector<AllocRun>* defer);
  // Writes [pos, cend) of one cluster of table `t` (entry `l2_index`) whose
  // entry is COPIED with a host cluster: in place, clearing a zero flag or
  // allocating the touched subclusters (extended L2) as needed.
  Status WriteCopied(L2Table& t, uint64_t l2_index, uint64_t host, bool zero_flag, uint64_t pos,
                     uint64_t cend, const uint8_t* p, const BackingView& backing);
  // Releases what L2 entry `entry` (+ `bitmap`) points to (pending decrement).
  Status ReleaseEntry(uint64_t entry);

  // refcount.cpp
  Status LoadRefcountTable();
  // The cached block of refcount table index `rt`, loaded when needed; null
  // when the table has no block there. `create` is unused (kept for callers).
  Result<RefBlock*> GetRefBlock(uint64_t rt_index, bool create);
  // The block of `rt` for a change: during a commit, a block of the old
  // state moves to a fresh cluster first (commit.cpp).
  Result<RefBlock*> BlockForUpdate(uint64_t rt_index);
  Result<uint64_t> GetRefcount(uint64_t cluster);
  // delta > 0 applies now; delta < 0 is logical now, pending on disk
  // (outside a commit: a commit's blocks are fresh and hold it at once).
  Status UpdateRefcount(uint64_t cluster, int64_t delta);
  Status UpdateRefcountRange(uint64_t host, uint64_t bytes, int64_t delta);
  // The first of `n` free contiguous clusters: never cluster 0, never past
  // what the file can hold; corruption when the refcounts are impossible.
  Result<uint64_t> FindFree(uint64_t n);
  Status EnsureRefBlock(uint64_t rt_index);
  Status GrowRefcountTable(uint64_t min_entries);
  // Allocates `n` contiguous clusters (refcount 1); returns the host offset.
  // Corruption (nothing changed) when they overlap metadata.
  Result<uint64_t> AllocClusters(uint64_t n);
  Status WriteRefBlocks(bool with_pending);  // no sync
  bool HasPending() const { return pending_blocks_ > 0; }
  void ApplyPending();
  // Forgets every cached block (nothing is written) and reloads the table
  // on the next LoadRefcountTable(): memory goes back to what the disk says.
  void DropRefcounts();
  // Keeps the block cache within its share of the budget: evicts clean
  // blocks, writing back dirty ones without pending decrements when needed.
  Status TrimRefBlocks();
  uint64_t RefBlockCap() const;
  void ChargeTables();  // re-charges the active L1 and the refcount table

  // commit.cpp: atomic metadata switches (snapshot create/delete).
  // Grows the refcount table beforehand so that a commit never has to;
  // requires clean caches (FlushLocked()).
  Status PrepareCommit(uint64_t extra_clusters);
  // Streams every changed table to fresh clusters (the active L2 tables
  // whose COPIED flags change, the active L1, the refcount blocks it
  // changes and the refcount table, the snapshot table of `plan`) while the
  // old state stays untouched, then switches with one header write. The
  // walk holds `lock` shared (readers go on); the switch takes it
  // exclusive. On failure nothing on disk changed and memory is reloaded
  // from it (corruption: the corrupt bit is set). `lock` is exclusive
  // (from LockExclusive) before and after.
  Status RunCommit(std::unique_lock<std::shared_mutex>& lock, CommitPlan& plan);
  Status CommitWalk(CommitPlan& plan);
  Status WalkVictim(const CommitPlan& plan);
  Status WalkActive(CommitPlan& plan);
  Status WriteCommitTables(CommitPlan& plan);
  void SwitchCommit(CommitPlan& plan);

  // check.cpp
  Status RebuildRefcounts();
  Status RecomputeCopied();
  // Refuses (corruption) an active L1 whose L2 tables are reached twice, or
  // overlap other metadata, or are marked COPIED with a refcount other than
  // 1: a write would land on another guest offset or a snapshot.
  Status CheckActiveTables();
  // The words of the L2 table at `off` (L1 index `l1_index`, for messages)
  // into `words`, from the cache when it has it, else read from the file
  // without caching it (a walk must not evict the readers' tables).
  Status ReadL2Words(uint64_t off, uint64_t l1_index, std::vector<uint64_t>* words);
  // Calls fn(host, bytes, entry) for every host range an L2 table's entries
  // reference (data and compressed clusters), validating each entry;
  // `entry` points at the descriptor word in `words`.
  Status ForEachRef(std::vector<uint64_t>& words, uint64_t table_off,
                    const std::function<Status(uint64_t, uint64_t, uint64_t*)>& fn);
  // The guest view of this layer (with its backing) at [off, off+n), zeros
  // at and past the virtual size: the source of COW.
  Status ReadCurrent(uint64_t off, uint8_t* p, size_t n, const BackingView& backing);
  void MarkDirty(L2Table& t);

  const std::shared_ptr<Backend> file_;
  const std::shared_ptr<Backend> data_;  // == file_ without an external data file
  Header header_;                        // rw_
  const Geometry geo_;
  std::vector<Snapshot> snapshots_;  // rw_
  const std::string name_;
  const CompressionType compression_;
  std::atomic<uint64_t> file_size_;
  std::atomic<uint64_t> data_size_;
  L2Cache l2_cache_;
  ClusterCache cluster_cache_;
  // Sequential streams of compressed reads (ReadAheadRange), by L1 table:
  // each knows where its reads got to and how far ahead decoding was started.
  struct ReadStream {
    const L1Table* l1 = nullptr;
    uint64_t next = 0;     // the end of the furthest read
    uint64_t started = 0;  // decoding started up to here
    uint64_t used = 0;     // last use, for replacement
  };
  static constexpr size_t kReadStreams = 8;
  std::mutex streams_mu_;
  ReadStream streams_[kReadStreams];  // GUARDED_BY(streams_mu_)
  uint64_t streams_clock_ = 0;        // GUARDED_BY(streams_mu_)
  mutable std::shared_mutex rw_;
  std::atomic<uint64_t> virtual_size_{0};

  // rw_
  L1Table l1_;
  uint64_t l1_offset_ = 0;
  bool l1_dirty_ = false;
  bool header_dirty_ = false;
  bool opened_writable_ = false;
  std::atomic<bool> writing_{false};
  mutable std::mutex reason_mu_;
  std::string read_only_reason_;  // reason_mu_

  // Refcounts (rw_), loaded by BeginWrites.
  bool refcounts_loaded_ = false;
  std::vector<uint64_t> reftable_;
  uint64_t reftable_offset_ = 0;
  uint64_t reftable_clusters_ = 0;
  bool reftable_dirty_ = false;
  bool in_commit_ = false;
  uint64_t dirty_l2_count_ = 0;
  uint64_t next_serial_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<RefBlock>> refblocks_;  // by rt index
  std::list<uint64_t> refblock_lru_;  // rt indexes, front = most recent
  RefBlock* last_block_ = nullptr;    // the most recent, for repeated lookups
  uint64_t pending_blocks_ = 0;       // blocks with a `disk` copy
  BudgetCharge refblock_charge_;
  BudgetCharge l1_charge_;
  BudgetCharge reftable_charge_;
  uint64_t free_hint_ = 1;  // cluster index: nothing below is free
  // Clusters at or past alloc_end_ are neither in the file nor allocated.
  uint64_t alloc_end_ = 0;
  std::vector<std::pair<uint64_t, uint64_t>> reserved_;  // [first, end) clusters
  // Compressed writes: on at open; where the next compressed cluster's
  // bytes go (inside a host cluster holding compressed data), 0: none (rw_).
  bool compress_writes_ = false;
  uint64_t free_byte_offset_ = 0;
  // While a commit or a rebuild runs: allocate only at or past floor_ (the
  // old state uses nothing there), from floor_cursor_ on. 0: off.
  uint64_t floor_ = 0;
  uint64_t floor_cursor_ = 0;
  bool rebuilding_ = false;          // RebuildRefcounts: blocks start at 0
  std::vector<bool> rebuild_reset_;  // by rt: block zeroed in this rebuild
  std::vector<uint64_t> commit_released_;  // old block clusters to release
  uint64_t commit_min_freed_ = UINT64_MAX;
  // A metadata walk owns the metadata (rw_); LockExclusive waits on it.
  bool walk_active_ = false;
  std::condition_variable_any walk_cv_;
  // Metadata locations for the overlap check (cluster indexes).
  std::unordered_set<uint64_t> meta_clusters_;
  std::vector<std::pair<uint64_t, uint64_t>> meta_ranges_;  // [host, end)

  // Allocating writes in flight (rw_): the guest cluster ranges [first,
  // end) of requests between planning and linking; alloc_cv_ wakes their
  // waiters. alloc_pauses_ > 0 keeps new ones from starting.
  std::vector<std::pair<uint64_t, uint64_t>> in_flight_;
  int alloc_pauses_ = 0;
  std::condition_variable_any alloc_cv_;
  // Flush generations: write_gen_ counts writes (data or metadata), bumped
  // when each is over; synced_gen_ is the write_gen_ seen at the start of
  // the latest FlushLocked() that completed (stored under rw_ exclusive).
  // synced_gen_ >= write_gen_: every finished write is durable.
  std::atomic<uint64_t> write_gen_{0};
  std::atomic<uint64_t> synced_gen_{0};

  // Encryption (crypto.cpp): null for a plain image. rmw_mu_ orders the
  // writes of encrypted sectors: whole-sector writes shared, partial-sector
  // read-modify-writes exclusive (a leaf lock, taken under rw_ or alone).
  std::shared_ptr<const Encryption> enc_;
  mutable std::shared_mutex rmw_mu_;
};

// "0x1f" style hex for messages.
std::string Hex(uint64_t v);

}  // namespace kvmfs::qcow2
