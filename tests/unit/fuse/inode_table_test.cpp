// The low-level front end's inode table and cache rules over a real
// Namespace (fake images, as in tests/unit/pool), and the node entry points
// it walks the tree with: Root()/Lookup() one name at a time must find what
// Resolve() finds for the whole path.
#include "fuse/inode_table.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "../pool/fake_image.h"
#include "../pool/temp_dir.h"
#include "fuse/kernel_cache.h"
#include "kvmfs/store.h"

namespace kvmfs::fuse {
namespace {

using pool::NodeKind;
using pool::SetNode;
using pool::testing::FakeImage;
using pool::testing::TempDir;

std::vector<std::string> Split(const std::string& path) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j > i) parts.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  return parts;
}

Layer MakeLayer(std::string path, std::string format, std::shared_ptr<Image> image) {
  Layer layer;
  layer.path = std::move(path);
  layer.format = std::move(format);
  layer.image = std::move(image);
  return layer;
}

// A pool with vm.qcow2 (two snapshots, a backing layer base/base.img) and a
// raw image in a subfolder, opened through a fake opener.
class InodeTableTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(false); }

  // The local store of the pool folder, as a store whose files other hosts
  // write unseen (StoreCaps::unseen_writes, as RBD's).
  class WrittenElsewhereStore final : public Store {
   public:
    explicit WrittenElsewhereStore(std::string root) : local_(NewLocalStore(std::move(root))) {}
    std::string_view kind() const override { return "shared"; }
    StoreCaps caps() const override {
      StoreCaps caps = local_->caps();
      caps.unseen_writes = true;
      return caps;
    }
    const std::string& root() const override { return local_->root(); }
    Result<std::vector<StoreEntry>> List(const std::string& dir) override { return local_->List(dir); }
    Result<struct stat> Stat(const std::string& path, bool follow) override { return local_->Stat(path, follow); }
    Result<std::string> Canonical(const std::string& path) override { return local_->Canonical(path); }
    Result<std::unique_ptr<Backend>> Open(const std::string& path, bool writable) override {
      return local_->Open(path, writable);
    }
    Result<std::unique_ptr<StoreLock>> Lock(const std::string& path, LockSet set) override {
      return local_->Lock(path, set);
    }
    Result<struct statvfs> StatFs(const std::string& path) override { return local_->StatFs(path); }

   private:
    const std::shared_ptr<Store> local_;
  };

  void Make(bool readonly, bool written_elsewhere = false) {
    dir_.MkDir("sub");
    dir_.MkDir("base");
    dir_.Write("vm.qcow2", std::string("QFI\xfb\0\0\0\3", 8) + std::string(504, '\0'));
    dir_.Write("sub/plain.img", "x");
    dir_.Write("base/base.img", "x");
    pool::NamespaceOptions options;
    options.source = dir_.path();
    options.readonly = readonly;
    options.backing_roots.push_back(dir_.P("base"));
    if (written_elsewhere) options.store = std::make_shared<WrittenElsewhereStore>(dir_.path());
    ns_ = std::make_shared<pool::Namespace>(
        options, [this](const std::string& path, const ChainPolicy&, const std::string& format) {
          return Opener(path, format);
        });
    set_ = std::make_shared<pool::PoolSet>(ns_);
  }

  Result<Chain> Opener(const std::string& path, const std::string& format) {
    Chain chain;
    if (path.size() > 6 && path.compare(path.size() - 6, 6, ".qcow2") == 0) {
      SnapshotInfo a, b;
      a.id = "1", a.name = "a", a.disk_size = 4096;
      b.id = "2", b.name = "b", b.disk_size = 8192;
      auto top = std::make_shared<FakeImage>(1 << 20, std::vector<SnapshotInfo>{a, b});
      auto base = std::make_shared<FakeImage>(1 << 20);
      top->SetBacking(base);
      chain.layers.push_back(MakeLayer(path, "qcow2", top));
      chain.layers.push_back(MakeLayer(dir_.P("base/base.img"), "raw", base));
    } else {
      chain.layers.push_back(MakeLayer(path, format, std::make_shared<FakeImage>(2 << 20)));
    }
    return chain;
  }

  // Walks `path` from the root with PoolSet::Lookup, one name at a time.
  Result<SetNode> Walk(const std::string& path) {
    KVMFS_ASSIGN_OR_RETURN(SetNode node, set_->Root());
    for (const std::string& name : Split(path)) {
      KVMFS_ASSIGN_OR_RETURN(node, set_->Lookup(node, name));
    }
    return node;
  }

  // Adds every component of `path` to `table` as the kernel's lookups would.
  fuse_ino_t AddPath(InodeTable& table, const std::string& path) {
    fuse_ino_t ino = FUSE_ROOT_ID;
    std::string walked;
    for (const std::string& name : Split(path)) {
      walked += "/" + name;
      auto node = Walk(walked);
      EXPECT_TRUE(node.ok()) << walked;
      if (!node.ok()) return 0;
      ino = table.Add(ino, name, *node)->ino;
    }
    return ino;
  }

  TempDir dir_;
  std::shared_ptr<pool::Namespace> ns_;
  std::shared_ptr<pool::PoolSet> set_;
};

