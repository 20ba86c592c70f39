// A VHD file from the fuzzer, opened through the vpc driver (footer at 0 or
// at the end, checksum, CHS/current size, dynamic header, BAT) and read at
// ranges the input picks; then written through a writable copy.
//
// Seeds (made at run time, never committed), e.g.:
//   qemu-img create -f vpc s/empty.vhd 1M
//   qemu-img create -f vpc s/w.vhd 1M && qemu-io -f vpc -c 'write -P 0x33 4096 8192' s/w.vhd
//   qemu-img create -f vpc -o subformat=fixed s/fixed.vhd 64K
//   qemu-img create -f vpc -o force_size=on s/force.vhd 100K
//   fuzz_format_vpc -max_total_time=60 -max_len=2200000 corpus s
//
// Checksum: the footer's (a byte sum) is checked first, so a mutation of any
// footer field ends there. When bit 0 of the footer's creator application
// (byte 28; QEMU's "qemu" has it set) is set, the checksum of the footer at
// 0 (or, without one, of the one at the end) is made right before the open.
#include "format/vpc/vpc.h"
#include "fuzz_util.h"

namespace {

void FixFooter(std::vector<uint8_t>& f) {
  using namespace kvmfs::vpc;
  if (f.size() < kFooterSize) return;
  size_t at = 0;
  if (std::memcmp(f.data(), "conectix", 8) != 0) at = ((f.size() + 511) & ~size_t{511}) - kFooterSize;
  if (at + kFooterSize > f.size() || !(f[at + 28] & 1)) return;
  const uint32_t sum = Checksum(&f[at], kFooterSize, Footer::kOffChecksum);
  for (int i = 0; i < 4; ++i) f[at + Footer::kOffChecksum + i] = static_cast<uint8_t>(sum >> (24 - 8 * i));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  std::vector<uint8_t> bytes(data, data + size);
  FixFooter(bytes);
  const std::vector<uint8_t> file_bytes = bytes;
  auto file = std::shared_ptr<Backend>(NewMemBackend("fuzz.vhd", std::move(bytes), false));
  OpenContext ctx;
  ctx.name = "fuzz.vhd";
  auto image = FindFormat("vpc")->Open(file, ctx);
  fuzz::Note(image.status());
  if (!image.ok()) return 0;
  (void)(*image)->Info();
  fuzz::ReadSome(**image, data, size);
  ReadPlan plan;
  (void)(*image)->PlanRead(0, std::min<uint64_t>((*image)->size(), 1 << 16), plan);
  fuzz::WalkStatus(**image, 64);

  // The write path over the same bytes, on a writable copy (block
  // allocation at the end of the file, bitmap and BAT updates, the footer
  // copies): a few writes and zeroings at offsets the input picks.
  ctx.writable = true;
  auto rw_file = std::shared_ptr<Backend>(NewMemBackend("fuzz.vhd", file_bytes, true));
  auto rw = FindFormat("vpc")->Open(rw_file, ctx);
  if (!rw.ok() || !(*rw)->BeginWrites().ok()) return 0;
  const uint64_t vsize = (*rw)->size();
  if (vsize == 0) return 0;
  std::vector<uint8_t> buf(5000, 0xa5);
  for (size_t i = 0; i + 8 <= std::min<size_t>(size, 48); i += 8) {
    const uint64_t v = fuzz::Word(data + i);
    const uint64_t off = v % vsize;
    const size_t len = static_cast<size_t>(std::min<uint64_t>(1 + (v >> 48) % buf.size(), vsize - off));
    Status st = (v & 1) ? (*rw)->WriteZeroes(off, len, v & 2) : (*rw)->Write(off, buf.data(), len);
    if (st.ok() && !(v & 1)) {
      std::vector<uint8_t> back(len);
      if ((*rw)->Read(off, back.data(), len).ok() && std::memcmp(back.data(), buf.data(), len) != 0)
        fuzz::Fail("acknowledged VHD write does not read back");
    }
  }
  (void)(*rw)->EndWrites();
  fuzz::ReadSome(**rw, data, size);
  return 0;
}
