#include "pool/snapshot_names.h"

#include <gtest/gtest.h>

namespace kvmfs::pool {
namespace {

SnapshotInfo Snap(std::string id, std::string name) {
  SnapshotInfo s;
  s.id = std::move(id);
  s.name = std::move(name);
  return s;
}

TEST(SnapshotNames, PlainNamesAreKept) {
  EXPECT_EQ(EscapeSnapshotName("before-upgrade", "1"), "before-upgrade");
  EXPECT_EQ(EscapeSnapshotName("with space", "1"), "with space");
}

TEST(SnapshotNames, SlashAndPercentAreEscaped) {
  EXPECT_EQ(EscapeSnapshotName("a/b", "1"), "a%2Fb");
  EXPECT_EQ(EscapeSnapshotName("100%", "1"), "100%25");
  // The escaped form of a name that already looks escaped stays distinct.
  EXPECT_EQ(EscapeSnapshotName("a%2Fb", "1"), "a%252Fb");
}

TEST(SnapshotNames, EmptyDotAndDotDotBecomeTheId) {
  EXPECT_EQ(EscapeSnapshotName("", "7"), "7");
  EXPECT_EQ(EscapeSnapshotName(".", "8"), "8");
  EXPECT_EQ(EscapeSnapshotName("..", "9"), "9");
  EXPECT_EQ(EscapeSnapshotName("", "a/b"), "a%2Fb");
  // An unusable id too (a hostile image) still gives a file name.
  EXPECT_EQ(EscapeSnapshotName("", ""), "@");
  EXPECT_EQ(EscapeSnapshotName("..", ".."), "@..");
}

TEST(SnapshotNames, NulBytesAreEscaped) {
  EXPECT_EQ(EscapeSnapshotName(std::string("a\0b", 3), "1"), "a%00b");
}

TEST(SnapshotNames, DuplicateNamesGetTheirIdAppended) {
  auto names = SnapshotDirNames({Snap("1", "daily"), Snap("2", "daily"), Snap("3", "other")});
  EXPECT_EQ(names, (std::vector<std::string>{"daily", "daily@2", "other"}));
}

TEST(SnapshotNames, NamesThatCollideAfterEscapingStayReachable) {
  // An empty name shows as its id "2", which a later snapshot named "2" then
  // cannot have.
  auto names = SnapshotDirNames({Snap("1", "x"), Snap("2", ""), Snap("3", "2")});
  EXPECT_EQ(names, (std::vector<std::string>{"x", "2", "2@3"}));
}

TEST(SnapshotNames, SuffixIsRepeatedUntilUnique) {
  auto names = SnapshotDirNames({Snap("1", "a@2"), Snap("2", "a"), Snap("2", "a")});
  // The third duplicates id and name of the second (hostile table): still unique.
  EXPECT_EQ(names[0], "a@2");
  EXPECT_EQ(names[1], "a");
  EXPECT_EQ(names[2], "a@2@2");
}

}  // namespace
}  // namespace kvmfs::pool
