// Namespace write rules over real images (raw, and qcow2 made by qemu-img):
// which disk.raw opens for writing, O_TRUNC, read-only pools, locks taken by
// open handles only, truncate, snapshot directory names, cache refreshes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "backend/image_lock.h"
#include "pool/namespace.h"
#include "pool/snapshot_names.h"
#include "../backend/lock_probe.h"
#include "temp_dir.h"

namespace kvmfs::pool {
namespace {

using testing::HaveQemuImg;
using testing::TempDir;

class NamespaceWriteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_.Write("a.raw", std::string(1 << 20, 'a'));
    Make(false, false);
  }
  void Make(bool readonly, bool force_share) {
    NamespaceOptions options;
    options.source = dir_.path();
    options.readonly = readonly;
    options.force_share = force_share;
    ns_ = std::make_unique<Namespace>(options);
  }
  // Bytes 100..103, 200..203 that someone holds, as QEMU would test them.
  std::vector<int> LockedBytes(const std::string& name) {
    return kvmfs::testing::HeldLockBytes(dir_.P(name));
  }
  bool MakeQcow2WithSnapshot() {
    if (!HaveQemuImg()) return false;
    dir_.Write("base.raw", std::string(1 << 20, 'b'));
    return TempDir::Run("qemu-img create -q -f qcow2 -b '" + dir_.P("base.raw") + "' -F raw '" +
                        dir_.P("vm.qcow2") + "'") &&
           TempDir::Run("qemu-img snapshot -c first '" + dir_.P("vm.qcow2") + "'");
  }

  TempDir dir_;
  std::unique_ptr<Namespace> ns_;
};

TEST_F(NamespaceWriteTest, TopDiskOpensForWriting) {
  auto st = ns_->Stat("/a.raw/disk.raw");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->st_mode & 0777, 0644u);
  EXPECT_EQ(ns_->Stat("/a.raw/info.json")->st_mode & 0777, 0444u);
  EXPECT_EQ(ns_->Stat("/a.raw")->st_mode & 0777, 0555u);
  auto f = ns_->Open("/a.raw/disk.raw", O_RDWR);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_TRUE(f->writable);
  EXPECT_FALSE(f->sync);
  ASSERT_TRUE(f->image->Write(0, "kvmfs", 5).ok());
  auto s = ns_->Open("/a.raw/disk.raw", O_WRONLY | O_DSYNC);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->sync);
  EXPECT_FALSE(ns_->StatFs()->f_flag & ST_RDONLY);
}

TEST_F(NamespaceWriteTest, TruncOpenIsInvalidAndInfoIsReadOnly) {
  EXPECT_EQ(ns_->Open("/a.raw/disk.raw", O_WRONLY | O_TRUNC).status().ToErrno(), EINVAL);
  EXPECT_EQ(ns_->Open("/a.raw/info.json", O_RDWR).status().ToErrno(), EROFS);
  EXPECT_EQ(ns_->Open("/a.raw/info.json", O_RDONLY | O_TRUNC).status().ToErrno(), EROFS);
}

TEST_F(NamespaceWriteTest, ReadOnlyPoolRefusesEverything) {
  Make(true, false);
  EXPECT_EQ(ns_->Stat("/a.raw/disk.raw")->st_mode & 0777, 0444u);
  EXPECT_EQ(ns_->Open("/a.raw/disk.raw", O_RDWR).status().ToErrno(), EROFS);
  EXPECT_EQ(ns_->Open("/a.raw/disk.raw", O_WRONLY).status().ToErrno(), EROFS);
  EXPECT_EQ(ns_->Truncate("/a.raw/disk.raw", 2 << 20).ToErrno(), EROFS);
  EXPECT_TRUE(ns_->StatFs()->f_flag & ST_RDONLY);
  EXPECT_TRUE(ns_->Open("/a.raw/disk.raw", O_RDONLY).ok());
}

