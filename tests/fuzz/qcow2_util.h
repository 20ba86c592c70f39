// Helpers of the qcow2 targets: the engine opened as OpenQcow2 opens it (so
// a target can call Map() and ReadCompressed() itself and check what they
// promise), and a header made from a few parameter bytes (so a target can
// aim the fuzzer at one table instead of at the header's validation).
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include "base/endian.h"
#include "format/qcow2/options.h"
#include "format/qcow2/qcow2.h"
#include "fuzz_util.h"

namespace kvmfs::fuzz {

// The options of every qcow2 target: a small budget of its own (eviction
// runs; an input cannot grow the cache past it), a small decompressed cache.
inline Qcow2Options SmallCacheOptions() {
  Qcow2Options o;
  o.budget = std::make_shared<qcow2::CacheBudget>(1 << 20);
  o.decompressed_cache_bytes = 256 << 10;
  return o;
}

// ReadHeader, ReadSnapshotTable, the Engine, LoadActiveL1: OpenQcow2 without
// data file and encryption (refused here).
inline Result<std::shared_ptr<qcow2::Engine>> OpenEngine(std::shared_ptr<Backend> file,
                                                         const std::string& name) {
  using namespace qcow2;
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
  KVMFS_ASSIGN_OR_RETURN(Header h, ReadHeader(*file, file_size, name));
  if (h.raw.crypt_method != kCryptNone || h.has_data_file())
    return Status::NotSupported(name + ": not here");
  KVMFS_ASSIGN_OR_RETURN(std::vector<Snapshot> snapshots, ReadSnapshotTable(*file, file_size, h, name));
  auto engine = std::make_shared<Engine>(file, nullptr, std::move(h), std::move(snapshots),
                                         SmallCacheOptions(), name, file_size, file_size);
  KVMFS_RETURN_IF_ERROR(engine->LoadActiveL1());
  return engine;
}

// Shape of a made-up image, decoded from the first kShapeBytes input bytes:
//   byte 0   bits 0-2: cluster_bits - 9 (512 B .. 64 KiB), bit 3: extended
//            L2 (when clusters are >= 16 KiB), bit 4: version 2, bit 5: zstd
//   bytes 1-4  virtual size in 512-byte sectors (big-endian)
struct Shape {
  uint32_t cluster_bits = 16;
  bool extended_l2 = false;
  uint32_t version = 3;
  bool zstd = false;
  uint64_t virtual_size = 0;
  static constexpr size_t kShapeBytes = 5;

  static Shape Decode(const uint8_t* p) {
    Shape s;
    s.cluster_bits = 9 + (p[0] & 7);
    s.version = (p[0] & 0x10) ? 2 : 3;
    s.extended_l2 = (p[0] & 8) && s.cluster_bits >= 14 && s.version == 3;
    s.zstd = (p[0] & 0x20) && s.version == 3;
    s.virtual_size = uint64_t{LoadBE32(p + 1)} * 512;
    return s;
  }

  // Cluster 0 of an image of this shape: header (v3: 112 bytes, the
  // compression type field), refcount table at cluster 1 (one cluster), L1
  // of `l1_size` entries at `l1_offset`, `nb_snapshots` at `snapshots_offset`.
  std::vector<uint8_t> Header(uint32_t l1_size, uint64_t l1_offset, uint32_t nb_snapshots,
                              uint64_t snapshots_offset) const {
    std::vector<uint8_t> c(uint64_t{1} << cluster_bits, 0);
    uint8_t* p = c.data();
    StoreBE32(p + 0, qcow2::kMagic);
    StoreBE32(p + 4, version);
    StoreBE32(p + 20, cluster_bits);
    StoreBE64(p + 24, virtual_size);
    StoreBE32(p + 36, l1_size);
    StoreBE64(p + 40, l1_offset);
    StoreBE64(p + 48, uint64_t{1} << cluster_bits);
    StoreBE32(p + 56, 1);
    StoreBE32(p + 60, nb_snapshots);
    StoreBE64(p + 64, snapshots_offset);
    if (version == 3) {
      uint64_t incompat = 0;
      if (extended_l2) incompat |= qcow2::kIncompatExtendedL2;
      if (zstd) incompat |= qcow2::kIncompatCompression;
      StoreBE64(p + 72, incompat);
      StoreBE32(p + 96, 4);
      StoreBE32(p + 100, 112);
      p[104] = zstd ? qcow2::kCompressionZstd : qcow2::kCompressionZlib;
    }
    return c;
  }
};

}  // namespace kvmfs::fuzz

