// Image: one virtual disk as the guest sees it (a layer over its backing).
//
// An Image is produced by a format driver (format.h) for one layer of a chain.
// The chain opener (chain.h) attaches the backing Image; a driver reads from its
// backing through ReadBacking() for every range the layer does not allocate.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "kvmfs/status.h"

namespace kvmfs {

// What one layer says about a range of the virtual disk.
enum class Allocation {
  kData,         // this layer holds the bytes (normal or compressed cluster)
  kZero,         // this layer says zeros; the backing is not consulted
  kUnallocated,  // this layer has nothing; the backing (or zeros) shows through
};

struct BlockStatus {
  Allocation kind = Allocation::kUnallocated;
  uint64_t length = 0;  // > 0: the run of `kind` starting at the queried offset
};

// A read described as pieces in guest order, for replies that hand the kernel
// ranges of host files (splice) instead of copies: each piece is either a
// range of an open host file or bytes in memory (zeros, backing, decoded
// data), which the plan owns or shares with a cache that made them. Built
// by Image::PlanRead(). Not thread-safe (one per request).
class ReadPlan {
 public:
  struct Piece {
    uint64_t length = 0;
    int fd = -1;             // >= 0: bytes [fd_offset, fd_offset+length) of this host file
    uint64_t fd_offset = 0;
    // fd < 0: the bytes. Without `owner`: malloc()ed, owned by the plan
    // until Release(). With `owner`: memory `owner` keeps alive and
    // unchanged (a decoded cluster of a cache), never written or freed
    // through the plan.
    void* mem = nullptr;
    std::shared_ptr<const void> owner;
  };

  ReadPlan() = default;
  ReadPlan(const ReadPlan&) = delete;
  ReadPlan& operator=(const ReadPlan&) = delete;
  ~ReadPlan();

  // Appends `length` bytes of host file `fd` at `offset` (merged with the
  // previous piece when it continues it). The fd must stay open while the
  // Image that planned it lives.
  void AddFile(int fd, uint64_t offset, uint64_t length);
  // Appends `length` bytes of memory (zeroed when `zero`) and returns where
  // to write them; valid only until the next Add*() call (a memory piece
  // following another grows it). kIOError (ENOMEM) when out of memory.
  Result<uint8_t*> AddMemory(uint64_t length, bool zero);
  // Gives back the last `unused` bytes of the memory piece AddMemory() just
  // returned (a reader that learns its length only while reading).
  void TrimMemory(uint64_t unused);
  // Appends `length` bytes at `mem` without copying them: `owner` keeps
  // them alive and unchanged until the plan lets go of it.
  void AddShared(const void* mem, uint64_t length, std::shared_ptr<const void> owner);
  // Replaces every file piece by its bytes read into memory (for a reply that
  // cannot splice): the memory pieces are kept as they are, nothing is read
  // again. kIOError when a read fails (a file shorter than a piece reads as
  // zeros past its end).
  Status ReadFilePieces();

  const std::vector<Piece>& pieces() const { return pieces_; }
  uint64_t size() const { return size_; }
  // Hands the pieces over: their memory is now the caller's to free() (but
  // that of pieces with an owner, which the owner keeps).
  std::vector<Piece> Release();
  // Drops every piece (freeing their memory): an empty plan again.
  void Discard();

