// vmdk driver entry: probing, opening (a sparse file, or a descriptor and
// the extents it names), and the Image of the disk.
#include <algorithm>
#include <cstring>
#include <set>

#include "base/endian.h"
#include "base/path.h"
#include "format/vmdk/vmdk.h"

namespace kvmfs {
namespace vmdk {
namespace {

std::string Num(uint64_t v) { return std::to_string(v); }

// The create types QEMU opens from a descriptor file (vmdk_open_desc_file).
bool DescriptorCreateTypeOk(const std::string& t) {
  return t == "monolithicFlat" || t == "vmfs" || t == "vmfsSparse" || t == "seSparse" ||
         t == "twoGbMaxExtentSparse" || t == "twoGbMaxExtentFlat";
}

// How qemu-img names an extent file: the descriptor's directory + the name.
std::string ExtentDisplayName(const std::string& image, const std::string& name) {
  if (!name.empty() && name[0] == '/') return name;
  return DirName(image) + "/" + name;
}

struct Opened {
  std::string create_type;
  std::vector<std::unique_ptr<Extent>> extents;
};

// The extents a descriptor names, each opened through ctx.open_related
// (which resolves the name and refuses files outside the pool and the
// backing roots).
Status OpenDescribedExtents(const Descriptor& d, const OpenContext& ctx, Opened& out) {
  const std::string& name = ctx.name;
  if (!d.create_type)
    return Status::Corruption(name + ": invalid VMDK image descriptor (no createType)");
  if (!DescriptorCreateTypeOk(*d.create_type))
    return Status::NotSupported(name + ": unsupported VMDK image type '" + *d.create_type + "'");
  out.create_type = *d.create_type;
  if (d.extents.empty())
    return Status::Corruption(name + ": the descriptor names no extent kvmfs (or QEMU) can use");
  if (!ctx.open_related)
    return Status::NotSupported(name + ": extent files cannot be opened here");
  std::set<std::string> sparse_files, all_files;
  for (const ExtentLine& line : d.extents) {
    const std::string where = name + " (descriptor line " + std::to_string(line.line) + ")";
    if (line.type == "SESPARSE")
      return Status::NotSupported(where + ": seSparse extents are not supported");
    Result<std::shared_ptr<Backend>> opened = ctx.open_related(line.file_name);
    if (!opened.ok()) return opened.status().WithContext(where + ": extent '" + line.file_name + "'");
    std::shared_ptr<Backend> file = std::move(opened).value();
    // An extent that is the descriptor, or a sparse file used twice, would
    // have one file's bytes serve as two things (and writes corrupt them).
    if (file->name() == name)
      return Status::Corruption(where + ": extent '" + line.file_name + "' is the descriptor itself");
    const bool sparse = line.type == "SPARSE" || line.type == "VMFSSPARSE";
    if (sparse_files.count(file->name()) || (sparse && all_files.count(file->name())))
      return Status::Corruption(where + ": extent file '" + line.file_name +
                                "' is named more than once");
    all_files.insert(file->name());
    if (sparse) sparse_files.insert(file->name());
    auto e = std::make_unique<Extent>();
    e->file = std::move(file);
    e->type = line.type;
    e->filename = ExtentDisplayName(name, line.file_name);
    if (!sparse) {
      if (line.sectors > kMaxSectors || line.flat_offset > kMaxSectors)
        return Status::TooLarge(where + ": extent of " + Num(line.sectors) + " sectors at sector " +
                                Num(line.flat_offset) + " is too big");
      e->kind = Extent::Kind::kFlat;
      e->bytes = line.sectors * kSector;
      e->flat_offset = line.flat_offset * kSector;
      KVMFS_ASSIGN_OR_RETURN(uint64_t fsize, e->file->Size());
      e->file_size.store(fsize, std::memory_order_relaxed);
    } else {
      KVMFS_ASSIGN_OR_RETURN(uint64_t fsize, e->file->Size());
      if (fsize < 4)
        return Status::Corruption(where + ": extent '" + e->filename + "' is too small (" +
                                  Num(fsize) + " bytes)");
      uint8_t head[kSector] = {};
      KVMFS_RETURN_IF_ERROR(e->file->ReadAt(0, head, sizeof head));
      KVMFS_RETURN_IF_ERROR(OpenSparseExtent(*e, head, std::min<uint64_t>(fsize, sizeof head),
                                             OpenDepth::kInDescriptor, e->filename, nullptr));
      if (e->compressed) out.create_type = "streamOptimized";  // as QEMU
    }
    out.extents.push_back(std::move(e));
  }
  return Status::OK();
}

Result<std::string> ReadText(Backend& file, uint64_t offset, uint64_t file_size) {
  std::string text(std::min<uint64_t>(file_size, kMaxDescriptorBytes), '\0');
  KVMFS_RETURN_IF_ERROR(file.ReadAt(offset, text.data(), text.size()));
  return text;
}

// ---- The image ------------------------------------------------------------------------

class VmdkImage final : public Image {
 public:
  explicit VmdkImage(std::shared_ptr<Engine> engine) : engine_(std::move(engine)) {}

