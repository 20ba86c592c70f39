// The qcow2 refcount walk from the fuzzer: an image opened for writing with
// the in-memory backend. BeginWrites loads the refcount table and checks
// the active tables (tables reached twice, COPIED flags against refcounts);
// when the input's last byte is odd the image is first marked dirty with
// lazy refcounts, so the refcounts are rebuilt from the tables as QEMU does
// on a read-write open (check.cpp). Then clusters are allocated (writes at
// offsets the input picks, a discard, a grow that needs a bigger L1 and
// refcount table), the session is closed, and the file must open again and
// read what was written (qcow2_util.h WriteSession).
//
// Seeds: qemu-img-made images, some with their refcount table or blocks
// damaged the way hostile_write_test.cpp does (tools/fuzz_seeds.py).
#include "qcow2_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  if (size < qcow2::kHeaderSize) return 0;
  std::vector<uint8_t> bytes(data, data + size);
  if ((data[size - 1] & 1) && LoadBE32(&bytes[4]) == 3) {
    bytes[79] |= qcow2::kIncompatDirty;
    bytes[87] |= qcow2::kCompatLazyRefcounts;
  }
  fuzz::WriteSession s(std::move(bytes), {});
  if (!s.Open()) return 0;
  const uint64_t vsize = s.image().size();
  if (vsize == 0) return 0;
  for (size_t i = 0; i < 3; ++i) {
    const uint64_t w = fuzz::Word(data + 8 * i);
    const uint64_t off = w % vsize;
    s.Write(off, static_cast<size_t>(std::min<uint64_t>(4096, vsize - off)), static_cast<uint8_t>(0x11 * (i + 1)));
  }
  const uint64_t w = fuzz::Word(data + 24);
  s.Zero(w % vsize, std::min<uint64_t>(65536, vsize - w % vsize), true);
  s.Resize(vsize + (64ull << 20));
  s.Write(vsize + (32ull << 20), 512, 0x77);
  s.CloseAndReopen();
  return 0;
}
