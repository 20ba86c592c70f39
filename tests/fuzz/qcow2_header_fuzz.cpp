// The qcow2 header and its extensions from the fuzzer (cluster 0 and what
// follows): Probe, Peek and ReadHeader (every field validated against the
// file size and QEMU's limits, the extensions walked: backing format,
// feature table, bitmaps, crypto header, data file, unknown ones). A header
// that is accepted must keep its promises: fields in QEMU's ranges, names
// within their limits, tables inside the file.
//
// Seeds: the first cluster (or two) of qemu-img-made images of every shape
// (tools/fuzz.sh).
#include "qcow2_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  using namespace kvmfs::qcow2;
  fuzz::Quiet();
  const FormatDriver* driver = FindFormat("qcow2");
  (void)driver->Probe(data, std::min(size, kProbeBytes));
  (void)driver->Peek(data, std::min(size, kProbeBytes));
  auto file = std::shared_ptr<Backend>(
      NewMemBackend("fuzz.qcow2", std::vector<uint8_t>(data, data + size), false));
  Result<Header> h = ReadHeader(*file, size, "fuzz.qcow2");
  if (!h.ok()) return 0;
  if (h->cluster_bits < kMinClusterBits || h->cluster_bits > kMaxClusterBits)
    fuzz::Fail("cluster_bits " + std::to_string(h->cluster_bits) + " accepted");
  if (h->version != 2 && h->version != 3) fuzz::Fail("version accepted");
  if (h->refcount_order > kMaxRefcountOrder) fuzz::Fail("refcount_order accepted");
  if (h->backing_file.size() > kMaxBackingNameLen) fuzz::Fail("backing name too long accepted");
  if (h->header_length > h->cluster_size) fuzz::Fail("header_length past cluster 0 accepted");
  if (h->raw.l1_size > 0 && h->raw.l1_table_offset + uint64_t{h->raw.l1_size} * 8 > size)
    fuzz::Fail("L1 table past the end of the file accepted");
  if (h->raw.refcount_table_offset >= size) fuzz::Fail("refcount table past the end accepted");
  if (h->virtual_size % 512 != 0) fuzz::Fail("virtual size not in sectors");
  if (Geometry::For(h->cluster_bits, h->extended_l2()).SizeToL1(h->virtual_size) > h->raw.l1_size)
    fuzz::Fail("L1 table smaller than the virtual size needs accepted");
  // The raw header encodes to what it was decoded from.
  uint8_t enc[kHeaderSize];
  h->raw.Encode(enc);
  const HeaderRaw again = HeaderRaw::Decode(enc, kHeaderSize);
  if (std::memcmp(&again, &h->raw, sizeof again) != 0) fuzz::Fail("HeaderRaw encode/decode differ");
  return 0;
}
