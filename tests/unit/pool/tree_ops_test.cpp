// Images made, cloned and renamed through the tree (Namespace::MakeDir,
// CloneImage, RenameImage, RemoveDir) and check.json, on real files; what
// the files hold is judged by qemu-img in the format and integration tests.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "metrics/exposition.h"
#include "metrics/progress.h"
#include "pool/namespace.h"
#include "temp_dir.h"

namespace kvmfs::pool {
namespace {

using testing::HaveQemuImg;
using testing::TempDir;

// Holds the reads of the files it opens while closed, letting through one
// per Step(): a check can be stopped in the middle and looked at.
class Gate {
 public:
  void Close() {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  void Open() {
    std::lock_guard lock(mu_);
    closed_ = false;
    cv_.notify_all();
  }
  void Step() {
    std::lock_guard lock(mu_);
    ++budget_;
    cv_.notify_all();
  }
  // Until a read waits at the gate with no step left to take it through
  // (true), or `done` (false).
  bool WaitForReader(const std::atomic<bool>& done) {
    std::unique_lock lock(mu_);
    while ((waiting_ == 0 || budget_ > 0) && !done) cv_.wait_for(lock, std::chrono::milliseconds(5));
    return waiting_ > 0 && budget_ == 0;
  }
  void Pass() {
    std::unique_lock lock(mu_);
    ++waiting_;
    cv_.notify_all();
    cv_.wait(lock, [this] { return !closed_ || budget_ > 0; });
    if (closed_) --budget_;
    --waiting_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false;
  uint64_t budget_ = 0;
  int waiting_ = 0;
};

class GatedBackend final : public Backend {
 public:
  GatedBackend(std::unique_ptr<Backend> inner, Gate& gate) : inner_(std::move(inner)), gate_(gate) {}
  Status ReadAt(uint64_t off, void* buf, size_t len) override {
    gate_.Pass();
    return inner_->ReadAt(off, buf, len);
  }
  Status WriteAt(uint64_t off, const void* buf, size_t len) override { return inner_->WriteAt(off, buf, len); }
  Status Flush() override { return inner_->Flush(); }
  Result<uint64_t> Size() override { return inner_->Size(); }
  Status Truncate(uint64_t size) override { return inner_->Truncate(size); }
  Result<uint64_t> AllocatedBytes() override { return inner_->AllocatedBytes(); }
  bool writable() const override { return inner_->writable(); }
  const std::string& name() const override { return inner_->name(); }

 private:
  std::unique_ptr<Backend> inner_;
  Gate& gate_;
};

class GatedStore final : public Store {
 public:
  GatedStore(std::shared_ptr<Store> inner, Gate& gate) : inner_(std::move(inner)), gate_(gate) {}
  std::string_view kind() const override { return inner_->kind(); }
  StoreCaps caps() const override { return inner_->caps(); }
  const std::string& root() const override { return inner_->root(); }
  Result<std::vector<StoreEntry>> List(const std::string& dir) override { return inner_->List(dir); }
  Result<struct stat> Stat(const std::string& path, bool follow) override { return inner_->Stat(path, follow); }
  Result<std::string> Canonical(const std::string& path) override { return inner_->Canonical(path); }
  Result<std::unique_ptr<Backend>> Open(const std::string& path, bool writable) override {
    KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> b, inner_->Open(path, writable));
    return std::unique_ptr<Backend>(std::make_unique<GatedBackend>(std::move(b), gate_));
  }
  Result<std::unique_ptr<StoreLock>> Lock(const std::string& path, LockSet set) override {
    return inner_->Lock(path, set);
  }
  Result<struct statvfs> StatFs(const std::string& path) override { return inner_->StatFs(path); }

 private:
  std::shared_ptr<Store> inner_;
  Gate& gate_;
};

// The value of the progress series of `image`'s check, or -1 when absent.
double CheckProgress(const std::string& pool, const std::string& image) {
  metrics::Exposition out;
  metrics::WriteProgress(out);
  const std::string key = "kvmfs_operation_progress_ratio{op=\"check\",pool=\"" + pool +
                          "\",image=\"" + image + "\"} ";
  const std::string& text = out.text();
  const size_t at = text.find(key);
  return at == std::string::npos ? -1 : std::stod(text.substr(at + key.size()));
}

class TreeOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_.MkDir("sub");
    dir_.Write("a.raw", std::string(1 << 20, 'a'));
    Make(false);
  }
  void Make(bool readonly, mode_t mode = 0600) {
    NamespaceOptions options;
    options.source = dir_.path();
    options.readonly = readonly;
    options.create_mode = mode;
    ns_ = std::make_unique<Namespace>(options);
  }
  bool Exists(const std::string& name) const {
    struct stat st;
    return ::lstat(dir_.P(name).c_str(), &st) == 0;
  }
  mode_t ModeOf(const std::string& name) const {
    struct stat st{};
    ::lstat(dir_.P(name).c_str(), &st);
    return st.st_mode;
  }
  int Errno(const Status& st) const { return st.ToErrno(); }
  nlohmann::json CheckJson(const std::string& path) {
    auto f = ns_->Open(path, O_RDONLY);
    EXPECT_TRUE(f.ok()) << f.status().ToString();
    return f.ok() ? nlohmann::json::parse(f->content) : nlohmann::json();
  }