namespace kvmfs::fuzz {

// Files named by an image (an external data file) that keep what is written
// to them: each is opened once and handed out again, so a reopen sees it.
class KeptFiles {
 public:
  explicit KeptFiles(Files files) : files_(std::move(files)) {}
  std::function<Result<std::shared_ptr<Backend>>(const std::string&)> Opener(bool writable) {
    return [this, writable](const std::string& name) -> Result<std::shared_ptr<Backend>> {
      if (!name.empty() && name[0] == '/') return Status::Permission(name + ": outside the pool");
      auto open = open_.find(name);
      if (open != open_.end()) return open->second;
      auto it = files_.find(name);
      if (it == files_.end()) return Status::NotFound(name + ": no such file");
      return open_[name] = std::shared_ptr<Backend>(NewMemBackend(name, it->second, writable));
    };
  }

 private:
  Files files_;
  std::map<std::string, std::shared_ptr<Backend>> open_;
};

// A write session on a qcow2 image in memory, with a model of the guest disk
// (when it is small enough to keep): every acknowledged write, zeroing and
// resize is applied to the model, and the image must read what the model
// says, now, after a reopen, and in snapshot views made on the way (their
// models kept too). A failed write leaves its range unknown: the model is
// dropped (the engine is then read-only by its contract).
class WriteSession {
 public:
  static constexpr uint64_t kMaxModel = 4ull << 20;

  WriteSession(std::vector<uint8_t> bytes, Files related)
      : file_(NewMemBackend("fuzz.qcow2", std::move(bytes), true)), related_(std::move(related)) {}

  // Opens the file writable and begins writes; false when it does not open.
  // `compress`: whole-cluster writes stored compressed (config compress:).
  bool Open(bool compress = false) {
    OpenContext ctx;
    ctx.name = "fuzz.qcow2";
    ctx.writable = true;
    ctx.compress = compress ? WriteCompression::kZlib : WriteCompression::kNone;
    ctx.open_related = related_.Opener(true);
    auto image = OpenQcow2(file_, ctx, SmallCacheOptions());
    Note(image.status());
    if (!image.ok()) return false;
    image_ = std::move(image).value();
    const Status begin = image_->BeginWrites();
    Note(begin);
    if (!begin.ok()) return false;
    if (image_->size() <= kMaxModel) {
      model_.assign(image_->size(), 0);
      modeled_ = image_->Read(0, model_.data(), model_.size()).ok();
    }
    return true;
  }
  Image& image() { return *image_; }
  bool modeled() const { return modeled_; }

  void Write(uint64_t off, size_t len, uint8_t pattern) {
    std::vector<uint8_t> buf(len);
    for (size_t i = 0; i < len; ++i) buf[i] = static_cast<uint8_t>(pattern + i / 512);
    Done(image_->Write(off, buf.data(), len), off, buf);
  }
  void Zero(uint64_t off, uint64_t len, bool unmap) {
    Done(image_->WriteZeroes(off, len, unmap), off, std::vector<uint8_t>(len, 0));
  }
  void Resize(uint64_t size) {
    Status st = image_->Resize(size);
    if (st.ok()) {
      if (size > kMaxModel) modeled_ = false;
      if (modeled_) model_.resize(size, 0);
      if (image_->size() != size) Fail("Resize succeeded but the size is " + std::to_string(image_->size()));
    } else if (st.code() != Status::Code::kInvalidArgument && st.code() != Status::Code::kNotSupported &&
               st.code() != Status::Code::kTooLarge) {
      modeled_ = false;
    }
  }
  void Snapshot(const std::string& name) {
    Result<SnapshotInfo> s = image_->CreateSnapshot(name);
    if (!s.ok()) {
      // A failed create changes nothing of the active disk (commit.cpp), or
      // fails with corruption and goes read-only.
      return;
    }
    if (modeled_ && snaps_.size() < 4) snaps_[s->id] = model_;
  }
  void DeleteSnapshot(size_t pick) {
    std::vector<SnapshotInfo> all = image_->Snapshots();
    if (all.empty()) return;
    const std::string id = all[pick % all.size()].id;
    if (image_->DeleteSnapshot(id).ok()) {
      // Ids may repeat in a hostile table; the first is the one deleted.
      snaps_.erase(id);
    }
  }
  // Reads snapshot views (against their models when kept).
  void CheckSnapshots(const char* when) {
    int n = 0;
    for (const SnapshotInfo& s : image_->Snapshots()) {
      if (++n > 8) break;
      auto view = image_->OpenSnapshot(s.id);
      auto it = snaps_.find(s.id);
      if (!view.ok()) {
        if (it != snaps_.end())
          Fail(std::string(when) + ": snapshot " + s.id + " made here does not open: " +
               view.status().ToString());
        continue;
      }
      if (it == snaps_.end()) {
        std::vector<uint8_t> buf(std::min<uint64_t>((*view)->size(), 1 << 16));
        (void)(*view)->Read(0, buf.data(), buf.size());
        continue;
      }
      Compare(**view, it->second, std::string(when) + ": snapshot " + s.id);
    }
  }
  void Check(const char* when) {
    if (modeled_) Compare(*image_, model_, when);
  }
  void Cycle() {
    if (!image_->EndWrites().ok()) modeled_ = false;
    if (!image_->BeginWrites().ok()) modeled_ = false;
  }
  void Flush() {
    if (!image_->Flush().ok()) modeled_ = false;
  }