TEST_F(NamespaceWriteTest, LocksOnlyWhileDiskHandlesAreOpen) {
  // Metadata never locks: a VM may start while kvmfs lists and stats.
  ASSERT_TRUE(ns_->Stat("/a.raw/disk.raw").ok());
  ASSERT_TRUE(ns_->Open("/a.raw/info.json", O_RDONLY).ok());
  EXPECT_TRUE(LockedBytes("a.raw").empty());
  {
    auto r = ns_->Open("/a.raw/disk.raw", O_RDONLY);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(LockedBytes("a.raw"), (std::vector<int>{100, 201, 203}));
    {
      auto w = ns_->Open("/a.raw/disk.raw", O_RDWR);
      ASSERT_TRUE(w.ok());
      EXPECT_EQ(LockedBytes("a.raw"), (std::vector<int>{100, 101, 103, 201, 203}));
      auto copy = *w;  // FileHandle copies share the handle
    }
    EXPECT_EQ(LockedBytes("a.raw"), (std::vector<int>{100, 201, 203}));
  }
  EXPECT_TRUE(LockedBytes("a.raw").empty());
}

TEST_F(NamespaceWriteTest, QemuWriterMakesOpensBusy) {
  auto qemu = FileLock::Open(dir_.P("a.raw"));
  ASSERT_TRUE(qemu.ok());
  ASSERT_TRUE((*qemu)->Set(kWriterLocks).ok());
  EXPECT_EQ(ns_->Open("/a.raw/disk.raw", O_RDONLY).status().ToErrno(), EBUSY);
  EXPECT_EQ(ns_->Open("/a.raw/disk.raw", O_RDWR).status().ToErrno(), EBUSY);
  EXPECT_EQ(ns_->Truncate("/a.raw/disk.raw", 2 << 20).ToErrno(), EBUSY);
  EXPECT_TRUE(ns_->Open("/a.raw/info.json", O_RDONLY).ok());
  Make(false, true);  // force_share: reading yes, writing never
  EXPECT_TRUE(ns_->Open("/a.raw/disk.raw", O_RDONLY).ok());
  EXPECT_EQ(ns_->Open("/a.raw/disk.raw", O_RDWR).status().ToErrno(), EBUSY);
}

TEST_F(NamespaceWriteTest, OwnWritesKeepTheOpenEngine) {
  auto entry = ns_->cache().Get(dir_.P("a.raw"));
  ASSERT_TRUE(entry.ok());
  const Image* before = (*entry)->top().get();
  {
    auto w = ns_->Open("/a.raw/disk.raw", O_RDWR);
    ASSERT_TRUE(w.ok());
    ::usleep(20000);  // let mtime move on coarse clocks
    ASSERT_TRUE(w->image->Write(4096, "data", 4).ok());
    EXPECT_EQ((*ns_->cache().Get(dir_.P("a.raw")))->top().get(), before);
  }
  // After the write session the key is refreshed: still the same engine.
  EXPECT_EQ((*ns_->cache().Get(dir_.P("a.raw")))->top().get(), before);
  ASSERT_TRUE(ns_->Open("/a.raw/disk.raw", O_RDONLY).ok());
  EXPECT_EQ((*ns_->cache().Get(dir_.P("a.raw")))->top().get(), before);
  // A change by someone else is still seen: the file is opened anew.
  ::usleep(20000);
  dir_.Write("a.raw", std::string(2 << 20, 'z'));
  EXPECT_NE((*ns_->cache().Get(dir_.P("a.raw")))->top().get(), before);
  auto r = ns_->Open("/a.raw/disk.raw", O_RDONLY);
  ASSERT_TRUE(r.ok());
  char c = 0;
  ASSERT_TRUE(r->image->Read(4096, &c, 1).ok());
  EXPECT_EQ(c, 'z');
}

TEST_F(NamespaceWriteTest, TruncateGrowsAndRefreshesSize) {
  ASSERT_TRUE(ns_->Stat("/a.raw/disk.raw").ok());
  ASSERT_TRUE(ns_->Truncate("/a.raw/disk.raw", 4 << 20).ok());
  EXPECT_EQ(ns_->Stat("/a.raw/disk.raw")->st_size, 4 << 20);
  EXPECT_EQ(ns_->Truncate("/a.raw/disk.raw", 1 << 20).ToErrno(), EINVAL);
  EXPECT_EQ(ns_->Truncate("/a.raw/info.json", 0).ToErrno(), EROFS);
  EXPECT_EQ(ns_->Truncate("/a.raw", 0).ToErrno(), EISDIR);
  EXPECT_TRUE(LockedBytes("a.raw").empty());
}

