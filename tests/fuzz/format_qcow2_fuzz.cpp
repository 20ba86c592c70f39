// A qcow2 file from the fuzzer, opened through the whole engine (header and
// extensions, snapshot table, L1/L2, compressed clusters) and read at ranges
// the input picks (Read, PlanRead, a block-status walk), plus its snapshot
// views. No backing file is followed. An external data file comes in the
// same input as a "\n@@file NAME\n" section (fuzz_util.h SplitFiles). The
// metadata cache has a small budget of its own, so eviction runs too.
#include "format/qcow2/options.h"
#include "format/qcow2/qcow2.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  auto files = std::make_shared<fuzz::Files>();
  std::vector<uint8_t> main = fuzz::SplitFiles(data, size, files.get());
  auto file = std::shared_ptr<Backend>(NewMemBackend("fuzz.qcow2", std::move(main), false));
  OpenContext ctx;
  ctx.name = "fuzz.qcow2";
  ctx.open_related = fuzz::RelatedFiles(files, false);
  Qcow2Options options;
  options.budget = std::make_shared<qcow2::CacheBudget>(1 << 20);
  options.decompressed_cache_bytes = 256 << 10;
  auto image = OpenQcow2(file, ctx, options);
  fuzz::Note(image.status());
  if (!image.ok()) return 0;
  Image& img = **image;
  (void)img.Info();
  fuzz::ReadSome(img, data, size);
  fuzz::WalkStatus(img, 256);
  ReadPlan plan;
  (void)img.PlanRead(0, static_cast<size_t>(std::min<uint64_t>(img.size(), 1 << 18)), plan);
  int views = 0;
  for (const SnapshotInfo& s : img.Snapshots()) {
    if (++views > 8) break;  // a table may hold 65536
    auto snap = img.OpenSnapshot(s.id);
    if (!snap.ok()) continue;
    fuzz::ReadSome(**snap, data, size);
    fuzz::WalkStatus(**snap, 64);
  }
  return 0;
}
