// A VHDX file from the fuzzer, opened through the vhdx driver (headers,
// region table, metadata, parent locator, BAT, the log search) read-only,
// then for writing (a pending log is then replayed into a read overlay, as
// before the first writer), and read at ranges the input picks. Nothing is
// written: a hostile log may extend a file by terabytes of (sparse) zeros,
// which the in-memory backend would really allocate.
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  for (bool writable : {false, true}) {
    auto file = std::shared_ptr<Backend>(
        NewMemBackend("fuzz.vhdx", std::vector<uint8_t>(data, data + size), writable));
    OpenContext ctx;
    ctx.name = "fuzz.vhdx";
    ctx.writable = writable;
    auto image = FindFormat("vhdx")->Open(file, ctx);
    if (!image.ok()) continue;
    (void)(*image)->Info();
    fuzz::ReadSome(**image, data, size);
  }
  return 0;
}
