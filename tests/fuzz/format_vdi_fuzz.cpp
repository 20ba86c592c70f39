// A VDI file from the fuzzer, opened through the driver (header, block map)
// and read at ranges the input picks; then written through a writable copy
// (in-place writes, block allocation, block-map and header updates).
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  std::vector<uint8_t> bytes(data, data + size);
  auto file = std::shared_ptr<Backend>(NewMemBackend("fuzz.vdi", bytes, false));
  OpenContext ctx;
  ctx.name = "fuzz.vdi";
  auto image = FindFormat("vdi")->Open(file, ctx);
  fuzz::Note(image.status());
  if (!image.ok()) return 0;
  (void)(*image)->Info();
  fuzz::ReadSome(**image, data, size);

  // The write path over the same bytes, on a writable copy (refused when
  // the block map is inconsistent).
  ctx.writable = true;
  auto rw = FindFormat("vdi")->Open(std::shared_ptr<Backend>(NewMemBackend("fuzz.vdi", bytes, true)), ctx);
  if (!rw.ok() || !(*rw)->BeginWrites().ok()) return 0;
  const uint64_t vsize = (*rw)->size();
  if (vsize == 0) return 0;
  std::vector<uint8_t> buf(5000, 0xa5);
  for (size_t i = 0; i + 8 <= std::min<size_t>(size, 48); i += 8) {
    uint64_t v = 0;
    for (int k = 0; k < 8; ++k) v = v << 8 | data[i + k];
    const uint64_t off = v % vsize;
    const size_t len = static_cast<size_t>(std::min<uint64_t>(1 + (v >> 48) % buf.size(), vsize - off));
    if (v & 1) (void)(*rw)->WriteZeroes(off, len, v & 2);
    else (void)(*rw)->Write(off, buf.data(), len);
  }
  (void)(*rw)->EndWrites();
  fuzz::ReadSome(**rw, data, size);
  return 0;
}
