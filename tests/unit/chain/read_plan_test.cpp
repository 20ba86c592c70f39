// Image::PlanRead (the pieces FUSE splices) against Image::Read, on chains
// made by qemu-img at test time: every layout of every format must plan the
// same bytes as it reads, and only read-only files may be handed out.
#include <gtest/gtest.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kvmfs/chain.h"
#include "kvmfs/image.h"

namespace kvmfs {
namespace {

// The bytes a plan stands for (file pieces read with pread).
std::vector<uint8_t> Materialize(const ReadPlan& plan) {
  std::vector<uint8_t> out;
  for (const ReadPlan::Piece& p : plan.pieces()) {
    const size_t at = out.size();
    out.resize(at + p.length);
    if (p.fd < 0) {
      std::memcpy(out.data() + at, p.mem, p.length);
      continue;
    }
    EXPECT_EQ(::pread(p.fd, out.data() + at, p.length, static_cast<off_t>(p.fd_offset)),
              static_cast<ssize_t>(p.length))
        << "file piece past the end of its file";
  }
  return out;
}

size_t FilePieces(const ReadPlan& plan) {
  size_t n = 0;
  for (const ReadPlan::Piece& p : plan.pieces()) n += p.fd >= 0;
  return n;
}

class ReadPlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvmfs-plan-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    char canon[PATH_MAX];
    ASSERT_NE(::realpath(tmpl, canon), nullptr);
    dir_ = canon;
    policy_.allowed_roots = {dir_};
    if (std::system("qemu-img --version >/dev/null 2>&1") != 0 ||
        std::system("qemu-io --version >/dev/null 2>&1") != 0)
      GTEST_SKIP() << "SKIPPED: qemu-img / qemu-io are not installed";
  }
  void TearDown() override { Run("rm -rf '" + dir_ + "'"); }

  static bool Run(const std::string& cmd) {
    return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0;
  }
  std::string P(const std::string& name) const { return dir_ + "/" + name; }

  // Plans and reads [off, off+len) of `image` and expects the same bytes;
  // returns the number of file pieces.
  size_t ExpectSame(Image& image, uint64_t off, size_t len) {
    std::vector<uint8_t> want(len);
    Status st = image.Read(off, want.data(), len);
    EXPECT_TRUE(st.ok()) << st.ToString();
    ReadPlan plan;
    st = image.PlanRead(off, len, plan);
    EXPECT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(plan.size(), len);
    EXPECT_TRUE(Materialize(plan) == want) << "plan differs from Read at " << off << " +" << len;
    return FilePieces(plan);
  }

  // Whole-disk, cluster-straddling and odd-sized reads; returns file pieces seen.
  size_t ExpectSameEverywhere(Image& image) {
    const uint64_t size = image.size();
    size_t pieces = ExpectSame(image, 0, size);
    for (uint64_t off : {uint64_t{0}, uint64_t{511}, uint64_t{65536 - 4096}, uint64_t{300000},
                         size - 70000}) {
      for (size_t len : {size_t{1}, size_t{4096}, size_t{65537}, size_t{1 << 20}}) {
        if (off < size) pieces += ExpectSame(image, off, std::min<uint64_t>(len, size - off));
      }
    }
    return pieces;
  }

  std::string dir_;
  ChainPolicy policy_;
};

TEST(ReadPlan, MergesContiguousFileRangesAndMemory) {
  ReadPlan plan;
  plan.AddFile(7, 4096, 100);
  plan.AddFile(7, 4196, 50);  // continues it
  plan.AddFile(7, 0, 10);     // does not
  auto a = plan.AddMemory(3, true);
  ASSERT_TRUE(a.ok());
  std::memcpy(*a, "abc", 3);
  auto b = plan.AddMemory(2, true);  // grows the memory piece
  ASSERT_TRUE(b.ok());
  ASSERT_EQ(plan.pieces().size(), 3u);
  EXPECT_EQ(plan.pieces()[0].length, 150u);
  EXPECT_EQ(plan.pieces()[1].fd_offset, 0u);
  EXPECT_EQ(plan.pieces()[2].length, 5u);
  EXPECT_EQ(std::memcmp(plan.pieces()[2].mem, "abc\0\0", 5), 0);
  EXPECT_EQ(plan.size(), 165u);
}

