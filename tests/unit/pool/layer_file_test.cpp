// One engine per image file (issue 10): chains share LayerFiles, changes from
// outside are noticed, allocation is recomputed only where writes went.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#include "pool/layer_file.h"
#include "pool/namespace.h"
#include "temp_dir.h"

namespace kvmfs::pool {
namespace {

using testing::TempDir;

constexpr uint64_t kMiB = 1 << 20;

class LayerFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testing::HaveQemuImg()) << "qemu-img is required (tools/setup-deps.sh)";
    Run("qemu-img create -q -f qcow2 '" + dir_.P("base.qcow2") + "' 16M");
    Run("qemu-io -c 'write -P 0x11 0 1M' '" + dir_.P("base.qcow2") + "'");
    Run("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 '" + dir_.P("vm1.qcow2") + "'");
    Run("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 '" + dir_.P("vm2.qcow2") + "'");
    NamespaceOptions options;
    options.source = dir_.path();
    options.recheck = std::chrono::milliseconds(20);
    ns_ = std::make_unique<Namespace>(options);
  }
  void Run(const std::string& cmd) { ASSERT_TRUE(TempDir::Run(cmd)) << cmd; }
  std::shared_ptr<OpenImage> Get(const std::string& name) {
    auto e = ns_->cache().Get(dir_.P(name));
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return e.ok() ? *e : nullptr;
  }
  std::string ReadView(const std::string& path, uint64_t off, size_t n) {
    auto f = ns_->Open(path, O_RDONLY);
    EXPECT_TRUE(f.ok()) << f.status().ToString();
    if (!f.ok()) return "";
    std::string out(n, '\0');
    EXPECT_TRUE(f->image->Read(off, out.data(), n).ok());
    return out;
  }

  TempDir dir_;
  std::unique_ptr<Namespace> ns_;
};

TEST_F(LayerFileTest, ChainsShareOneEnginePerFile) {
  auto vm1 = Get("vm1.qcow2");
  auto vm2 = Get("vm2.qcow2");
  auto base = Get("base.qcow2");
  ASSERT_EQ(vm1->depth(), 2u);
  ASSERT_EQ(vm2->depth(), 2u);
  EXPECT_EQ(vm1->files()[1], base->files()[0]);
  EXPECT_EQ(vm2->files()[1], base->files()[0]);
  EXPECT_EQ(vm1->top()->backing(), base->top());
  // The backing view is the base file's own image: one metadata cache.
  EXPECT_EQ(*vm1->ViewImage(ViewId::Layer(1)), base->top());
}

TEST_F(LayerFileTest, WriteThroughTheBaseIsSeenByEveryOverlay) {
  EXPECT_EQ(ReadView("/vm1.qcow2/disk.raw", 6 * kMiB, 4), std::string(4, '\0'));
  const uint64_t blocks_before = ns_->Stat("/vm2.qcow2/disk.raw")->st_blocks;
  {
    auto w = ns_->Open("/base.qcow2/disk.raw", O_RDWR);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    ASSERT_TRUE(w->image->Write(6 * kMiB, "base", 4).ok());
  }
  EXPECT_EQ(ReadView("/vm1.qcow2/disk.raw", 6 * kMiB, 4), "base");
  EXPECT_EQ(ReadView("/vm2.qcow2/backing/1-base.qcow2/disk.raw", 6 * kMiB, 4), "base");
  EXPECT_GT(ns_->Stat("/vm2.qcow2/disk.raw")->st_blocks, blocks_before);
}

TEST_F(LayerFileTest, OutsideWriteToTheBaseIsSeenAtTheNextOpen) {
  EXPECT_EQ(ReadView("/vm1.qcow2/disk.raw", 2 * kMiB, 1), std::string(1, '\0'));
  auto before = Get("base.qcow2")->files()[0];
  Run("qemu-io -c 'write -P 0x42 2M 64k' '" + dir_.P("base.qcow2") + "'");
  EXPECT_EQ(ReadView("/vm1.qcow2/disk.raw", 2 * kMiB, 1), "\x42");
  EXPECT_TRUE(before->stale());
  // Every chain through the base reads the new one.
  auto base_now = Get("base.qcow2")->files()[0];
  EXPECT_NE(base_now, before);
  EXPECT_EQ(Get("vm2.qcow2")->top()->backing(), base_now->image());
}

TEST_F(LayerFileTest, RebasedMiddleLayerReopensTheChain) {
  Run("qemu-img create -q -f qcow2 '" + dir_.P("other.qcow2") + "' 16M");
  Run("qemu-io -c 'write -P 0x77 0 16M' '" + dir_.P("other.qcow2") + "'");
  Run("qemu-img create -q -f qcow2 -b vm1.qcow2 -F qcow2 '" + dir_.P("top.qcow2") + "'");
  EXPECT_EQ(ReadView("/top.qcow2/disk.raw", 8 * kMiB, 1), std::string(1, '\0'));
  Run("qemu-img rebase -u -b other.qcow2 -F qcow2 '" + dir_.P("vm1.qcow2") + "'");
  EXPECT_EQ(ReadView("/top.qcow2/disk.raw", 8 * kMiB, 1), "\x77");
  EXPECT_EQ(Get("top.qcow2")->LayerDirNames(), (std::vector<std::string>{"1-vm1.qcow2", "2-other.qcow2"}));
}