 private:
  std::vector<Piece> pieces_;
  uint64_t size_ = 0;
};

// One internal snapshot, with the fields `qemu-img info` prints.
struct SnapshotInfo {
  std::string id;
  std::string name;
  uint64_t vm_state_size = 0;
  uint32_t date_sec = 0;
  uint32_t date_nsec = 0;
  uint64_t vm_clock_nsec = 0;
  uint64_t icount = 0;
  bool has_icount = false;  // v3 entries with >= 24 bytes of extra data
  uint64_t disk_size = 0;   // the virtual size at snapshot time
};

// A `qemu-img info` value: bool, number, string, an object (its fields in
// order) or a list of objects (LUKS key slots, VMDK extents).
struct InfoField;
using InfoObject = std::vector<InfoField>;
using InfoValue = std::variant<bool, int64_t, std::string, InfoObject, std::vector<InfoObject>>;
struct InfoField {
  std::string key;
  InfoValue value;
};

// Layer metadata, with the meaning of `qemu-img info --output=json` keys.
struct ImageInfo {
  std::string format;                   // "qcow2", "raw", ...
  uint64_t virtual_size = 0;
  std::optional<uint64_t> cluster_size;  // absent for raw
  bool encrypted = false;
  bool dirty = false;
  std::string backing_filename;          // as stored in the image; empty: none
  std::string backing_format;            // as stored; empty: not recorded
  std::string format_specific_type;      // "qcow2"; empty: no "format-specific"
  std::vector<InfoField> format_specific;  // in qemu-img's order
};

// What a consistency check of one image file found, with the meaning of
// `qemu-img check --output=json` keys (QEMU's BdrvCheckResult and
// BlockFragInfo). Counts that qemu-img omits when zero are zero here.
struct CheckResult {
  uint64_t check_errors = 0;         // "check-errors": the check could not look at something
  uint64_t corruptions = 0;          // "corruptions"
  uint64_t leaks = 0;                // "leaks"
  uint64_t corruptions_fixed = 0;    // "corruptions-fixed" (a VHDX log replayed at open)
  uint64_t image_end_offset = 0;     // "image-end-offset"
  uint64_t total_clusters = 0;       // "total-clusters"
  uint64_t allocated_clusters = 0;   // "allocated-clusters"
  uint64_t fragmented_clusters = 0;  // "fragmented-clusters"
  uint64_t compressed_clusters = 0;  // "compressed-clusters"
  // Non-empty when qemu-img would say "Check failed: <this>" and print no
  // result (exit status 1): the check stopped on an error (strerror text,
  // as QEMU's). The counts found until then are kept.
  std::string failure;
};

// How a check runs. The check never writes the image.
struct CheckOptions {
  // Called now and then from the checking thread with the work done so far
  // and the total (any unit; done <= total). May be empty.
  std::function<void(uint64_t done, uint64_t total)> progress;
  // The most memory the check may hold for counting references (besides one
  // table of each kind, which the image's limits bound); a larger file is
  // checked in several passes over its metadata. 0: the driver's default.
  uint64_t max_count_bytes = 0;
};

class Image {
 public:
  virtual ~Image() = default;

  // Virtual size in bytes.
  virtual uint64_t size() const = 0;

  // Reads [off, off+len) of the guest view: this layer over its backing.
  // Requires off + len <= size(). Ranges beyond the backing's size read as
  // zeros. Fails with kCorruption (naming the image and offset) on bad
  // metadata, kIOError on host errors. Thread-safe: concurrent readers allowed.
  virtual Status Read(uint64_t off, void* buf, size_t len) = 0;

  // Plans the same read as Read(off, ..., len) into `plan` (appending): data
  // that lies as-is in a host file that nothing writes while this Image
  // lives becomes a file piece, the rest is read into memory pieces. The
  // caller may use the file pieces after this returns (FUSE splices them
  // after the handler): a driver hands out a file piece only for a file
  // opened read-only, so no write of kvmfs can change or reuse those bytes
  // meanwhile (another program's writes are kept out by QEMU's image locks,
  // unless force_share, where reads are racy in any case). Same
  // requirements, errors and thread-safety as Read(). Default: one memory
  // piece filled by Read().
  virtual Status PlanRead(uint64_t off, size_t len, ReadPlan& plan);

  // ---- Writing -------------------------------------------------------------
  // A view is writable only when its driver supports writing, the file was
  // opened for writing, and BeginWrites() succeeded. Snapshot and backing
  // views never are. All modifying calls are thread-safe: concurrent writers
  // and readers of one image (and of its snapshot views) are allowed.

  // Whether the modifying calls below may succeed now.
  virtual bool writable() const { return false; }

  // Why an image opened for writing is served read-only (corrupt bit set,
  // corruption found while writing, an unrepairable dirty image); empty when
  // it is not. Shown in info.json and logged.
  virtual std::string ReadOnlyReason() const { return {}; }

  // Prepares a view opened for writing to be written. The caller already
  // holds QEMU's write lock on the file, so nobody else writes it: this is
  // where a dirty (lazy refcounts) qcow2 image is repaired as QEMU does on a
  // read-write open. Idempotent. Default: kReadOnly.
  virtual Status BeginWrites();

  // The last writer is gone: flush everything and leave the file clean (no
  // dirty bit, no leaked clusters, caches written back). Reads stay possible;
  // BeginWrites() may be called again. Default: Flush().
  virtual Status EndWrites();

  // Writes the guest view. Requires off + len <= size(). Default: kReadOnly.
  virtual Status Write(uint64_t off, const void* buf, size_t len);

