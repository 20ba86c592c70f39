// qcow2 driver entry: probing, opening (header, data file, snapshot table,
// active L1), and the Image views of the active disk and of its snapshots.
#include "format/qcow2/qcow2.h"
#include "format/qcow2/crypto.h"

#include "base/endian.h"

#include <atomic>
#include <cstring>
#include <mutex>
#include <shared_mutex>

namespace kvmfs {
namespace qcow2 {
namespace {

// Engine::PauseAllocations() for a scope, then MarkUnsynced().
class AllocationPause {
 public:
  explicit AllocationPause(Engine& engine) : engine_(engine) { engine_.PauseAllocations(); }
  ~AllocationPause() {
    engine_.MarkUnsynced();
    engine_.ResumeAllocations();
  }
  AllocationPause(const AllocationPause&) = delete;
  AllocationPause& operator=(const AllocationPause&) = delete;

 private:
  Engine& engine_;
};

// One view of a qcow2 file: the active disk (writable once BeginWrites()
// succeeded), or a snapshot (read-only, with the snapshot's L1 and disk
// size). All views of a file share one Engine; every read holds its lock
// shared, so a writer never changes tables under a reader.
class Qcow2Image final : public Image {
 public:
  // The active view.
  explicit Qcow2Image(std::shared_ptr<Engine> engine) : engine_(std::move(engine)) {}
  // A snapshot view.
  Qcow2Image(std::shared_ptr<Engine> engine, L1Table l1, uint64_t size, SnapshotInfo info,
             uint64_t serial)
      : engine_(std::move(engine)),
        snap_l1_(std::move(l1)),
        snap_size_(size),
        snap_info_(std::move(info)),
        serial_(serial) {
    l1_charge_.Set(engine_->budget(), snap_l1_.size() * 8);  // in the cache budget
  }

  bool is_snapshot() const { return serial_ != 0; }

  // [off, off+len) lies within the view (Read, PlanRead).
  Status CheckReadRange(uint64_t off, size_t len) const {
    const uint64_t size = this->size();
    if (off > size || len > size - off)
      return Status::InvalidArgument(engine_->name() + ": read of " + std::to_string(len) +
                                     " bytes at " + std::to_string(off) +
                                     " past the virtual size " + std::to_string(size));
    return Status::OK();
  }

  uint64_t size() const override { return is_snapshot() ? snap_size_ : engine_->virtual_size(); }

  Status DataStatus() const override { return engine_->DataStatus(); }

  Status Read(uint64_t off, void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(engine_->DataStatus());
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    KVMFS_RETURN_IF_ERROR(CheckAlive());
    KVMFS_RETURN_IF_ERROR(CheckReadRange(off, len));
    const L1Table& l1 = is_snapshot() ? snap_l1_ : engine_->active_l1();
    auto* p = static_cast<uint8_t*>(buf);
    while (len > 0) {
      KVMFS_ASSIGN_OR_RETURN(Extent e, engine_->Map(l1, off, len, MapMode::kRead));
      const size_t n = static_cast<size_t>(e.length);
      switch (e.type) {
        case Extent::Type::kUnallocated:
          KVMFS_RETURN_IF_ERROR(ReadBacking(off, p, n));
          break;
        case Extent::Type::kZero:
          std::memset(p, 0, n);
          break;
        case Extent::Type::kData:
          KVMFS_RETURN_IF_ERROR(engine_->ReadData(off, e.host, p, n));
          break;
        case Extent::Type::kCompressed: {
          // The compressed clusters that follow are read with this one (and
          // decompressed concurrently): the run may go past `n`.
          KVMFS_ASSIGN_OR_RETURN(size_t run,
                                 engine_->ReadCompressedRun(l1, e, off, p, len, size()));
          off += run - n;
          p += run - n;
          len -= run - n;
          break;
        }
      }
      off += n;
      p += n;
      len -= n;
    }
    return Status::OK();
  }