TEST_F(NamespaceWriteTest, AllocationAndInfoFollowWrites) {
  dir_.Write("h.raw", "");
  ASSERT_EQ(::truncate(dir_.P("h.raw").c_str(), 1 << 20), 0);
  EXPECT_EQ(ns_->Stat("/h.raw/disk.raw")->st_blocks, 0);
  std::string info = ns_->Open("/h.raw/info.json", O_RDONLY)->content;
  auto w = ns_->Open("/h.raw/disk.raw", O_RDWR);
  ASSERT_TRUE(w.ok());
  std::string data(65536, 'd');
  ASSERT_TRUE(w->image->Write(0, data.data(), data.size()).ok());
  ASSERT_TRUE(w->image->Flush().ok());
  w->owner->Changed();
  EXPECT_GT(ns_->Stat("/h.raw/disk.raw")->st_blocks, 0);
  EXPECT_NE(ns_->Open("/h.raw/info.json", O_RDONLY)->content, info);  // actual-size moved
}

TEST_F(NamespaceWriteTest, ViewsOfChainsAreReadOnly) {
  ASSERT_TRUE(MakeQcow2WithSnapshot()) << "qemu-img is required (tools/setup-deps.sh)";
  EXPECT_EQ(ns_->Open("/vm.qcow2/snapshots/first/disk.raw", O_RDWR).status().ToErrno(), EROFS);
  EXPECT_EQ(ns_->Open("/vm.qcow2/backing/1-base.raw/disk.raw", O_WRONLY).status().ToErrno(), EROFS);
  EXPECT_EQ(ns_->Stat("/vm.qcow2/snapshots/first/disk.raw")->st_mode & 0777, 0444u);
  EXPECT_EQ(ns_->Stat("/vm.qcow2/snapshots")->st_mode & 0777, 0755u);
  EXPECT_EQ(ns_->Truncate("/vm.qcow2/snapshots/first/disk.raw", 0).ToErrno(), EROFS);
  // Reading the overlay locks its backing file as QEMU does: 100 + 201, 203.
  auto r = ns_->Open("/vm.qcow2/disk.raw", O_RDONLY);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(LockedBytes("base.raw"), (std::vector<int>{100, 201, 203}));
  // kvmfs does not refuse itself: the backing file is one open file for
  // both, written while the overlay reads it, and the overlay sees the bytes
  // at once (issue 10). Other programs still see the union of the locks.
  auto w = ns_->Open("/base.raw/disk.raw", O_RDWR);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(LockedBytes("base.raw"), (std::vector<int>{100, 101, 103, 201, 203}));
  const uint64_t off = r->image->size() - 4096;  // not written by the overlay
  ASSERT_TRUE(w->image->Write(off, "fresh", 5).ok());
  char got[5] = {};
  ASSERT_TRUE(r->image->Read(off, got, 5).ok());
  EXPECT_EQ(std::string(got, 5), "fresh");
  w = Status::NotFound("closed");
  EXPECT_EQ(LockedBytes("base.raw"), (std::vector<int>{100, 201, 203}));
  EXPECT_TRUE(ns_->Open("/base.raw/disk.raw", O_RDONLY).ok());
}

TEST_F(NamespaceWriteTest, SnapshotDirRules) {
  ASSERT_TRUE(MakeQcow2WithSnapshot()) << "qemu-img is required (tools/setup-deps.sh)";
  EXPECT_EQ(ns_->MakeSnapshotDir("/vm.qcow2/snapshots/first").ToErrno(), EEXIST);
  EXPECT_EQ(ns_->MakeSnapshotDir("/vm.qcow2/snapshots/bad%name").ToErrno(), EINVAL);
  EXPECT_EQ(ns_->MakeSnapshotDir("/vm.qcow2/snapshots/nul%00").ToErrno(), EINVAL);
  EXPECT_EQ(ns_->MakeSnapshotDir("/vm.qcow2/elsewhere").ToErrno(), EROFS);
  EXPECT_EQ(ns_->MakeSnapshotDir("/newdir").ToErrno(), EROFS);
  EXPECT_EQ(ns_->MakeSnapshotDir("/vm.qcow2/snapshots").ToErrno(), EEXIST);
  EXPECT_EQ(ns_->MakeSnapshotDir("/a.raw/snapshots/x").ToErrno(), ENOENT);
  EXPECT_EQ(ns_->RemoveSnapshotDir("/vm.qcow2/snapshots/nope").ToErrno(), ENOENT);
  EXPECT_EQ(ns_->RemoveSnapshotDir("/vm.qcow2/backing").ToErrno(), EROFS);
  {
    auto view = ns_->Open("/vm.qcow2/snapshots/first/disk.raw", O_RDONLY);
    ASSERT_TRUE(view.ok());
    EXPECT_EQ(ns_->RemoveSnapshotDir("/vm.qcow2/snapshots/first").ToErrno(), EBUSY);
  }
  Make(true, false);
  EXPECT_EQ(ns_->MakeSnapshotDir("/vm.qcow2/snapshots/new").ToErrno(), EROFS);
  EXPECT_EQ(ns_->RemoveSnapshotDir("/vm.qcow2/snapshots/first").ToErrno(), EROFS);
  EXPECT_EQ(ns_->Stat("/vm.qcow2/snapshots")->st_mode & 0777, 0555u);
}

