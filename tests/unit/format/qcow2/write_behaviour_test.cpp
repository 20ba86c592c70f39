// qcow2 write engine behaviour: snapshots as `qemu-img snapshot`, dirty
// (lazy refcounts) repair, the corrupt bit, overlap detection, resize and
// refcount table growth, concurrent writers and readers, and the I/O the
// hot paths do.
#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

#include "write_helpers.h"

namespace kvmfs::test {
namespace {

using Code = Status::Code;

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 13 + (i >> 10));
  return v;
}

#define ASSERT_OK(expr)                                  \
  do {                                                   \
    ::kvmfs::Status _s = (expr);                         \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s.ToString(); \
  } while (0)

using Qcow2SnapshotWrite = WriteTest;

TEST_F(Qcow2SnapshotWrite, CreateAndDeleteAsQemuImgSnapshot) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 16M");
  Sh("qemu-io -c 'write -P 0x21 0 2M' img.qcow2 >/dev/null");
  Sh("qemu-img snapshot -c q1 img.qcow2");
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  auto a = Pattern(1 << 20, 1);
  ASSERT_OK(img.Write(512 * 1024, a.data(), a.size()));
  auto one = img.CreateSnapshot("one");
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  EXPECT_EQ(one->id, "2");  // max numeric id + 1
  EXPECT_EQ(one->disk_size, 16u << 20);
  EXPECT_EQ(one->vm_state_size, 0u);
  const std::vector<uint8_t> content_one = ReadImage(img, 0, img.size());
  auto view = img.OpenSnapshot("2");
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  ASSERT_EQ(img.Snapshots().size(), 2u);

  // Writes into clusters shared with the snapshots copy them.
  auto b = Pattern(3 << 20, 7);
  ASSERT_OK(img.Write(100000, b.data(), b.size()));
  ASSERT_OK(img.WriteZeroes(4 << 20, 1 << 20, true));
  EXPECT_EQ(FirstDiff(ReadImage(**view, 0, (*view)->size()), content_one), -1);

  auto two = img.CreateSnapshot("two");
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->id, "3");
  const std::vector<uint8_t> content_two = ReadImage(img, 0, img.size());
  auto dup = img.CreateSnapshot("two");
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.status().ToErrno(), EEXIST) << dup.status().ToString();

  ASSERT_OK(img.DeleteSnapshot("2"));
  std::vector<uint8_t> buf(4096);
  Status st = (*view)->Read(0, buf.data(), buf.size());
  EXPECT_EQ(st.code(), Code::kNotFound) << st.ToString();
  EXPECT_EQ(img.DeleteSnapshot("2").code(), Code::kNotFound);
  auto list = img.Snapshots();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name, "q1");
  EXPECT_EQ(list[1].name, "two");
  ASSERT_OK(img.Write(0, a.data(), 65536));
  ASSERT_OK(img.EndWrites());
  const std::vector<uint8_t> active = ReadImage(img, 0, img.size());
  w->image.reset();

  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  const std::string listing = Sh("qemu-img snapshot -l img.qcow2");
  EXPECT_NE(listing.find("q1"), std::string::npos) << listing;
  EXPECT_NE(listing.find("two"), std::string::npos) << listing;
  EXPECT_EQ(listing.find("one"), std::string::npos) << listing;
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2", "two"), content_two), -1);
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2"), active), -1);
  // QEMU can delete what kvmfs created and the image stays clean.
  Sh("qemu-img snapshot -d two img.qcow2");
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
}

TEST_F(Qcow2SnapshotWrite, DeletingEverySnapshotFreesTheirClusters) {
  Sh("qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 8M");
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok());
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  for (int i = 0; i < 4; ++i) {
    auto p = Pattern(1 << 20, static_cast<uint8_t>(i));
    ASSERT_OK(img.Write(static_cast<uint64_t>(i) << 20, p.data(), p.size()));
    ASSERT_TRUE(img.CreateSnapshot("s" + std::to_string(i)).ok());
  }
  for (const SnapshotInfo& s : img.Snapshots()) ASSERT_OK(img.DeleteSnapshot(s.id));
  EXPECT_TRUE(img.Snapshots().empty());
  auto p = Pattern(4 << 20, 9);
  ASSERT_OK(img.Write(0, p.data(), p.size()));  // COPIED is back: in place
  ASSERT_OK(img.EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2"), [&] {
              auto v = p;
              v.resize(8 << 20, 0);
              return v;
            }()),
            -1);
}

