// Metadata walks in bounded memory (issue 10): snapshot create and delete
// and the dirty-image repair touch every table of an image, yet what they
// charge to the cache budget stays within the budget plus the tables that
// are charged but cannot be evicted (two L1 copies, the refcount table) and
// a few entries in flight. Readers go on while a snapshot is made.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <new>
#include <thread>

#include "format/qcow2/qcow2.h"
#include "write_helpers.h"

// Every allocation of this test binary is counted, so that memory the
// budget does not see (a hash node per cluster, a count per cluster) shows.
namespace {
std::atomic<int64_t> g_heap_live{0};
std::atomic<int64_t> g_heap_peak{0};
constexpr size_t kHeader = 16;  // keeps the alignment of operator new
}  // namespace

void* operator new(size_t n) {
  auto* p = static_cast<size_t*>(std::malloc(n + kHeader));
  if (p == nullptr) throw std::bad_alloc();
  p[0] = n;
  const int64_t now = g_heap_live.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
  int64_t peak = g_heap_peak.load();
  while (now > peak && !g_heap_peak.compare_exchange_weak(peak, now)) {
  }
  return reinterpret_cast<char*>(p) + kHeader;
}
void* operator new[](size_t n) { return operator new(n); }
void operator delete(void* q) noexcept {
  if (q == nullptr) return;
  auto* p = reinterpret_cast<size_t*>(static_cast<char*>(q) - kHeader);
  g_heap_live.fetch_sub(static_cast<int64_t>(p[0]));
  std::free(p);
}
void operator delete[](void* q) noexcept { operator delete(q); }
void operator delete(void* q, size_t) noexcept { operator delete(q); }
void operator delete[](void* q, size_t) noexcept { operator delete(q); }

namespace kvmfs::test {
namespace {

// Heap bytes allocated at the peak since the last call, over what was live
// at that call.
class HeapPeak {
 public:
  HeapPeak() : base_(g_heap_live.load()) { g_heap_peak.store(base_); }
  int64_t Growth() const { return g_heap_peak.load() - base_; }