  uint64_t size() const override { return engine_->size(); }

  Status Read(uint64_t off, void* buf, size_t len) override {
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    KVMFS_RETURN_IF_ERROR(CheckRange(off, len));
    auto* p = static_cast<uint8_t*>(buf);
    while (len > 0) {
      KVMFS_ASSIGN_OR_RETURN(Run r, engine_->Map(off, len, false));
      size_t n = static_cast<size_t>(r.length);
      switch (r.type) {
        case Run::Type::kUnallocated:
          KVMFS_RETURN_IF_ERROR(ReadBelow(off, p, n));
          break;
        case Run::Type::kZero:
          std::memset(p, 0, n);
          break;
        case Run::Type::kData:
          KVMFS_RETURN_IF_ERROR(engine_->extents()[r.extent]->file->ReadAt(r.host, p, n));
          break;
        case Run::Type::kCompressed: {
          KVMFS_ASSIGN_OR_RETURN(n, engine_->ReadCompressedRun(r, off, p, len));
          break;
        }
      }
      off += n;
      p += n;
      len -= n;
    }
    return Status::OK();
  }

  // Data of extent files opened read-only become file pieces (nothing of
  // kvmfs writes them while this image lives); bytes of a flat file past
  // its end read as zeros.
  Status PlanRead(uint64_t off, size_t len, ReadPlan& plan) override {
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    KVMFS_RETURN_IF_ERROR(CheckRange(off, len));
    while (len > 0) {
      KVMFS_ASSIGN_OR_RETURN(Run r, engine_->Map(off, len, false));
      size_t n = static_cast<size_t>(r.length);
      switch (r.type) {
        case Run::Type::kUnallocated:
          KVMFS_RETURN_IF_ERROR(CheckParentCid());
          KVMFS_RETURN_IF_ERROR(PlanBacking(off, n, plan));
          break;
        case Run::Type::kZero:
          KVMFS_RETURN_IF_ERROR(plan.AddMemory(n, true).status());
          break;
        case Run::Type::kData: {
          Extent& e = *engine_->extents()[r.extent];
          if (e.file->writable() || e.file->fd() < 0) {
            KVMFS_ASSIGN_OR_RETURN(uint8_t* p, plan.AddMemory(n, false));
            KVMFS_RETURN_IF_ERROR(e.file->ReadAt(r.host, p, n));
            break;
          }
          uint64_t known = e.file_size.load(std::memory_order_relaxed);
          if (r.host + n > known) {
            KVMFS_ASSIGN_OR_RETURN(known, e.file->Size());
            e.file_size.store(known, std::memory_order_relaxed);
          }
          const uint64_t in_file = r.host >= known ? 0 : std::min<uint64_t>(n, known - r.host);
          if (in_file > 0) plan.AddFile(e.file->fd(), r.host, in_file);
          if (in_file < n) KVMFS_RETURN_IF_ERROR(plan.AddMemory(n - in_file, true).status());
          break;
        }
        case Run::Type::kCompressed: {
          KVMFS_ASSIGN_OR_RETURN(uint8_t* p, plan.AddMemory(len, false));
          KVMFS_ASSIGN_OR_RETURN(n, engine_->ReadCompressedRun(r, off, p, len));
          plan.TrimMemory(len - n);
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
    if (off >= size())
      return Status::InvalidArgument(engine_->name() + ": block status at " + Num(off) +
                                     " past the virtual size " + Num(size()));
    len = std::min(len, size() - off);
    if (len == 0) return Status::InvalidArgument(engine_->name() + ": block status of 0 bytes");
    KVMFS_ASSIGN_OR_RETURN(Run r, engine_->Map(off, len, true));
    switch (r.type) {
      case Run::Type::kUnallocated:
        return BlockStatus{Allocation::kUnallocated, r.length};
      case Run::Type::kZero:
        return BlockStatus{Allocation::kZero, r.length};
      case Run::Type::kCompressed:
        return BlockStatus{Allocation::kData, r.length};
      case Run::Type::kData:
        break;
    }
    // Flat extents are data throughout, holes of their files included: QEMU
    // maps them as data (with "zero" where the file has holes).
    return BlockStatus{Allocation::kData, r.length};
  }

  bool writable() const override { return engine_->writable(); }
  std::string ReadOnlyReason() const override { return engine_->ReadOnlyReason(); }
  Status BeginWrites() override { return engine_->BeginWrites(); }
  Status EndWrites() override { return engine_->EndWrites(); }
  Status Write(uint64_t off, const void* buf, size_t len) override {
    return engine_->Write(off, static_cast<const uint8_t*>(buf), len, BackingReader(),
                          backing() != nullptr, backing() ? backing()->size() : 0);
  }
  Status WriteZeroes(uint64_t off, uint64_t len, bool unmap) override {
    return engine_->WriteZeroes(off, len, unmap, BackingReader(), backing() != nullptr,
                                backing() ? backing()->size() : 0);
  }
  Status Flush() override { return engine_->Flush(); }
  // QEMU's vmdk driver cannot resize (qemu-img resize refuses).
  Status Resize(uint64_t) override {
    if (!writable()) return Status::ReadOnly(engine_->name() + ": image is read-only");
    return Status::NotSupported(engine_->name() + ": VMDK images cannot be resized (as QEMU)");
  }

  ImageInfo Info() const override {
    std::shared_lock<std::shared_mutex> lock(engine_->mutex());
    const auto& extents = engine_->extents();
    ImageInfo info;
    info.format = "vmdk";
    info.virtual_size = size();
    // As vmdk_co_get_info: a cluster size when every extent is alike and
    // sparse.
    bool alike = true;
    for (const auto& e : extents)
      alike = alike && (e->kind == extents[0]->kind) && e->compressed == extents[0]->compressed &&
              (e->kind == Extent::Kind::kFlat || e->grain_bytes == extents[0]->grain_bytes);
    if (alike && extents[0]->kind == Extent::Kind::kSparse) info.cluster_size = extents[0]->grain_bytes;
    const DescriptorIds& ids = engine_->ids();
    if (ids.parent_hint && !ids.parent_hint->empty()) {
      info.backing_filename = *ids.parent_hint;
      info.backing_format = "vmdk";  // QEMU opens a VMDK parent as vmdk
    }
    info.format_specific_type = "vmdk";
    info.format_specific = {{"cid", int64_t{engine_->cid()}},
                            {"parent-cid", int64_t{*ids.parent_cid}},
                            {"create-type", engine_->create_type()}};
    std::vector<InfoObject> list;
    for (const auto& e : extents) {
      InfoObject item;
      if (e->compressed) item.push_back({"compressed", true});
      item.push_back({"virtual-size", int64_t(e->bytes)});
      item.push_back({"filename", e->filename});
      if (e->kind == Extent::Kind::kSparse) item.push_back({"cluster-size", int64_t(e->grain_bytes)});
      item.push_back({"format", e->type});
      list.push_back(std::move(item));
    }
    info.format_specific.push_back({"extents", std::move(list)});
    return info;
  }

  Result<CheckResult> Check(const CheckOptions& options) override { return engine_->Check(options); }

  Result<uint64_t> ActualSize() override {
    KVMFS_ASSIGN_OR_RETURN(uint64_t total, engine_->file().AllocatedBytes());
    for (const auto& e : engine_->extents()) {
      if (e->file.get() == &engine_->file()) continue;
      KVMFS_ASSIGN_OR_RETURN(uint64_t n, e->file->AllocatedBytes());
      total += n;
    }
    return total;
  }

 private:
  Status CheckRange(uint64_t off, size_t len) const {
    if (off > size() || len > size() - off)
      return Status::InvalidArgument(engine_->name() + ": read of " + Num(len) + " bytes at " +
                                     Num(off) + " past the virtual size " + Num(size()));
    return Status::OK();
  }

  // QEMU reads through to the parent only while the parent is a VMDK whose
  // CID is the parentCID this image recorded (vmdk_is_cid_valid).
  Status CheckParentCid() {
    const Image* parent = backing().get();
    if (parent == nullptr || cid_checked_.load(std::memory_order_acquire)) return Status::OK();
    const ImageInfo pi = parent->Info();
    std::optional<int64_t> parent_cid;
    for (const InfoField& f : pi.format_specific)
      if (f.key == "cid" && std::holds_alternative<int64_t>(f.value)) parent_cid = std::get<int64_t>(f.value);
    const int64_t want = *engine_->ids().parent_cid;
    if (pi.format != "vmdk" || !parent_cid || *parent_cid != want)
      return Status::Corruption(
          engine_->name() + ": parentCID " + Hex(uint32_t(want)) + " does not match the parent (" +
          (pi.format != "vmdk" ? "a " + pi.format + " image, which has no CID"
                               : "CID " + Hex(uint32_t(parent_cid.value_or(0)))) +
          "); the parent changed since this image was made, QEMU refuses to read through it");
    cid_checked_.store(true, std::memory_order_release);
    return Status::OK();
  }
  static std::string Hex(uint32_t v) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%x", v);
    return buf;
  }
  Status ReadBelow(uint64_t off, uint8_t* p, size_t n) {
    KVMFS_RETURN_IF_ERROR(CheckParentCid());
    return ReadBacking(off, p, n);
  }
  Engine::BackingRead BackingReader() {
    return [this](uint64_t off, void* buf, size_t len) -> Status {
      KVMFS_RETURN_IF_ERROR(CheckParentCid());
      return ReadBacking(off, buf, len);
    };
  }

  const std::shared_ptr<Engine> engine_;
  std::atomic<bool> cid_checked_{false};
};

}  // namespace

Engine::Engine(std::string name, std::shared_ptr<Backend> file, std::string create_type,
               DescriptorIds ids, uint64_t desc_base, std::vector<std::unique_ptr<Extent>> extents)
    : name_(std::move(name)),
      file_(std::move(file)),
      create_type_(std::move(create_type)),
      ids_(std::move(ids)),
      desc_base_(desc_base),
      extents_(std::move(extents)) {
  for (auto& e : extents_) {
    e->start = size_;
    size_ += e->bytes;
  }
  cid_.store(*ids_.cid, std::memory_order_release);
}

Result<std::unique_ptr<Image>> OpenVmdk(std::shared_ptr<Backend> file, const OpenContext& ctx) {
  const std::string& name = ctx.name;
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
  if (file_size < 4)
    return Status::Corruption(name + ": file is too small (" + Num(file_size) +
                              " bytes), not a valid VMDK image");
  uint8_t head[kSector] = {};
  KVMFS_RETURN_IF_ERROR(file->ReadAt(0, head, sizeof head));
  const uint32_t magic = LoadBE32(head);
  Opened opened;
  uint64_t desc_base = 0;
  if (magic == kMagicVmdk3 || magic == kMagicVmdk4) {
    auto e = std::make_unique<Extent>();
    e->file = file;
    e->filename = name;
    std::optional<uint64_t> nested;
    KVMFS_RETURN_IF_ERROR(OpenSparseExtent(*e, head, std::min<uint64_t>(file_size, sizeof head),
                                           OpenDepth::kTop, name, &nested));
    if (nested) {
      KVMFS_ASSIGN_OR_RETURN(std::string text, ReadText(*file, *nested, file_size));
      KVMFS_ASSIGN_OR_RETURN(Descriptor d, ParseDescriptor(text, name));
      KVMFS_RETURN_IF_ERROR(OpenDescribedExtents(d, ctx, opened));
    } else {
      opened.create_type = e->compressed ? "streamOptimized" : "monolithicSparse";
      opened.extents.push_back(std::move(e));
    }
    desc_base = kSector;  // QEMU reads the identity fields at 0x200
  } else {
    KVMFS_ASSIGN_OR_RETURN(std::string text, ReadText(*file, 0, file_size));
    KVMFS_ASSIGN_OR_RETURN(Descriptor d, ParseDescriptor(text, name));
    KVMFS_RETURN_IF_ERROR(OpenDescribedExtents(d, ctx, opened));
  }
  uint64_t total = 0;
  for (const auto& e : opened.extents) {
    if (e->bytes > kMaxSectors * kSector - total)
      return Status::TooLarge(name + ": the extents add up to more than " +
                              Num(kMaxSectors * kSector) + " bytes");
    total += e->bytes;
  }
  std::string window(kDescWindow, '\0');
  KVMFS_RETURN_IF_ERROR(file->ReadAt(desc_base, window.data(), window.size()));
  KVMFS_ASSIGN_OR_RETURN(DescriptorIds ids, ParseDescriptorIds(window, name));

  // Why a writable open is served read-only (QEMU refuses these writes).
  std::string reason;
  for (const auto& e : opened.extents) {
    if (!reason.empty()) break;
    if (e->kind == Extent::Kind::kSparse && e->compressed && !e->markers)
      reason = "compressed grains without markers are not written (QEMU refuses too)";
    else if (e->kind == Extent::Kind::kSparse && e->version == 3 && !e->compressed)
      reason = "VMDK version 3 must be read only (as QEMU)";
    else if (e->kind == Extent::Kind::kSparse && e->grain_bytes > (16u << 20))
      reason = "grains of " + Num(e->grain_bytes) + " bytes are too big for kvmfs to write";
    else if (!e->file->writable())
      reason = "extent " + e->filename + " is not writable";
  }
  if (reason.empty() && ids.cid_len == 0)
    reason = "the descriptor's CID line is not in the form kvmfs can update in place";
  if (reason.empty() && !file->writable()) reason = name + " is opened read-only";
  auto engine = std::make_shared<Engine>(name, std::move(file), std::move(opened.create_type),
                                         std::move(ids), desc_base, std::move(opened.extents));
  engine->SetWritable(ctx.writable, ctx.writable ? reason : std::string());
  return std::unique_ptr<Image>(std::make_unique<VmdkImage>(std::move(engine)));
}

namespace {

class VmdkDriver final : public FormatDriver {
 public:
  const char* name() const override { return "vmdk"; }
  FormatCaps caps() const override {
    return {.writable = true, .backing_files = true, .compression = true, .create = true,
            .create_backing = true, .check = true};
  }
  Status Create(Backend& file, const CreateOptions& options) const override {
    return CreateImage(file, options);
  }
  std::vector<std::string> extensions() const override { return {"vmdk"}; }
  int Probe(const uint8_t* head, size_t len) const override { return ProbeVmdk(head, len); }
  FormatPeek Peek(const uint8_t* head, size_t len) const override {
    if (head == nullptr) return {};
    return PeekVmdk(head, len);
  }
  Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend> file,
                                      const OpenContext& ctx) const override {
    return OpenVmdk(std::move(file), ctx);
  }
};

}  // namespace
}  // namespace vmdk

const FormatDriver& KvmfsFormat_vmdk() {
  static const vmdk::VmdkDriver driver;
  return driver;
}

}  // namespace kvmfs
