// Parallel writes of the qcow2 engine: allocating writes to different
// clusters overlap in time, writes to one cluster wait for each other, and
// many writers, readers and snapshot create/delete together leave the bytes
// of a model and a clean `qemu-img check`. And flushes: an fsync or close()
// with nothing written since the last flush neither syncs nor takes the
// exclusive lock, while a second fsync still waits for one in progress.
#include <algorithm>
#include <cerrno>
#include <atomic>
#include <chrono>
#include <cstring>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "kvmfs/chain.h"
#include "wrap_backend.h"
#include "write_helpers.h"

namespace kvmfs::test {
namespace {

using namespace std::chrono_literals;

#define ASSERT_OK(expr)                                       \
  do {                                                        \
    ::kvmfs::Status _s = (expr);                              \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s.ToString();   \
  } while (0)

// 8 bytes no metadata write starts a 4 KiB block with.
constexpr char kMarker[8] = {'K', 'V', 'M', 'F', 'S', 'R', 'D', 'V'};

bool HasMarker(const void* buf, size_t len) {
  const auto* p = static_cast<const uint8_t*>(buf);
  for (size_t at = 0; at + sizeof kMarker <= len; at += 4096)
    if (std::memcmp(p + at, kMarker, sizeof kMarker) == 0) return true;
  return false;
}

// Holds every write carrying kMarker until `want` of them are inside at once
// or `patience` passed: how many were ever inside together shows whether
// the engine let them run in parallel.
class RendezvousBackend final : public WrapBackend {
 public:
  RendezvousBackend(std::shared_ptr<Backend> base, int want, std::chrono::milliseconds patience)
      : WrapBackend(std::move(base)), want_(want), patience_(patience) {}
  Status WriteAt(uint64_t off, const void* buf, size_t len) override {
    if (!HasMarker(buf, len)) return base_->WriteAt(off, buf, len);
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++inside_;
      ++entered_;
      max_inside_ = std::max(max_inside_, inside_);
      cv_.notify_all();
      cv_.wait_for(lock, patience_, [&] { return inside_ >= want_ || met_; });
      if (inside_ >= want_) met_ = true;
    }
    Status st = base_->WriteAt(off, buf, len);
    std::lock_guard<std::mutex> lock(mu_);
    --inside_;
    return st;
  }
  // Waits until `n` marked writes have entered (false after 10 s).
  bool WaitEntered(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return entered_ >= n; });
  }
  int max_inside() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_inside_;
  }

 private:
  const int want_;
  const std::chrono::milliseconds patience_;
  std::mutex mu_;
  std::condition_variable cv_;
  int inside_ = 0, entered_ = 0, max_inside_ = 0;
  bool met_ = false;
};

// Blocks writes and/or flushes while closed; counts flushes.
class GateBackend final : public WrapBackend {
 public:
  using WrapBackend::WrapBackend;
  Status WriteAt(uint64_t off, const void* buf, size_t len) override {
    Pass(gate_writes_);
    return base_->WriteAt(off, buf, len);
  }
  Status Flush() override {
    Pass(gate_flushes_);
    flushes_.fetch_add(1);
    return base_->Flush();
  }
  void Close(bool writes, bool flushes) {
    std::lock_guard<std::mutex> lock(mu_);
    gate_writes_ = writes;
    gate_flushes_ = flushes;
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_writes_ = gate_flushes_ = false;
    cv_.notify_all();
  }
  bool WaitBlocked() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return blocked_ > 0; });
  }
  uint64_t flushes() const { return flushes_.load(); }

 private:
  void Pass(bool& gate) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!gate) return;
    ++blocked_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !gate; });
    --blocked_;
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool gate_writes_ = false, gate_flushes_ = false;  // GUARDED_BY(mu_)
  int blocked_ = 0;                                  // GUARDED_BY(mu_)
  std::atomic<uint64_t> flushes_{0};
};

class Qcow2Parallel : public WriteTest {
 public:
  // OpenWritable() with the image file wrapped by `wrap`.
  Result<WritableImage> OpenWrapped(
      const std::string& name,
      const std::function<std::shared_ptr<Backend>(std::shared_ptr<Backend>)>& wrap,
      Qcow2Options options = {}) {
    KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> local, OpenLocalFile(P(name), true));
    WritableImage w;
    w.file = wrap(std::shared_ptr<Backend>(std::move(local)));
    OpenContext ctx;
    ctx.name = P(name);
    ctx.writable = true;
    KVMFS_ASSIGN_OR_RETURN(w.image, OpenQcow2(w.file, ctx, options));
    return w;
  }
};