  // Ends the session and opens what it left: an image that opened before
  // must open again (read-only), and read what the model says.
  void CloseAndReopen() {
    if (!image_->EndWrites().ok()) modeled_ = false;
    image_.reset();
    std::vector<uint8_t> bytes = Contents(*file_);
    OpenContext ctx;
    ctx.name = "fuzz.qcow2";
    ctx.open_related = related_.Opener(false);
    auto image = OpenQcow2(std::shared_ptr<Backend>(NewMemBackend("fuzz.qcow2", bytes, false)), ctx,
                           SmallCacheOptions());
    if (!image.ok()) Fail("the image does not open after a write session: " + image.status().ToString());
    image_ = std::move(image).value();
    Check("after reopen");
    CheckSnapshots("after reopen");
  }

 private:
  void Done(const Status& st, uint64_t off, const std::vector<uint8_t>& want) {
    if (!st.ok()) {
      modeled_ = false;
      return;
    }
    std::vector<uint8_t> got(want.size());
    Status r = image_->Read(off, got.data(), got.size());
    if (!r.ok()) Fail("acknowledged write at " + std::to_string(off) + " does not read back: " + r.ToString());
    if (got != want) Fail("acknowledged write at " + std::to_string(off) + " reads back other bytes");
    if (modeled_) std::copy(want.begin(), want.end(), model_.begin() + static_cast<ptrdiff_t>(off));
  }
  static void Compare(Image& img, const std::vector<uint8_t>& model, const std::string& what) {
    if (img.size() != model.size())
      Fail(what + ": size " + std::to_string(img.size()) + ", model " + std::to_string(model.size()));
    std::vector<uint8_t> got(model.size());
    Status st = img.Read(0, got.data(), got.size());
    if (!st.ok()) Fail(what + ": read failed: " + st.ToString());
    if (got != model) {
      size_t at = 0;
      while (got[at] == model[at]) ++at;
      Fail(what + ": differs from the model at " + std::to_string(at));
    }
  }

  std::shared_ptr<Backend> file_;
  KeptFiles related_;
  std::unique_ptr<Image> image_;
  std::vector<uint8_t> model_;
  bool modeled_ = false;
  std::map<std::string, std::vector<uint8_t>> snaps_;
};

// Splits "IMAGE [\n@@file NAME\n...] \n@@ops\n OPS" (the ops after the last
// separator; none without one).
inline constexpr std::string_view kOpsSep = "\n@@ops\n";
inline std::vector<uint8_t> SplitOps(const uint8_t* data, size_t size, Files* files,
                                     std::vector<uint8_t>* ops) {
  std::string_view all(reinterpret_cast<const char*>(data), size);
  const size_t at = all.rfind(kOpsSep);
  size_t main_len = size;
  if (at != std::string_view::npos) {
    ops->assign(data + at + kOpsSep.size(), data + size);
    main_len = at;
  }
  return SplitFiles(data, main_len, files);
}

}  // namespace kvmfs::fuzz
