// The LZ4 block cache: round trips, torn and foreign entries never served,
// the bound and its LRU order, ETag versions, and life across a reopen.
#include <gtest/gtest.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <unistd.h>

#include <fstream>

#include "backend/s3/block_cache.h"
#include "fake_s3.h"

namespace kvmfs::s3 {
namespace {

using testing::TestBytes;

class BlockCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvmfs-s3-cache-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  std::shared_ptr<BlockCache> Open(uint64_t max = 64 << 20) {
    auto c = BlockCache::Open(dir_, max);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? *c : nullptr;
  }
  // Every entry file under the cache (relative names).
  std::vector<std::string> Files() {
    std::vector<std::string> out;
    for (int i = 0; i < 256; ++i) {
      char sub[3];
      std::snprintf(sub, sizeof sub, "%02x", i);
      DIR* d = ::opendir((dir_ + "/" + sub).c_str());
      if (d == nullptr) continue;
      while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] != '.') out.push_back(std::string(sub) + "/" + e->d_name);
      }
      ::closedir(d);
    }
    return out;
  }
  static BlockKey Key(uint64_t index, const std::string& etag = "e1") {
    return BlockKey{"bkt", "golden/deb12.qcow2", etag, index};
  }
  static void Put(BlockCache& c, const BlockKey& k, const std::string& data) {
    c.Put(k, reinterpret_cast<const uint8_t*>(data.data()), data.size());
  }
  static std::string Get(BlockCache& c, const BlockKey& k, size_t len) {
    auto r = c.Get(k, len);
    return r ? std::string(r->begin(), r->end()) : std::string("<miss>");
  }

  std::string dir_;
};

TEST_F(BlockCacheTest, RoundTripsCompressibleAndRandomBlocks) {
  auto c = Open();
  std::string text = TestBytes(1 << 20, 1, true), noise = TestBytes(1 << 20, 2), tail = "xyz";
  Put(*c, Key(0), text);
  Put(*c, Key(1), noise);
  Put(*c, Key(2), tail);
  EXPECT_EQ(Get(*c, Key(0), text.size()), text);
  EXPECT_EQ(Get(*c, Key(1), noise.size()), noise);
  EXPECT_EQ(Get(*c, Key(2), 3), tail);
  EXPECT_EQ(Get(*c, Key(3), 3), "<miss>");
  EXPECT_EQ(Get(*c, Key(2), 4), "<miss>");  // another length is another block
  EXPECT_TRUE(c->Contains(Key(1)));
  auto s = c->stats();
  EXPECT_EQ(s.entries, 2u);  // the wrong-length lookup dropped entry 2
  EXPECT_LT(s.bytes, (1u << 20) + (1u << 20) / 2);  // the text compressed
}

TEST_F(BlockCacheTest, TornAndDamagedEntriesAreDroppedNotServed) {
  auto c = Open();
  std::string data = TestBytes(256 << 10, 3, true);
  auto file = EncodeCacheEntry(Key(0), reinterpret_cast<const uint8_t*>(data.data()), data.size());
  ASSERT_TRUE(DecodeCacheEntry(file, Key(0), data.size()));
  // Every damage a crash or the disk can do: cut short, tail zeroed (delayed
  // allocation), a flipped bit in header, identity and payload, a foreign key.
  for (size_t cut : {size_t{0}, size_t{10}, size_t{47}, file.size() / 2, file.size() - 1}) {
    std::vector<uint8_t> f(file.begin(), file.begin() + static_cast<long>(cut));
    EXPECT_FALSE(DecodeCacheEntry(f, Key(0), data.size())) << cut;
  }
  auto zeroed = file;
  std::fill(zeroed.begin() + static_cast<long>(zeroed.size() / 2), zeroed.end(), 0);
  EXPECT_FALSE(DecodeCacheEntry(zeroed, Key(0), data.size()));
  for (size_t at : {size_t{3}, size_t{20}, size_t{50}, file.size() - 5}) {
    auto flipped = file;
    flipped[at] ^= 0x10;
    EXPECT_FALSE(DecodeCacheEntry(flipped, Key(0), data.size())) << at;
  }
  EXPECT_FALSE(DecodeCacheEntry(file, Key(0, "e2"), data.size()));
  EXPECT_FALSE(DecodeCacheEntry(file, Key(1), data.size()));
  EXPECT_FALSE(DecodeCacheEntry(file, BlockKey{"bkt2", "golden/deb12.qcow2", "e1", 0},
                                data.size()));

  // On disk: a torn file is removed at its first read.
  Put(*c, Key(0), data);
  auto files = Files();
  ASSERT_EQ(files.size(), 1u);
  ASSERT_EQ(::truncate((dir_ + "/" + files[0]).c_str(), 100), 0);
  EXPECT_EQ(Get(*c, Key(0), data.size()), "<miss>");
  EXPECT_EQ(c->stats().torn, 1u);
  EXPECT_TRUE(Files().empty());
  Put(*c, Key(0), data);  // fetched again, cached again
  EXPECT_EQ(Get(*c, Key(0), data.size()), data);
}

