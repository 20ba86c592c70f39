// The local file backend's writing side: WriteZeroes with and without unmap,
// size never changed, read-only refusals.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "backend/image_lock.h"
#include "kvmfs/backend.h"

namespace kvmfs {
namespace {

class LocalFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvmfs-local-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/f.raw";
    std::ofstream(path_, std::ios::binary) << std::string(1 << 20, '\x5a');
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  std::vector<uint8_t> Read(Backend& b, uint64_t off, size_t len) {
    std::vector<uint8_t> buf(len);
    EXPECT_TRUE(b.ReadAt(off, buf.data(), len).ok());
    return buf;
  }
  uint64_t Blocks() {
    struct stat st;
    ::stat(path_.c_str(), &st);
    return static_cast<uint64_t>(st.st_blocks) * 512;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(LocalFileTest, ReadOnlyRefusesModifications) {
  auto b = OpenLocalFile(path_, false);
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE((*b)->writable());
  uint8_t x = 1;
  EXPECT_EQ((*b)->WriteAt(0, &x, 1).code(), Status::Code::kReadOnly);
  EXPECT_EQ((*b)->WriteZeroes(0, 4096, true).code(), Status::Code::kReadOnly);
  EXPECT_EQ((*b)->Truncate(0).code(), Status::Code::kReadOnly);
}

TEST_F(LocalFileTest, PunchHoleReadsZerosAndFreesSpace) {
  auto b = OpenLocalFile(path_, true);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->Flush().ok());
  uint64_t before = Blocks();
  ASSERT_TRUE((*b)->WriteZeroes(65536, 262144, true).ok());
  EXPECT_EQ(Read(**b, 65536, 262144), std::vector<uint8_t>(262144, 0));
  EXPECT_EQ(Read(**b, 65536 - 16, 16), std::vector<uint8_t>(16, 0x5a));
  EXPECT_EQ(Read(**b, 65536 + 262144, 16), std::vector<uint8_t>(16, 0x5a));
  EXPECT_EQ(*(*b)->Size(), 1u << 20);
  // Most file systems free the blocks; tmpfs and ext4 do.
  EXPECT_LE(Blocks(), before);
}

TEST_F(LocalFileTest, ZeroRangeReadsZerosKeepsSize) {
  auto b = OpenLocalFile(path_, true);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->WriteZeroes(4096, 8192, false).ok());
  EXPECT_EQ(Read(**b, 4096, 8192), std::vector<uint8_t>(8192, 0));
  EXPECT_EQ(Read(**b, 4096 + 8192, 4), std::vector<uint8_t>(4, 0x5a));
  EXPECT_EQ(*(*b)->Size(), 1u << 20);
}

TEST_F(LocalFileTest, ZeroesPastEndNeverGrowTheFile) {
  auto b = OpenLocalFile(path_, true);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->WriteZeroes((1 << 20) - 4096, 65536, false).ok());
  ASSERT_TRUE((*b)->WriteZeroes(2 << 20, 65536, true).ok());
  EXPECT_EQ(*(*b)->Size(), 1u << 20);
  EXPECT_EQ(Read(**b, (1 << 20) - 4096, 4096), std::vector<uint8_t>(4096, 0));
}

TEST_F(LocalFileTest, UnalignedZeroes) {
  auto b = OpenLocalFile(path_, true);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->WriteZeroes(1000, 3, true).ok());
  ASSERT_TRUE((*b)->WriteZeroes(5001, 7, false).ok());
  auto got = Read(**b, 998, 7);
  EXPECT_EQ(got, (std::vector<uint8_t>{0x5a, 0x5a, 0, 0, 0, 0x5a, 0x5a}));
  EXPECT_EQ(Read(**b, 5001, 7), std::vector<uint8_t>(7, 0));
  EXPECT_EQ(Read(**b, 5008, 1), std::vector<uint8_t>(1, 0x5a));
}

TEST_F(LocalFileTest, TruncateGrowsWithZeros) {
  auto b = OpenLocalFile(path_, true);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->Truncate(3 << 20).ok());
  EXPECT_EQ(*(*b)->Size(), 3u << 20);
  EXPECT_EQ(Read(**b, 2 << 20, 8), std::vector<uint8_t>(8, 0));
}

// Image content chooses backing and data file names: a FIFO there must be
// refused at once, never waited on (issue 15), and so must a socket or a
// character device; the same for the descriptor that holds QEMU's locks.
TEST_F(LocalFileTest, FifosAndDevicesAreRefusedWithoutBlocking) {
  const std::string fifo = dir_ + "/pipe.qcow2";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (bool writable : {false, true}) {
    auto f = OpenLocalFile(fifo, writable);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), Status::Code::kInvalidArgument) << f.status().ToString();
  }
  auto dev = OpenLocalFile("/dev/null", false);
  EXPECT_EQ(dev.status().code(), Status::Code::kInvalidArgument);
  auto lock = FileLock::Open(fifo);
  EXPECT_EQ(lock.status().code(), Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace kvmfs
