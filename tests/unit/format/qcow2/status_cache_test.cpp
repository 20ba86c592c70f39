// Block-status walks and the L2 cache: a walk over the whole allocation map
// (du, SEEK_DATA, st_blocks) caches the tables it loads at the cold end and
// does not mark cached ones used, so the tables readers and writers use stay
// cached.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"
#include "wrap_backend.h"
#include "write_helpers.h"

namespace kvmfs::test {
namespace {

using qcow2::CacheBudget;
using qcow2::kCacheEntryOverhead;
using qcow2::L2Cache;
using qcow2::L2Table;

constexpr uint64_t kTable = 4096;
constexpr uint64_t kEntry = kTable + kCacheEntryOverhead;

std::shared_ptr<L2Table> Table(uint64_t offset) {
  auto t = std::make_shared<L2Table>();
  t->host_offset = offset;
  t->words.assign(kTable / 8, offset);
  return t;
}

TEST(Qcow2StatusCache, ColdInsertsAreEvictedBeforeTheHotSet) {
  auto budget = std::make_shared<CacheBudget>(4 * kEntry);
  L2Cache cache(budget, kTable);
  for (uint64_t i = 1; i <= 3; ++i) cache.Insert(Table(i * kTable));
  for (uint64_t i = 10; i < 40; ++i) {
    auto t = cache.InsertCold(Table(i * kTable));
    ASSERT_TRUE(t);
    EXPECT_EQ(t->host_offset, i * kTable);
  }
  EXPECT_LE(budget->used(), 4 * kEntry);
  for (uint64_t i = 1; i <= 3; ++i) EXPECT_TRUE(cache.Peek(i * kTable)) << i;
  // The last cold table is still there (the budget had room for it).
  EXPECT_TRUE(cache.Peek(39 * kTable));
  // A cold insert of a cached table keeps the cached one.
  auto other = Table(2 * kTable);
  other->words[0] = 7;
  EXPECT_EQ(cache.InsertCold(other)->words[0], 2 * kTable);
}

TEST(Qcow2StatusCache, PeekDoesNotMarkATableUsed) {
  auto budget = std::make_shared<CacheBudget>(4 * kEntry);
  L2Cache cache(budget, kTable);
  for (uint64_t i = 1; i <= 4; ++i) cache.Insert(Table(i * kTable));
  ASSERT_TRUE(cache.Peek(1 * kTable));    // 1 stays the least recently used
  ASSERT_TRUE(cache.Lookup(2 * kTable));  // 2 becomes the newest
  cache.Insert(Table(5 * kTable));
  cache.Insert(Table(6 * kTable));
  EXPECT_FALSE(cache.Peek(1 * kTable));
  EXPECT_TRUE(cache.Peek(2 * kTable));
  EXPECT_FALSE(cache.Peek(3 * kTable));
  EXPECT_TRUE(cache.Peek(4 * kTable));
}

// Counts the reads of the given offsets (the image's L2 tables).
class CountingBackend final : public WrapBackend {
 public:
  using WrapBackend::WrapBackend;
  Status ReadAt(uint64_t off, void* buf, size_t len) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (watched_.count(off)) ++count_;
    }
    return base_->ReadAt(off, buf, len);
  }
  void Watch(std::set<uint64_t> offsets) {
    std::lock_guard<std::mutex> lock(mu_);
    watched_ = std::move(offsets);
  }
  uint64_t Take() {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t n = count_;
    count_ = 0;
    return n;
  }

 private:
  std::mutex mu_;
  std::set<uint64_t> watched_;  // GUARDED_BY(mu_)
  uint64_t count_ = 0;          // GUARDED_BY(mu_)
};

using Qcow2StatusWalk = WriteTest;

TEST_F(Qcow2StatusWalk, WholeMapWalkKeepsTheHotL2Tables) {
  // 4 KiB clusters: one L2 table maps 2 MiB; one block in each of 128 tables.
  constexpr uint64_t kSize = 256 << 20, kPerTable = 2 << 20, kTables = kSize / kPerTable;
  Sh("qemu-img create -q -f qcow2 -o cluster_size=4096 img.qcow2 256M");
  std::string cmd = "qemu-io -f qcow2";
  for (uint64_t i = 0; i < kTables; ++i)
    cmd += " -c 'write -P " + std::to_string(1 + i % 250) + " " + std::to_string(i * kPerTable) +
           " 4k'";
  Sh(cmd + " img.qcow2 >/dev/null");
  // The L2 table offsets, from the L1 table (header: l1_size at 36, l1
  // offset at 40).
  const std::vector<uint8_t> file = ReadHostFile(P("img.qcow2"));
  ASSERT_GT(file.size(), 48u);
  const uint32_t l1_size = LoadBE32(file.data() + 36);
  const uint64_t l1_off = LoadBE64(file.data() + 40);
  ASSERT_LE(l1_off + 8 * l1_size, file.size());
  std::vector<uint64_t> l2;
  for (uint32_t i = 0; i < l1_size; ++i) l2.push_back(LoadBE64(file.data() + l1_off + 8 * i) & qcow2::kL1OffsetMask);
  ASSERT_EQ(l2.size(), kTables);
  for (uint64_t off : l2) ASSERT_NE(off, 0u);

  // The cache holds 16 tables; the hot set is 8.
  auto budget = std::make_shared<CacheBudget>(16 * kEntry);
  Qcow2Options options;
  options.budget = budget;
  auto local = OpenLocalFile(P("img.qcow2"), false);
  ASSERT_TRUE(local.ok()) << local.status().ToString();
  auto counting = std::make_shared<CountingBackend>(std::shared_ptr<Backend>(std::move(local).value()));
  counting->Watch(std::set<uint64_t>(l2.begin(), l2.end()));
  OpenContext ctx;
  ctx.name = P("img.qcow2");
  auto opened = OpenQcow2(counting, ctx, options);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  Image& img = **opened;
  constexpr uint64_t kHot = 8;
  std::vector<uint8_t> buf(4096);
  auto read_hot = [&] {
    for (uint64_t i = 0; i < kHot; ++i) {
      ASSERT_TRUE(img.Read(i * 4 * kPerTable, buf.data(), buf.size()).ok());
      ASSERT_EQ(buf[0], 1 + (i * 4) % 250);
    }
  };
  read_hot();
  EXPECT_EQ(counting->Take(), kHot);

  // Two walks over the whole map, as du and SEEK_DATA do.
  for (int walk = 0; walk < 2; ++walk) {
    uint64_t data = 0;
    for (uint64_t off = 0; off < kSize;) {
      auto bs = img.GetBlockStatus(off, kSize - off);
      ASSERT_TRUE(bs.ok()) << bs.status().ToString();
      ASSERT_GT(bs->length, 0u);
      if (bs->kind == Allocation::kData) data += bs->length;
      off += bs->length;
    }
    EXPECT_EQ(data, kTables * 4096) << "walk " << walk;
    EXPECT_GE(counting->Take(), kTables - 16) << "walk " << walk;  // it did load the cold tables
    EXPECT_LE(budget->used(), budget->limit());
  }
  // The hot tables are still cached: reading them loads nothing.
  read_hot();
  EXPECT_EQ(counting->Take(), 0u);
}

}  // namespace
}  // namespace kvmfs::test
