// The process-wide metadata cache budget: its LRU policy across images,
// pinned and dirty entries, and reads and writes through many images on a
// small budget compared with qemu-img.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "format/qcow2/qcow2.h"
#include "write_helpers.h"

namespace kvmfs::test {
namespace {

using qcow2::CacheBudget;
using qcow2::kCacheEntryOverhead;
using qcow2::L2Cache;
using qcow2::L2Table;

#define ASSERT_OK(expr)                                         \
  do {                                                          \
    ::kvmfs::Status _s = (expr);                                \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s.ToString();     \
  } while (0)

std::shared_ptr<L2Table> Table(uint64_t offset, uint64_t bytes) {
  auto t = std::make_shared<L2Table>();
  t->host_offset = offset;
  t->words.assign(bytes / 8, offset);
  return t;
}

// ---- The budget on its own -----------------------------------------------------------

constexpr uint64_t kTable = 4096;
constexpr uint64_t kEntry = kTable + kCacheEntryOverhead;

TEST(Qcow2CacheBudget, InsertOverBudgetEvictsLeastRecentlyUsed) {
  auto budget = std::make_shared<CacheBudget>(4 * kEntry);
  L2Cache cache(budget, kTable);
  for (uint64_t i = 1; i <= 4; ++i) cache.Insert(Table(i * kTable, kTable));
  ASSERT_TRUE(cache.Lookup(1 * kTable));  // 1 is now the newest
  cache.Insert(Table(5 * kTable, kTable));
  EXPECT_EQ(cache.size(), 4u);
  EXPECT_TRUE(cache.Lookup(1 * kTable));
  EXPECT_FALSE(cache.Lookup(2 * kTable));  // the least recently used went
  EXPECT_EQ(budget->used(), 4 * kEntry);
}

TEST(Qcow2CacheBudget, ActiveImageTakesMemoryBackFromIdleOne) {
  auto budget = std::make_shared<CacheBudget>(8 * kEntry);
  L2Cache idle(budget, kTable), active(budget, kTable);
  for (uint64_t i = 1; i <= 8; ++i) idle.Insert(Table(i * kTable, kTable));
  EXPECT_EQ(idle.size(), 8u);
  for (uint64_t i = 1; i <= 8; ++i) active.Insert(Table(i * kTable, kTable));
  // Not "each keeps its own": the idle image's tables are older.
  EXPECT_EQ(active.size(), 8u);
  EXPECT_EQ(idle.size(), 0u);
  EXPECT_LE(budget->peak(), 9 * kEntry);  // one entry over, for an instant
  EXPECT_EQ(budget->used(), 8 * kEntry);
}

TEST(Qcow2CacheBudget, ManyCachesStayWithinTheBudget) {
  auto budget = std::make_shared<CacheBudget>(16 * kEntry);
  std::vector<std::unique_ptr<L2Cache>> caches;
  for (int c = 0; c < 64; ++c) caches.push_back(std::make_unique<L2Cache>(budget, kTable));
  for (int round = 0; round < 3; ++round)
    for (int c = 0; c < 64; ++c)
      for (uint64_t i = 1; i <= 4; ++i) caches[c]->Insert(Table(i * kTable, kTable));
  size_t total = 0;
  for (const auto& c : caches) total += c->size();
  EXPECT_EQ(total, 16u);
  EXPECT_LE(budget->peak(), 17 * kEntry);
  caches.clear();
  EXPECT_EQ(budget->used(), 0u);  // a closed image gives its bytes back
}

TEST(Qcow2CacheBudget, DirtyAndPinnedTablesAreNeverEvicted) {
  auto budget = std::make_shared<CacheBudget>(1 * kEntry);
  L2Cache writer(budget, kTable), reader(budget, kTable);
  auto dirty = Table(kTable, kTable);
  dirty->dirty = true;
  writer.Put(dirty);
  std::shared_ptr<const L2Table> pinned = writer.Insert(Table(2 * kTable, kTable));
  dirty.reset();
  for (uint64_t i = 1; i <= 10; ++i) reader.Insert(Table(i * kTable, kTable));
  EXPECT_TRUE(writer.Lookup(kTable));
  EXPECT_TRUE(writer.Lookup(2 * kTable));
  EXPECT_TRUE(writer.OverBudget());  // the writer's cue to write back
  // The slack is those two, and the reader's new table with the one its
  // previous insert had to keep (it was in use then), no more.
  EXPECT_LE(budget->peak(), 4 * kEntry);
  // Written back and unpinned, they go at the next insert.
  writer.LookupForWrite(kTable)->dirty = false;
  pinned.reset();
  reader.Insert(Table(11 * kTable, kTable));
  EXPECT_FALSE(writer.Lookup(kTable));
  EXPECT_FALSE(writer.Lookup(2 * kTable));
  EXPECT_EQ(reader.size(), 1u);
  EXPECT_LE(budget->used(), 1 * kEntry);
}

TEST(Qcow2CacheBudget, OneTableLargerThanTheBudgetStillWorks) {
  // 2 MiB clusters with a 1 MiB budget: the table in use is kept.
  constexpr uint64_t kBig = 2ull << 20;
  auto budget = std::make_shared<CacheBudget>(1ull << 20);
  L2Cache cache(budget, kBig);
  EXPECT_EQ(cache.capacity(), 1u);
  auto t = cache.Insert(Table(kBig, kBig));
  ASSERT_TRUE(t);
  EXPECT_EQ(t->words[0], kBig);
  t.reset();
  auto u = cache.Insert(Table(2 * kBig, kBig));
  EXPECT_EQ(u->words[0], 2 * kBig);
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_LE(budget->peak(), 2 * (kBig + kCacheEntryOverhead));
}

TEST(Qcow2CacheBudget, ShrinkingTheLimitEvictsAtOnce) {
  auto budget = std::make_shared<CacheBudget>(8 * kEntry);
  L2Cache cache(budget, kTable);
  for (uint64_t i = 1; i <= 8; ++i) cache.Insert(Table(i * kTable, kTable));
  budget->SetLimit(3 * kEntry);
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_TRUE(cache.Lookup(8 * kTable));
}

TEST(Qcow2CacheBudget, EvictedTablesAreRecycledForTheNextLoad) {
  // Steady state (budget full): each load reuses an evicted table's memory
  // instead of malloc, whose per-thread arenas would keep the freed ones.
  auto budget = std::make_shared<CacheBudget>(1 * kEntry);
  L2Cache a(budget, kTable), b(budget, kTable);
  const L2Table* first = a.Insert(Table(kTable, kTable)).get();
  b.Insert(Table(kTable, kTable));  // evicts a's table into the spares
  EXPECT_EQ(a.size(), 0u);
  std::shared_ptr<L2Table> t = b.NewTable(kTable / 8);
  EXPECT_EQ(t.get(), first);
  EXPECT_FALSE(t->dirty);
  EXPECT_EQ(t->words.size(), kTable / 8);
  EXPECT_EQ(b.NewTable(kTable / 8)->words.size(), kTable / 8);  // none left: a new one
}

// ---- Images on a small budget, with qemu-img as the oracle ------------------------------

using Qcow2CacheImages = WriteTest;

// Reads all of `image` in 64 KiB pieces.
std::vector<uint8_t> ReadAll(Image& image) {
  std::vector<uint8_t> out(image.size(), 0xee);
  for (uint64_t off = 0; off < out.size(); off += 64 << 10) {
    const size_t n = std::min<uint64_t>(64 << 10, out.size() - off);
    Status st = image.Read(off, out.data() + off, n);
    EXPECT_TRUE(st.ok()) << st.ToString();
    if (!st.ok()) break;
  }
  return out;
}

Result<std::unique_ptr<Image>> OpenRead(const std::string& path, Qcow2Options options) {
  KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> local, OpenLocalFile(path, false));
  OpenContext ctx;
  ctx.name = path;
  return OpenQcow2(std::shared_ptr<Backend>(std::move(local)), ctx, options);
}

TEST_F(Qcow2CacheImages, ManyImagesReadLikeQemuWithinTheBudget) {
  // 512-byte and 4 KiB clusters give many L2 tables cheaply; one image is
  // compressed (the decompressed clusters share the budget).
  constexpr int kImages = 12;
  std::vector<std::string> names;
  for (int i = 0; i < kImages; ++i) {
    const std::string name = "img" + std::to_string(i) + ".qcow2";
    const bool small = i % 2 == 0;
    Sh("qemu-img create -q -f qcow2 -o cluster_size=" + std::string(small ? "512" : "4096") + " " +
       name + (small ? " 4M" : " 32M"));
    std::string cmd = "qemu-io -f qcow2";
    // One write per L2 table: every 32 KiB (512 B clusters), every 2 MiB (4 KiB).
    const uint64_t step = small ? 32 << 10 : 2 << 20, size = small ? 4 << 20 : 32 << 20;
    for (uint64_t off = (i * 4096) % step; off < size; off += step)
      cmd += " -c 'write -P " + std::to_string((off / step + i) % 250 + 1) + " " +
             std::to_string(off) + " 1536'";
    Sh(cmd + " " + name + " >/dev/null");
    names.push_back(name);
  }
  Sh("qemu-img convert -c -O qcow2 -o cluster_size=4096 img1.qcow2 zimg.qcow2");
  names.push_back("zimg.qcow2");

  auto budget = std::make_shared<CacheBudget>(24 << 10);  // a few tables of all these
  Qcow2Options options;
  options.budget = budget;
  std::vector<std::unique_ptr<Image>> images;
  for (const auto& name : names) {
    auto img = OpenRead(P(name), options);
    ASSERT_TRUE(img.ok()) << img.status().ToString();
    images.push_back(std::move(img).value());
  }
  // The documented slack of one reader (kvmfs(8) cache_size): the table it
  // maps and the compressed clusters of its request, which are decoded in
  // parallel and held until the reply is built (64 KiB requests here).
  const uint64_t slack = (1 + (64 << 10) / 4096) * (4096 + kCacheEntryOverhead);
  for (size_t i = 0; i < images.size(); ++i) {
    const auto expected = QemuRaw(names[i]);
    EXPECT_EQ(ReadAll(*images[i]), expected) << names[i];
    EXPECT_LE(budget->peak(), budget->limit() + slack) << names[i];
    EXPECT_LE(budget->used(), budget->limit()) << names[i];
  }
  // The first image reads again after all the others took the budget.
  EXPECT_EQ(ReadAll(*images[0]), QemuRaw(names[0]));
  EXPECT_LE(budget->peak(), budget->limit() + slack);
  images.clear();
  EXPECT_EQ(budget->used(), 0u);
}

TEST_F(Qcow2CacheImages, WritesWithATinyBudgetPassQemuImgCheck) {
  // 2048 L2 tables of 512 bytes; the budget holds 4, and a reader of another
  // image on the same budget keeps evicting.
  Sh("qemu-img create -q -f qcow2 -o cluster_size=512 w.qcow2 64M");
  Sh("qemu-img create -q -f qcow2 -o cluster_size=512 r.qcow2 8M");
  Sh("qemu-io -c 'write -P 0x5a 0 8M' r.qcow2 >/dev/null");
  auto budget = std::make_shared<CacheBudget>(4 * (512 + kCacheEntryOverhead));
  Qcow2Options options;
  options.budget = budget;
  auto w = OpenWritable("w.qcow2", nullptr, options);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  auto r = OpenRead(P("r.qcow2"), options);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  Image& img = *w->image;
  ASSERT_OK(img.BeginWrites());
  // BeginWrites' table check holds a sorted copy of the L1 for a moment.
  budget->ResetPeak();

  std::vector<uint8_t> model(64 << 20, 0);
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf, rbuf(4096);
  const int rounds = 1500 / kRoundsDivisor;
  for (int i = 0; i < rounds; ++i) {
    const uint64_t len = 1 + rng() % 8192;
    const uint64_t off = rng() % (model.size() - len);
    buf.resize(len);
    for (auto& b : buf) b = static_cast<uint8_t>(rng());
    ASSERT_OK(img.Write(off, buf.data(), len));
    std::copy(buf.begin(), buf.end(), model.begin() + off);
    // Read back some of what was written, and another image meanwhile.
    if (i % 3 == 0) {
      std::vector<uint8_t> back(len);
      ASSERT_OK(img.Read(off, back.data(), len));
      ASSERT_EQ(back, buf) << i;
      const uint64_t roff = (rng() % ((8 << 20) / 4096)) * 4096;
      ASSERT_OK((*r)->Read(roff, rbuf.data(), rbuf.size()));
      ASSERT_EQ(rbuf[0], 0x5a);
    }
    // A write dirties at most 3 tables (8 KiB over 32 KiB tables); the reader
    // pins one: that and one insert in flight is the slack. Besides, what
    // cannot be evicted is charged too: both active L1 tables (2048 and 256
    // entries), the refcount table (one cluster) and the refcount block
    // cache at its minimum (4 blocks).
    const uint64_t fixed = (2048 + 256) * 8 + 512 + 4 * (512 + kCacheEntryOverhead);
    ASSERT_LE(budget->peak(), budget->limit() + fixed + 5 * (512 + kCacheEntryOverhead)) << i;
  }
  ASSERT_OK(img.EndWrites());
  w->image.reset();
  r->reset();
  EXPECT_EQ(budget->used(), 0u);
  std::string out;
  EXPECT_EQ(Check("w.qcow2", &out), 0) << out;
  EXPECT_EQ(QemuRaw("w.qcow2"), model);
  WriteHostFile(P("model.raw"), model);
  Sh("qemu-img compare -f raw -F qcow2 model.raw w.qcow2");
}

TEST_F(Qcow2CacheImages, ConcurrentReadersAndAWriterShareATinyBudget) {
  // Threads on different images evict each other's tables (TSan: the budget's
  // lock order and the dirty flag read across images).
  constexpr int kReaders = 4;
  for (int i = 0; i < kReaders; ++i) {
    const std::string n = "r" + std::to_string(i) + ".qcow2";
    Sh("qemu-img create -q -f qcow2 -o cluster_size=512 " + n + " 4M");
    Sh("qemu-io -c 'write -P " + std::to_string(0x30 + i) + " 0 4M' " + n + " >/dev/null");
  }
  Sh("qemu-img create -q -f qcow2 -o cluster_size=512 w.qcow2 16M");
  auto budget = std::make_shared<CacheBudget>(6 * (512 + kCacheEntryOverhead));
  Qcow2Options options;
  options.budget = budget;
  auto w = OpenWritable("w.qcow2", nullptr, options);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_OK(w->image->BeginWrites());
  std::vector<std::unique_ptr<Image>> readers;
  for (int i = 0; i < kReaders; ++i) {
    auto r = OpenRead(P("r" + std::to_string(i) + ".qcow2"), options);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    readers.push_back(std::move(r).value());
  }
  std::atomic<int> bad{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < kReaders; ++i) {
    threads.emplace_back([&, i] {
      std::mt19937_64 rng(i);
      std::vector<uint8_t> buf(3000);
      while (!stop.load()) {
        const uint64_t off = rng() % ((4 << 20) - buf.size());
        if (!readers[i]->Read(off, buf.data(), buf.size()).ok()) ++bad;
        for (uint8_t b : buf)
          if (b != 0x30 + i) {
            ++bad;
            break;
          }
      }
    });
  }
  std::vector<uint8_t> model(16 << 20, 0);
  std::mt19937_64 rng(99);
  std::vector<uint8_t> buf;
  for (int i = 0; i < 600 / kRoundsDivisor; ++i) {
    const uint64_t len = 1 + rng() % 4096;
    const uint64_t off = rng() % (model.size() - len);
    buf.assign(len, static_cast<uint8_t>(rng()));
    if (!w->image->Write(off, buf.data(), len).ok()) ++bad;
    std::copy(buf.begin(), buf.end(), model.begin() + off);
  }
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  ASSERT_OK(w->image->EndWrites());
  w->image.reset();
  readers.clear();
  std::string out;
  EXPECT_EQ(Check("w.qcow2", &out), 0) << out;
  EXPECT_EQ(QemuRaw("w.qcow2"), model);
}

}  // namespace
}  // namespace kvmfs::test
