// The qcow2 write path from the fuzzer, with the in-memory backend: an image
// (and its external data file, as a "\n@@file NAME\n" section), then
// "\n@@ops\n" and a bounded sequence of operations decoded from the bytes
// after it: writes, zeroing (ZERO_RANGE and PUNCH_HOLE), flushes, growing
// and shrinking, snapshot create and delete, end/begin of the write
// session, snapshot view reads; with compressed writes (the pool's
// compress:) or without. A model of the guest disk (small disks)
// checks every acknowledged operation; at the end the session is closed
// and the file must open again and read as the model (qcow2_util.h
// WriteSession). What the first write-path run found (metadata over
// metadata, loops on cluster 0, attacker-sized scans) is in
// tests/unit/format/qcow2/hostile_write_test.cpp; this target keeps it so.
//
// Seeds: qemu-img-made images of every shape (v2/v3, cluster sizes,
// extended L2, compressed, snapshots, data file, lazy refcounts left
// dirty) with an op section appended (tools/fuzz_seeds.py).
#include "qcow2_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  fuzz::Files files;
  std::vector<uint8_t> ops;
  std::vector<uint8_t> main = fuzz::SplitOps(data, size, &files, &ops);
  fuzz::WriteSession s(std::move(main), std::move(files));
  // The top bit of the first op byte (which the provider reads last, if at
  // all) turns compressed writes on: the written patterns compress.
  if (!s.Open(!ops.empty() && (ops[0] & 0x80) != 0)) return 0;
  FuzzedDataProvider in(ops.data(), ops.size());
  constexpr int kMaxOps = 24;
  for (int i = 0; i < kMaxOps && in.remaining_bytes() > 0; ++i) {
    const uint64_t vsize = s.image().size();
    const uint8_t op = in.ConsumeIntegralInRange<uint8_t>(0, 11);
    const uint64_t a = in.ConsumeIntegral<uint64_t>();
    const uint32_t b = in.ConsumeIntegral<uint32_t>();
    const uint64_t off = vsize ? a % vsize : 0;
    // Up to 256 KiB: several clusters of every size, a whole L2 range of small ones.
    const uint64_t len = vsize ? std::min<uint64_t>(1 + b % (256 << 10), vsize - off) : 0;
    switch (op) {
      case 0: case 1: case 2:
        if (len) s.Write(off, len, static_cast<uint8_t>(b >> 24 | 1));
        break;
      case 3:
        if (len) s.Zero(off, len, false);
        break;
      case 4:
        if (len) s.Zero(off, len, true);
        break;
      case 5:
        s.Flush();
        break;
      case 6:  // grow (or shrink, refused) by up to 8 MiB, in sectors
        s.Resize(b & 1 ? vsize + (a % (8 << 20) & ~uint64_t{511})
                       : vsize - std::min<uint64_t>(vsize, a % (1 << 20) & ~uint64_t{511}));
        break;
      case 7:
        s.Snapshot("fuzz" + std::to_string(b % 100));
        break;
      case 8:
        s.DeleteSnapshot(b);
        break;
      case 9:
        s.Cycle();
        break;
      case 10:
        s.CheckSnapshots("during the session");
        break;
      case 11:
        s.Check("during the session");
        break;
    }
  }
  s.Check("at the end of the session");
  s.CheckSnapshots("at the end of the session");
  s.CloseAndReopen();
  return 0;
}
