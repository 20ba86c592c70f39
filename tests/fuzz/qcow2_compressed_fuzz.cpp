// qcow2 compressed-cluster descriptors from the fuzzer: a whole image
// (mostly compressed clusters, zlib or zstd, as `qemu-img convert -c` makes
// them), read twice by two engines with caches of their own:
//  - through the Image (Read: runs of compressed clusters fetched by
//    coalesced reads and decompressed in a batch, ReadCompressedRun), and
//  - by a reference reader here: Map() cluster by cluster, ReadCompressed()
//    one descriptor at a time, ReadData() for normal clusters.
// Where both succeed they must return the same bytes. Then the last 16
// bytes of the input are used as two raw descriptors against the same file
// (offset and sector count fields as the fuzzer likes them).
//
// Seeds: compressed images of several cluster sizes, zlib and zstd, and a
// few partly compressed ones (tools/fuzz.sh).
#include "qcow2_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  using namespace kvmfs::qcow2;
  fuzz::Quiet();
  auto file = std::shared_ptr<Backend>(
      NewMemBackend("fuzz.qcow2", std::vector<uint8_t>(data, data + size), false));
  auto engine = fuzz::OpenEngine(file, "fuzz.qcow2");
  fuzz::Note(engine.status());
  if (!engine.ok()) return 0;
  Engine& e = **engine;
  const uint64_t cs = e.geo().cluster_size;
  const uint64_t span = std::min<uint64_t>(e.virtual_size(), 1 << 20);

  // The reference read.
  std::vector<uint8_t> ref(span, 0);
  bool ref_ok = true;
  int compressed = 0;
  {
    std::shared_lock<std::shared_mutex> lock(e.mutex());
    const L1Table& l1 = e.active_l1();
    for (uint64_t off = 0; off < span && ref_ok;) {
      Result<Extent> r = e.Map(l1, off, std::min(span - off, cs - (off & (cs - 1))), MapMode::kRead);
      if (!r.ok()) {
        ref_ok = false;
        break;
      }
      const size_t n = static_cast<size_t>(r->length);
      if (r->type == Extent::Type::kData) ref_ok = e.ReadData(off, r->host, &ref[off], n).ok();
      if (r->type == Extent::Type::kCompressed) {
        ++compressed;
        ref_ok = e.ReadCompressed(r->l2_entry, off & (cs - 1), &ref[off], n, off).ok();
      }
      off += n;
    }
  }

  // The same through the Image (batched compressed runs).
  OpenContext ctx;
  ctx.name = "fuzz.qcow2";
  auto image = OpenQcow2(file, ctx, fuzz::SmallCacheOptions());
  if (!image.ok()) fuzz::Fail("OpenQcow2 refused what OpenEngine took: " + image.status().ToString());
  std::vector<uint8_t> got(span, 0);
  const Status got_st = (*image)->Read(0, got.data(), got.size());
  const bool got_ok = got_st.ok();
  if (ref_ok && got_ok && ref != got) {
    size_t at = 0;
    while (ref[at] == got[at]) ++at;
    fuzz::Fail("batched compressed read differs from the reference at " + std::to_string(at) +
               " (" + std::to_string(compressed) + " compressed clusters)");
  }
  // Both visit the same entries of the same tables within `span`.
  if (ref_ok && !got_ok) fuzz::Fail("the Image refused a range the reference read: " + got_st.ToString());

  // Raw descriptors from the input's tail.
  if (size >= 16) {
    std::vector<uint8_t> buf(cs);
    std::shared_lock<std::shared_mutex> lock(e.mutex());
    for (int k = 0; k < 2; ++k) {
      const uint64_t entry = fuzz::Word(data + size - 16 + 8 * k) & kL2CompressedMask;
      const uint64_t at = entry & (cs - 1) & ~uint64_t{511};
      (void)e.ReadCompressed(entry, at, buf.data(), static_cast<size_t>(cs - at), 0);
    }
  }
  return 0;
}
