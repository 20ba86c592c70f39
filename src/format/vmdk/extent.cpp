// Sparse extents (KDMV hosted sparse and streamOptimized, COWD/vmfsSparse):
// headers, the grain directory, grain tables, and the guest -> file map.
#include <algorithm>
#include <cstring>

#include "base/mutex.h"

#include "base/endian.h"
#include "format/vmdk/vmdk.h"

namespace kvmfs::vmdk {
namespace {

// Grain tables kept per extent (2 KiB each with 512 entries; COWD 16 KiB).
constexpr size_t kGtCacheEntries = 1024;

std::string Num(uint64_t v) { return std::to_string(v); }

// The streamOptimized footer: the header as it stands at the end of a
// stream (gdOffset in the first header is kGdAtEnd). As QEMU: a footer
// marker, the footer, and an end-of-stream marker in the last 3 sectors.
Result<SparseHeader> ReadFooter(Backend& file, uint64_t file_size, const std::string& name) {
  const uint64_t end = (file_size + kSector - 1) / kSector * kSector;
  if (end < 3 * kSector)
    return Status::Corruption(name + ": streamOptimized image without a footer (file of " +
                              Num(file_size) + " bytes)");
  uint8_t buf[3 * kSector];
  KVMFS_RETURN_IF_ERROR(file.ReadAt(end - sizeof buf, buf, sizeof buf));
  const uint8_t* marker = buf;
  const uint8_t* footer = buf + kSector;
  const uint8_t* eos = buf + 2 * kSector;
  if (LoadBE32(footer) != kMagicVmdk4 || LoadLE32(marker + 8) != 0 || LoadLE32(marker + 12) != 3 ||
      LoadLE64(eos) != 0 || LoadLE32(eos + 8) != 0 || LoadLE32(eos + 12) != 0)
    return Status::Corruption(name + ": invalid streamOptimized footer at offset " +
                              Num(end - 2 * kSector));
  return SparseHeader::Decode(footer);
}

// Reads a grain directory of `entries` u32 at byte `offset`, which must lie
// inside the file.
Result<std::vector<uint32_t>> ReadGd(Backend& file, uint64_t file_size, uint64_t offset_sectors,
                                     uint64_t entries, const std::string& what,
                                     const std::string& name) {
  if (offset_sectors > file_size / kSector ||
      offset_sectors * kSector + entries * 4 > file_size)
    return Status::Corruption(name + ": " + what + " (" + Num(entries) + " entries at sector " +
                              Num(offset_sectors) + ") lies past the end of the file (" +
                              Num(file_size) + " bytes)");
  std::vector<uint8_t> raw(entries * 4);
  if (!raw.empty()) KVMFS_RETURN_IF_ERROR(file.ReadAt(offset_sectors * kSector, raw.data(), raw.size()));
  std::vector<uint32_t> gd(entries);
  for (uint64_t i = 0; i < entries; ++i) gd[i] = LoadLE32(raw.data() + 4 * i);
  return gd;
}

Status OpenCowd(Extent& e, const uint8_t* head, uint64_t file_size, const std::string& name) {
  const CowdHeader h = CowdHeader::Decode(head);
  if (h.grain_sectors == 0 || h.grain_sectors > kMaxGrainSectors)
    return Status::Corruption(name + ": invalid grain size of " + Num(h.grain_sectors) +
                              " sectors (1.." + Num(kMaxGrainSectors) + ")");
  if (h.gd_entries > kMaxGdEntries)
    return Status::TooLarge(name + ": grain directory of " + Num(h.gd_entries) +
                            " entries (QEMU's limit: " + Num(kMaxGdEntries) + ")");
  e.cowd = true;
  e.version = h.version;
  e.flags = h.flags;
  e.grain_sectors = h.grain_sectors;
  e.grain_bytes = uint64_t{h.grain_sectors} * kSector;
  e.gtes_per_gt = kCowdGtes;
  e.gt_span = e.grain_bytes * kCowdGtes;
  e.bytes = uint64_t{h.disk_sectors} * kSector;
  e.data_start = (uint64_t{h.gd_offset} + (uint64_t{h.gd_entries} * 4 + kSector - 1) / kSector) * kSector;
  KVMFS_ASSIGN_OR_RETURN(e.gd, ReadGd(*e.file, file_size, h.gd_offset, h.gd_entries,
                                      "grain directory", name));
  return Status::OK();
}

}  // namespace

Status OpenSparseExtent(Extent& e, const uint8_t* head, size_t head_len, OpenDepth depth,
                        const std::string& name, std::optional<uint64_t>* nested_desc) {
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, e.file->Size());
  e.kind = Extent::Kind::kSparse;
  e.file_size.store(file_size, std::memory_order_relaxed);
  e.next_grain_sector = 0;
  const uint32_t magic = head_len >= 4 ? LoadBE32(head) : 0;
  if (magic == kMagicVmdk3) {
    if (head_len < CowdHeader::kBytes)
      return Status::Corruption(name + ": COWD header truncated");
    KVMFS_RETURN_IF_ERROR(OpenCowd(e, head, file_size, name));
  } else if (magic == kMagicVmdk4) {
    if (head_len < SparseHeader::kBytes)
      return Status::Corruption(name + ": sparse extent header truncated (" +
                                Num(head_len) + " bytes)");
    SparseHeader h = SparseHeader::Decode(head);
    if (h.capacity == 0 && h.desc_offset != 0) {
      // A header that only points at a descriptor (QEMU then reads the
      // extents from there). Inside a descriptor that would nest
      // descriptors: refused, so that no extent can lead back.
      if (depth != OpenDepth::kTop || nested_desc == nullptr)
        return Status::Corruption(name + ": sparse extent is itself a descriptor");
      if (h.desc_offset > file_size / kSector)
        return Status::Corruption(name + ": descriptor offset " + Num(h.desc_offset) +
                                  " past the end of the file");
      *nested_desc = h.desc_offset * kSector;
      return Status::OK();
    }
    if (h.gd_offset == kGdAtEnd) {
      KVMFS_ASSIGN_OR_RETURN(h, ReadFooter(*e.file, file_size, name));
    }
    if (h.version > 3)
      return Status::NotSupported(name + ": unsupported VMDK version " + Num(h.version));
    if (h.gtes_per_gt > kMaxGtesPerGt)
      return Status::Corruption(name + ": grain table size " + Num(h.gtes_per_gt) +
                                " too big (at most " + Num(kMaxGtesPerGt) + ")");
    if (h.gtes_per_gt == 0 || h.grain_sectors == 0)
      return Status::Corruption(name + ": grain table size " + Num(h.gtes_per_gt) +
                                " or grain size " + Num(h.grain_sectors) + " is zero");
    if (h.grain_sectors > kMaxGrainSectors)
      return Status::TooLarge(name + ": invalid grain size of " + Num(h.grain_sectors) +
                              " sectors, image may be corrupt (at most " +
                              Num(kMaxGrainSectors) + ")");
    if (h.capacity > kMaxSectors)
      return Status::TooLarge(name + ": capacity of " + Num(h.capacity) + " sectors is too big");
    const uint64_t gt_sectors = uint64_t{h.gtes_per_gt} * h.grain_sectors;
    const uint64_t gd_entries = (h.capacity + gt_sectors - 1) / gt_sectors;
    if (gd_entries > kMaxGdEntries)
      return Status::TooLarge(name + ": grain directory of " + Num(gd_entries) +
                              " entries is too big (QEMU's limit: " + Num(kMaxGdEntries) + ")");
    const uint64_t file_sectors = (file_size + kSector - 1) / kSector;
    if (file_sectors < h.grain_offset)
      return Status::Corruption(name + ": file truncated, expecting at least " +
                                Num(h.grain_offset) + " sectors (the grains start there)");
    if (h.compress_algorithm == kCompressionDeflate && h.grain_sectors * kSector > kMaxCompressedGrain)
      return Status::NotSupported(name + ": compressed grains of " + Num(h.grain_sectors) +
                                  " sectors (kvmfs reads compressed grains of at most " +
                                  Num(kMaxCompressedGrain) + " bytes)");
    e.data_start = h.grain_offset * kSector;
    e.version = h.version;
    e.flags = h.flags;
    e.compressed = h.compress_algorithm == kCompressionDeflate;
    e.markers = h.flags & kFlagMarkers;
    e.zero_grain = h.flags & kFlagZeroGrain;
    e.grain_sectors = h.grain_sectors;
    e.grain_bytes = h.grain_sectors * kSector;
    e.gtes_per_gt = h.gtes_per_gt;
    e.gt_span = gt_sectors * kSector;
    e.bytes = h.capacity * kSector;
    KVMFS_ASSIGN_OR_RETURN(e.gd, ReadGd(*e.file, file_size, h.gd_offset, gd_entries,
                                        "grain directory", name));
    // The redundant directory only matters to writes (QEMU keeps its grain
    // tables in step); one that does not fit the file is left alone.
    if (h.flags & kFlagRedundantGd) {
      auto rgd = ReadGd(*e.file, file_size, h.rgd_offset, gd_entries, "redundant grain directory",
                        name);
      if (rgd.ok()) e.rgd = std::move(rgd).value();
    }
  } else {
    return Status::Corruption(name + ": not in VMDK format (no KDMV or COWD magic)");
  }
  const uint64_t file_sectors = (file_size + kSector - 1) / kSector;
  e.next_grain_sector = (file_sectors + e.grain_sectors - 1) / e.grain_sectors * e.grain_sectors;
  return Status::OK();
}

