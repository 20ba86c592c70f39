// VMDK: the consistency check, as QEMU's vmdk_co_check (7.2).
#include <algorithm>
#include <shared_mutex>

#include "format/vmdk/vmdk.h"

namespace kvmfs::vmdk {
namespace {

// How often (in grains looked at) the progress callback hears of it.
constexpr uint64_t kProgressEvery = 4096;

}  // namespace

// QEMU walks the disk from sector 0 in steps of the current extent's grain
// (a flat extent is one step), looking each grain up as a read would. The
// first grain that starts at or past the end of its extent file ends the
// check with EINVAL ("points after EOF"), a lookup that fails (a grain
// directory too short for the disk, a table that cannot be read) with QEMU's
// VMDK_ERROR, -1, which qemu-img prints as EPERM's text. Either way
// qemu-img prints no counts, only "Check failed: <reason>", and exits 1.
// A grain table past the end of the file reads as zeros in QEMU: its grains
// are unallocated. Nothing else is looked at (no leaks, no counts).
Result<CheckResult> Engine::Check(const CheckOptions& options) {
  std::shared_lock<std::shared_mutex> lock(rw_);
  CheckResult res;
  auto fail = [&res](const char* reason) {
    res.corruptions = 1;
    res.failure = reason;
    return res;
  };
  std::vector<std::optional<uint64_t>> lengths(extents_.size());
  uint64_t steps = 0;
  for (uint64_t off = 0; off < size_;) {
    if (options.progress && steps++ % kProgressEvery == 0) options.progress(off, size_);
    const size_t index = FindExtent(off);
    Extent& e = *extents_[index];
    if (!lengths[index]) {
      Result<uint64_t> length = e.file->Size();
      if (!length.ok()) return fail("Input/output error");  // bdrv_getlength failed
      lengths[index] = *length;
    }
    const uint64_t length = *lengths[index];
    if (e.kind == Extent::Kind::kFlat) {
      if (e.flat_offset >= length) return fail("Invalid argument");
      off += e.bytes;
      continue;
    }
    const uint64_t rel = off - e.start;
    const uint64_t gd_index = rel / e.gt_span;
    if (gd_index >= e.gd.size()) return fail("Operation not permitted");
    if (const uint32_t gt_sector = e.gd[gd_index]; gt_sector != 0 && uint64_t{gt_sector} * kSector < length) {
      Result<std::shared_ptr<GrainTable>> gt = LoadGt(e, gt_sector, gd_index, false);
      if (!gt.ok()) return fail("Operation not permitted");
      const uint32_t gte = (**gt)[(rel / e.grain_bytes) % e.gtes_per_gt];
      const bool zeroed = gte == kGteZeroed && e.zero_grain;
      if (gte != 0 && !zeroed && uint64_t{gte} * kSector >= length) return fail("Invalid argument");
    }
    off += e.grain_bytes;
  }
  if (options.progress) options.progress(size_, size_);
  return res;
}

}  // namespace kvmfs::vmdk