TEST_F(InodeTableTest, LookupOneNameAtATimeFindsWhatResolveFinds) {
  for (const char* path : {"/", "/sub", "/sub/plain.img", "/sub/plain.img/disk.raw", "/vm.qcow2",
                           "/vm.qcow2/disk.raw", "/vm.qcow2/info.json", "/vm.qcow2/snapshots",
                           "/vm.qcow2/snapshots/b", "/vm.qcow2/snapshots/b/disk.raw",
                           "/vm.qcow2/backing", "/vm.qcow2/backing/1-base.img/info.json"}) {
    auto walked = Walk(path);
    auto resolved = ns_->Resolve(path);
    ASSERT_TRUE(walked.ok()) << path << ": " << walked.status().ToString();
    ASSERT_TRUE(resolved.ok()) << path;
    EXPECT_EQ(walked->node.kind, resolved->kind) << path;
    EXPECT_EQ(walked->node.host_path, resolved->host_path) << path;
    EXPECT_EQ(walked->node.view.CacheKey(), resolved->view.CacheKey()) << path;
    SetNode fresh = *walked;
    ASSERT_TRUE(set_->Refresh(fresh).ok()) << path;
    auto a = set_->Stat(fresh);
    auto b = ns_->Stat(std::string(path));
    ASSERT_TRUE(a.ok() && b.ok()) << path;
    EXPECT_EQ(a->st_mode, b->st_mode) << path;
    EXPECT_EQ(a->st_size, b->st_size) << path;
  }
  for (const char* path : {"/nope", "/vm.qcow2/nope", "/vm.qcow2/snapshots/zz", "/sub/plain.img/backing"}) {
    auto walked = Walk(path);
    ASSERT_FALSE(walked.ok()) << path;
    EXPECT_EQ(walked.status().ToErrno(), ENOENT) << path;
  }
  auto below_file = Walk("/vm.qcow2/disk.raw/x");
  ASSERT_FALSE(below_file.ok());
  EXPECT_EQ(below_file.status().ToErrno(), ENOTDIR);
}

TEST_F(InodeTableTest, ListingsCarryTheNodesTheyResolved) {
  auto dir = Walk("/vm.qcow2/snapshots");
  ASSERT_TRUE(dir.ok());
  ASSERT_TRUE(set_->Refresh(*dir).ok());
  auto entries = set_->List(*dir, "/vm.qcow2/snapshots");
  ASSERT_TRUE(entries.ok());
  ASSERT_EQ(entries->size(), 2u);
  for (const pool::DirEntry& e : *entries) {
    ASSERT_TRUE(e.node && e.st) << e.name;
    auto walked = Walk("/vm.qcow2/snapshots/" + e.name);
    ASSERT_TRUE(walked.ok());
    EXPECT_EQ(e.node->kind, NodeKind::kSnapshotDir);
    EXPECT_EQ(e.node->view.CacheKey(), walked->node.view.CacheKey()) << e.name;
  }
}

