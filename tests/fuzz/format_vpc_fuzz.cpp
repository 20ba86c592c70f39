// A VHD file from the fuzzer, opened through the vpc driver (footer at 0 or
// at the end, checksum, CHS/current size, dynamic header, BAT) and read at
// ranges the input picks.
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  auto file = std::shared_ptr<Backend>(
      NewMemBackend("fuzz.vhd", std::vector<uint8_t>(data, data + size), false));
  OpenContext ctx;
  ctx.name = "fuzz.vhd";
  auto image = FindFormat("vpc")->Open(file, ctx);
  if (!image.ok()) return 0;
  (void)(*image)->Info();
  fuzz::ReadSome(**image, data, size);
  ReadPlan plan;
  (void)(*image)->PlanRead(0, std::min<uint64_t>((*image)->size(), 1 << 16), plan);
  return 0;
}