TEST_F(Qcow2SnapshotWrite, RefcountOverflowIsRefusedCleanly) {
  Sh("qemu-img create -q -f qcow2 -o refcount_bits=1 img.qcow2 4M");
  Sh("qemu-io -c 'write -P 0x21 0 1M' img.qcow2 >/dev/null");
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok());
  ASSERT_OK(w->image->BeginWrites());
  auto r = w->image->CreateSnapshot("nope");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(w->image->Snapshots().empty());
  auto p = Pattern(4096, 3);
  ASSERT_OK(w->image->Write(0, p.data(), p.size()));
  ASSERT_OK(w->image->EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
}

using Qcow2Repair = WriteTest;

TEST_F(Qcow2Repair, DirtyLazyRefcountImageIsRepairedByBeginWrites) {
  Sh("qemu-img create -q -f qcow2 -o lazy_refcounts=on img.qcow2 16M");
  Sh("qemu-io -c 'write -P 0x42 0 1M' -c 'write -P 0x43 5M 100k' img.qcow2 >/dev/null");
  std::string out;
  RunCmd("cd " + dir_ + " && qemu-io -c 'write -P 0x44 8M 2M' -c 'sigraise 9' img.qcow2", &out);
  ASSERT_EQ(Check("img.qcow2", &out), 2) << out;  // refcounts are stale
  const std::vector<uint8_t> before = QemuRaw("img.qcow2");
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_TRUE(w->image->Info().dirty);
  ASSERT_OK(w->image->BeginWrites());
  EXPECT_FALSE(w->image->Info().dirty);
  auto p = Pattern(300000, 5);
  ASSERT_OK(w->image->Write(9 << 20, p.data(), p.size()));
  ASSERT_OK(w->image->EndWrites());
  w->image.reset();
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  auto expect = before;
  std::copy(p.begin(), p.end(), expect.begin() + (9 << 20));
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2"), expect), -1);
}

TEST_F(Qcow2Repair, CorruptBitImageIsServedReadOnly) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 4M");
  Sh("qemu-io -c 'write -P 0x42 0 1M' img.qcow2 >/dev/null");
  Sh("printf '\\002' | dd of=img.qcow2 bs=1 seek=79 conv=notrunc status=none");
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Image& img = *w->image;
  EXPECT_NE(img.ReadOnlyReason().find("corrupt"), std::string::npos) << img.ReadOnlyReason();
  Status st = img.BeginWrites();
  EXPECT_EQ(st.code(), Code::kReadOnly);
  EXPECT_NE(st.message().find("corrupt"), std::string::npos) << st.ToString();
  EXPECT_FALSE(img.writable());
  auto p = Pattern(512, 1);
  EXPECT_EQ(img.Write(0, p.data(), p.size()).code(), Code::kReadOnly);
  auto got = ReadImage(img, 0, 512);
  EXPECT_EQ(got[0], 0x42);
}

TEST_F(Qcow2Repair, WriteOverMetadataMarksTheImageCorrupt) {
  // 64 KiB clusters: header 0, refcount table 0x10000, refcount block
  // 0x20000, L1 0x30000, L2 0x40000, data 0x50000.
  Sh("qemu-img create -q -f qcow2 img.qcow2 4M");
  Sh("qemu-io -c 'write -P 0x42 0 64k' img.qcow2 >/dev/null");
  // L2 entry 0 -> the refcount block (COPIED set).
  Sh("printf '\\200\\000\\000\\000\\000\\002\\000\\000' | dd of=img.qcow2 bs=1 seek=$((0x40000)) "
     "conv=notrunc status=none");
  const std::vector<uint8_t> refblock_before = [&] {
    auto f = ReadHostFile(P("img.qcow2"));
    return std::vector<uint8_t>(f.begin() + 0x20000, f.begin() + 0x30000);
  }();
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok());
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  auto p = Pattern(4096, 1);
  Status st = img.Write(0, p.data(), p.size());
  EXPECT_EQ(st.code(), Code::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("img.qcow2"), std::string::npos) << st.ToString();
  EXPECT_FALSE(img.writable());
  EXPECT_FALSE(img.ReadOnlyReason().empty());
  EXPECT_EQ(img.Write(0, p.data(), p.size()).code(), Code::kReadOnly);
  w->image.reset();
  auto f = ReadHostFile(P("img.qcow2"));
  EXPECT_TRUE(std::equal(refblock_before.begin(), refblock_before.end(), f.begin() + 0x20000));
  EXPECT_EQ(f[79] & 2, 2);  // corrupt bit
  EXPECT_NE(Sh("qemu-img info img.qcow2").find("corrupt: true"), std::string::npos);
}