 private:
  int64_t base_;
};

using qcow2::CacheBudget;
using qcow2::kCacheEntryOverhead;

#define ASSERT_OK(expr)                                     \
  do {                                                      \
    ::kvmfs::Status _s = (expr);                            \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s.ToString(); \
  } while (0)

class Qcow2WalkMemory : public WriteTest {
 protected:
  // 48 MiB of 512-byte clusters, every one allocated (1536 L2 tables, 98304
  // data clusters), plus some guest data.
  void MakeImage(const std::string& opts = "") {
    Sh("qemu-img create -q -f qcow2 -o cluster_size=512,preallocation=metadata" + opts +
       " img.qcow2 48M");
    Sh("qemu-io -c 'write -P 0x21 0 1M' -c 'write -P 0x22 40M 1M' img.qcow2 >/dev/null");
  }
  static constexpr uint64_t kEntry = 512 + kCacheEntryOverhead;
  static constexpr uint64_t kTables = 1536;  // L1 entries
  // Charged and not evictable during a walk: the active L1, its new copy
  // (or the victim's), the refcount table (at most 64 clusters here), the
  // block cache's floor and a few entries in flight.
  static constexpr uint64_t kFixed = 3 * kTables * 8 + 64 * 512 + 4 * kEntry + 8 * kEntry;
  // All heap a walk may add: the above, two 256 KiB write batches, and
  // change. A hash node per cluster would be several MiB here.
  static constexpr int64_t kHeap = kFixed + 32 * kEntry + (640 << 10);
};

TEST_F(Qcow2WalkMemory, SnapshotCreateAndDeleteStayWithinTheBudget) {
  MakeImage();
  const auto before = QemuRaw("img.qcow2");
  // Room for 32 tables: the walk would need 1536 if it kept them (dirty
  // tables cannot be evicted), and 98304 hash nodes for the refcounts.
  auto budget = std::make_shared<CacheBudget>(32 * kEntry);
  Qcow2Options options;
  options.budget = budget;
  auto w = OpenWritable("img.qcow2", nullptr, options);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  budget->ResetPeak();
  HeapPeak create_heap;
  auto s1 = img.CreateSnapshot("s1");
  ASSERT_TRUE(s1.ok()) << s1.status().ToString();
  EXPECT_LE(budget->peak(), budget->limit() + kFixed);
  EXPECT_LE(create_heap.Growth(), kHeap);
  std::vector<uint8_t> p(3 << 20, 0x33);
  ASSERT_OK(img.Write(2 << 20, p.data(), p.size()));  // copies shared clusters
  ASSERT_OK(img.Flush());
  budget->ResetPeak();
  HeapPeak delete_heap;
  ASSERT_OK(img.DeleteSnapshot(s1->id));
  EXPECT_LE(budget->peak(), budget->limit() + kFixed);
  EXPECT_LE(delete_heap.Growth(), kHeap);
  auto s2 = img.CreateSnapshot("s2");
  ASSERT_TRUE(s2.ok()) << s2.status().ToString();
  ASSERT_OK(img.EndWrites());
  w->image.reset();
  EXPECT_EQ(budget->used(), 0u);

  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  auto now = before;
  std::copy(p.begin(), p.end(), now.begin() + (2 << 20));
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2"), now), -1);
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2", "s2"), now), -1);
  const std::string listing = Sh("qemu-img snapshot -l img.qcow2");
  EXPECT_EQ(listing.find("s1"), std::string::npos) << listing;
  EXPECT_NE(listing.find("s2"), std::string::npos) << listing;
}

TEST_F(Qcow2WalkMemory, DeletingASnapshotQemuMadeStaysWithinTheBudget) {
  MakeImage();
  Sh("qemu-img snapshot -c q img.qcow2");
  Sh("qemu-io -c 'write -P 0x44 0 2M' img.qcow2 >/dev/null");
  const auto active = QemuRaw("img.qcow2");
  auto budget = std::make_shared<CacheBudget>(32 * kEntry);
  Qcow2Options options;
  options.budget = budget;
  {
    auto w = OpenWritable("img.qcow2", nullptr, options);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    ASSERT_OK(w->image->BeginWrites());
    // Every active table regains COPIED flags: all of them change.
    budget->ResetPeak();
    HeapPeak heap;
    ASSERT_OK(w->image->DeleteSnapshot("1"));  // qemu-img's "q"
    EXPECT_LE(budget->peak(), budget->limit() + kFixed);
    EXPECT_LE(heap.Growth(), kHeap);
    auto s = w->image->CreateSnapshot("mine");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    ASSERT_OK(w->image->EndWrites());
  }
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2"), active), -1);
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2", "mine"), active), -1);
  // QEMU can delete what kvmfs made, and the image stays clean.
  Sh("qemu-img snapshot -d mine img.qcow2");
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
}

TEST_F(Qcow2WalkMemory, DirtyImageRepairStaysWithinTheBudget) {
  // Every cluster of 48 MiB allocated, then the lazy-refcounts image is
  // killed after an allocating write: it is dirty and must be rebuilt (98304 clusters:
  // one integer per cluster would be 768 KiB).
  MakeImage(",lazy_refcounts=on");
  std::string out;
  RunCmd("cd " + dir_ + " && qemu-io -c 'discard 0 1M' -c 'write -P 0x44 0 64k' "
         "-c 'sigraise 9' img.qcow2", &out);
  const auto before = QemuRaw("img.qcow2");
  auto budget = std::make_shared<CacheBudget>(32 * kEntry);
  Qcow2Options options;
  options.budget = budget;
  {
    auto w = OpenWritable("img.qcow2", nullptr, options);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    ASSERT_TRUE(w->image->Info().dirty);
    budget->ResetPeak();
    HeapPeak heap;
    ASSERT_OK(w->image->BeginWrites());
    EXPECT_LE(budget->peak(), budget->limit() + kFixed);
    EXPECT_LE(heap.Growth(), kHeap);
    EXPECT_FALSE(w->image->Info().dirty);
    ASSERT_OK(w->image->EndWrites());
  }
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
  EXPECT_EQ(FirstDiff(QemuRaw("img.qcow2"), before), -1);
}

// Passes everything to `base`; the first write at or past `gate` (a fresh
// cluster of a commit: past the old end of the file) waits until `reads`
// has grown by 8, or gives up after 20 s.
class GateBackend final : public Backend {
 public:
  GateBackend(std::shared_ptr<Backend> base, uint64_t gate, std::atomic<uint64_t>& reads)
      : base_(std::move(base)), gate_(gate), reads_(reads) {}
  Status ReadAt(uint64_t off, void* buf, size_t len) override {
    return base_->ReadAt(off, buf, len);
  }
  Status WriteAt(uint64_t off, const void* buf, size_t len) override {
    if (off >= gate_ && !passed_.exchange(true)) {
      const uint64_t want = reads_ + 8;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (reads_ < want && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      readers_progressed_ = reads_ >= want;
    }
    return base_->WriteAt(off, buf, len);
  }
  Status Flush() override { return base_->Flush(); }
  Result<uint64_t> Size() override { return base_->Size(); }
  Status Truncate(uint64_t size) override { return base_->Truncate(size); }
  Result<uint64_t> AllocatedBytes() override { return base_->AllocatedBytes(); }
  bool writable() const override { return base_->writable(); }
  const std::string& name() const override { return base_->name(); }
  bool gated() const { return passed_; }
  bool readers_progressed() const { return readers_progressed_; }

 private:
  std::shared_ptr<Backend> base_;
  const uint64_t gate_;
  std::atomic<uint64_t>& reads_;
  std::atomic<bool> passed_{false};
  std::atomic<bool> readers_progressed_{false};
};

TEST_F(Qcow2WalkMemory, ReadersAreServedWhileASnapshotIsMade) {
  MakeImage();
  const uint64_t old_end = fs::file_size(P("img.qcow2"));
  std::atomic<uint64_t> reads{0};
  auto local = OpenLocalFile(P("img.qcow2"), true);
  ASSERT_TRUE(local.ok());
  auto gate = std::make_shared<GateBackend>(std::shared_ptr<Backend>(std::move(*local)),
                                            old_end, reads);
  OpenContext ctx;
  ctx.name = P("img.qcow2");
  ctx.writable = true;
  auto opened = OpenQcow2(gate, ctx, Qcow2Options{});
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  Image& img = **opened;
  ASSERT_OK(img.BeginWrites());
  std::atomic<bool> stop{false}, bad{false};
  std::thread reader([&] {
    std::vector<uint8_t> buf(4096);
    for (uint64_t i = 0; !stop; ++i) {
      const uint64_t off = (i * 7919 % 12288) * 4096;
      if (!img.Read(off, buf.data(), buf.size()).ok()) bad = true;
      if (off < (1 << 20) && buf[0] != 0x21) bad = true;
      ++reads;
    }
  });
  auto s = img.CreateSnapshot("s");
  stop = true;
  reader.join();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_FALSE(bad);
  // The walk's first fresh write waited for 8 reads: with the lock held
  // exclusive for the walk, none could complete.
  EXPECT_TRUE(gate->gated());
  EXPECT_TRUE(gate->readers_progressed());
  ASSERT_OK(img.EndWrites());
  opened->reset();
  std::string out;
  EXPECT_EQ(Check("img.qcow2", &out), 0) << out;
}

}  // namespace
}  // namespace kvmfs::test
