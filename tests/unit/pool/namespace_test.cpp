#include "pool/namespace.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

#include <nlohmann/json.hpp>

#include "fake_image.h"
#include "temp_dir.h"

namespace kvmfs::pool {
namespace {

using testing::FakeImage;
using testing::TempDir;

SnapshotInfo Snap(std::string id, std::string name, uint64_t disk_size) {
  SnapshotInfo s;
  s.id = std::move(id);
  s.name = std::move(name);
  s.disk_size = disk_size;
  return s;
}

std::vector<std::string> Names(const Result<std::vector<DirEntry>>& entries) {
  std::vector<std::string> names;
  if (entries.ok())
    for (const DirEntry& e : *entries) names.push_back(e.name);
  return names;
}

// A pool of files whose images open through a fake opener: "*.qcow2" files
// open as a chain of a FakeImage with snapshots over a fake backing layer,
// "bad.*" fails as corrupt, the rest as a single FakeImage.
class NamespaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_.MkDir("sub");
    dir_.MkDir("sub/deeper");
    dir_.MkDir(".hidden");
    dir_.Write("vm1.qcow2", std::string("QFI\xfb\0\0\0\3", 8) + std::string(504, '\0'));
    dir_.Write("plain.img", "x");
    dir_.Write("bad.vdi", "x");
    dir_.Write("notes.txt", "not an image");
    dir_.Write("mystery", std::string("QFI\xfb\0\0\0\3", 8) + std::string(504, '\0'));
    dir_.Write("disk-flat.vmdk", "x");
    dir_.Write("sub/inner.raw", "x");
    dir_.Write(".hidden/h.raw", "x");
    ::symlink("/etc", dir_.P("escape").c_str());
    ::symlink("/etc/hostname", dir_.P("escape.raw").c_str());
    ::symlink("plain.img", dir_.P("alias.img").c_str());
    ::symlink("..", dir_.P("sub/up").c_str());
    NamespaceOptions options;
    options.source = dir_.path();
    options.uid = 1234;
    options.gid = 5678;
    ns_ = std::make_unique<Namespace>(options, [this](const std::string& path, const ChainPolicy&,
                                                      const std::string& format) {
      return Opener(path, format);
    });
  }

  Result<Chain> Opener(const std::string& path, const std::string& format) {
    ++opens_;
    last_format_ = format;
    if (path.find("/bad.") != std::string::npos) return Status::Corruption(path + ": bad header");
    Chain chain;
    if (path.size() > 6 && path.compare(path.size() - 6, 6, ".qcow2") == 0) {
      auto top = std::make_shared<FakeImage>(
          1 << 20, std::vector<SnapshotInfo>{Snap("1", "a/b", 4096), Snap("2", "", 8192),
                                             Snap("3", "a/b", 512)});
      auto base = std::make_shared<FakeImage>(1 << 20);
      top->SetBacking(base);
      chain.layers.push_back({path, "qcow2", top});
      chain.layers.push_back({dir_.P("base/base.img"), "raw", base});
    } else {
      chain.layers.push_back({path, format, std::make_shared<FakeImage>(2 << 20)});
    }
    return chain;
  }

  TempDir dir_;
  std::unique_ptr<Namespace> ns_;
  std::atomic<int> opens_{0};
  std::string last_format_;
};

TEST_F(NamespaceTest, RootListsFoldersAndImagesOnly) {
  EXPECT_EQ(Names(ns_->List("/")), (std::vector<std::string>{"alias.img", "bad.vdi", "mystery",
                                                              "plain.img", "sub", "vm1.qcow2"}));
  EXPECT_EQ(Names(ns_->List("/sub")), (std::vector<std::string>{"deeper", "inner.raw"}));
  EXPECT_EQ(opens_, 0) << "listing folders must not open images";
}

TEST_F(NamespaceTest, HiddenAndEscapingEntriesDoNotResolve) {
  for (const char* path : {"/.hidden", "/.hidden/h.raw", "/notes.txt", "/disk-flat.vmdk",
                           "/escape", "/escape.raw", "/sub/up", "/nope", "/vm1.qcow2/nope"}) {
    auto node = ns_->Resolve(path);
    ASSERT_FALSE(node.ok()) << path;
    EXPECT_EQ(node.status().ToErrno(), ENOENT) << path;
  }
}

