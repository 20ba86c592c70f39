#include "kvmfs/status.h"

#include <gtest/gtest.h>

namespace kvmfs {
namespace {

TEST(Status, OkHasNoErrno) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToErrno(), 0);
}

TEST(Status, EachCodeMapsToItsErrno) {
  EXPECT_EQ(Status::Corruption("x").ToErrno(), EIO);
  EXPECT_EQ(Status::NotFound("x").ToErrno(), ENOENT);
  EXPECT_EQ(Status::Permission("x").ToErrno(), EACCES);
  EXPECT_EQ(Status::ReadOnly("x").ToErrno(), EROFS);
  EXPECT_EQ(Status::Busy("x").ToErrno(), EBUSY);
  EXPECT_EQ(Status::TooLarge("x").ToErrno(), EFBIG);
  EXPECT_EQ(Status::NotSupported("x").ToErrno(), ENOTSUP);
}

TEST(Status, FromErrnoKeepsUnmappedErrno) {
  Status s = Status::FromErrno(EXDEV, "f");
  EXPECT_EQ(s.ToErrno(), EXDEV);
  EXPECT_NE(s.message().find("f: "), std::string::npos);
  EXPECT_TRUE(Status::FromErrno(ENOENT, "f").IsNotFound());
}

TEST(Status, WithContextPrefixesMessage) {
  Status s = Status::Corruption("L1 offset unaligned").WithContext("vm.qcow2");
  EXPECT_EQ(s.message(), "vm.qcow2: L1 offset unaligned");
  EXPECT_EQ(s.ToString(), "Corruption: vm.qcow2: L1 offset unaligned");
}

Result<int> Half(int v) {
  if (v % 2) return Status::InvalidArgument("odd");
  return v / 2;
}

Status UseHalf(int v, int* out) {
  KVMFS_ASSIGN_OR_RETURN(*out, Half(v));
  return Status::OK();
}

TEST(Result, AssignOrReturnPropagates) {
  int out = 0;
  EXPECT_TRUE(UseHalf(4, &out).ok());
  EXPECT_EQ(out, 2);
  EXPECT_EQ(UseHalf(3, &out).code(), Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace kvmfs
