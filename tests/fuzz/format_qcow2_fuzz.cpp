// A qcow2 file from the fuzzer, opened through the whole engine (header and
// extensions, snapshot table, L1/L2, compressed clusters) and read at ranges
// the input picks, plus its snapshot views. No backing file is followed.
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  auto file = std::shared_ptr<Backend>(
      NewMemBackend("fuzz.qcow2", std::vector<uint8_t>(data, data + size), false));
  OpenContext ctx;
  ctx.name = "fuzz.qcow2";
  auto image = FindFormat("qcow2")->Open(file, ctx);
  if (!image.ok()) return 0;
  (void)(*image)->Info();
  fuzz::ReadSome(**image, data, size);
  for (const SnapshotInfo& s : (*image)->Snapshots()) {
    auto snap = (*image)->OpenSnapshot(s.id);
    if (snap.ok()) fuzz::ReadSome(**snap, data, size);
  }
  return 0;
}