TEST_F(LayerFileTest, FailedOpenIsRetriedWhenTheBackingAppears) {
  Run("qemu-img create -q -f qcow2 -u -b later.qcow2 -F qcow2 '" + dir_.P("orphan.qcow2") + "' 1M");
  auto orphan = Get("orphan.qcow2");
  EXPECT_EQ(orphan->status().code(), Status::Code::kNotFound);
  Run("qemu-img create -q -f qcow2 '" + dir_.P("later.qcow2") + "' 1M");
  ::usleep(50000);  // past the recheck interval
  orphan = Get("orphan.qcow2");
  EXPECT_TRUE(orphan->ok()) << orphan->status().ToString();
}

TEST_F(LayerFileTest, ChangeLogSaysWhatChangedSince) {
  auto file = Get("base.qcow2")->files()[0];
  const uint64_t g0 = file->generation();
  file->NoteWrite(4096, 512);
  file->NoteWrite(kMiB, 4096);
  auto since = file->ChangesSince(g0);
  ASSERT_TRUE(since);
  EXPECT_EQ(since->size(), 2u);
  const uint64_t g1 = file->generation();
  file->NoteSnapshots();  // metadata only: no guest range
  EXPECT_GT(file->generation(), g1);
  EXPECT_EQ(file->ChangesSince(g1)->size(), 0u);
  file->NoteWrite(0, 0);  // everything
  EXPECT_FALSE(file->ChangesSince(g1));
  for (int i = 0; i < 5000; ++i) file->NoteWrite(i, 1);
  EXPECT_FALSE(file->ChangesSince(g0)) << "the log is bounded";
}

// A 1 TiB disk that counts the block-status queries each region costs.
class CountingImage final : public Image {
 public:
  explicit CountingImage(std::atomic<uint64_t>* calls) : calls_(calls) {}
  uint64_t size() const override { return 1ull << 40; }
  Status Read(uint64_t, void* buf, size_t len) override {
    std::memset(buf, 0, len);
    return Status::OK();
  }
  bool writable() const override { return true; }
  Status BeginWrites() override { return Status::OK(); }
  Status Write(uint64_t off, const void*, size_t len) override {
    std::lock_guard lock(mu_);
    data_.emplace_back(off, len);
    return Status::OK();
  }
  Result<BlockStatus> GetBlockStatus(uint64_t off, uint64_t len) override {
    calls_->fetch_add(1);
    std::lock_guard lock(mu_);
    for (auto [d, n] : data_) {
      if (off >= d && off < d + n) return BlockStatus{Allocation::kData, std::min(len, d + n - off)};
      if (d > off && d < off + len) len = d - off;
    }
    return BlockStatus{Allocation::kUnallocated, len};
  }
  ImageInfo Info() const override {
    ImageInfo info;
    info.format = "counting";
    info.virtual_size = size();
    return info;
  }
  Result<uint64_t> ActualSize() override { return uint64_t{0}; }

 private:
  std::atomic<uint64_t>* calls_;
  std::mutex mu_;
  std::vector<std::pair<uint64_t, uint64_t>> data_;
};

TEST(LayerFileAllocation, WritesRecomputeOnlyTheRegionsTheyTouch) {
  TempDir dir;
  dir.Write("big.img", "x");
  std::atomic<uint64_t> calls{0};
  NamespaceOptions options;
  options.source = dir.path();
  Namespace ns(options, [&](const std::string& path, const ChainPolicy&, const std::string&) {
    Chain chain;
    chain.layers.push_back({path, "raw", std::make_shared<CountingImage>(&calls), true, ""});
    return Result<Chain>(std::move(chain));
  });
  EXPECT_EQ(ns.Stat("/big.img/disk.raw")->st_blocks, 0);
  const uint64_t full_walk = calls.exchange(0);
  EXPECT_GE(full_walk, 16384u);  // one query per 64 MiB region of 1 TiB, at least
  EXPECT_EQ(ns.Stat("/big.img/disk.raw")->st_blocks, 0);
  EXPECT_EQ(calls.exchange(0), 0u) << "an unchanged view answers from its cache";
  {
    auto w = ns.Open("/big.img/disk.raw", O_RDWR);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    ASSERT_TRUE(w->image->Write(300ull << 30, "data", 4096).ok());
    ASSERT_TRUE(w->image->Write((300ull << 30) + 8192, "data", 4096).ok());
  }
  EXPECT_EQ(ns.Stat("/big.img/disk.raw")->st_blocks, 16);
  EXPECT_LE(calls.exchange(0), 8u) << "only the written region is walked again";
}

}  // namespace
}  // namespace kvmfs::pool
