// The S3 store (s3_store.h) against fake_s3.py: listing, stat, resolve and
// open of objects, and the overlay path scheme of pools with overlay_dir.
#include "backend/s3/s3_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "backend/s3/overlay.h"
#include "fake_s3.h"

namespace kvmfs::s3 {
namespace {

using testing::FakeS3;

class S3StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.Start());
    server_.Put("golden/a.raw", std::string(100000, 'a'));
    server_.Put("golden/sub/b.qcow2", std::string(5000, 'b'));
    server_.Put("other.raw", "x");
    char tmpl[] = "/tmp/kvmfs-s3-store-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::shared_ptr<Store> Open(bool overlays) {
    S3StoreConfig c;
    c.s3 = server_.Config();
    c.s3.prefix = "golden";
    if (overlays) c.overlay_dir = dir_ + "/overlays";
    auto store = NewS3Store(c);
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    return store.ok() ? *store : nullptr;
  }
  std::string Root() const { return std::string("s3://") + testing::kBucket + "/golden"; }

  FakeS3 server_;
  std::string dir_;
};

TEST_F(S3StoreTest, ListsFoldersAndObjectsBelowThePrefix) {
  auto store = Open(false);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->root(), Root());
  EXPECT_TRUE(store->caps().read_only);
  auto listed = store->List(store->root());
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].name, "a.raw");
  ASSERT_TRUE((*listed)[0].st);
  EXPECT_TRUE(S_ISREG((*listed)[0].st->st_mode));
  EXPECT_EQ((*listed)[0].st->st_size, 100000);
  EXPECT_EQ((*listed)[1].name, "sub");
  EXPECT_TRUE(S_ISDIR((*listed)[1].st->st_mode));
  auto st = store->Stat(Root() + "/sub", true);
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(S_ISDIR(st->st_mode));
  EXPECT_TRUE(store->Stat(Root() + "/nothing", true).status().IsNotFound());
  // Looking for it once does not make it a folder.
  EXPECT_TRUE(store->Stat(Root() + "/nothing", true).status().IsNotFound());
}

TEST_F(S3StoreTest, OpensObjectsReadOnly) {
  auto store = Open(false);
  ASSERT_TRUE(store);
  auto file = store->Open(Root() + "/a.raw", false);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  std::string buf(10, '\0');
  ASSERT_TRUE((*file)->ReadAt(99990, buf.data(), 10).ok());
  EXPECT_EQ(buf, std::string(10, 'a'));
  EXPECT_EQ(store->Open(Root() + "/a.raw", true).status().code(), Status::Code::kReadOnly);
}

TEST_F(S3StoreTest, ResolvesNamesWithinThePoolOnly) {
  auto store = Open(false);
  ASSERT_TRUE(store);
  auto r = store->Resolve(Root() + "/sub/b.qcow2", "../a.raw");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, Root() + "/a.raw");
  auto by_url = store->Resolve(Root() + "/sub/b.qcow2", "s3://test-bucket/golden/a.raw");
  ASSERT_TRUE(by_url.ok());
  EXPECT_EQ(*by_url, Root() + "/a.raw");
  EXPECT_FALSE(store->Resolve(Root() + "/a.raw", "../../other.raw").ok());
  EXPECT_EQ(store->Resolve(Root() + "/a.raw", "/etc/passwd").status().code(),
            Status::Code::kNotSupported);
}

TEST_F(S3StoreTest, OverlayPoolListsLinksToObjectsUntilTheFirstWrite) {
  auto store = Open(true);
  ASSERT_TRUE(store);
  EXPECT_TRUE(store->caps().write_elsewhere);
  const std::string image = Root() + "/a.raw";
  auto lst = store->Stat(image, false);
  ASSERT_TRUE(lst.ok());
  EXPECT_TRUE(S_ISLNK(lst->st_mode));
  auto target = store->Canonical(image);
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(*target, Root() + "/.kvmfs-object/a.raw");

  ASSERT_TRUE(store->PrepareWrite(image, "raw", 100000).ok());
  target = store->Canonical(image);
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(target->rfind(Root() + "/.kvmfs-overlay/a.raw.", 0), 0u) << *target;
  auto st = store->Stat(image, true);
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(S_ISREG(st->st_mode));
  auto file = store->Open(*target, true);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_TRUE((*file)->writable());
  // The overlay's backing name leads to the object, never back to the overlay.
  auto backing = store->Resolve(*target, std::string("s3://") + testing::kBucket + "/golden/a.raw");
  ASSERT_TRUE(backing.ok()) << backing.status().ToString();
  EXPECT_EQ(*backing, Root() + "/.kvmfs-object/a.raw");
  auto described = store->Describe(*target);
  ASSERT_TRUE(described);
  bool named = false;
  for (const InfoField& f : *described)
    named |= f.key == "overlay" && std::get<std::string>(f.value).rfind(dir_ + "/overlays/", 0) == 0;
  EXPECT_TRUE(named);
  // A store opened anew (a remount) finds it.
  auto again = Open(true);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again->Canonical(image), *target);
}

TEST_F(S3StoreTest, WrongSecretFailsWithoutTheSecret) {
  S3StoreConfig c;
  c.s3 = server_.Config();
  c.s3.credentials.secret_key = "definitely-wrong-secret-000000000000000";
  auto store = NewS3Store(c);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), Status::Code::kPermission);
  EXPECT_EQ(store.status().message().find("definitely-wrong"), std::string::npos);
}

}  // namespace
}  // namespace kvmfs::s3