// A 4 KiB block that starts with kMarker, the rest `fill`.
std::vector<uint8_t> MarkedBlock(uint8_t fill) {
  std::vector<uint8_t> b(4096, fill);
  std::memcpy(b.data(), kMarker, sizeof kMarker);
  return b;
}

TEST_F(Qcow2Parallel, IndependentAllocatingWritesOverlapInTime) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 8M");
  std::shared_ptr<RendezvousBackend> rv;
  auto w = OpenWrapped("img.qcow2", [&](std::shared_ptr<Backend> b) {
    rv = std::make_shared<RendezvousBackend>(b, 2, 10s);
    return rv;
  });
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  // Two 4 KiB writes into different empty 64 KiB clusters (allocation with
  // copy-on-write of the rest of the cluster). Under one exclusive lock the
  // second could not start its data write before the first finished.
  const auto a = MarkedBlock(0xa1), b = MarkedBlock(0xb2);
  std::thread first([&] { EXPECT_TRUE(img.Write(1 << 20, a.data(), a.size()).ok()); });
  ASSERT_TRUE(rv->WaitEntered(1));
  std::thread second([&] { EXPECT_TRUE(img.Write(5 << 20, b.data(), b.size()).ok()); });
  first.join();
  second.join();
  EXPECT_EQ(rv->max_inside(), 2);
  EXPECT_EQ(ReadImage(img, 1 << 20, 4096), a);
  EXPECT_EQ(ReadImage(img, 5 << 20, 4096), b);
  ASSERT_OK(img.EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  std::vector<uint8_t> want(8 << 20, 0);
  std::copy(a.begin(), a.end(), want.begin() + (1 << 20));
  std::copy(b.begin(), b.end(), want.begin() + (5 << 20));
  WriteHostFile(P("want.raw"), want);
  Sh("qemu-img compare -q -f raw -F qcow2 want.raw img.qcow2");
}

TEST_F(Qcow2Parallel, WritesToOneClusterWaitForTheAllocationInFlight) {
  // Two 4 KiB blocks of one empty cluster: run together, each would copy
  // the other's block from before and one write would be lost.
  Sh("qemu-img create -q -f qcow2 img.qcow2 8M");
  std::shared_ptr<RendezvousBackend> rv;
  auto w = OpenWrapped("img.qcow2", [&](std::shared_ptr<Backend> b) {
    rv = std::make_shared<RendezvousBackend>(b, 2, 300ms);
    return rv;
  });
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  const auto a = MarkedBlock(0xa1), b = MarkedBlock(0xb2);
  std::thread first([&] { EXPECT_TRUE(img.Write(1 << 20, a.data(), a.size()).ok()); });
  ASSERT_TRUE(rv->WaitEntered(1));
  std::thread second([&] { EXPECT_TRUE(img.Write((1 << 20) + 8192, b.data(), b.size()).ok()); });
  first.join();
  second.join();
  EXPECT_EQ(rv->max_inside(), 1);
  auto got = ReadImage(img, 1 << 20, 3 * 4096);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), got.begin()));
  EXPECT_TRUE(std::all_of(got.begin() + 4096, got.begin() + 8192, [](uint8_t c) { return c == 0; }));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), got.begin() + 8192));
  ASSERT_OK(img.EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
}

// A backing layer of 0x33 bytes whose reads of [64 KiB, 128 KiB) fail.
class FailingBacking final : public Image {
 public:
  uint64_t size() const override { return 1 << 20; }
  Status Read(uint64_t off, void* buf, size_t len) override {
    if (off < (128 << 10) && off + len > (64 << 10)) return Status::FromErrno(EIO, "backing: bad sector");
    std::memset(buf, 0x33, len);
    return Status::OK();
  }
  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    (void)off;
    return BlockStatus{Allocation::kData, len};
  }
  ImageInfo Info() const override { return {}; }
  Result<uint64_t> ActualSize() override { return uint64_t{0}; }
};

