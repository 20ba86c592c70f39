#include "pool/pool_set.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "temp_dir.h"

namespace kvmfs::pool {
namespace {

using testing::TempDir;

std::vector<std::string> Names(const Result<std::vector<DirEntry>>& entries) {
  std::vector<std::string> names;
  if (entries.ok())
    for (const DirEntry& e : *entries) names.push_back(e.name);
  std::sort(names.begin(), names.end());
  return names;
}

class PoolSetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_.MkDir("a");
    tmp_.MkDir("a/sub");
    tmp_.Write("a/vm.img", std::string(4096, 'x'));
    tmp_.Write("a/sub/deep.qcow2", std::string(4096, 'y'));
    tmp_.MkDir("ubuntu-22.04");
    tmp_.Write("ubuntu-22.04/u.raw", std::string(512, 'z'));
    tmp_.Write("os-release", "ID=ubuntu\nVERSION_ID=\"22.04\"\n");
  }
  Result<std::shared_ptr<PoolSet>> Build(const std::string& yaml, bool mount_ro = false) {
    auto config = config::ParseConfig(yaml, tmp_.P("kvmfs.yaml"));
    if (!config.ok()) return config.status();
    PoolSetOptions options;
    options.readonly = mount_ro;
    options.uid = 1234;
    options.gid = 5678;
    return BuildPoolSet(*config, options);
  }
  TempDir tmp_;
};

TEST_F(PoolSetTest, OneFolderPerPool) {
  auto set = Build(
      "layouts: {kvm: {ubuntu: '{id}-{version_id}'}}\nos_release: os-release\n"
      "pools:\n  - {name: a, path: a, readonly: true}\n  - {name: dist, layout: kvm}\n"
      "  - {name: gone, path: missing}\n");
  ASSERT_TRUE(set.ok()) << set.status().message();
  PoolSet& s = **set;
  EXPECT_FALSE(s.mirrored());
  EXPECT_EQ(Names(s.List("/")), (std::vector<std::string>{"a", "dist", "gone"}));
  EXPECT_EQ(Names(s.List("/a")), (std::vector<std::string>{"sub", "vm.img"}));
  EXPECT_EQ(Names(s.List("/a/sub")), (std::vector<std::string>{"deep.qcow2"}));
  EXPECT_EQ(Names(s.List("/dist")), (std::vector<std::string>{"u.raw"}));
  EXPECT_EQ(s.pools()[1].path, tmp_.P("ubuntu-22.04"));
  EXPECT_TRUE(s.pools()[0].readonly);
  // The missing pool: an empty folder, nothing below it.
  EXPECT_EQ(s.pools()[2].ns, nullptr);
  auto gone = s.Stat("/gone");
  ASSERT_TRUE(gone.ok());
  EXPECT_TRUE(S_ISDIR(gone->st_mode));
  EXPECT_TRUE(s.List("/gone").ok());
  EXPECT_TRUE(Names(s.List("/gone")).empty());
  EXPECT_EQ(s.Stat("/gone/x").status().code(), Status::Code::kNotFound);
  // The root and pool folders: 0555, owned by the mount's uid/gid.
  auto root = s.Stat("/");
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(root->st_mode, S_IFDIR | 0555u);
  EXPECT_EQ(root->st_uid, 1234u);
  EXPECT_EQ(root->st_gid, 5678u);
  auto img = s.Stat("/a/vm.img");
  ASSERT_TRUE(img.ok());
  EXPECT_TRUE(S_ISDIR(img->st_mode));
  EXPECT_EQ(s.Stat("/nope").status().code(), Status::Code::kNotFound);
  EXPECT_EQ(s.Stat("/nope/vm.img").status().code(), Status::Code::kNotFound);
  EXPECT_EQ(s.Open("/", O_RDONLY).status().ToErrno(), EISDIR);
  EXPECT_EQ(s.Open("/gone", O_RDONLY).status().ToErrno(), EISDIR);
  EXPECT_TRUE(s.StatFs("/").ok());
  EXPECT_TRUE(s.StatFs("/a/vm.img").ok());
}

