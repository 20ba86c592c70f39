// qcow (version 1) driver: the private map (after QEMU's block/qcow.c).
//
// A qcow file is a 48-byte big-endian header, an optional backing file name,
// an L1 table of L2 table offsets, and L2 tables of cluster offsets. An L2
// entry is 0 (unallocated: the backing file or zeros show through), a 512-byte
// aligned host offset of a normal cluster, or, with bit 63 set, a compressed
// cluster: raw deflate (window -12) of one whole cluster, its byte size in the
// bits just below bit 63. There are no refcounts, snapshots or zero clusters.
//
// Files of this directory:
//   header.cpp  decode and validate the header, backing name and L1 location
//   engine.cpp  L2 cache, mapping, reads, compressed clusters
//   write.cpp   allocating writes (append at end of file), zeroes, Flush
//   qcow.cpp    driver entry: Probe, Peek, Open, the Image
//
// Writing (as QEMU's qcow, but ordered for crashes): new clusters and L2
// tables are appended at the end of the file, rounded up to the cluster size;
// guest data (with the rest of a new cluster copied from the backing file or
// from the decompressed cluster it replaces) is written first; L2 tables are
// cached write-back and written by Flush() after the data is durable, then
// the L1 entries after the tables. A crash therefore leaves at worst
// unreferenced clusters at the end of the file, never a table pointing at
// unwritten space. Locking: Engine::mutex() is shared by readers, exclusive
// for every write.
//
// Encryption (crypt_method 1: AES-128-CBC per 512-byte sector, IV = guest
// sector number, key = the passphrase; cipher.h QcowAesCipher): every byte of
// a normal data cluster goes through Engine::ReadData / WriteData / ZeroData,
// which decrypt and encrypt whole sectors there and nowhere else (compressed
// clusters are never encrypted by QEMU). A newly allocated cluster is written
// whole, the rest of it from below, encrypted. Without a usable key the image
// is still described; its data calls fail with DataStatus().
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/format.h"
#include "kvmfs/cipher.h"
#include "kvmfs/image.h"
#include "kvmfs/status.h"

namespace kvmfs::qcow {

// ---- Limits (QEMU block/qcow.c) ----------------------------------------------

inline constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr uint32_t kVersion = 1;
inline constexpr uint32_t kMinClusterBits = 9;   // 512 B
inline constexpr uint32_t kMaxClusterBits = 16;  // 64 KiB
inline constexpr uint32_t kMinL2Bits = 6;        // 512-byte L2 tables
inline constexpr uint32_t kMaxL2Bits = 13;       // 64 KiB L2 tables
inline constexpr uint32_t kMaxBackingNameLen = 1023;
inline constexpr uint64_t kMaxL1Entries = 0x7fffffff / 8;  // INT_MAX / sizeof(uint64_t)
inline constexpr uint32_t kCryptNone = 0;
inline constexpr uint32_t kCryptAes = 1;
inline constexpr uint64_t kOflagCompressed = 1ull << 63;
inline constexpr uint64_t kSectorSize = 512;

// ---- On-disk header (big-endian) ------------------------------------------------

struct [[gnu::packed]] HeaderRaw {
  uint32_t magic;
  uint32_t version;
  uint64_t backing_file_offset;
  uint32_t backing_file_size;
  uint32_t mtime;
  uint64_t size;  // bytes
  uint8_t cluster_bits;
  uint8_t l2_bits;
  uint16_t padding;
  uint32_t crypt_method;
  uint64_t l1_table_offset;

  // `p` holds sizeof(HeaderRaw) bytes.
  static HeaderRaw Decode(const uint8_t* p);
  void Encode(uint8_t* p) const;
};
static_assert(sizeof(HeaderRaw) == 48);
inline constexpr size_t kHeaderSize = sizeof(HeaderRaw);

// ---- Parsed, validated header ------------------------------------------------------

struct Header {
  HeaderRaw raw{};
  uint32_t cluster_bits = 12;
  uint64_t cluster_size = 4096;
  uint32_t l2_bits = 9;
  uint64_t l2_entries = 512;
  uint64_t l2_bytes = 4096;
  uint64_t l1_entries = 0;
  uint64_t l1_offset = 0;
  uint64_t virtual_size = 0;  // header size rounded down to 512, as QEMU
  std::string backing_file;   // empty: none
  // End of the header, the backing name and the L1 table: no L2 table or
  // cluster may start below it (QEMU only ever appends past it).
  uint64_t meta_end = 0;