TEST_F(NamespaceTest, PathsResolveToNodes) {
  struct Case {
    const char* path;
    NodeKind kind;
  };
  for (const Case& c : {Case{"/", NodeKind::kFolder}, Case{"/sub/deeper", NodeKind::kFolder},
                        Case{"/sub/inner.raw", NodeKind::kImageDir},
                        Case{"/mystery", NodeKind::kImageDir},
                        Case{"/alias.img", NodeKind::kImageDir},
                        Case{"/vm1.qcow2", NodeKind::kImageDir},
                        Case{"/vm1.qcow2/disk.raw", NodeKind::kDisk},
                        Case{"/vm1.qcow2/info.json", NodeKind::kInfo},
                        Case{"/vm1.qcow2/snapshots", NodeKind::kSnapshotsDir},
                        Case{"/vm1.qcow2/snapshots/a%2Fb", NodeKind::kSnapshotDir},
                        Case{"/vm1.qcow2/snapshots/2/disk.raw", NodeKind::kDisk},
                        Case{"/vm1.qcow2/backing", NodeKind::kBackingDir},
                        Case{"/vm1.qcow2/backing/1-base.img", NodeKind::kLayerDir},
                        Case{"/vm1.qcow2/backing/1-base.img/info.json", NodeKind::kInfo}}) {
    auto node = ns_->Resolve(c.path);
    ASSERT_TRUE(node.ok()) << c.path << ": " << node.status().ToString();
    EXPECT_EQ(node->kind, c.kind) << c.path;
  }
  auto disk = ns_->Resolve("/vm1.qcow2/disk.raw/x");
  ASSERT_FALSE(disk.ok());
  EXPECT_EQ(disk.status().ToErrno(), ENOTDIR);
}

TEST_F(NamespaceTest, ImageDirectoryStatDoesNotOpen) {
  auto st = ns_->Stat("/vm1.qcow2");
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(S_ISDIR(st->st_mode));
  // Owner and group of the image file; r-x for who may read it (0644 file).
  struct stat host;
  ASSERT_EQ(::chmod(dir_.P("vm1.qcow2").c_str(), 0640), 0);
  ASSERT_EQ(::stat(dir_.P("vm1.qcow2").c_str(), &host), 0);
  st = ns_->Stat("/vm1.qcow2");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->st_mode & 07777, 0550u);
  EXPECT_EQ(st->st_uid, host.st_uid);
  EXPECT_EQ(st->st_gid, host.st_gid);
  EXPECT_EQ(opens_, 0);
}

TEST_F(NamespaceTest, ImageDirectoryShowsSnapshotsAndBacking) {
  EXPECT_EQ(Names(ns_->List("/vm1.qcow2")),
            (std::vector<std::string>{"disk.raw", "info.json", "check.json", "snapshots", "backing"}));
  EXPECT_EQ(last_format_, "qcow2");
  // Colliding names stay reachable: the later "a/b" gets its id appended.
  EXPECT_EQ(Names(ns_->List("/vm1.qcow2/snapshots")),
            (std::vector<std::string>{"a%2Fb", "2", "a%2Fb@3"}));
  EXPECT_EQ(Names(ns_->List("/vm1.qcow2/backing")), (std::vector<std::string>{"1-base.img"}));
  EXPECT_EQ(Names(ns_->List("/vm1.qcow2/snapshots/2")),
            (std::vector<std::string>{"disk.raw", "info.json"}));
  // A raw image has neither.
  EXPECT_EQ(Names(ns_->List("/plain.img")), (std::vector<std::string>{"disk.raw", "info.json", "check.json"}));
  EXPECT_FALSE(ns_->Resolve("/plain.img/snapshots").ok());
  EXPECT_FALSE(ns_->Resolve("/plain.img/backing").ok());
}