  // Read() as a plan: normal data clusters become pieces of the data file
  // when neither the image file nor the data file is open for writing. Then
  // no cluster can be overwritten, freed or reused while this Engine lives,
  // so the pieces stay valid after the lock is dropped and until FUSE has
  // spliced them. A writable file's clusters are read into memory under the
  // lock, as Read() does: once a flush has made a free durable the cluster
  // may be reused, and that could happen between this return and the
  // splice. Unallocated ranges are planned by the (read-only) backing.
  // Encrypted data is only ever decrypted into memory (SpliceFd).
  Status PlanRead(uint64_t off, size_t len, ReadPlan& plan) override {
    KVMFS_RETURN_IF_ERROR(engine_->DataStatus());
    const int fd = SpliceFd();
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    KVMFS_RETURN_IF_ERROR(CheckAlive());
    KVMFS_RETURN_IF_ERROR(CheckReadRange(off, len));
    const L1Table& l1 = is_snapshot() ? snap_l1_ : engine_->active_l1();
    while (len > 0) {
      KVMFS_ASSIGN_OR_RETURN(Extent e, engine_->Map(l1, off, len, MapMode::kRead));
      const size_t n = static_cast<size_t>(e.length);
      switch (e.type) {
        case Extent::Type::kUnallocated:
          KVMFS_RETURN_IF_ERROR(PlanBacking(off, n, plan));
          break;
        case Extent::Type::kZero:
          KVMFS_RETURN_IF_ERROR(plan.AddMemory(n, true).status());
          break;
        case Extent::Type::kData: {
          if (fd < 0) {
            KVMFS_ASSIGN_OR_RETURN(uint8_t* p, plan.AddMemory(n, false));
            KVMFS_RETURN_IF_ERROR(engine_->ReadData(off, e.host, p, n));
            break;
          }
          // The last cluster may end past the end of the file, where it
          // reads as zeros (Map() refused anything further).
          const uint64_t in_file = DataBytesInFile(e.host, n);
          plan.AddFile(fd, e.host, in_file);
          if (in_file < n) KVMFS_RETURN_IF_ERROR(plan.AddMemory(n - in_file, true).status());
          break;
        }
        case Extent::Type::kCompressed: {
          // As in Read(): the compressed clusters that follow are read with
          // this one, the run may pass `n`; the plan points at the decoded
          // clusters instead of copying them.
          KVMFS_ASSIGN_OR_RETURN(size_t run,
                                 engine_->PlanCompressedRun(l1, e, off, len, size(), plan));
          off += run - n;
          len -= run - n;
          break;
        }
      }
      off += n;
      len -= n;
    }
    return Status::OK();
  }

  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    KVMFS_RETURN_IF_ERROR(CheckAlive());
    const uint64_t size = this->size();
    if (off >= size)
      return Status::InvalidArgument(engine_->name() + ": block status at " + std::to_string(off) +
                                     " past the virtual size " + std::to_string(size));
    len = std::min(len, size - off);
    if (len == 0) return Status::InvalidArgument(engine_->name() + ": block status of 0 bytes");
    const L1Table& l1 = is_snapshot() ? snap_l1_ : engine_->active_l1();
    KVMFS_ASSIGN_OR_RETURN(Extent e, engine_->Map(l1, off, len, MapMode::kStatus));
    BlockStatus bs;
    bs.length = e.length;
    switch (e.type) {
      case Extent::Type::kUnallocated:
        bs.kind = Allocation::kUnallocated;
        break;
      case Extent::Type::kZero:
        bs.kind = Allocation::kZero;
        break;
      case Extent::Type::kData:
      case Extent::Type::kCompressed:
        bs.kind = Allocation::kData;
        break;
    }
    return bs;
  }

  // ---- Writing (the active view only) ----

  bool writable() const override { return !is_snapshot() && engine_->writable(); }
  std::string ReadOnlyReason() const override {
    return is_snapshot() ? std::string() : engine_->ReadOnlyReason();
  }
  Status BeginWrites() override {
    if (is_snapshot()) return SnapshotReadOnly();
    KVMFS_RETURN_IF_ERROR(engine_->DataStatus());
    return engine_->BeginWrites();
  }
  Status EndWrites() override {
    if (is_snapshot()) return Status::OK();
    return engine_->EndWrites();
  }
  Status Write(uint64_t off, const void* buf, size_t len) override {
    if (is_snapshot()) return SnapshotReadOnly();
    return engine_->Write(off, static_cast<const uint8_t*>(buf), len, Backing());
  }
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    if (is_snapshot()) return SnapshotReadOnly();
    return engine_->WriteZeroes(off, len, unmap, Backing());
  }
  Status Flush() override {
    if (is_snapshot()) return Status::OK();
    return engine_->Flush();
  }
  // Operations that change many tables at once run with no allocating
  // write in flight (as QEMU drains), and leave the next Flush() work to do.
  Status Resize(uint64_t new_size) override {
    if (is_snapshot()) return SnapshotReadOnly();
    AllocationPause pause(*engine_);
    return engine_->Resize(new_size, Backing());
  }
  Result<SnapshotInfo> CreateSnapshot(const std::string& name) override {
    if (is_snapshot()) return SnapshotReadOnly();
    AllocationPause pause(*engine_);
    return engine_->CreateSnapshot(name);
  }
  Status DeleteSnapshot(const std::string& id) override {
    if (is_snapshot()) return SnapshotReadOnly();
    AllocationPause pause(*engine_);
    return engine_->DeleteSnapshot(id);
  }