// ---- Engine: mapping ----------------------------------------------------------

Result<std::shared_ptr<GrainTable>> Engine::LoadGt(Extent& e, uint32_t gt_sector, uint64_t gd_index,
                                                   bool backup) {
  {
    MutexLock lock(e.gt_mu);
    auto it = e.gt_index.find(gt_sector);
    if (it != e.gt_index.end()) {
      e.gt_lru.splice(e.gt_lru.begin(), e.gt_lru, it->second);
      return it->second->second;
    }
  }
  const uint64_t bytes = uint64_t{e.gtes_per_gt} * 4;
  const uint64_t file_size = e.file_size.load(std::memory_order_relaxed);
  if (uint64_t{gt_sector} * kSector + bytes > file_size)
    return Status::Corruption(name_ + ": " + (backup ? "redundant " : "") + "grain table " +
                              Num(gd_index) + " of extent " + e.filename + " at sector " +
                              Num(gt_sector) + " lies past the end of the file (" +
                              Num(file_size) + " bytes)");
  std::vector<uint8_t> raw(bytes);
  KVMFS_RETURN_IF_ERROR(e.file->ReadAt(uint64_t{gt_sector} * kSector, raw.data(), raw.size()));
  auto gt = std::make_shared<GrainTable>(e.gtes_per_gt);
  for (uint32_t i = 0; i < e.gtes_per_gt; ++i) (*gt)[i] = LoadLE32(raw.data() + 4 * i);
  MutexLock lock(e.gt_mu);
  auto it = e.gt_index.find(gt_sector);
  if (it != e.gt_index.end()) return it->second->second;  // another reader was first
  e.gt_lru.emplace_front(gt_sector, gt);
  e.gt_index[gt_sector] = e.gt_lru.begin();
  while (e.gt_lru.size() > kGtCacheEntries) {
    e.gt_index.erase(e.gt_lru.back().first);
    e.gt_lru.pop_back();
  }
  return gt;
}