TEST_F(InodeTableTest, NumbersAreStableAcrossLookupsAndForgets) {
  auto root = set_->Root();
  ASSERT_TRUE(root.ok());
  InodeTable table(*root);
  const fuse_ino_t reserved = table.NumberOf(FUSE_ROOT_ID, "vm.qcow2");  // a listing's d_ino
  const fuse_ino_t disk = AddPath(table, "/vm.qcow2/disk.raw");
  const fuse_ino_t dir = table.NumberOf(FUSE_ROOT_ID, "vm.qcow2");
  EXPECT_EQ(dir, reserved);
  EXPECT_NE(disk, dir);
  EXPECT_EQ(table.lookups(dir), 1u);
  EXPECT_EQ(AddPath(table, "/vm.qcow2/disk.raw"), disk);
  EXPECT_EQ(table.lookups(disk), 2u);
  EXPECT_EQ(table.PathOf(disk), "/vm.qcow2/disk.raw");
  table.Forget(disk, 1);
  EXPECT_TRUE(table.Find(disk).has_value());
  table.Forget(disk, 1);
  EXPECT_FALSE(table.Find(disk).has_value()) << "forgotten at lookup count 0";
  EXPECT_TRUE(table.DependingOn(dir_.P("vm.qcow2")).size() == 1u) << "only the directory is left";
  EXPECT_EQ(AddPath(table, "/vm.qcow2/disk.raw"), disk) << "the same name gets its number back";
  table.Forget(FUSE_ROOT_ID, 100);
  EXPECT_TRUE(table.Find(FUSE_ROOT_ID).has_value()) << "the root is never forgotten";
  table.Forget(987654, 1);  // unknown: ignored
}

TEST_F(InodeTableTest, ANameThatChangesTypeGetsANewNumber) {
  auto root = set_->Root();
  ASSERT_TRUE(root.ok());
  InodeTable table(*root);
  auto folder = Walk("/sub");
  auto image = Walk("/vm.qcow2");
  ASSERT_TRUE(folder.ok() && image.ok());
  auto disk = Walk("/vm.qcow2/disk.raw");
  ASSERT_TRUE(disk.ok());
  fuse_ino_t a = table.Add(FUSE_ROOT_ID, "x", *folder)->ino;
  fuse_ino_t b = table.Add(FUSE_ROOT_ID, "x", *disk)->ino;
  EXPECT_NE(a, b);
  EXPECT_TRUE(table.Find(a).has_value()) << "the old inode lives until forgotten";
  EXPECT_EQ(table.NumberOf(FUSE_ROOT_ID, "x"), b);
  table.Forget(a, 1);
  EXPECT_EQ(table.NumberOf(FUSE_ROOT_ID, "x"), b);
  EXPECT_TRUE(table.Find(b).has_value());
}

TEST_F(InodeTableTest, InodesAreIndexedByTheFilesTheirContentDependsOn) {
  auto root = set_->Root();
  ASSERT_TRUE(root.ok());
  InodeTable table(*root);
  const std::string vm = dir_.P("vm.qcow2"), base = dir_.P("base/base.img");
  const fuse_ino_t top = AddPath(table, "/vm.qcow2/disk.raw");
  const fuse_ino_t snap = AddPath(table, "/vm.qcow2/snapshots/a/disk.raw");
  const fuse_ino_t layer = AddPath(table, "/vm.qcow2/backing/1-base.img/disk.raw");
  const fuse_ino_t plain = AddPath(table, "/sub/plain.img/disk.raw");
  auto inos = [&](const std::string& path) {
    std::vector<fuse_ino_t> out;
    for (const auto& d : table.DependingOn(path)) out.push_back(d.inode->ino);
    std::sort(out.begin(), out.end());
    return out;
  };
  auto has = [](const std::vector<fuse_ino_t>& v, fuse_ino_t ino) {
    return std::find(v.begin(), v.end(), ino) != v.end();
  };
  auto on_vm = inos(vm), on_base = inos(base);
  EXPECT_TRUE(has(on_vm, top) && has(on_vm, snap));
  EXPECT_FALSE(has(on_vm, layer)) << "a backing view does not read the image above it";
  EXPECT_TRUE(has(on_base, top) && has(on_base, snap) && has(on_base, layer));
  EXPECT_FALSE(has(on_vm, plain) || has(on_base, plain));
  EXPECT_EQ(inos(dir_.P("sub/plain.img")), (std::vector<fuse_ino_t>{table.NumberOf(table.NumberOf(FUSE_ROOT_ID, "sub"), "plain.img"), plain}));
  for (const auto& d : table.DependingOn(vm)) {
    if (d.inode->ino == snap) {
      EXPECT_EQ(d.image_path, vm);
    }
  }
  table.Forget(top, 1);
  EXPECT_FALSE(has(inos(base), top)) << "forgotten inodes leave the index";
  auto children = table.Children(table.NumberOf(table.NumberOf(FUSE_ROOT_ID, "vm.qcow2"), "snapshots"));
  ASSERT_EQ(children.size(), 1u);
  EXPECT_EQ(children[0].first, "a");
}