  ImageInfo Info() const override {
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    const Header& h = engine_->header();
    ImageInfo info;
    info.format = "qcow2";
    info.virtual_size = size();
    info.cluster_size = h.cluster_size;
    info.encrypted = h.raw.crypt_method != kCryptNone;
    info.dirty = h.incompatible & kIncompatDirty;
    info.backing_filename = h.backing_file;
    info.backing_format = h.backing_format;
    info.format_specific_type = "qcow2";
    // Keys, order and types as `qemu-img info --output=json` (7.2) prints them.
    auto& f = info.format_specific;
    const std::string compression = h.compression_type == kCompressionZstd ? "zstd" : "zlib";
    const int64_t refcount_bits = int64_t{1} << h.refcount_order;
    if (h.version == 2) {
      f.push_back({"compat", std::string("0.10")});
      f.push_back({"compression-type", compression});
      f.push_back({"refcount-bits", refcount_bits});
      if (const Encryption* enc = engine_->encryption()) f.push_back({"encrypt", enc->Info()});
      return info;
    }
    f.push_back({"compat", std::string("1.1")});
    f.push_back({"compression-type", compression});
    f.push_back({"lazy-refcounts", bool(h.compatible & kCompatLazyRefcounts)});
    f.push_back({"refcount-bits", refcount_bits});
    if (h.has_data_file() && h.data_file) f.push_back({"data-file", *h.data_file});
    if (const Encryption* enc = engine_->encryption()) f.push_back({"encrypt", enc->Info()});
    if (h.has_data_file())
      f.push_back({"data-file-raw", bool(h.autoclear & kAutoclearDataFileRaw)});
    f.push_back({"corrupt", bool(h.incompatible & kIncompatCorrupt)});
    f.push_back({"extended-l2", h.extended_l2()});
    return info;
  }

  std::vector<SnapshotInfo> Snapshots() const override {
    std::vector<SnapshotInfo> out;
    if (is_snapshot()) return out;  // a snapshot view has none of its own
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    for (const Snapshot& s : engine_->snapshots()) out.push_back(s.info);
    return out;
  }

  Result<std::unique_ptr<Image>> OpenSnapshot(const std::string& id) override {
    const std::string& name = engine_->name();
    if (is_snapshot())
      return Status::NotSupported(name + ": snapshot " + snap_info_.id + " has no snapshots");
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    const Snapshot* found = nullptr;
    for (const Snapshot& s : engine_->snapshots()) {
      if (s.info.id == id) {
        found = &s;  // the first, as QEMU's lookup
        break;
      }
    }
    if (found == nullptr) return Status::NotFound(name + ": no snapshot with id '" + id + "'");
    const Header& h = engine_->header();
    const std::string what =
        "snapshot " + id + " (table entry " + std::to_string(found->index) + ")";
    // v3 entries must record at least vm_state_size_large and disk_size.
    if (h.version >= 3 && found->extra_data_size < 16)
      return Status::Corruption(name + ": snapshot table entry " + std::to_string(found->index) +
                                " is incomplete (" + std::to_string(found->extra_data_size) +
                                " bytes of extra data, 16 needed)");
    KVMFS_RETURN_IF_ERROR(ValidateTable(found->l1_table_offset, found->l1_size, 8, kMaxL1Bytes,
                                        h.cluster_size, "Snapshot L1 table of " + what, name));
    const uint64_t disk_size = found->info.disk_size;
    if (disk_size > static_cast<uint64_t>(INT64_MAX) ||
        engine_->geo().SizeToL1(disk_size) > static_cast<uint64_t>(INT32_MAX))
      return Status::TooLarge(name + ": " + what + " disk size " + std::to_string(disk_size) +
                              " is too big");
    KVMFS_ASSIGN_OR_RETURN(L1Table l1, engine_->LoadL1(found->l1_table_offset, found->l1_size,
                                                       "Snapshot L1 table of " + what));
    auto view = std::make_unique<Qcow2Image>(engine_, std::move(l1), disk_size, found->info,
                                             found->serial);
    // The chain opener attaches the backing after Open(), so it is read now.
    view->SetBacking(backing());
    return std::unique_ptr<Image>(std::move(view));
  }