TEST_F(BlockCacheTest, BoundEvictsLeastRecentlyUsed) {
  auto c = Open(4 << 20);
  std::vector<std::string> blocks;
  for (int i = 0; i < 4; ++i) blocks.push_back(TestBytes(1 << 20, 10 + i));
  for (int i = 0; i < 3; ++i) Put(*c, Key(static_cast<uint64_t>(i)), blocks[static_cast<size_t>(i)]);
  EXPECT_EQ(Get(*c, Key(0), 1 << 20), blocks[0]);  // 0 is now the most recent
  Put(*c, Key(3), blocks[3]);                        // evicts 1 (entries are 1 MiB + header)
  auto s = c->stats();
  EXPECT_LE(s.bytes, 4u << 20);
  EXPECT_GE(s.evictions, 1u);
  EXPECT_FALSE(c->Contains(Key(1)));
  EXPECT_TRUE(c->Contains(Key(0)));
  EXPECT_TRUE(c->Contains(Key(3)));
  EXPECT_EQ(Files().size(), s.entries);
}

TEST_F(BlockCacheTest, EtagIsPartOfTheKeyAndOldVersionsCanBeDropped) {
  auto c = Open();
  Put(*c, Key(0, "old"), "old bytes");
  Put(*c, Key(1, "old"), "old bytes");
  Put(*c, Key(0, "new"), "new bytes");
  Put(*c, BlockKey{"bkt", "other", "old", 0}, "other");
  EXPECT_EQ(Get(*c, Key(0, "new"), 9), "new bytes");
  EXPECT_EQ(Get(*c, Key(0, "old"), 9), "old bytes");
  c->DropOtherVersions("bkt", "golden/deb12.qcow2", "new");
  EXPECT_FALSE(c->Contains(Key(0, "old")));
  EXPECT_FALSE(c->Contains(Key(1, "old")));
  EXPECT_TRUE(c->Contains(Key(0, "new")));
  EXPECT_TRUE(c->Contains(BlockKey{"bkt", "other", "old", 0}));
  EXPECT_EQ(Files().size(), 2u);
}

TEST_F(BlockCacheTest, SurvivesReopenKeepsLruOrderAndCleansTemporaries) {
  std::string a = TestBytes(1 << 20, 20), b = TestBytes(1 << 20, 21);
  {
    auto c = Open();
    Put(*c, Key(0), a);
    ::usleep(20000);
    Put(*c, Key(1), b);
    ::usleep(20000);
    EXPECT_EQ(Get(*c, Key(0), a.size()), a);  // 0 used last
  }
  // A crashed mount's temporary file and a stray file go at the next open.
  std::ofstream(dir_ + "/00/tmp.123.4") << "partial";
  std::ofstream(dir_ + "/00/junk") << "junk";
  auto c = Open(2 << 20);  // room for one entry: the older (1) goes
  EXPECT_TRUE(c->Contains(Key(0)));
  EXPECT_FALSE(c->Contains(Key(1)));
  EXPECT_EQ(Get(*c, Key(0), a.size()), a);
  EXPECT_EQ(Files().size(), 1u);
}

TEST_F(BlockCacheTest, OneProcessPerDirectoryOneCachePerProcess) {
  auto c = Open();
  auto again = Open(8 << 20);
  EXPECT_EQ(c.get(), again.get());
  EXPECT_EQ(c->max_bytes(), 8u << 20);
  // Another process sees the directory locked.
  EXPECT_NE(std::system(("flock -n '" + dir_ + "/.lock' true").c_str()), 0);
  // And kvmfs sees a directory another process holds as busy.
  std::string other = dir_ + "/other";
  ASSERT_EQ(::mkdir(other.c_str(), 0700), 0);
  int fd = ::open((other + "/.lock").c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  EXPECT_EQ(BlockCache::Open(other, 8 << 20).status().code(), Status::Code::kBusy);
  ::close(fd);
  EXPECT_TRUE(BlockCache::Open(other, 8 << 20).ok());
  EXPECT_FALSE(BlockCache::Open("relative/dir", 8 << 20).ok());
  EXPECT_FALSE(BlockCache::Open(dir_ + "/x", 1000).ok());
}

}  // namespace
}  // namespace kvmfs::s3