Status Engine::CheckGrain(Extent& e, uint64_t host, uint64_t guest_off) {
  uint64_t size = e.file_size.load(std::memory_order_relaxed);
  if (host >= size) {
    // The file may have grown since (writes of this engine update it).
    KVMFS_ASSIGN_OR_RETURN(size, e.file->Size());
    e.file_size.store(size, std::memory_order_relaxed);
  }
  if (host >= size)
    return Status::Corruption(name_ + ": grain of guest offset " + Num(guest_off) + " in extent " +
                              e.filename + " points at byte " + Num(host) +
                              ", past the end of the file (" + Num(size) + " bytes)");
  return Status::OK();
}

size_t Engine::FindExtent(uint64_t off) const {
  // Extents are few (at most kMaxExtents), sorted by start.
  auto it = std::upper_bound(extents_.begin(), extents_.end(), off,
                             [](uint64_t o, const std::unique_ptr<Extent>& e) { return o < e->start; });
  return size_t(it - extents_.begin()) - 1;
}

Result<Run> Engine::Map(uint64_t off, uint64_t len, bool status_mode) {
  const size_t index = FindExtent(off);
  Extent& e = *extents_[index];
  const uint64_t rel = off - e.start;
  len = std::min(len, e.bytes - rel);
  Run run;
  run.extent = index;
  if (e.kind == Extent::Kind::kFlat) {
    run.type = Run::Type::kData;
    run.length = len;
    run.host = e.flat_offset + rel;
    return run;
  }
  uint64_t done = 0;
  uint64_t expect_host = 0;
  while (done < len) {
    const uint64_t r = rel + done;
    const uint64_t gd_index = r / e.gt_span;
    const uint64_t in_grain = r % e.grain_bytes;
    const uint64_t n = std::min(len - done, e.grain_bytes - in_grain);
    Run::Type type = Run::Type::kUnallocated;
    uint64_t host = 0;
    if (gd_index >= e.gd.size())
      return Status::Corruption(name_ + ": guest offset " + Num(off + done) + " of extent " +
                                e.filename + " is past its grain directory (" +
                                Num(e.gd.size()) + " entries)");
    if (const uint32_t gt_sector = e.gd[gd_index]; gt_sector != 0) {
      KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<GrainTable> gt, LoadGt(e, gt_sector, gd_index, false));
      const uint32_t gte = (*gt)[(r / e.grain_bytes) % e.gtes_per_gt];
      if (gte == 0) {
        type = Run::Type::kUnallocated;
      } else if (gte == kGteZeroed && e.zero_grain) {
        type = Run::Type::kZero;
      } else {
        host = uint64_t{gte} * kSector;
        KVMFS_RETURN_IF_ERROR(CheckGrain(e, host, off + done));
        type = e.compressed ? Run::Type::kCompressed : Run::Type::kData;
        if (type == Run::Type::kData) host += in_grain;
      }
    }
    if (done == 0) {
      run.type = type;
      run.host = host;
    } else {
      // One run: the same kind, data only where the file continues it
      // (unless only the kind matters), one compressed grain at a time.
      const bool same = status_mode
          ? ((type == Run::Type::kCompressed ? Run::Type::kData : type) ==
             (run.type == Run::Type::kCompressed ? Run::Type::kData : run.type))
          : type == run.type && type != Run::Type::kCompressed &&
                (type != Run::Type::kData || host == expect_host);
      if (!same) break;
    }
    expect_host = host + n;
    done += n;
    if (!status_mode && run.type == Run::Type::kCompressed) break;
  }
  run.length = done;
  return run;
}