  TempDir dir_;
  std::unique_ptr<Namespace> ns_;
};

TEST_F(TreeOpsTest, MkdirMakesImagesByExtensionAndFoldersOtherwise) {
  ASSERT_TRUE(ns_->MakeDir("/new.qcow2").ok());
  EXPECT_TRUE(S_ISREG(ModeOf("new.qcow2")));
  EXPECT_EQ(ModeOf("new.qcow2") & 07777, 0600u);
  auto st = ns_->Stat("/new.qcow2/disk.raw");
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(st->st_size, 0);
  ASSERT_TRUE(ns_->Truncate("/new.qcow2/disk.raw", 4 << 20).ok());
  EXPECT_EQ(ns_->Stat("/new.qcow2/disk.raw")->st_size, 4 << 20);

  ASSERT_TRUE(ns_->MakeDir("/sub/x.img").ok());
  EXPECT_TRUE(S_ISREG(ModeOf("sub/x.img")));
  ASSERT_TRUE(ns_->MakeDir("/folder").ok());
  EXPECT_TRUE(S_ISDIR(ModeOf("folder")));
  EXPECT_EQ(ModeOf("folder") & 07777, 0700u);  // x wherever r
  EXPECT_TRUE(ns_->Stat("/folder")->st_mode & S_IFDIR);
}

TEST_F(TreeOpsTest, CreateModeApplies) {
  Make(false, 0640);
  ASSERT_TRUE(ns_->MakeDir("/m.qcow2").ok());
  EXPECT_EQ(ModeOf("m.qcow2") & 07777, 0640u);
  ASSERT_TRUE(ns_->MakeDir("/mf").ok());
  EXPECT_EQ(ModeOf("mf") & 07777, 0750u);
}

TEST_F(TreeOpsTest, MkdirRefusals) {
  EXPECT_EQ(Errno(ns_->MakeDir("/a.raw")), EEXIST);
  EXPECT_EQ(Errno(ns_->MakeDir("/sub")), EEXIST);
  EXPECT_EQ(Errno(ns_->MakeDir("/.hidden")), EPERM);
  EXPECT_EQ(Errno(ns_->MakeDir("/x.vmdk")), ENOTSUP);
  EXPECT_FALSE(Exists("x.vmdk"));  // nothing half made is left
  Make(true);
  EXPECT_EQ(Errno(ns_->MakeDir("/ro.qcow2")), EROFS);
  EXPECT_EQ(Errno(ns_->MakeDir("/rofolder")), EROFS);
  EXPECT_FALSE(Exists("ro.qcow2"));
}

TEST_F(TreeOpsTest, RmdirRemovesEmptyFoldersNeverImages) {
  ASSERT_TRUE(ns_->MakeDir("/gone").ok());
  ASSERT_TRUE(ns_->RemoveDir("/gone").ok());
  EXPECT_FALSE(Exists("gone"));
  EXPECT_EQ(Errno(ns_->RemoveDir("/a.raw")), EPERM);
  EXPECT_TRUE(Exists("a.raw"));
  ASSERT_TRUE(ns_->MakeDir("/sub/k.qcow2").ok());
  EXPECT_EQ(Errno(ns_->RemoveDir("/sub")), ENOTEMPTY);
  EXPECT_EQ(Errno(ns_->RemoveDir("/")), EPERM);
}

TEST_F(TreeOpsTest, CloneRecordsTheRelativeBackingName) {
  if (!HaveQemuImg()) GTEST_SKIP() << "qemu-img not installed (qemu-utils)";
  ASSERT_TRUE(TempDir::Run("qemu-img create -q -f qcow2 '" + dir_.P("base.qcow2") + "' 3M"));
  auto folder = ns_->Resolve("/sub");
  ASSERT_TRUE(folder.ok());
  Status made = ns_->CloneImage(*folder, "/sub/c.qcow2", "c.qcow2", "../base.qcow2");
  ASSERT_TRUE(made.ok()) << made.ToString();
  auto info = ns_->Open("/sub/c.qcow2/info.json", O_RDONLY);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  const auto j = nlohmann::json::parse(info->content);
  EXPECT_EQ(j["backing-filename"], "../base.qcow2");
  EXPECT_EQ(j["backing-filename-format"], "qcow2");
  EXPECT_EQ(j["virtual-size"], 3 << 20);
  EXPECT_TRUE(ns_->Stat("/sub/c.qcow2/backing/1-base.qcow2/disk.raw").ok());
  // a raw base is recorded as raw
  auto root = ns_->Resolve("/");
  ASSERT_TRUE(ns_->CloneImage(*root, "/r.qcow2", "r.qcow2", "a.raw").ok());
  auto rinfo = ns_->Open("/r.qcow2/info.json", O_RDONLY);
  ASSERT_TRUE(rinfo.ok());
  EXPECT_EQ(nlohmann::json::parse(rinfo->content)["backing-filename-format"], "raw");
}

TEST_F(TreeOpsTest, CloneRefusals) {
  auto root = ns_->Resolve("/");
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(Errno(ns_->CloneImage(*root, "/e.qcow2", "e.qcow2", "/etc/passwd")), EACCES);
  EXPECT_EQ(Errno(ns_->CloneImage(*root, "/e.qcow2", "e.qcow2", "../../../../../etc/passwd")), EACCES);
  EXPECT_EQ(Errno(ns_->CloneImage(*root, "/e.qcow2", "e.qcow2", "missing.raw")), ENOENT);
  EXPECT_EQ(Errno(ns_->CloneImage(*root, "/e.qcow2", "e.qcow2", "sub")), EINVAL);
  EXPECT_EQ(Errno(ns_->CloneImage(*root, "/e.qcow2", "e.qcow2", "")), EINVAL);
  EXPECT_EQ(Errno(ns_->CloneImage(*root, "/link", "link", "a.raw")), EPERM);
  EXPECT_EQ(Errno(ns_->CloneImage(*root, "/e.raw", "e.raw", "a.raw")), ENOTSUP);
  ASSERT_TRUE(ns_->MakeDir("/x.qcow2").ok());
  EXPECT_EQ(Errno(ns_->CloneImage(*root, "/x.qcow2", "x.qcow2", "a.raw")), EEXIST);
  EXPECT_FALSE(Exists("e.qcow2"));
  Make(true);
  auto ro_root = ns_->Resolve("/");
  EXPECT_EQ(Errno(ns_->CloneImage(*ro_root, "/e.qcow2", "e.qcow2", "a.raw")), EROFS);
}

TEST_F(TreeOpsTest, RenameRules) {
  auto root = ns_->Resolve("/");
  auto sub = ns_->Resolve("/sub");
  auto a = ns_->Resolve("/a.raw");
  ASSERT_TRUE(root.ok() && sub.ok() && a.ok());
  EXPECT_EQ(Errno(ns_->RenameImage(*a, "/a.raw", *root, "a.qcow2")), EINVAL);  // another format
  EXPECT_EQ(Errno(ns_->RenameImage(*a, "/a.raw", *root, ".a.raw")), EPERM);
  EXPECT_EQ(Errno(ns_->RenameImage(*sub, "/sub", *root, "sub2")), EPERM);
  {
    // open in kvmfs: busy
    auto f = ns_->Open("/a.raw/disk.raw", O_RDONLY);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(Errno(ns_->RenameImage(*a, "/a.raw", *root, "b.raw")), EBUSY);
  }
  Status renamed = ns_->RenameImage(*a, "/a.raw", *sub, "b.raw");
  ASSERT_TRUE(renamed.ok()) << renamed.ToString();
  EXPECT_FALSE(Exists("a.raw"));
  EXPECT_TRUE(Exists("sub/b.raw"));
  EXPECT_EQ(ns_->Stat("/sub/b.raw/disk.raw")->st_size, 1 << 20);
  dir_.Write("c.raw", "c");
  auto b = ns_->Resolve("/sub/b.raw");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(Errno(ns_->RenameImage(*b, "/sub/b.raw", *root, "c.raw")), EEXIST);
}

TEST_F(TreeOpsTest, BackingFilesAreNotRenamed) {
  if (!HaveQemuImg()) GTEST_SKIP() << "qemu-img not installed (qemu-utils)";
  ASSERT_TRUE(TempDir::Run("cd '" + dir_.path() + "' && qemu-img create -q -f qcow2 -b a.raw -F raw "
                           "sub/../o.qcow2"));
  auto root = ns_->Resolve("/");
  auto sub = ns_->Resolve("/sub");
  auto a = ns_->Resolve("/a.raw");
  auto o = ns_->Resolve("/o.qcow2");
  ASSERT_TRUE(root.ok() && sub.ok() && a.ok() && o.ok());
  Status busy = ns_->RenameImage(*a, "/a.raw", *root, "z.raw");
  EXPECT_EQ(Errno(busy), EBUSY);
  EXPECT_NE(busy.message().find("o.qcow2"), std::string::npos) << busy.message();
  // relative backing name: only within its folder
  EXPECT_EQ(Errno(ns_->RenameImage(*o, "/o.qcow2", *sub, "o.qcow2")), EPERM);
  ASSERT_TRUE(ns_->RenameImage(*o, "/o.qcow2", *root, "p.qcow2").ok());
  EXPECT_TRUE(ns_->Stat("/p.qcow2/backing/1-a.raw").ok());
}

TEST_F(TreeOpsTest, CheckJson) {
  if (!HaveQemuImg()) GTEST_SKIP() << "qemu-img not installed (qemu-utils)";
  ASSERT_TRUE(ns_->MakeDir("/c.qcow2").ok());
  const auto j = CheckJson("/c.qcow2/check.json");
  EXPECT_EQ(j["format"], "qcow2");
  EXPECT_EQ(j["filename"], dir_.P("c.qcow2"));
  EXPECT_EQ(j["check-errors"], 0);
  EXPECT_EQ(j["image-end-offset"], 0x30000);  // header, refcount table and block (qemu-img check)
  EXPECT_FALSE(j.contains("corruptions"));
  const auto raw = CheckJson("/a.raw/check.json");
  EXPECT_EQ(raw["format"], "raw");
  EXPECT_EQ(raw["error"], "This image format does not support checks");
  EXPECT_EQ(Errno(ns_->Open("/a.raw/check.json", O_RDWR).status()), EROFS);
  auto listed = ns_->List("/c.qcow2");
  ASSERT_TRUE(listed.ok());
  bool found = false;
  for (const DirEntry& e : *listed) found = found || e.name == "check.json";
  EXPECT_TRUE(found);
}

TEST_F(TreeOpsTest, CheckShowsItsProgressWhileItRuns) {
  if (!HaveQemuImg()) GTEST_SKIP() << "qemu-img not installed (qemu-utils)";
  // 512-byte clusters: one L2 table maps 32 KiB, so eight writes 32 KiB
  // apart make eight tables (the check's unit of progress).
  std::string cmd = "qemu-img create -q -f qcow2 -o cluster_size=512 '" + dir_.P("p.qcow2") +
                    "' 1M && qemu-io -f qcow2";
  for (int i = 0; i < 8; ++i) cmd += " -c 'write -P 7 " + std::to_string(i * 32768) + " 512'";
  ASSERT_TRUE(TempDir::Run(cmd + " '" + dir_.P("p.qcow2") + "'"));
  Gate gate;
  NamespaceOptions options;
  options.source = dir_.path();
  options.pool_name = "pool";
  options.store = std::make_shared<GatedStore>(NewLocalStore(dir_.path()), gate);
  ns_ = std::make_unique<Namespace>(options);
  auto disk = ns_->Open("/p.qcow2/disk.raw", O_RDONLY);  // the image open, its header read
  ASSERT_TRUE(disk.ok()) << disk.status().ToString();
  EXPECT_EQ(CheckProgress("pool", "p.qcow2"), -1);

  gate.Close();
  std::atomic<bool> done{false};
  nlohmann::json result;
  std::thread checker([&] {
    result = CheckJson("/p.qcow2/check.json");
    done = true;
  });
  // Stopped at its first read: running, at 0.
  ASSERT_TRUE(gate.WaitForReader(done));
  EXPECT_EQ(CheckProgress("pool", "p.qcow2"), 0);
  // A read at a time: the ratio goes up, stays within [0, 1], never back.
  double last = 0, seen_between = -1;
  int steps = 0;
  while (gate.WaitForReader(done)) {
    ++steps;
    const double now = CheckProgress("pool", "p.qcow2");
    ASSERT_GE(now, last);
    ASSERT_LE(now, 1.0);
    if (now > 0 && now < 1) seen_between = now;
    last = now;
    gate.Step();
  }
  gate.Open();
  checker.join();
  EXPECT_GE(steps, 8) << "the check read fewer than its eight L2 tables through the gate";
  EXPECT_GT(seen_between, 0) << "no progress between 0 and 1 was shown";
  EXPECT_EQ(result["check-errors"], 0) << result.dump();
  EXPECT_EQ(result["allocated-clusters"], 8) << result.dump();
  // Gone once the check ended.
  EXPECT_EQ(CheckProgress("pool", "p.qcow2"), -1);
}

}  // namespace
}  // namespace kvmfs::pool