TEST_F(ReadPlanTest, ReadOnlyRawIsOneFilePiece) {
  ASSERT_TRUE(Run("qemu-img create -f raw " + P("d.raw") + " 4M"));
  ASSERT_TRUE(Run("qemu-io -f raw -c 'write -P 0x5a 1M 1M' " + P("d.raw")));
  auto chain = OpenChain(P("d.raw"), policy_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  ReadPlan plan;
  ASSERT_TRUE(chain->top()->PlanRead(12345, 2 << 20, plan).ok());
  EXPECT_EQ(plan.pieces().size(), 1u);
  EXPECT_EQ(FilePieces(plan), 1u);
  EXPECT_GT(ExpectSameEverywhere(*chain->top()), 0u);
}

TEST_F(ReadPlanTest, Qcow2DataZeroCompressedAndBackingPieces) {
  ASSERT_TRUE(Run("qemu-img create -f raw " + P("base.raw") + " 4M"));
  ASSERT_TRUE(Run("qemu-io -f raw -c 'write -P 0x11 0 4M' " + P("base.raw")));
  ASSERT_TRUE(Run("qemu-img create -f qcow2 -b base.raw -F raw " + P("top.qcow2") + " 6M"));
  ASSERT_TRUE(Run("qemu-io -c 'write -P 0x22 64k 192k' -c 'write -z 512k 128k' "
                  "-c 'write -c -P 0x33 1M 64k' -c 'write -P 0x44 4M 1M' "
                  "-c 'write -P 0x55 2000000 1000' " + P("top.qcow2")));
  auto chain = OpenChain(P("top.qcow2"), policy_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_GT(ExpectSameEverywhere(*chain->top()), 0u);
}

TEST_F(ReadPlanTest, ExtendedL2Subclusters) {
  ASSERT_TRUE(Run("qemu-img create -f raw " + P("base.raw") + " 2M"));
  ASSERT_TRUE(Run("qemu-io -f raw -c 'write -P 0x11 0 2M' " + P("base.raw")));
  ASSERT_TRUE(Run("qemu-img create -f qcow2 -o extended_l2=on,cluster_size=64k -b base.raw "
                  "-F raw " + P("x.qcow2") + " 2M"));
  // 2 KiB subclusters: partial clusters, zeroed subclusters, backing between.
  ASSERT_TRUE(Run("qemu-io -c 'write -P 0x22 2k 4k' -c 'write -z 10k 2k' "
                  "-c 'write -P 0x33 70k 130k' " + P("x.qcow2")));
  auto chain = OpenChain(P("x.qcow2"), policy_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_GT(ExpectSameEverywhere(*chain->top()), 0u);
}

TEST_F(ReadPlanTest, ExternalDataFile) {
  ASSERT_TRUE(Run("qemu-img create -f qcow2 -o data_file=" + P("d.data") + " " + P("d.qcow2") +
                  " 4M"));
  ASSERT_TRUE(Run("qemu-io -c 'write -P 0x66 0 64k' -c 'write -P 0x77 3M 1M' " + P("d.qcow2")));
  auto chain = OpenChain(P("d.qcow2"), policy_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_GT(ExpectSameEverywhere(*chain->top()), 0u);
}

TEST_F(ReadPlanTest, DeepChainWalksEveryLayer) {
  // Layer i owns every 4th 64 KiB cluster, as the benchmark's chain.
  ASSERT_TRUE(Run("qemu-img create -f qcow2 " + P("l0.qcow2") + " 2M"));
  for (int i = 1; i < 4; ++i)
    ASSERT_TRUE(Run("qemu-img create -f qcow2 -b l" + std::to_string(i - 1) + ".qcow2 -F qcow2 " +
                    P("l" + std::to_string(i) + ".qcow2") + " 2M"));
  for (int i = 0; i < 4; ++i) {
    std::string cmds;
    for (int c = i; c < 32; c += 4)
      cmds += " -c 'write -P " + std::to_string(0x10 + i) + " " + std::to_string(c * 64) + "k 64k'";
    ASSERT_TRUE(Run("qemu-io" + cmds + " " + P("l" + std::to_string(i) + ".qcow2")));
  }
  auto chain = OpenChain(P("l3.qcow2"), policy_);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_GT(ExpectSameEverywhere(*chain->top()), 0u);
  ReadPlan plan;
  ASSERT_TRUE(chain->top()->PlanRead(0, 1 << 20, plan).ok());
  EXPECT_EQ(FilePieces(plan), 16u);  // one per cluster, from four files
}

TEST_F(ReadPlanTest, QcowInAWriteSessionIsNeverHandedOut) {
  // While kvmfs writes a qcow2 file its clusters could be freed and reused
  // between the plan and the splice: read into memory. Its backing file and
  // the same file outside a write session may be handed out.
  ASSERT_TRUE(Run("qemu-img create -f raw " + P("base.raw") + " 2M"));
  ASSERT_TRUE(Run("qemu-io -f raw -c 'write -P 0x11 0 2M' " + P("base.raw")));
  ASSERT_TRUE(Run("qemu-img create -f qcow2 -b base.raw -F raw " + P("top.qcow2") + " 2M"));
  ASSERT_TRUE(Run("qemu-io -c 'write -P 0x22 0 1M' " + P("top.qcow2")));
  ChainPolicy rw = policy_;
  rw.writable_top = true;
  auto chain = OpenChain(P("top.qcow2"), rw);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  ASSERT_TRUE(chain->layers[0].writable);
  Image& top = *chain->top();
  ReadPlan idle;
  ASSERT_TRUE(top.PlanRead(0, 1 << 20, idle).ok());
  EXPECT_EQ(FilePieces(idle), 1u);
  ASSERT_TRUE(top.BeginWrites().ok());
  ExpectSameEverywhere(top);
  ReadPlan writing;
  ASSERT_TRUE(top.PlanRead(0, 1 << 20, writing).ok());
  EXPECT_EQ(FilePieces(writing), 0u);
  ReadPlan backing_part;
  ASSERT_TRUE(top.PlanRead(1 << 20, 1 << 20, backing_part).ok());
  EXPECT_EQ(FilePieces(backing_part), 1u);
  ASSERT_TRUE(top.EndWrites().ok());
  ReadPlan after;
  ASSERT_TRUE(top.PlanRead(0, 1 << 20, after).ok());
  EXPECT_EQ(FilePieces(after), 1u);
}

TEST_F(ReadPlanTest, RawIsHandedOutEvenWhileWritten) {
  // A raw file is the disk byte for byte: no range ever moves, so a racing
  // write only decides old or new bytes of its own range.
  ASSERT_TRUE(Run("qemu-img create -f raw " + P("w.raw") + " 1M"));
  ChainPolicy rw = policy_;
  rw.writable_top = true;
  auto chain = OpenChain(P("w.raw"), rw);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  Image& top = *chain->top();
  ASSERT_TRUE(top.BeginWrites().ok());
  ASSERT_TRUE(top.Write(4096, "abcd", 4).ok());
  ExpectSameEverywhere(top);
  ReadPlan plan;
  ASSERT_TRUE(top.PlanRead(0, 1 << 20, plan).ok());
  EXPECT_EQ(FilePieces(plan), 1u);
}

}  // namespace
}  // namespace kvmfs