using Qcow2Resize = WriteTest;

TEST_F(Qcow2Resize, GrowShrinkAndL1Growth) {
  Sh("qemu-img create -q -f qcow2 -o cluster_size=512 img.qcow2 1M");
  Sh("qemu-io -c 'write -P 0x42 0 1M' img.qcow2 >/dev/null");
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok());
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  EXPECT_EQ(img.Resize(512 * 1024).code(), Code::kInvalidArgument);
  EXPECT_EQ(img.Resize((1 << 20) + 100).code(), Code::kInvalidArgument);
  ASSERT_OK(img.Resize(40 << 20));  // L1: 16 entries -> 640
  EXPECT_EQ(img.size(), 40u << 20);
  auto p = Pattern(1 << 20, 3);
  ASSERT_OK(img.Write((39 << 20), p.data(), p.size()));
  ASSERT_OK(img.EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  auto raw = QemuRaw("img.qcow2");
  ASSERT_EQ(raw.size(), 40u << 20);
  EXPECT_EQ(raw[0], 0x42);
  EXPECT_TRUE(std::all_of(raw.begin() + (1 << 20), raw.begin() + (39 << 20), [](uint8_t c) { return c == 0; }));
  EXPECT_TRUE(std::equal(p.begin(), p.end(), raw.begin() + (39 << 20)));
}

TEST_F(Qcow2Resize, GrowingHidesALargerBackingFile) {
  Sh("qemu-img create -q -f raw base.raw 8M");
  Sh("qemu-io -f raw -c 'write -P 0x66 0 8M' base.raw >/dev/null");
  Sh("qemu-img create -q -f qcow2 -b base.raw -F raw img.qcow2 3000k");
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok());
  ASSERT_OK(w->image->BeginWrites());
  ASSERT_OK(w->image->Resize(6 << 20));
  auto got = ReadImage(*w->image, 0, 6 << 20);
  EXPECT_EQ(got[3000 * 1024 - 1], 0x66);
  EXPECT_TRUE(std::all_of(got.begin() + 3000 * 1024, got.end(), [](uint8_t c) { return c == 0; }));
  ASSERT_OK(w->image->EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2"), got), -1);
}

TEST_F(Qcow2Resize, RefcountTableGrowsAndNewBlocksDescribeThemselves) {
  // 512-byte clusters with 64-bit refcounts: one block covers 64 clusters
  // (32 KiB), the first table (64 entries) 2 MiB of file.
  Sh("qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 img.qcow2 16M");
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok());
  ASSERT_OK(w->image->BeginWrites());
  auto p = Pattern(7 << 20, 11);
  for (uint64_t off = 0; off < p.size(); off += 256 * 1024)
    ASSERT_OK(w->image->Write(off, p.data() + off, 256 * 1024));
  ASSERT_OK(w->image->Flush());
  ASSERT_OK(w->image->WriteZeroes(1 << 20, 2 << 20, true));
  std::fill(p.begin() + (1 << 20), p.begin() + (3 << 20), 0);
  ASSERT_OK(w->image->EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  p.resize(16 << 20, 0);
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2"), p), -1);
}

using Qcow2WritePath = WriteTest;

TEST_F(Qcow2WritePath, SequentialWritesAreOneHostWriteAndOverwritesTouchNoMetadata) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 64M");
  auto faults = std::make_shared<FaultInjector>();
  auto w = OpenWritable("img.qcow2", faults);
  ASSERT_TRUE(w.ok());
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  auto p = Pattern(1 << 20, 1);
  uint64_t w0 = faults->writes();
  for (int i = 0; i < 16; ++i) ASSERT_OK(img.Write(uint64_t(i) << 20, p.data(), p.size()));
  // Allocating 1 MiB writes: one data write each; metadata waits for Flush.
  EXPECT_EQ(faults->writes() - w0, 16u);
  EXPECT_EQ(faults->flushes(), 0u);
  ASSERT_OK(img.Flush());
  std::string map = Sh("qemu-img map -U --output=json img.qcow2");
  EXPECT_NE(map.find("\"length\": 16777216"), std::string::npos) << map;  // one contiguous run
  std::mt19937_64 rng(1);
  w0 = faults->writes();
  const uint64_t f0 = faults->flushes();
  for (int i = 0; i < 200; ++i)
    ASSERT_OK(img.Write((rng() % 4096) * 4096, p.data(), 4096));
  EXPECT_EQ(faults->writes() - w0, 200u);  // guest data only
  EXPECT_EQ(faults->flushes(), f0);
  ASSERT_OK(img.EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
}