  uint32_t l1_shift() const { return cluster_bits + l2_bits; }
  // Compressed entry: host offset and size fields (QEMU cluster_offset_mask).
  uint64_t compressed_offset_mask() const { return (1ull << (63 - cluster_bits)) - 1; }
  uint64_t CompressedSize(uint64_t entry) const {
    return (entry >> (63 - cluster_bits)) & (cluster_size - 1);
  }
};

// Reads and validates the header of `file` (`file_size` bytes) as QEMU's
// qcow_open does, and further: the L1 table and the backing name must lie in
// the file. Errors name `name` and the field: kCorruption (invalid field),
// kNotSupported (another version), kTooLarge (QEMU's size limits).
// Encryption is reported in the header, not refused here.
Result<Header> ReadHeader(Backend& file, uint64_t file_size, const std::string& name);

// Writes an empty image of options.size bytes (over options.backing_file,
// when named) into `file` (writable, empty) as `qemu-img create -f qcow`
// does (create.cpp). Errors: kInvalidArgument (size 0, as QEMU; a backing
// name past 1023 bytes), kTooLarge (an L1 table QEMU would not open), the
// backend's own errors.
Status CreateImage(Backend& file, const CreateOptions& options);

// ---- Mapping ------------------------------------------------------------------------

// What one run of guest bytes maps to.
struct Extent {
  enum class Type { kUnallocated, kData, kCompressed };
  Type type = Type::kUnallocated;
  uint64_t length = 0;  // bytes from the queried offset
  uint64_t host = 0;    // kData: host offset of the first byte
  uint64_t entry = 0;   // kCompressed: the L2 entry
};

enum class MapMode {
  kRead,    // kData runs are contiguous on the host; a compressed run is one cluster
  kStatus,  // runs merge by kind only (compressed counts as data)
};

// One L2 table in host order.
struct L2Table {
  uint64_t offset = 0;
  std::vector<uint64_t> entries;
  bool dirty = false;  // changed under the exclusive lock, not yet written
};

// What the writer needs of the layer below.
struct BackingReader {
  virtual ~BackingReader() = default;
  // The guest view below this layer (zeros past its end or without one).
  virtual Status ReadBelow(uint64_t off, void* buf, size_t len) = 0;
  // Whether [off, off+len) reads as zeros below without asking (no backing,
  // or past its end).
  virtual bool ZerosBelow(uint64_t off, uint64_t len) = 0;
};

// The state of one open qcow file. Thread-safety: mutex() shared for reads,
// exclusive for writes; the caches have their own leaf locks.
class Engine {
 public:
  Engine(std::shared_ptr<Backend> file, Header header, std::string name, uint64_t file_size,
         std::vector<uint64_t> l1);
  ~Engine();

  // An encrypted image (crypt_method 1): its cipher, or why there is none
  // (`why`: kPermission for a key problem). Set at open, before the engine
  // is shared. Not thread-safe.
  void SetEncryption(std::unique_ptr<SectorCipher> cipher, Status why);
  bool encrypted() const { return header_.raw.crypt_method != kCryptNone; }
  // OK, or why guest data cannot be read or written. Any thread.
  const Status& DataStatus() const { return data_status_; }

  const std::string& name() const { return name_; }
  const Header& header() const { return header_; }
  Backend& file() { return *file_; }
  std::shared_mutex& mutex() const { return rw_; }

  // The run starting at guest `off` (at most `len` bytes, len > 0, within one
  // L2 table), validating every entry it uses. Requires mutex() held.
  Result<Extent> Map(uint64_t off, uint64_t len, MapMode mode);

  // The data path of normal clusters: `n` bytes at host offset `host` that
  // hold guest bytes from `guest_off`, within one cluster run. Encrypted:
  // whole sectors are decrypted/encrypted (in parallel, CryptRange), a
  // partial head or tail sector read, patched and re-encrypted, and zeros
  // written as encrypted zeros (WriteData with `in` null writes zeros).
  // Errors: DataStatus(), I/O. ReadData
  // requires mutex() held; WriteData and ZeroData, exclusively.
  Status ReadData(uint64_t guest_off, uint64_t host, uint8_t* out, size_t n);
  Status WriteData(uint64_t guest_off, uint64_t host, const uint8_t* in, size_t n);
  Status ZeroData(uint64_t guest_off, uint64_t host, uint64_t n, bool unmap);

