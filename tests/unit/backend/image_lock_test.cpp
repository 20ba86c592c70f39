// QEMU's image locks: OFD byte locks from two descriptors of one file conflict
// as QEMU's raw_check_lock_bytes says; claims inside kvmfs share one descriptor.
#include "backend/image_lock.h"
#include "lock_probe.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

namespace kvmfs {
namespace {

class ImageLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvmfs-lock-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/img.qcow2";
    std::ofstream(path_) << std::string(4096, 'x');
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  // The bytes some other open file description holds, as another program
  // (QEMU) would see them with F_OFD_GETLK.
  std::vector<int> LockedBytes() { return kvmfs::testing::HeldLockBytes(path_); }

  std::unique_ptr<FileLock> Open() {
    auto fl = FileLock::Open(path_);
    EXPECT_TRUE(fl.ok()) << fl.status().ToString();
    return fl.ok() ? std::move(fl).value() : nullptr;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(ImageLockTest, SetsAreQemuBytes) {
  EXPECT_EQ(kWriterLocks.ToString(), "100,101,103+201,203");
  EXPECT_EQ(kReaderLocks.ToString(), "100+201,203");
  EXPECT_EQ(kSharedReaderLocks.ToString(), "100+");
}

TEST_F(ImageLockTest, WriterHoldsQemuWriterBytes) {
  auto a = Open();
  ASSERT_TRUE(a->Set(kWriterLocks).ok());
  EXPECT_EQ(LockedBytes(), (std::vector<int>{100, 101, 103, 201, 203}));
  ASSERT_TRUE(a->Set(kReaderLocks).ok());  // downgrade
  EXPECT_EQ(LockedBytes(), (std::vector<int>{100, 201, 203}));
  ASSERT_TRUE(a->Set({}).ok());
  EXPECT_TRUE(LockedBytes().empty());
}

TEST_F(ImageLockTest, ReaderRefusedWhileOtherDescriptorWrites) {
  auto writer = Open();
  auto reader = Open();
  ASSERT_TRUE(writer->Set(kWriterLocks).ok());
  Status st = reader->Set(kReaderLocks);
  EXPECT_EQ(st.code(), Status::Code::kBusy);
  EXPECT_NE(st.message().find("Failed to get shared \"write\" lock"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("Is another process using the image [" + path_ + "]?"),
            std::string::npos);
  EXPECT_TRUE(reader->held().empty());  // rolled back
  EXPECT_EQ(LockedBytes(), (std::vector<int>{100, 101, 103, 201, 203}));
  // force_share (qemu-img -U): only byte 100, which a writer does not refuse.
  EXPECT_TRUE(reader->Set(kSharedReaderLocks).ok());
}

TEST_F(ImageLockTest, WriterRefusedWhileOtherDescriptorReads) {
  auto reader = Open();
  auto writer = Open();
  ASSERT_TRUE(reader->Set(kReaderLocks).ok());
  Status st = writer->Set(kWriterLocks);
  EXPECT_EQ(st.code(), Status::Code::kBusy);
  EXPECT_NE(st.message().find("Failed to get \"write\" lock"), std::string::npos) << st.message();
  EXPECT_TRUE(writer->held().empty());
  EXPECT_EQ(LockedBytes(), (std::vector<int>{100, 201, 203}));
  // Two readers share.
  EXPECT_TRUE(writer->Set(kReaderLocks).ok());
}

TEST_F(ImageLockTest, UpgradeRefusedKeepsReadLocks) {
  auto a = Open();
  auto b = Open();
  ASSERT_TRUE(a->Set(kReaderLocks).ok());
  ASSERT_TRUE(b->Set(kReaderLocks).ok());
  EXPECT_EQ(a->Set(kWriterLocks).code(), Status::Code::kBusy);
  EXPECT_EQ(a->held(), kReaderLocks);
  b.reset();  // closing the descriptor drops its OFD locks
  EXPECT_TRUE(a->Set(kWriterLocks).ok());
}

TEST_F(ImageLockTest, WriterRefusedWhileSharedReaderReadsButNotViceVersa) {
  // qemu-img -U holds byte 100 only: a writer may still come (QEMU allows it).
  auto shared = Open();
  auto writer = Open();
  ASSERT_TRUE(shared->Set(kSharedReaderLocks).ok());
  EXPECT_TRUE(writer->Set(kWriterLocks).ok());
}

// kvmfs never refuses itself (issue 10: a reader opened right after a
// writer's close() conflicted with kvmfs's own write lock): claims on one
// file share one descriptor holding their union.
TEST_F(ImageLockTest, ClaimsShareOneDescriptorAndNeverRefuseEachOther) {
  auto r1 = LockClaim::Acquire(path_, kReaderLocks);
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  auto r2 = LockClaim::Acquire(path_, kReaderLocks);
  ASSERT_TRUE(r2.ok());
  auto w = LockClaim::Acquire(path_, kWriterLocks);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(LockedBytes(), (std::vector<int>{100, 101, 103, 201, 203}));
  // Another program is still kept out by the union.
  auto qemu = Open();
  EXPECT_EQ(qemu->Set(kReaderLocks).code(), Status::Code::kBusy);
  w->reset();
  r2->reset();
  EXPECT_EQ(LockedBytes(), (std::vector<int>{100, 201, 203}));
  ASSERT_TRUE((*r1)->Change(kWriterLocks).ok());
  EXPECT_EQ(LockedBytes(), (std::vector<int>{100, 101, 103, 201, 203}));
  ASSERT_TRUE((*r1)->Change(kReaderLocks).ok());
  EXPECT_EQ(LockedBytes(), (std::vector<int>{100, 201, 203}));
  r1->reset();
  EXPECT_TRUE(LockedBytes().empty());
}

TEST_F(ImageLockTest, ClaimSeesOtherProgramsLocks) {
  auto qemu = Open();  // stands for a QEMU process writing the image
  ASSERT_TRUE(qemu->Set(kWriterLocks).ok());
  auto r = LockClaim::Acquire(path_, kReaderLocks);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().ToErrno(), EBUSY);
  auto s = LockClaim::Acquire(path_, kSharedReaderLocks);
  EXPECT_TRUE(s.ok());
  s->reset();
  qemu.reset();
  EXPECT_TRUE(LockClaim::Acquire(path_, kWriterLocks).ok());
  EXPECT_TRUE(LockedBytes().empty());  // the temporary claim is gone again
}

TEST_F(ImageLockTest, HardLinkIsTheSameFile) {
  std::string link = dir_ + "/link.qcow2";
  ASSERT_EQ(::link(path_.c_str(), link.c_str()), 0);
  auto a = LockClaim::Acquire(path_, kReaderLocks);
  ASSERT_TRUE(a.ok());
  auto b = LockClaim::Acquire(link, kWriterLocks);
  ASSERT_TRUE(b.ok());
  // One descriptor holds both claims: the writer bytes are there once.
  EXPECT_EQ(LockedBytes(), (std::vector<int>{100, 101, 103, 201, 203}));
  b->reset();
  EXPECT_EQ(LockedBytes(), (std::vector<int>{100, 201, 203}));
}

}  // namespace
}  // namespace kvmfs
