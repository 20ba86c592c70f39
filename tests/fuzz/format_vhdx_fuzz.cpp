// A VHDX file from the fuzzer, opened through the vhdx driver (headers,
// region table, metadata, parent locator, BAT, the log search) read-only,
// then for writing (a pending log is then replayed into a read overlay, as
// before the first writer), and read at ranges the input picks. Nothing is
// written: a hostile log may extend a file by terabytes of (sparse) zeros,
// which the in-memory backend would really allocate.
//
// Seeds: qemu-img-made VHDX files (`qemu-img create -f vhdx s/e.vhdx 4M`; one
// with `-o block_size=1M` and 6G for the BAT interleave; one made dirty as
// tests/integration/test_format_vhd.py's make_dirty() does) with their
// trailing zeros cut off (reads past the end are zeros). Faster: the same
// with the BAT and metadata regions moved to 320 KiB and 384 KiB (region
// table CRC fixed), under 1.1 MB each.
//   fuzz_format_vhdx -max_total_time=60 -max_len=3300000 corpus s
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
    fuzz::Note(image.status());
    if (!image.ok()) continue;
    (void)(*image)->Info();
    fuzz::ReadSome(**image, data, size);
  }
  return 0;
}
