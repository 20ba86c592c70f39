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
//
// Checksums: every structure that matters is CRC-32C protected, which a
// mutation breaks at once. When bit 0 of byte 8 (the creator string, which
// no parser reads; QEMU's "Q" has it set) is set, the checksums of both
// headers, both region tables and every log entry of the current header's
// log are made right before the open, so that mutations of their fields
// reach the code behind the checks; when clear, the file is taken as is.
#include "format/vhdx/vhdx.h"
#include "fuzz_util.h"

namespace {

constexpr size_t kKiB = 1024;

void FixCrc(std::vector<uint8_t>& f, size_t at, size_t len) {
  if (at + len > f.size()) return;
  const uint32_t crc = kvmfs::vhdx::ChecksumWithZeroField(&f[at], len, 4);
  for (int i = 0; i < 4; ++i) f[at + 4 + i] = static_cast<uint8_t>(crc >> (8 * i));
}

uint64_t Le(const std::vector<uint8_t>& f, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = v << 8 | f[at + i];
  return v;
}

void FixChecksums(std::vector<uint8_t>& f) {
  if (f.size() < 320 * kKiB) return;
  for (size_t h : {64 * kKiB, 128 * kKiB}) FixCrc(f, h, 4 * kKiB);
  for (size_t r : {192 * kKiB, 256 * kKiB}) FixCrc(f, r, 64 * kKiB);
  const size_t cur = Le(f, 128 * kKiB + 8, 8) > Le(f, 64 * kKiB + 8, 8) ? 128 * kKiB : 64 * kKiB;
  const uint64_t log_len = Le(f, cur + 72 - 4, 4), log_off = Le(f, cur + 72, 8);
  if (log_off >= f.size() || log_len > f.size() - log_off) return;
  for (uint64_t at = log_off; at + 64 <= log_off + log_len; at += 4 * kKiB) {
    if (std::memcmp(&f[at], "loge", 4) != 0) continue;
    const uint64_t len = Le(f, at + 8, 4);
    if (len >= 4 * kKiB && len % (4 * kKiB) == 0 && len <= log_off + log_len - at) FixCrc(f, at, len);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  std::vector<uint8_t> bytes(data, data + size);
  if (size > 8 && (data[8] & 1)) FixChecksums(bytes);
  for (bool writable : {false, true}) {
    auto file = std::shared_ptr<Backend>(NewMemBackend("fuzz.vhdx", bytes, writable));
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