  // The file's check (of the active view; a snapshot view checks the same file).
  Result<CheckResult> Check(const CheckOptions& options) override { return engine_->Check(options); }

  Result<uint64_t> ActualSize() override {
    // As qemu-img: the qcow2 file's own allocation, not the data file's.
    return engine_->file().AllocatedBytes();
  }

 private:
  // A deleted snapshot's clusters may hold anything now.
  Status CheckAlive() const {
    if (is_snapshot() && !engine_->SnapshotAlive(serial_))
      return Status::NotFound(engine_->name() + ": snapshot " + snap_info_.id + " ('" +
                              snap_info_.name + "') was deleted");
    return Status::OK();
  }
  Status SnapshotReadOnly() const {
    return Status::ReadOnly(engine_->name() + ": snapshot " + snap_info_.id + " is read-only");
  }
  // The data file's fd when its clusters may be handed out by reference
  // (PlanRead): no write session is open, so no cluster of kvmfs's is freed
  // and reused while the reply is spliced (freed clusters are reused only
  // after a flush of a write session), and the clusters hold plain data
  // (the host file of an encrypted image holds ciphertext). -1 otherwise.
  int SpliceFd() const {
    if (engine_->writable() || engine_->encrypted()) return -1;
    return engine_->data().fd();
  }
  // How many of the `n` bytes at `host` the data file holds; the size is
  // re-read only when the cached one says the range passes the end.
  uint64_t DataBytesInFile(uint64_t host, uint64_t n) {
    uint64_t known = data_size_.load(std::memory_order_relaxed);
    if (host + n > known) {
      Result<uint64_t> now = engine_->data().Size();
      if (now.ok()) data_size_.store(known = *now, std::memory_order_relaxed);
    }
    return host >= known ? 0 : std::min<uint64_t>(n, known - host);
  }

  BackingView Backing() {
    BackingView v;
    const std::shared_ptr<Image> below = backing();
    v.present = below != nullptr;
    v.size = below ? below->size() : 0;
    v.read = [this](uint64_t off, void* buf, size_t len) { return ReadBacking(off, buf, len); };
    return v;
  }

  const std::shared_ptr<Engine> engine_;
  const L1Table snap_l1_;  // snapshot views: the snapshot's own L1
  BudgetCharge l1_charge_;
  const uint64_t snap_size_ = 0;
  const SnapshotInfo snap_info_;
  const uint64_t serial_ = 0;  // 0 for the active view
  std::atomic<uint64_t> data_size_{0};  // the data file's size last seen (PlanRead)
};

}  // namespace
}  // namespace qcow2

namespace {

std::mutex g_options_mu;
Qcow2Options g_options;  // GUARDED_BY(g_options_mu)

class Qcow2Driver final : public FormatDriver {
 public:
  const char* name() const override { return "qcow2"; }
  FormatCaps caps() const override {
    return {.writable = true, .internal_snapshots = true, .backing_files = true, .compression = true,
            .create = true, .create_backing = true, .check = true, .resize = true};
  }
  Status Create(Backend& file, const CreateOptions& options) const override {
    return qcow2::CreateImage(file, options);
  }
  std::vector<std::string> extensions() const override { return {"qcow2"}; }
  FormatPeek Peek(const uint8_t* h, size_t len) const override {
    // backing_file_offset at 8, size at 24, nb_snapshots at 60 (v2 and v3).
    if (len < 72) return {};
    return {.known = true, .has_backing = LoadBE64(h + 8) != 0, .snapshots = LoadBE32(h + 60),
            .virtual_size = LoadBE64(h + 24)};
  }
  int Probe(const uint8_t* h, size_t len) const override {
    // qcow (v1) shares the magic: as QEMU's qcow2_probe, only versions >= 2.
    if (len < 8 || h[0] != 'Q' || h[1] != 'F' || h[2] != 'I' || h[3] != 0xfb) return 0;
    const uint32_t version =
        uint32_t(h[4]) << 24 | uint32_t(h[5]) << 16 | uint32_t(h[6]) << 8 | h[7];
    if (version == 1) return 0;
    // Version 0 is no format QEMU knows (it would show the file as raw):
    // claim it so that the qcow2 driver says what is wrong with it.
    return version >= 2 ? 100 : 51;
  }
  Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend> file,
                                      const OpenContext& ctx) const override {
    return OpenQcow2(std::move(file), ctx, Qcow2DefaultOptions());
  }
};

}  // namespace

