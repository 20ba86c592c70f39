// A standalone LUKS file from the fuzzer, opened by the luks driver with a
// key (unlocking only when the header's iteration counts are small enough
// for a fuzzer) and read at ranges the input picks.
#include "fuzz_util.h"
#include "kvmfs/cipher.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  auto header = DecodeLuksHeader(data, size, size, "fuzz.luks");
  bool cheap = false;
  if (header.ok()) {
    uint64_t work = header->mk_iterations;
    for (const LuksKeySlot& s : header->slots)
      if (s.active) work += s.iterations;
    cheap = work <= 2000;
  }
  auto file = std::shared_ptr<Backend>(
      NewMemBackend("fuzz.luks", std::vector<uint8_t>(data, data + size), false));
  OpenContext ctx;
  ctx.name = "fuzz.luks";
  if (cheap) {
    ctx.key = []() -> Result<std::shared_ptr<const Secret>> {
      KVMFS_ASSIGN_OR_RETURN(Secret s, Secret::Copy(reinterpret_cast<const uint8_t*>("fuzz"), 4));
      return std::shared_ptr<const Secret>(std::make_shared<Secret>(std::move(s)));
    };
  }
  auto image = FindFormat("luks")->Open(file, ctx);
  fuzz::Note(image.status());
  if (!image.ok()) return 0;
  (void)(*image)->Info();
  (void)(*image)->DataStatus();
  fuzz::ReadSome(**image, data, size);
  return 0;
}
