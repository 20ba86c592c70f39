// qcow2 L1/L2 mapping from the fuzzer, with the in-memory backend: a header
// made from the first bytes (qcow2_util.h Shape: cluster size 512 B .. 64
// KiB, extended L2, v2/v3, the virtual size), then the rest of the input is
// the file from cluster 1 on, where the L1 table starts (the L2 tables and
// the data are wherever its entries point). The engine's Map() is walked
// over the whole disk in both modes, and must keep its promises: every run
// non-empty and within what was asked, the read and status modes agreeing
// on the kind of each run's first byte; data and compressed clusters are
// read; then the same through the Image (Read, PlanRead, block status).
//
// Seeds: qemu-img-made images of each cluster size and L2 shape, rewritten
// to this layout by tools/fuzz_seeds.py (their L1 moved to cluster 1).
#include "qcow2_util.h"

namespace {

using kvmfs::qcow2::Extent;

// Read and status runs classify a byte alike.
int Kind(Extent::Type t) {
  switch (t) {
    case Extent::Type::kUnallocated: return 0;
    case Extent::Type::kZero: return 1;
    default: return 2;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  using namespace kvmfs::qcow2;
  fuzz::Quiet();
  if (size < fuzz::Shape::kShapeBytes) return 0;
  fuzz::Shape shape = fuzz::Shape::Decode(data);
  const Geometry geo = Geometry::For(shape.cluster_bits, shape.extended_l2);
  constexpr uint64_t kMaxL1 = 8192;
  shape.virtual_size = std::min(shape.virtual_size, kMaxL1 << geo.l1_shift());
  const uint32_t l1_size = static_cast<uint32_t>(geo.SizeToL1(shape.virtual_size));
  const uint64_t cs = geo.cluster_size;
  std::vector<uint8_t> bytes = shape.Header(l1_size, cs, 0, 0);
  bytes.insert(bytes.end(), data + fuzz::Shape::kShapeBytes, data + size);
  if (bytes.size() < 2 * cs + uint64_t{l1_size} * 8) bytes.resize(2 * cs + uint64_t{l1_size} * 8);
  auto file = std::shared_ptr<Backend>(NewMemBackend("fuzz.qcow2", bytes, false));

  auto engine = fuzz::OpenEngine(file, "fuzz.qcow2");
  fuzz::Note(engine.status());
  if (!engine.ok()) return 0;
  Engine& e = **engine;
  const uint64_t vsize = e.virtual_size();
  std::vector<uint8_t> buf(cs);
  std::shared_lock<std::shared_mutex> lock(e.mutex());
  const L1Table& l1 = e.active_l1();
  uint64_t off = 0;
  for (int step = 0; step < 512 && off < vsize; ++step) {
    Result<Extent> r = e.Map(l1, off, vsize - off, MapMode::kRead);
    if (!r.ok()) break;
    if (r->length == 0 || r->length > vsize - off)
      fuzz::Fail("Map(kRead) at " + std::to_string(off) + ": length " + std::to_string(r->length));
    if (r->type == Extent::Type::kCompressed && r->length > cs - (off & (cs - 1)))
      fuzz::Fail("Map(kRead): a compressed run longer than its cluster");
    Result<Extent> s = e.Map(l1, off, vsize - off, MapMode::kStatus);
    if (s.ok()) {
      if (s->length == 0 || s->length > vsize - off) fuzz::Fail("Map(kStatus): bad length");
      if (Kind(s->type) != Kind(r->type))
        fuzz::Fail("Map() at " + std::to_string(off) + ": read and status modes disagree");
    }
    const size_t n = static_cast<size_t>(std::min<uint64_t>(r->length, buf.size()));
    if (r->type == Extent::Type::kData) (void)e.ReadData(off, r->host, buf.data(), n);
    if (r->type == Extent::Type::kCompressed)
      (void)e.ReadCompressed(r->l2_entry, off & (cs - 1), buf.data(), n, off);
    off += r->length;
  }
  lock.unlock();

  // The same bytes through the whole engine, as the pool opens them.
  OpenContext ctx;
  ctx.name = "fuzz.qcow2";
  auto image = OpenQcow2(file, ctx, fuzz::SmallCacheOptions());
  if (!image.ok()) fuzz::Fail("OpenQcow2 refused what OpenEngine took: " + image.status().ToString());
  fuzz::ReadSome(**image, data, size);
  fuzz::WalkStatus(**image, 256);
  ReadPlan plan;
  (void)(*image)->PlanRead(0, static_cast<size_t>(std::min<uint64_t>(vsize, 1 << 18)), plan);
  return 0;
}