TEST_F(NamespaceTest, DataViewOfAnUncheckableLayerIsRootOnly) {
  // The backing layer's file (base/base.img) does not exist: nobody but
  // root may read a view whose lower layers cannot be checked.
  auto st = ns_->Stat("/vm1.qcow2/disk.raw");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->st_mode & 07777, 0u);
  // info.json is no wider than the image file itself (0644 here).
  EXPECT_EQ(ns_->Stat("/vm1.qcow2/info.json")->st_mode & 07777, 0444u);
}

TEST_F(NamespaceTest, DiskAttributesComeFromTheView) {
  // The view is readable by whom both its files let read (0644 over 0640).
  dir_.MkDir("base");
  dir_.Write("base/base.img", "x");
  ASSERT_EQ(::chmod(dir_.P("vm1.qcow2").c_str(), 0644), 0);
  ASSERT_EQ(::chmod(dir_.P("base/base.img").c_str(), 0640), 0);
  auto st = ns_->Stat("/vm1.qcow2/disk.raw");
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(S_ISREG(st->st_mode));
  EXPECT_EQ(st->st_mode & 07777, 0440u);
  EXPECT_EQ(st->st_size, 1 << 20);
  EXPECT_EQ(st->st_blocks, (1 << 19) / 512);  // FakeImage: the first half is data
  EXPECT_EQ(ns_->Stat("/vm1.qcow2/info.json")->st_mode & 07777, 0444u);
  EXPECT_EQ(ns_->Stat("/vm1.qcow2/backing/1-base.img/disk.raw")->st_mode & 07777, 0440u);
  auto snap = ns_->Stat("/vm1.qcow2/snapshots/a%2Fb@3/disk.raw");
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->st_size, 512);
  auto info = ns_->Stat("/vm1.qcow2/snapshots/a%2Fb@3/info.json");
  ASSERT_TRUE(info.ok());
  auto file = ns_->Open("/vm1.qcow2/snapshots/a%2Fb@3/info.json", O_RDONLY);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(static_cast<size_t>(info->st_size), file->content.size());
  auto j = nlohmann::json::parse(file->content);
  EXPECT_EQ(j["virtual-size"], 512);
  EXPECT_EQ(j["snapshot"]["id"], "3");
  EXPECT_EQ(opens_, 1) << "one open serves every view of the image";
}

TEST_F(NamespaceTest, LayerInfoDescribesThatLayer) {
  auto top = ns_->Open("/vm1.qcow2/info.json", O_RDONLY);
  ASSERT_TRUE(top.ok());
  auto layer = ns_->Open("/vm1.qcow2/backing/1-base.img/info.json", O_RDONLY);
  ASSERT_TRUE(layer.ok());
  auto tj = nlohmann::json::parse(top->content);
  auto lj = nlohmann::json::parse(layer->content);
  EXPECT_EQ(tj["filename"], dir_.P("vm1.qcow2"));
  EXPECT_EQ(lj["filename"], dir_.P("base/base.img"));
  EXPECT_EQ(tj["snapshots"].size(), 3u);
  EXPECT_FALSE(lj.contains("snapshots"));
}

TEST_F(NamespaceTest, WritesAreRefused) {
  for (int flags : {O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC}) {
    auto file = ns_->Open("/plain.img/disk.raw", flags);
    ASSERT_FALSE(file.ok());
    EXPECT_EQ(file.status().ToErrno(), EROFS);
  }
  auto dir = ns_->Open("/plain.img", O_RDONLY);
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.status().ToErrno(), EISDIR);
}

TEST_F(NamespaceTest, BrokenImageIsListedWithErrorAndFailsToOpen) {
  auto st = ns_->Stat("/bad.vdi/disk.raw");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->st_size, 0);
  auto disk = ns_->Open("/bad.vdi/disk.raw", O_RDONLY);
  ASSERT_FALSE(disk.ok());
  EXPECT_EQ(disk.status().ToErrno(), EIO);
  auto info = ns_->Open("/bad.vdi/info.json", O_RDONLY);
  ASSERT_TRUE(info.ok());
  auto j = nlohmann::json::parse(info->content);
  EXPECT_EQ(j["filename"], dir_.P("bad.vdi"));
  EXPECT_EQ(j["format"], "vdi");  // what the name says (its driver reports the content)
  EXPECT_NE(j["error"].get<std::string>().find("bad header"), std::string::npos);
  // The failure is cached: no second open for the same file version.
  EXPECT_EQ(opens_, 1);
}