void SetQcow2DefaultOptions(const Qcow2Options& options) {
  {
    std::lock_guard<std::mutex> lock(g_options_mu);
    g_options = options;
  }
  qcow2::CacheBudget::Global()->SetLimit(options.cache_bytes);
}

Qcow2Options Qcow2DefaultOptions() {
  std::lock_guard<std::mutex> lock(g_options_mu);
  return g_options;
}

Result<std::unique_ptr<Image>> OpenQcow2(std::shared_ptr<Backend> file, const OpenContext& ctx,
                                         const Qcow2Options& options) {
  using namespace qcow2;
  const std::string& name = ctx.name;
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
  KVMFS_ASSIGN_OR_RETURN(Header h, ReadHeader(*file, file_size, name));

  // Encryption (crypto.h): the LUKS header is validated and the key asked
  // for now. A key problem (none, wrong, unreadable; a cipher kvmfs cannot
  // compute) does not fail the open: the image is described and its data
  // refused (DataStatus()).
  std::shared_ptr<Encryption> enc;
  if (h.raw.crypt_method != kCryptNone) {
    const std::string method = h.raw.crypt_method == kCryptAes ? "AES" : "LUKS";
    KVMFS_ASSIGN_OR_RETURN(Encryption opened, OpenEncryption(*file, h, ctx, name));
    enc = std::make_shared<Encryption>(std::move(opened));
    if (!enc->status.ok())
      enc->status = enc->status.WithContext("encrypted image (" + method + ")");
  }
  // A writable open of an image that cannot be written succeeds, served
  // read-only with the reason (BeginWrites() returns kReadOnly with it).
  std::string read_only_reason;
  if (h.incompatible & kIncompatCorrupt)
    read_only_reason =
        "qcow2 image is corrupt (corrupt bit set); it can only be used read-only; repair it "
        "with 'qemu-img check -r all'";
  else if (h.autoclear & kAutoclearBitmaps)
    read_only_reason = "image has persistent dirty bitmaps, which kvmfs does not maintain";

  std::shared_ptr<Backend> data;
  uint64_t data_size = file_size;
  if (h.has_data_file()) {
    if (!h.data_file || h.data_file->empty())
      return Status::InvalidArgument(name + ": 'data-file' is required for this image");
    if (!ctx.open_related)
      return Status::NotSupported(name + ": external data file '" + *h.data_file +
                                  "' cannot be opened here");
    Result<std::shared_ptr<Backend>> opened = ctx.open_related(*h.data_file);
    if (!opened.ok()) return opened.status();
    data = std::move(opened).value();
    KVMFS_ASSIGN_OR_RETURN(data_size, data->Size());
  }

  KVMFS_ASSIGN_OR_RETURN(std::vector<Snapshot> snapshots,
                         ReadSnapshotTable(*file, file_size, h, name));
  const bool file_writable = ctx.writable && file->writable();
  auto engine = std::make_shared<Engine>(std::move(file), std::move(data), std::move(h),
                                         std::move(snapshots), options, name, file_size, data_size);
  if (enc) engine->SetEncryption(std::move(enc));
  KVMFS_RETURN_IF_ERROR(engine->LoadActiveL1());
  engine->SetOpenedWritable(file_writable, ctx.writable ? read_only_reason : std::string());
  engine->SetWriteCompression(file_writable && ctx.compress != WriteCompression::kNone);
  return std::unique_ptr<Image>(std::make_unique<Qcow2Image>(std::move(engine)));
}

const FormatDriver& KvmfsFormat_qcow2() {
  static const Qcow2Driver driver;
  return driver;
}

}  // namespace kvmfs
