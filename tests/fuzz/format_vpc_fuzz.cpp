// A VHD file from the fuzzer, opened through the vpc driver (footer at 0 or
// at the end, checksum, CHS/current size, dynamic header, BAT) and read at
// ranges the input picks.
//
// Seeds (made at run time, never committed), e.g.:
//   qemu-img create -f vpc s/empty.vhd 1M
//   qemu-img create -f vpc s/w.vhd 1M && qemu-io -f vpc -c 'write -P 0x33 4096 8192' s/w.vhd
//   qemu-img create -f vpc -o subformat=fixed s/fixed.vhd 64K
//   qemu-img create -f vpc -o force_size=on s/force.vhd 100K
//   fuzz_format_vpc -max_total_time=60 -max_len=2200000 corpus s
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  auto file = std::shared_ptr<Backend>(
      NewMemBackend("fuzz.vhd", std::vector<uint8_t>(data, data + size), false));
  OpenContext ctx;
  ctx.name = "fuzz.vhd";
  auto image = FindFormat("vpc")->Open(file, ctx);
  fuzz::Note(image.status());
  if (!image.ok()) return 0;
  (void)(*image)->Info();
  fuzz::ReadSome(**image, data, size);
  ReadPlan plan;
  (void)(*image)->PlanRead(0, std::min<uint64_t>((*image)->size(), 1 << 16), plan);
  return 0;
}