TEST_F(Qcow2WritePath, ConcurrentWritersAndReaders) {
  Sh("qemu-img create -q -f qcow2 -o cluster_size=16k img.qcow2 48M");
  Sh("qemu-io -c 'write -P 0x01 0 12M' -c 'write -P 0x02 32M 8M' img.qcow2 >/dev/null");
  std::vector<uint8_t> ref = QemuRaw("img.qcow2");
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok());
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  constexpr int kOwners = 4;
  constexpr uint64_t kRegion = 8 << 20;  // owner t: [t*8M, (t+1)*8M)
  constexpr uint64_t kShared = 32 << 20, kSharedLen = 8 << 20;
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  std::vector<std::vector<uint8_t>> models(kOwners);
  for (int t = 0; t < kOwners; ++t) {
    models[t].assign(ref.begin() + t * kRegion, ref.begin() + (t + 1) * kRegion);
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      std::vector<uint8_t> buf;
      for (int i = 0; i < 150 && !failed; ++i) {
        const uint64_t len = 1 + rng() % 70000;
        const uint64_t off = rng() % (kRegion - len);
        Status st;
        if (rng() % 5 == 0) {
          st = img.WriteZeroes(t * kRegion + off, len, rng() % 2);
          std::fill(models[t].begin() + off, models[t].begin() + off + len, 0);
        } else {
          buf.resize(len);
          const uint8_t s = static_cast<uint8_t>(rng());
          for (uint64_t k = 0; k < len; ++k) buf[k] = static_cast<uint8_t>(s + k);
          st = img.Write(t * kRegion + off, buf.data(), len);
          std::copy(buf.begin(), buf.end(), models[t].begin() + off);
        }
        if (!st.ok()) {
          ADD_FAILURE() << st.ToString();
          failed = true;
        }
      }
    });
  }
  // Overlapping writers: whole 4 KiB blocks of one byte value each.
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      std::vector<uint8_t> buf(4096, static_cast<uint8_t>(0xa0 + t));
      for (int i = 0; i < 300 && !failed; ++i) {
        Status st = img.Write(kShared + (rng() % (kSharedLen / 4096)) * 4096, buf.data(), 4096);
        if (!st.ok()) {
          ADD_FAILURE() << st.ToString();
          failed = true;
        }
      }
    });
  }
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(200 + t);
      std::vector<uint8_t> buf(200000);
      for (int i = 0; i < 200 && !failed; ++i) {
        const uint64_t len = 1 + rng() % buf.size();
        Status st = img.Read(rng() % (img.size() - len), buf.data(), len);
        if (!st.ok()) {
          ADD_FAILURE() << st.ToString();
          failed = true;
        }
        if (i % 50 == 0) (void)img.Flush();
        if (i % 20 == 0) (void)ChainBlockStatus(img, rng() % img.size(), 1 << 20);
      }
    });
  }
  // Snapshots taken and dropped while all of that runs.
  threads.emplace_back([&] {
    std::vector<uint8_t> buf(1 << 20);
    for (int i = 0; i < 3 && !failed; ++i) {
      auto info = img.CreateSnapshot("c" + std::to_string(i));
      if (!info.ok()) {
        ADD_FAILURE() << info.status().ToString();
        failed = true;
        return;
      }
      auto view = img.OpenSnapshot(info->id);
      Status st = view.ok() ? (*view)->Read(kShared, buf.data(), buf.size()) : view.status();
      if (st.ok()) st = img.DeleteSnapshot(info->id);
      if (!st.ok()) {
        ADD_FAILURE() << st.ToString();
        failed = true;
        return;
      }
      EXPECT_EQ((*view)->Read(0, buf.data(), 4096).code(), Code::kNotFound);
    }
  });
  for (auto& th : threads) th.join();
  ASSERT_FALSE(failed);
  for (int t = 0; t < kOwners; ++t)
    EXPECT_EQ(FirstDiff(ReadImage(img, t * kRegion, kRegion), models[t]), -1) << "owner " << t;
  auto shared = ReadImage(img, kShared, kSharedLen);
  for (uint64_t b = 0; b < kSharedLen; b += 4096) {
    const uint8_t v = shared[b];
    ASSERT_TRUE(v == 0xa0 || v == 0xa1 || v == 0x02) << b;
    ASSERT_TRUE(std::all_of(shared.begin() + b, shared.begin() + b + 4096, [v](uint8_t c) { return c == v; }));
  }
  ASSERT_OK(img.EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
}

}  // namespace
}  // namespace kvmfs::test