  // How many of the `n` bytes at host offset `host` the file holds (the
  // size is re-read only when the known one says they pass its end).
  uint64_t BytesInFile(uint64_t host, uint64_t n);

  // Reads `n` bytes at `in_cluster` of compressed cluster `entry` (guest
  // offset `guest_off`, for messages). Requires mutex() held.
  Status ReadCompressed(uint64_t entry, uint64_t in_cluster, uint8_t* out, size_t n,
                        uint64_t guest_off);

  // ---- Writing (write.cpp); each takes mutex() exclusively ----
  bool writable() const { return writing_.load(std::memory_order_acquire); }
  Status BeginWrites();
  Status EndWrites();
  Status Write(uint64_t off, const uint8_t* buf, size_t len, BackingReader& below);
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap, BackingReader& below);
  Status Flush();

 private:
  // The L2 table at `offset` (L1 index `l1_index`, for messages), loaded and
  // cached on first use. Requires mutex() held.
  Result<std::shared_ptr<L2Table>> GetL2(uint64_t offset, uint64_t l1_index);
  // Checks one L2 entry (not 0) of guest offset `guest_off`.
  Status CheckEntry(uint64_t entry, uint64_t guest_off, uint64_t l1_index, uint64_t l2_index);
  // Whether [off, off+len) passes the end of the file (its size re-read
  // first) or the end of the address space.
  bool PastEof(uint64_t off, uint64_t len);
  std::string Where(uint64_t guest_off, uint64_t l1_index, uint64_t l2_index) const;

  // writer internals (exclusive lock held)
  Status CheckWrite(uint64_t off, uint64_t len) const;
  Status WriteLocked(uint64_t off, const uint8_t* buf, size_t len, BackingReader& below);
  // Allocates new clusters for the guest run [off, off+n) that Map() found
  // unallocated or compressed (`e`), fills what the write leaves of them from
  // below (or from the compressed cluster) and writes them.
  Result<uint64_t> AllocateRun(uint64_t off, const uint8_t* buf, uint64_t n, const Extent& e,
                               BackingReader& below);
  Result<std::shared_ptr<L2Table>> WritableL2(uint64_t l1_index);
  Result<uint64_t> Allocate(uint64_t bytes);
  Status FlushLocked();

  const std::shared_ptr<Backend> file_;
  const Header header_;
  const std::string name_;
  std::unique_ptr<SectorCipher> cipher_;  // encrypted with a key: the AES cipher
  Status data_status_;
  std::atomic<uint64_t> file_size_;
  mutable std::shared_mutex rw_;

  std::vector<uint64_t> l1_;  // rw_

  // L2 tables by host offset, least recently used last. Dirty tables are
  // never evicted. cache_mu_ is a leaf lock.
  std::mutex cache_mu_;
  std::list<std::shared_ptr<L2Table>> lru_;                                   // cache_mu_
  std::unordered_map<uint64_t, std::list<std::shared_ptr<L2Table>>::iterator> index_;  // cache_mu_

  // Recently decompressed clusters by L2 entry (a compressed cluster is never
  // rewritten in place). cluster_mu_ is a leaf lock.
  std::mutex cluster_mu_;
  std::list<std::pair<uint64_t, std::shared_ptr<const std::vector<uint8_t>>>> clusters_;  // cluster_mu_

  // Writing (rw_ exclusive).
  std::atomic<bool> writing_{false};
  uint64_t alloc_end_ = 0;             // next free host offset (cluster aligned)
  std::set<uint64_t> dirty_l1_;        // L1 indexes not yet written
  uint64_t dirty_tables_ = 0;
};

// Tables kept cached (and the bound on dirty ones before a write-back).
inline constexpr size_t kL2CacheTables = 64;
inline constexpr size_t kMaxDirtyTables = 32;
inline constexpr size_t kClusterCacheEntries = 8;

std::string Hex(uint64_t v);

}  // namespace kvmfs::qcow