TEST_F(Qcow2Parallel, CopyOnWriteReadErrorFailsTheWrite) {
  // 8 KiB over two clusters: the first one's copy-on-write reads fine, the
  // second one's fails. The write fails (not only its second half), with
  // the backing's error: an I/O error of the layer below, not corruption.
  Sh("qemu-img create -q -f qcow2 img.qcow2 1M");
  auto w = OpenWritable("img.qcow2");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Image& img = *w->image;
  img.SetBacking(std::make_shared<FailingBacking>());
  ASSERT_OK(img.BeginWrites());
  std::vector<uint8_t> buf(8192, 0x77);
  Status st = img.Write(60 << 10, buf.data(), buf.size());
  EXPECT_EQ(st.code(), Status::Code::kIOError) << st.ToString();
  EXPECT_TRUE(img.writable()) << img.ReadOnlyReason();
  // What was not written reads as before; the image stays writable.
  auto tail = ReadImage(img, 256 << 10, 4096);
  EXPECT_TRUE(std::all_of(tail.begin(), tail.end(), [](uint8_t c) { return c == 0x33; }));
  ASSERT_OK(img.Write(256 << 10, buf.data(), 4096));
  ASSERT_OK(img.EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
}

// ---- Many writers, readers and snapshots against a model -------------------------

// Nonzero bytes for 4 KiB block contents (the backing has no zero byte
// either: a zero read anywhere is a lost copy-on-write or a cluster linked
// before its data was written).
void Fill(uint8_t* p, size_t n, uint32_t tag) {
  for (size_t j = 0; j < n; ++j) p[j] = static_cast<uint8_t>(1 + (tag * 31 + j * 7 + (j >> 9)) % 251);
}

constexpr uint64_t kSize = 32 << 20;
constexpr int kWriters = 4;
constexpr uint64_t kOwnLen = 4 << 20;                             // [t*4M, (t+1)*4M): writer t
constexpr uint64_t kMixed = 16 << 20, kMixedLen = 8 << 20;        // block b: writer b % 4
constexpr uint64_t kContended = 24 << 20, kContendedLen = 4 << 20;  // anyone, any block
constexpr uint64_t kStable = 28 << 20;                            // nobody writes

struct Shape {
  const char* name;
  const char* opts;
};
void PrintTo(const Shape& s, std::ostream* os) { *os << s.name; }

class Qcow2ParallelModel : public Qcow2Parallel, public ::testing::WithParamInterface<Shape> {};

TEST_P(Qcow2ParallelModel, WritersReadersAndSnapshotsMatchTheModel) {
  std::vector<uint8_t> base(kSize);
  for (uint64_t i = 0; i < kSize; ++i) base[i] = static_cast<uint8_t>(0x10 + (i >> 20) + (i >> 9) % 3);
  WriteHostFile(P("base.raw"), base);
  Sh("qemu-img convert -f raw -O qcow2 base.raw base.qcow2");
  Sh(std::string("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ") + GetParam().opts +
     " top.qcow2 32M");
  auto w = OpenWritable("top.qcow2");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());

  std::vector<uint8_t> model = base;  // own and mixed regions: each byte has one writer
  std::vector<std::vector<std::pair<uint64_t, uint32_t>>> contended(kWriters);  // block, tag
  std::atomic<bool> failed{false}, writers_done{false};
  auto fail = [&](const std::string& what) {
    ADD_FAILURE() << what;
    failed = true;
  };
  const int ops = 500 / kRoundsDivisor;
  std::vector<std::thread> threads;
  for (int t = 0; t < kWriters; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t + 1);
      std::vector<uint8_t> buf;
      for (int i = 0; i < ops && !failed; ++i) {
        const uint32_t tag = static_cast<uint32_t>(t) << 16 | static_cast<uint32_t>(i);
        const int kind = static_cast<int>(rng() % 4);
        uint64_t off, len;
        if (kind == 0) {  // any length at any offset of the own region
          len = 1 + rng() % 12288;
          off = t * kOwnLen + rng() % (kOwnLen - len);
        } else if (kind == 1) {  // a 4 KiB block of the own region
          len = 4096;
          off = t * kOwnLen + (rng() % (kOwnLen / 4096)) * 4096;
        } else if (kind == 2) {  // one of the writer's blocks among everyone's
          len = 4096;
          off = kMixed + ((rng() % (kMixedLen / 4096 / kWriters)) * kWriters + t) * 4096;
        } else {
          len = 4096;
          off = kContended + (rng() % (kContendedLen / 4096)) * 4096;
        }
        buf.resize(len);
        Fill(buf.data(), len, tag);
        Status st = img.Write(off, buf.data(), len);
        if (!st.ok()) return fail(st.ToString());
        if (kind == 3)
          contended[t].push_back({(off - kContended) / 4096, tag});
        else
          std::copy(buf.begin(), buf.end(), model.begin() + off);
      }
    });
  }
  const std::vector<uint8_t> stable(base.begin() + kStable, base.end());
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      std::mt19937_64 rng(100 + r);
      std::vector<uint8_t> buf(64 << 10);
      for (int i = 0; !writers_done && !failed; ++i) {
        const uint64_t len = 1 + rng() % buf.size();
        const uint64_t off = rng() % (kSize - len);
        Status st = img.Read(off, buf.data(), len);
        if (!st.ok()) return fail(st.ToString());
        if (std::find(buf.begin(), buf.begin() + len, 0) != buf.begin() + len)
          return fail("a zero byte read in [" + std::to_string(off) + ", +" + std::to_string(len) + ")");
        if (i % 8 == 0) {
          st = img.Read(kStable, buf.data(), buf.size());  // buf is smaller than the region
          if (!st.ok() || !std::equal(buf.begin(), buf.end(), stable.begin()))
            return fail("the region nobody writes changed: " + st.ToString());
        }
        if (i % 16 == 0 && !img.Flush().ok()) return fail("flush");
        if (i % 8 == 4) {
          auto bs = ChainBlockStatus(img, rng() % kSize, 4 << 20);
          if (!bs.ok()) return fail(bs.status().ToString());
        }
        std::this_thread::sleep_for(100us);  // readers share the CPU with the writers
      }
    });
  }
  // Snapshots taken and deleted meanwhile (every third one kept).
  std::vector<std::string> kept;
  threads.emplace_back([&] {
    std::vector<uint8_t> buf(1 << 20);
    for (int i = 0; i < 6 && !failed; ++i) {
      auto info = img.CreateSnapshot("p" + std::to_string(i));
      if (!info.ok()) return fail(info.status().ToString());
      auto view = img.OpenSnapshot(info->id);
      if (!view.ok()) return fail(view.status().ToString());
      Status st = (*view)->Read(kMixed + i * (1 << 20), buf.data(), buf.size());
      if (!st.ok() || std::find(buf.begin(), buf.end(), 0) != buf.end())
        return fail("snapshot read: " + st.ToString());
      if (i % 3 == 2) {
        kept.push_back(info->name);
      } else if (!(st = img.DeleteSnapshot(info->id)).ok()) {
        return fail(st.ToString());
      }
      std::this_thread::sleep_for(2ms);
    }
  });
  for (int t = 0; t < kWriters; ++t) threads[t].join();
  writers_done = true;
  for (size_t i = kWriters; i < threads.size(); ++i) threads[i].join();
  ASSERT_FALSE(failed);

  // Each contended block is one whole block some writer wrote there, or
  // the backing's.
  std::map<uint64_t, std::vector<uint32_t>> tags;
  for (const auto& log : contended)
    for (const auto& [block, tag] : log) tags[block].push_back(tag);
  const std::vector<uint8_t> got = ReadImage(img, 0, kSize);
  std::vector<uint8_t> want(4096);
  for (uint64_t b = 0; b < kContendedLen / 4096; ++b) {
    const uint64_t at = kContended + b * 4096;
    bool match = std::equal(got.begin() + at, got.begin() + at + 4096, base.begin() + at);
    for (uint32_t tag : tags[b]) {
      if (match) break;
      Fill(want.data(), want.size(), tag);
      match = std::equal(want.begin(), want.end(), got.begin() + at);
    }
    ASSERT_TRUE(match) << "contended block " << b << " is no block written there";
    std::copy(got.begin() + at, got.begin() + at + 4096, model.begin() + at);
  }
  if (got != model) ASSERT_EQ(FirstDiff(got, model), -1);
  ASSERT_FALSE(kept.empty());
  std::vector<uint8_t> snap;
  {
    const auto snaps = img.Snapshots();
    auto it = std::find_if(snaps.begin(), snaps.end(),
                           [&](const SnapshotInfo& s) { return s.name == kept[0]; });
    ASSERT_NE(it, snaps.end());
    auto view = img.OpenSnapshot(it->id);
    ASSERT_TRUE(view.ok()) << view.status().ToString();
    snap = ReadImage(**view, 0, kSize);
  }
  ASSERT_OK(img.EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("top.qcow2", &out), 0) << out;
  WriteHostFile(P("model.raw"), model);
  Sh("qemu-img compare -q -f raw -F qcow2 model.raw top.qcow2");
  WriteHostFile(P("snap.raw"), snap);
  Sh("qemu-img convert -U -O raw -l snapshot.name=" + kept[0] + " top.qcow2 qsnap.raw");
  Sh("cmp -s qsnap.raw snap.raw");
}