TEST_F(PoolSetTest, ExtensionsPerPool) {
  auto set = Build(
      "extensions: [img]\npools:\n  - {name: x, path: a}\n  - {name: y, path: a, extensions: "
      "[qcow2]}\n");
  ASSERT_TRUE(set.ok()) << set.status().message();
  EXPECT_EQ(Names((*set)->List("/x")), (std::vector<std::string>{"sub", "vm.img"}));
  EXPECT_EQ(Names((*set)->List("/y")), (std::vector<std::string>{"sub"}));
  EXPECT_EQ(Names((*set)->List("/y/sub")), (std::vector<std::string>{"deep.qcow2"}));
}

TEST_F(PoolSetTest, LayoutErrorsFailTheBuild) {
  auto unknown = Build(
      "layouts: {kvm: {default: '/x/{codename}'}}\nos_release: os-release\n"
      "pools:\n  - {name: d, layout: kvm}\n");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unknown os-release field {codename}"),
            std::string::npos);
  auto no_os = Build(
      "layouts: {kvm: {default: /x}}\nos_release: nothere\npools:\n  - {name: d, layout: kvm}\n");
  ASSERT_FALSE(no_os.ok());
  EXPECT_NE(no_os.status().message().find("nothere"), std::string::npos);
}

TEST_F(PoolSetTest, DirectorySourceIsMirrored) {
  NamespaceOptions options;
  options.source = tmp_.P("a");
  PoolSet set(std::make_shared<Namespace>(options));
  EXPECT_TRUE(set.mirrored());
  EXPECT_EQ(Names(set.List("/")), (std::vector<std::string>{"sub", "vm.img"}));
}

TEST_F(PoolSetTest, RootSwapKeepsOldSetAlive) {
  auto first = Build("pools:\n  - {name: a, path: a}\n");
  auto second = Build("pools:\n  - {name: a, path: a}\n  - {name: b, path: ubuntu-22.04}\n");
  ASSERT_TRUE(first.ok() && second.ok());
  PoolRoot root(*first);
  auto held = root.Get();
  root.Set(*second);
  EXPECT_EQ(Names(root.Get()->List("/")), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(Names(held->List("/")), (std::vector<std::string>{"a"}));
}

TEST_F(PoolSetTest, BlockdevPoolShowsBlockDevicesOnly) {
  tmp_.MkDir("vg");
  tmp_.Write("vg/file.qcow2", "not a device");
  tmp_.MkDir("vg/dir");
  auto set = Build("pools:\n  - {name: vg, path: vg, backend: blockdev}\n");
  ASSERT_TRUE(set.ok()) << set.status().message();
  EXPECT_TRUE(Names((*set)->List("/vg")).empty());
}

}  // namespace
TEST_F(PoolSetTest, ReadOnlyPoolsRefuseWrites) {
  const std::string yaml = "pools:\n  - {name: ro, path: a, readonly: true}\n  - {name: rw, path: ubuntu-22.04}\n";
  auto set = Build(yaml);
  ASSERT_TRUE(set.ok()) << set.status().message();
  PoolSet& s = **set;
  EXPECT_EQ(s.Open("/ro/vm.img/disk.raw", O_RDWR).status().ToErrno(), EROFS);
  EXPECT_EQ(s.Truncate("/ro/vm.img/disk.raw", 8192).ToErrno(), EROFS);
  EXPECT_EQ(s.Stat("/ro/vm.img/disk.raw")->st_mode & 0777, 0444u);
  EXPECT_TRUE(s.StatFs("/ro")->f_flag & ST_RDONLY);
  auto w = s.Open("/rw/u.raw/disk.raw", O_RDWR);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(s.Stat("/rw/u.raw/disk.raw")->st_mode & 0777, 0644u);
  // Above the pools nothing can be made or removed.
  EXPECT_EQ(s.MakeDir("/ro").ToErrno(), EEXIST);
  EXPECT_EQ(s.MakeDir("/new").ToErrno(), EROFS);
  EXPECT_EQ(s.RemoveDir("/rw").ToErrno(), EROFS);
  // -o ro: every pool.
  auto ro = Build(yaml, true);
  ASSERT_TRUE(ro.ok());
  EXPECT_EQ((*ro)->Open("/rw/u.raw/disk.raw", O_RDWR).status().ToErrno(), EROFS);
  EXPECT_TRUE((*ro)->pools()[1].readonly);
}

}  // namespace kvmfs::pool