TEST_F(NamespaceTest, ChangedFileIsOpenedAgain) {
  ASSERT_TRUE(ns_->Stat("/plain.img/disk.raw").ok());
  ASSERT_TRUE(ns_->Stat("/plain.img/disk.raw").ok());
  EXPECT_EQ(opens_, 1);
  auto first = ns_->Open("/plain.img/disk.raw", O_RDONLY);
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->unchanged);
  auto second = ns_->Open("/plain.img/disk.raw", O_RDONLY);
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->unchanged);  // the kernel may keep its page cache
  dir_.Write("plain.img", "longer now");
  auto third = ns_->Open("/plain.img/disk.raw", O_RDONLY);
  ASSERT_TRUE(third.ok());
  EXPECT_FALSE(third->unchanged);
  EXPECT_EQ(opens_, 2);
  // The first handle still holds its own (old) image.
  EXPECT_NE(first->image.get(), third->image.get());
}

TEST_F(NamespaceTest, ImageFormatHintComesFromMagicAndName) {
  ASSERT_TRUE(ns_->Stat("/mystery/disk.raw").ok());
  EXPECT_EQ(last_format_, "qcow2");
  ASSERT_TRUE(ns_->Stat("/sub/inner.raw/disk.raw").ok());
  EXPECT_EQ(last_format_, "raw");
}

TEST_F(NamespaceTest, MountPointInsideSourceIsHidden) {
  NamespaceOptions options;
  options.source = dir_.path();
  options.hidden = {dir_.P("sub")};
  Namespace ns(options);
  EXPECT_FALSE(ns.Resolve("/sub").ok());
  auto names = Names(ns.List("/"));
  EXPECT_EQ(std::count(names.begin(), names.end(), "sub"), 0);
}

TEST(ImageCacheEviction, IdleImagesBeyondTheLimitAreClosed) {
  TempDir dir;
  for (const char* name : {"a.img", "b.img", "c.img"}) dir.Write(name, "x");
  int opens = 0;
  ProbeCache probe;
  ImageCache cache(ChainPolicy{}, &probe,
                   [&](const std::string& path, const ChainPolicy&, const std::string&) {
                     ++opens;
                     Chain chain;
                     chain.layers.push_back({path, "raw", std::make_shared<FakeImage>(4096)});
                     return Result<Chain>(std::move(chain));
                   },
                   /*max_open=*/2);
  auto held = cache.Get(dir.P("a.img"));  // held, like an open file
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(cache.Get(dir.P("b.img")).ok());
  ASSERT_TRUE(cache.Get(dir.P("c.img")).ok());  // three open: b (idle, oldest) goes
  EXPECT_EQ(opens, 3);
  ASSERT_TRUE(cache.Get(dir.P("a.img")).ok());  // still cached: it was held
  EXPECT_EQ(opens, 3);
  ASSERT_TRUE(cache.Get(dir.P("b.img")).ok());  // closed, opened again
  EXPECT_EQ(opens, 4);
}

TEST(NamespacePolicy, BackingRootsJoinTheSource) {
  NamespaceOptions options;
  options.source = "/pool";
  options.backing_roots = {"/base", "/pool"};
  EXPECT_EQ(Namespace::PolicyFor(options).allowed_roots,
            (std::vector<std::string>{"/pool", "/base"}));
}

// With the real chain opener: a raw image read through the namespace.
TEST(NamespaceRaw, DiskReadsTheFile) {
  TempDir dir;
  std::string data(100000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = char(i * 7);
  dir.Write("d.raw", data);
  NamespaceOptions options;
  options.source = dir.path();
  Namespace ns(options);
  auto st = ns.Stat("/d.raw/disk.raw");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->st_size, 100000);
  auto file = ns.Open("/d.raw/disk.raw", O_RDONLY);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  std::string got(data.size(), '\0');
  ASSERT_TRUE(file->image->Read(0, got.data(), got.size()).ok());
  EXPECT_EQ(got, data);
}

}  // namespace
}  // namespace kvmfs::pool