TEST_F(InodeTableTest, TimeoutsFollowMutability) {
  auto node = [&](const char* path) {
    auto n = Walk(path);
    EXPECT_TRUE(n.ok()) << path;
    return n.ok() ? *n : SetNode{};
  };
  // Read-write pool: the image's own disk.raw, info.json, directory and
  // snapshots/ change; views of snapshots and backing layers do not.
  for (const char* path : {"/vm.qcow2", "/vm.qcow2/disk.raw", "/vm.qcow2/info.json", "/vm.qcow2/snapshots"}) {
    EXPECT_FALSE(Immutable(node(path))) << path;
    EXPECT_EQ(AttrTimeout(node(path)), kShortTimeout) << path;
    EXPECT_EQ(EntryTimeout(node(path)), kShortTimeout) << path;
  }
  for (const char* path : {"/vm.qcow2/snapshots/a", "/vm.qcow2/snapshots/a/disk.raw",
                           "/vm.qcow2/snapshots/a/info.json", "/vm.qcow2/backing",
                           "/vm.qcow2/backing/1-base.img/disk.raw"}) {
    EXPECT_TRUE(Immutable(node(path))) << path;
    EXPECT_EQ(AttrTimeout(node(path)), kLongTimeout) << path;
    EXPECT_EQ(EntryTimeout(node(path)), kLongTimeout) << path;
  }
  EXPECT_EQ(AttrTimeout(node("/sub")), kShortTimeout) << "folders follow the host";
  EXPECT_EQ(NegativeTimeout(node("/vm.qcow2/snapshots/a")), kLongTimeout);
  EXPECT_EQ(NegativeTimeout(node("/vm.qcow2")), kShortTimeout);
  // Read-only pool: everything but folder attributes (their mtime tells the
  // kernel when a cached listing is stale).
  Make(true);
  for (const char* path : {"/vm.qcow2", "/vm.qcow2/disk.raw", "/vm.qcow2/info.json", "/vm.qcow2/snapshots"})
    EXPECT_EQ(AttrTimeout(node(path)), kLongTimeout) << path;
  EXPECT_EQ(AttrTimeout(node("/sub")), kShortTimeout);
  EXPECT_EQ(EntryTimeout(node("/sub")), kLongTimeout);
  for (const char* path : {"/vm.qcow2/disk.raw", "/vm.qcow2/snapshots/a/disk.raw"})
    EXPECT_FALSE(UnseenWrites(node(path))) << path;
}

TEST_F(InodeTableTest, ImagesWrittenElsewhereAreNeverCachedLong) {
  auto node = [&](const char* path) {
    auto n = Walk(path);
    EXPECT_TRUE(n.ok()) << path;
    return n.ok() ? *n : SetNode{};
  };
  // A read-only pool whose store's files other hosts write (RBD): cached as
  // a read-write pool, and the image's own disk.raw never from kept pages.
  Make(true, /*written_elsewhere=*/true);
  for (const char* path : {"/vm.qcow2", "/vm.qcow2/disk.raw", "/vm.qcow2/info.json", "/vm.qcow2/snapshots"}) {
    EXPECT_FALSE(Immutable(node(path))) << path;
    EXPECT_EQ(AttrTimeout(node(path)), kShortTimeout) << path;
    EXPECT_EQ(EntryTimeout(node(path)), kShortTimeout) << path;
  }
  for (const char* path : {"/vm.qcow2/snapshots/a", "/vm.qcow2/snapshots/a/disk.raw",
                           "/vm.qcow2/backing/1-base.img/disk.raw"}) {
    EXPECT_TRUE(Immutable(node(path))) << path;
    EXPECT_EQ(AttrTimeout(node(path)), kLongTimeout) << path;
  }
  EXPECT_TRUE(UnseenWrites(node("/vm.qcow2/disk.raw")));
  EXPECT_TRUE(UnseenWrites(node("/vm.qcow2/info.json")));
  EXPECT_FALSE(UnseenWrites(node("/vm.qcow2/snapshots/a/disk.raw")));
  EXPECT_FALSE(UnseenWrites(node("/vm.qcow2/backing/1-base.img/disk.raw")));
  EXPECT_FALSE(UnseenWrites(node("/vm.qcow2")));
}

}  // namespace
}  // namespace kvmfs::fuse