INSTANTIATE_TEST_SUITE_P(Shapes, Qcow2ParallelModel,
                         ::testing::Values(Shape{"c64k", ""},
                                           Shape{"c4k", "-o cluster_size=4k"},
                                           Shape{"extl2", "-o extended_l2=on"}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- Flushes ------------------------------------------------------------------------------

TEST_F(Qcow2Parallel, FlushWithNothingWrittenSyncsNothing) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 8M");
  auto faults = std::make_shared<FaultInjector>();
  auto w = OpenWritable("img.qcow2", faults);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  uint64_t f = faults->flushes();
  // close() of handles that wrote nothing, and fsync of them.
  for (int i = 0; i < 5; ++i) ASSERT_OK(img.Flush());
  EXPECT_EQ(faults->flushes(), f);
  std::vector<uint8_t> buf(4096, 0x5c), back(4096);
  ASSERT_OK(img.Read(0, back.data(), back.size()));
  ASSERT_OK(img.Flush());
  EXPECT_EQ(faults->flushes(), f);
  // Each kind of write makes the next flush sync, and only the next.
  auto written = [&](const char* what) {
    ASSERT_OK(img.Flush());
    EXPECT_GT(faults->flushes(), f) << what;
    f = faults->flushes();
    ASSERT_OK(img.Flush());
    ASSERT_OK(img.Flush());
    EXPECT_EQ(faults->flushes(), f) << what;
  };
  ASSERT_OK(img.Write(1 << 20, buf.data(), buf.size()));
  written("allocating write");
  ASSERT_OK(img.Write(1 << 20, buf.data(), buf.size()));
  written("in-place overwrite");
  ASSERT_OK(img.WriteZeroes(2 << 20, 1 << 20, false));
  written("write zeroes");
  ASSERT_TRUE(img.CreateSnapshot("s").ok());
  written("snapshot");
  // The end of the write session syncs only what is left.
  ASSERT_OK(img.EndWrites());
  EXPECT_EQ(faults->flushes(), f);
  ASSERT_OK(img.BeginWrites());
  ASSERT_OK(img.Write(3 << 20, buf.data(), buf.size()));
  f = faults->flushes();
  ASSERT_OK(img.EndWrites());
  EXPECT_GT(faults->flushes(), f);
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  Sh("qemu-io -f qcow2 -c 'read -P 0x5c 3M 4k' img.qcow2 >/dev/null");  // exit 1 on a mismatch
}

TEST_F(Qcow2Parallel, FlushWithNothingWrittenDoesNotWaitForTheExclusiveLock) {
  Sh("qemu-img create -q -f qcow2 img.qcow2 8M");
  std::shared_ptr<GateBackend> gate;
  auto w = OpenWrapped("img.qcow2", [&](std::shared_ptr<Backend> b) {
    gate = std::make_shared<GateBackend>(b);
    return gate;
  });
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  std::vector<uint8_t> buf(4096, 0x5c);
  ASSERT_OK(img.Write(0, buf.data(), buf.size()));
  ASSERT_OK(img.Flush());
  // A snapshot holds the exclusive lock while its writes are held.
  gate->Close(true, false);
  auto snap = std::async(std::launch::async, [&] { return img.CreateSnapshot("s").status(); });
  ASSERT_TRUE(gate->WaitBlocked());
  auto flush = std::async(std::launch::async, [&] { return img.Flush(); });
  const bool returned = flush.wait_for(5s) == std::future_status::ready;
  gate->Open();
  EXPECT_TRUE(returned) << "Flush() waited for the snapshot's exclusive lock";
  ASSERT_OK(flush.get());
  ASSERT_OK(snap.get());
  ASSERT_OK(img.EndWrites());
  w->image.reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
}

TEST_F(Qcow2Parallel, SecondFsyncWaitsForTheSyncInProgress) {
  // The write is flushed by the first fsync; a second one that comes while
  // that sync is still running must not return before it is done.
  Sh("qemu-img create -q -f qcow2 img.qcow2 8M");
  std::shared_ptr<GateBackend> gate;
  auto w = OpenWrapped("img.qcow2", [&](std::shared_ptr<Backend> b) {
    gate = std::make_shared<GateBackend>(b);
    return gate;
  });
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  std::vector<uint8_t> buf(4096, 0x5c);
  ASSERT_OK(img.Write(0, buf.data(), buf.size()));
  gate->Close(false, true);
  auto first = std::async(std::launch::async, [&] { return img.Flush(); });
  ASSERT_TRUE(gate->WaitBlocked());
  auto second = std::async(std::launch::async, [&] { return img.Flush(); });
  const bool early = second.wait_for(300ms) == std::future_status::ready;
  gate->Open();
  EXPECT_FALSE(early) << "a second fsync returned while the first was still syncing";
  ASSERT_OK(first.get());
  ASSERT_OK(second.get());
  ASSERT_OK(img.EndWrites());
}

}  // namespace
}  // namespace kvmfs::test