// ---- Engine: compressed grains ----------------------------------------------------

std::shared_ptr<const std::vector<uint8_t>> Engine::CachedGrain(size_t extent, uint64_t host,
                                                                size_t* valid) {
  MutexLock lock(grain_cache_mu_);
  for (auto it = grain_cache_.begin(); it != grain_cache_.end(); ++it) {
    if (it->extent == extent && it->host == host) {
      grain_cache_.splice(grain_cache_.begin(), grain_cache_, it);
      *valid = it->valid;
      return it->data;
    }
  }
  return nullptr;
}

void Engine::CacheGrain(size_t extent, uint64_t host,
                        std::shared_ptr<const std::vector<uint8_t>> data, size_t valid) {
  // A few grains: enough for small reads walking through one grain, small
  // enough (grains reach 1 GiB) to be bounded by a handful of them.
  constexpr size_t kEntries = 8;
  constexpr uint64_t kMaxCachedGrain = 4u << 20;
  if (data->size() > kMaxCachedGrain) return;
  MutexLock lock(grain_cache_mu_);
  grain_cache_.push_front(GrainCacheEntry{extent, host, std::move(data), valid});
  if (grain_cache_.size() > kEntries) grain_cache_.pop_back();
}

Result<size_t> Engine::ReadCompressedRun(const Run& first, uint64_t off, uint8_t* out, size_t len) {
  Extent& e = *extents_[first.extent];
  // The compressed grains from `off` on, in this extent, each one
  // [guest, guest + n) of the output.
  struct Grain {
    uint64_t host;          // marker (or data) offset
    uint64_t out_off;       // where its bytes go in `out`
    uint64_t in_grain;      // first byte of the grain wanted
    uint64_t n;             // bytes wanted
    uint64_t need;          // bytes the stream must yield (in_grain + n)
    std::shared_ptr<const std::vector<uint8_t>> cached;
    std::vector<uint8_t> input;
    std::shared_ptr<std::vector<uint8_t>> plain;
  };
  std::vector<Grain> grains;
  size_t done = 0;
  Run run = first;
  while (true) {
    const uint64_t rel = off + done - e.start;
    Grain g;
    g.host = run.host;
    g.out_off = done;
    g.in_grain = rel % e.grain_bytes;
    g.n = std::min<uint64_t>(len - done, e.grain_bytes - g.in_grain);
    g.need = g.in_grain + g.n;
    grains.push_back(std::move(g));
    done += grains.back().n;
    if (done >= len || off + done >= e.start + e.bytes) break;
    KVMFS_ASSIGN_OR_RETURN(run, Map(off + done, len - done, false));
    if (run.type != Run::Type::kCompressed || run.extent != first.extent) break;
  }
  // Each grain is read QEMU's way, two grains' worth from the marker on
  // (marker and data may pass one grain; zeros past the end of the file),
  // with one read for grains that follow one another in the file.
  const uint64_t window = 2 * e.grain_bytes;
  constexpr uint64_t kMaxSpan = 32u << 20;
  std::vector<std::pair<std::vector<uint8_t>, uint64_t>> spans;  // bytes, host of byte 0
  std::vector<const uint8_t*> inputs(grains.size(), nullptr);
  for (size_t i = 0; i < grains.size(); ++i) {
    Grain& g = grains[i];
    size_t valid = 0;
    g.cached = CachedGrain(first.extent, g.host, &valid);
    if (g.cached) {
      if (valid < g.need)
        return Status::Corruption(name_ + ": compressed grain at byte " + Num(g.host) + " of " +
                                  e.filename + " holds " + Num(valid) + " bytes, " +
                                  Num(g.need) + " needed");
      continue;
    }
    size_t j = i;  // the grains read with this one: ascending, close, bounded
    while (j + 1 < grains.size() && grains[j + 1].host >= grains[j].host &&
           grains[j + 1].host - grains[j].host <= window &&
           grains[j + 1].host + window - g.host <= kMaxSpan)
      ++j;
    std::vector<uint8_t> span(grains[j].host + window - g.host);
    KVMFS_RETURN_IF_ERROR(e.file->ReadAt(g.host, span.data(), span.size()));
    spans.emplace_back(std::move(span), g.host);
    for (size_t k = i; k <= j; ++k)
      inputs[k] = spans.back().first.data() + (grains[k].host - g.host);
    i = j;
  }
  std::vector<DecompressJob> jobs;
  std::vector<size_t> job_grain;
  for (size_t i = 0; i < grains.size(); ++i) {
    Grain& g = grains[i];
    if (g.cached) continue;
    if (inputs[i] == nullptr) {  // its span began at a cached grain before it
      g.input.resize(window);
      KVMFS_RETURN_IF_ERROR(e.file->ReadAt(g.host, g.input.data(), window));
      inputs[i] = g.input.data();
    }
    const uint8_t* data = inputs[i];
    uint64_t data_len = e.grain_bytes;
    if (e.markers) {
      data_len = LoadLE32(data + 8);
      data += 12;
    }
    if (data_len == 0 || data_len > window - (data - inputs[i]))
      return Status::Corruption(name_ + ": compressed grain at byte " + Num(g.host) + " of " +
                                e.filename + " has an invalid size " + Num(data_len));
    g.plain = std::make_shared<std::vector<uint8_t>>(e.grain_bytes);
    jobs.push_back(DecompressJob{data, data_len, g.plain->data(), g.plain->size(), {}, 0});
    job_grain.push_back(i);
  }
  DecompressBatch(CompressionType::kZlib, jobs);
  for (size_t j = 0; j < jobs.size(); ++j) {
    Grain& g = grains[job_grain[j]];
    if (!jobs[j].status.ok())
      return Status::Corruption(name_ + ": compressed grain at byte " + Num(g.host) + " of " +
                                e.filename + ": " + jobs[j].status.message());
    if (jobs[j].produced < g.need)
      return Status::Corruption(name_ + ": compressed grain at byte " + Num(g.host) + " of " +
                                e.filename + " holds " + Num(jobs[j].produced) + " bytes, " +
                                Num(g.need) + " needed");
    CacheGrain(first.extent, g.host, g.plain, jobs[j].produced);
    g.cached = g.plain;
  }
  for (const Grain& g : grains) std::memcpy(out + g.out_off, g.cached->data() + g.in_grain, g.n);
  return done;
}

}  // namespace kvmfs::vmdk
