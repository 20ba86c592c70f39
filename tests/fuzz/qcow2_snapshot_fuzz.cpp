// The qcow2 snapshot table from the fuzzer, under a header made from a few
// bytes (qcow2_util.h Shape): bytes 0-4 the shape, bytes 5-8 nb_snapshots
// (big-endian, modulo 65537), the rest the table itself (at offset 0 of its
// own file). ReadSnapshotTable applies QEMU's bounds (extra data, id and
// name sizes, the 64 MiB table limit); an accepted table must encode back
// (EncodeSnapshotTable, as a snapshot create/delete writes it) to a table
// that reads the same.
//
// Seeds: the tables of qemu-img-made images with snapshots, v2 and v3, made
// by `qemu-img snapshot -c` (tools/fuzz.sh).
#include "qcow2_util.h"

namespace {

bool Same(const kvmfs::qcow2::Snapshot& a, const kvmfs::qcow2::Snapshot& b) {
  const kvmfs::SnapshotInfo &x = a.info, &y = b.info;
  return a.l1_table_offset == b.l1_table_offset && a.l1_size == b.l1_size &&
         a.extra_data == b.extra_data && x.id == y.id && x.name == y.name &&
         x.vm_state_size == y.vm_state_size && x.date_sec == y.date_sec &&
         x.date_nsec == y.date_nsec && x.vm_clock_nsec == y.vm_clock_nsec &&
         x.icount == y.icount && x.has_icount == y.has_icount && x.disk_size == y.disk_size;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  using namespace kvmfs::qcow2;
  fuzz::Quiet();
  constexpr size_t kPrefix = fuzz::Shape::kShapeBytes + 4;
  if (size < kPrefix) return 0;
  const fuzz::Shape shape = fuzz::Shape::Decode(data);
  const uint32_t count = LoadBE32(data + fuzz::Shape::kShapeBytes) % (kMaxSnapshots + 1);
  std::vector<uint8_t> table(data + kPrefix, data + size);
  // The header as ReadHeader would have made it (only what the table reader uses).
  std::vector<uint8_t> c0 = shape.Header(0, 0, count, 0);
  Header h;
  h.raw = HeaderRaw::Decode(c0.data(), kHeaderSize);
  h.version = shape.version;
  h.cluster_bits = shape.cluster_bits;
  h.cluster_size = uint64_t{1} << shape.cluster_bits;
  h.virtual_size = shape.virtual_size;
  auto file = std::shared_ptr<Backend>(NewMemBackend("fuzz.qcow2", table, false));
  Result<std::vector<Snapshot>> snaps = ReadSnapshotTable(*file, table.size(), h, "fuzz.qcow2");
  if (!snaps.ok()) return 0;
  if (snaps->size() != count) fuzz::Fail("snapshot count differs from nb_snapshots");
  std::vector<uint8_t> enc = EncodeSnapshotTable(*snaps);
  auto file2 = std::shared_ptr<Backend>(NewMemBackend("fuzz2.qcow2", enc, false));
  Result<std::vector<Snapshot>> again = ReadSnapshotTable(*file2, enc.size(), h, "fuzz2.qcow2");
  if (!again.ok()) fuzz::Fail("re-encoded snapshot table refused: " + again.status().ToString());
  if (again->size() != snaps->size()) fuzz::Fail("re-encoded table has another count");
  for (size_t i = 0; i < snaps->size(); ++i)
    if (!Same((*snaps)[i], (*again)[i]))
      fuzz::Fail("re-encoded snapshot table entry " + std::to_string(i) + " differs");
  return 0;
}
