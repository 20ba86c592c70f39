#include <gtest/gtest.h>

#include <vector>

#include "kvmfs/backend.h"

namespace kvmfs {
namespace {

TEST(MemBackend, ReadPastEndIsZeros) {
  auto b = NewMemBackend("m", {1, 2, 3});
  uint8_t buf[6] = {9, 9, 9, 9, 9, 9};
  ASSERT_TRUE(b->ReadAt(1, buf, sizeof buf).ok());
  EXPECT_EQ(std::vector<uint8_t>(buf, buf + 6), (std::vector<uint8_t>{2, 3, 0, 0, 0, 0}));
}

TEST(MemBackend, ReadOnlyRefusesWrites) {
  auto b = NewMemBackend("m", {}, /*writable=*/false);
  uint8_t x = 1;
  EXPECT_EQ(b->WriteAt(0, &x, 1).code(), Status::Code::kReadOnly);
  EXPECT_EQ(b->Truncate(0).code(), Status::Code::kReadOnly);
}

TEST(LocalFile, MissingFileIsNotFound) {
  auto r = OpenLocalFile("/nonexistent/kvmfs-test", false);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().IsNotFound());
}

}  // namespace
}  // namespace kvmfs