  // Makes [off, off+len) read as zeros. `unmap` (fallocate PUNCH_HOLE,
  // discard): host storage may be released, and is where nothing below shows
  // through; !unmap (ZERO_RANGE): cheap zeroing (qcow2 zero clusters).
  // Default: writes zero buffers through Write().
  virtual Status WriteZeroes(uint64_t off, uint64_t len, bool unmap);

  // Makes completed writes durable: metadata written back in crash-safe
  // order, then the host files flushed. Default: OK (nothing to do).
  virtual Status Flush();

  // Changes the virtual size, as `qemu-img resize`. Growing reads zeros in
  // the new part. Shrinking: kInvalidArgument unless the format does it
  // safely. Default: kNotSupported (kReadOnly when !writable()).
  virtual Status Resize(uint64_t new_size);

  // Creates an internal snapshot of the current state, as `qemu-img snapshot
  // -c NAME` (next free numeric id, current date, vm state 0). Returns its
  // info. Default: kNotSupported.
  virtual Result<SnapshotInfo> CreateSnapshot(const std::string& name);

  // Deletes the internal snapshot with this id (SnapshotInfo::id), freeing
  // what only it used. Snapshot views of it that are open keep reading
  // their data until closed only if the format can guarantee it; otherwise
  // they fail with kNotFound. Default: kNotSupported.
  virtual Status DeleteSnapshot(const std::string& id);

  // What this layer alone says of the range starting at `off`, at most `len`
  // bytes long (the returned length is in (0, len]). Requires off < size().
  virtual Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) = 0;

  // Metadata of this layer only (the backing is described by its own Image).
  virtual ImageInfo Info() const = 0;

  // Why the guest data of this layer cannot be read or written although its
  // metadata could be: an encrypted image without its key, with a wrong key
  // or an unreadable key file (kPermission), or with a cipher kvmfs cannot
  // compute (kNotSupported); OK when it can. Such an image answers size(),
  // Info(), Snapshots(), GetBlockStatus() and ActualSize() (for info.json)
  // and fails every data call with this status; the pool refuses its
  // disk.raw (and the disk.raw of every image above it) with it. Default: OK.
  virtual Status DataStatus() const { return Status::OK(); }

  // Internal snapshots of this layer, in table order. Default: none.
  virtual std::vector<SnapshotInfo> Snapshots() const;

  // A read-only view of snapshot `id` (SnapshotInfo::id), reading through the
  // snapshot's own tables over the same backing. Default: kNotSupported.
  virtual Result<std::unique_ptr<Image>> OpenSnapshot(const std::string& id);

  // A read-only consistency check of this layer's file(s), as `qemu-img
  // check` (no repair) reports it; the backing is not checked. Takes the
  // driver's own locks (readers go on; metadata changes wait for it).
  // Errors: kNotSupported "This image format does not support checks" (the
  // default, as qemu-img for raw, vpc, qcow, luks); a failed check is a
  // CheckResult with `failure` set, not an error.
  virtual Result<CheckResult> Check(const CheckOptions& options);

  // Host bytes used by this layer's file(s), for "actual-size".
  virtual Result<uint64_t> ActualSize() = 0;

  // The layer below, or nullptr. Set by the chain opener before use, and set
  // again when the backing file changed outside kvmfs and was opened anew
  // (the image then reads through the new one). Thread-safe.
  std::shared_ptr<Image> backing() const { return backing_.load(std::memory_order_acquire); }
  void SetBacking(std::shared_ptr<Image> backing) {
    backing_.store(std::move(backing), std::memory_order_release);
  }

 protected:
  // Reads [off, off+len) from the backing; zeros where there is no backing or
  // the backing is shorter. For drivers' unallocated ranges.
  Status ReadBacking(uint64_t off, void* buf, size_t len);
  // ReadBacking() as a plan: the backing's own PlanRead(), then zeros.
  Status PlanBacking(uint64_t off, size_t len, ReadPlan& plan);

 private:
  std::atomic<std::shared_ptr<Image>> backing_;
};

// The allocation of the flattened chain at `off`: walks down through backing
// layers while they say kUnallocated. Returns a run (length in (0, len]) that
// is kData if any layer holds data for all of it, kZero if some layer says zero,
// kUnallocated when no layer has it (reads as zeros). For SEEK_DATA/SEEK_HOLE
// and st_blocks.
Result<BlockStatus> ChainBlockStatus(Image& top, uint64_t off, uint64_t len);

}  // namespace kvmfs