TEST_F(NamespaceWriteTest, SnapshotMkdirRmdirWhenTheEngineWrites) {
  ASSERT_TRUE(MakeQcow2WithSnapshot()) << "qemu-img is required (tools/setup-deps.sh)";
  Status made = ns_->MakeSnapshotDir("/vm.qcow2/snapshots/a%2Fb");
  ASSERT_TRUE(made.ok()) << made.ToString();
  auto names = ns_->List("/vm.qcow2/snapshots");
  ASSERT_TRUE(names.ok());
  ASSERT_EQ(names->size(), 2u);
  EXPECT_EQ((*names)[1].name, "a%2Fb");
  EXPECT_EQ(ns_->MakeSnapshotDir("/vm.qcow2/snapshots/a%2Fb").ToErrno(), EEXIST);
  EXPECT_TRUE(ns_->Stat("/vm.qcow2/snapshots/a%2Fb/disk.raw").ok());
  EXPECT_NE(ns_->Open("/vm.qcow2/info.json", O_RDONLY)->content.find("\"a/b\""), std::string::npos);
  ASSERT_TRUE(ns_->RemoveSnapshotDir("/vm.qcow2/snapshots/first").ok());
  EXPECT_EQ(ns_->Stat("/vm.qcow2/snapshots/first").status().ToErrno(), ENOENT);
  EXPECT_EQ(ns_->List("/vm.qcow2/snapshots")->size(), 1u);
  EXPECT_TRUE(LockedBytes("vm.qcow2").empty());
  EXPECT_TRUE(TempDir::Run("qemu-img check '" + dir_.P("vm.qcow2") + "'"));
}

TEST_F(NamespaceWriteTest, ConcurrentHandlesEndWithoutLocks) {
  // Readers and writers open, write, stat and close at once; the handle
  // counts, lock upgrades and write sessions must end where they began.
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 40; ++i) {
        auto f = ns_->Open("/a.raw/disk.raw", t % 2 ? O_RDWR : O_RDONLY);
        if (!f.ok()) {
          ++failures;
          continue;
        }
        if (f->writable) {
          char b = static_cast<char>('0' + t);
          if (!f->image->Write(static_cast<uint64_t>(t * 4096 + i), &b, 1).ok()) ++failures;
          f->owner->Changed();
        }
        if (!ns_->Stat("/a.raw/disk.raw").ok()) ++failures;
        if (i % 8 == 0 && ns_->Open("/a.raw/info.json", O_RDONLY)->content.empty()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_TRUE(LockedBytes("a.raw").empty());
  auto f = ns_->Open("/a.raw/disk.raw", O_RDONLY);
  ASSERT_TRUE(f.ok());
  char got = 0;
  ASSERT_TRUE(f->image->Read(1 * 4096 + 39, &got, 1).ok());
  EXPECT_EQ(got, '1');
}

TEST(SnapshotNameForDir, InvertsEscaping) {
  EXPECT_EQ(SnapshotNameForDir("plain"), "plain");
  EXPECT_EQ(SnapshotNameForDir("a%2Fb%25c"), "a/b%c");
  EXPECT_EQ(EscapeSnapshotName(*SnapshotNameForDir("a%2Fb%25c"), "1"), "a%2Fb%25c");
  EXPECT_FALSE(SnapshotNameForDir("50%"));
  EXPECT_FALSE(SnapshotNameForDir("%2f"));  // lower case is not what kvmfs shows
  EXPECT_FALSE(SnapshotNameForDir("%00"));
  EXPECT_FALSE(SnapshotNameForDir(""));
  EXPECT_FALSE(SnapshotNameForDir("."));
  EXPECT_FALSE(SnapshotNameForDir(".."));
  EXPECT_EQ(SnapshotNameForDir("%2E"), std::nullopt);
}

}  // namespace
}  // namespace kvmfs::pool
