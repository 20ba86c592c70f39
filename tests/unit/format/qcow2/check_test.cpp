// Image::Check of qcow2 against `qemu-img check --output=json` on images
// qemu-img and qemu-io make (clean, with snapshots, compressed, extended L2,
// bitmaps, a dirty lazy-refcounts image QEMU left behind) and on images the
// test then damages (leaks, refcounts too low, reserved bits, COPIED flags,
// tables past the end): every count must be what qemu-img counts, in one
// pass and in many small ones (bounded memory).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/endian.h"
#include "kvmfs/backend.h"
#include "kvmfs/chain.h"
#include "kvmfs/format.h"

namespace kvmfs {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct ShellRun {
  int status = -1;
  std::string out;
};

ShellRun Shell(const std::string& cmd, bool merge_stderr = true) {
  ShellRun r;
  FILE* p = ::popen((cmd + (merge_stderr ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int rc = ::pclose(p);
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return r;
}

class Qcow2Check : public ::testing::Test {
 public:
  void SetUp() override {
    if (Shell("qemu-img --version").status != 0 || Shell("qemu-io --version").status != 0)
      GTEST_SKIP() << "qemu-img/qemu-io not installed (qemu-utils)";
    char tmpl[] = "/tmp/kvmfs-check-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = fs::canonical(tmpl).string();
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  std::string P(const std::string& name) const { return dir_ + "/" + name; }
  void Sh(const std::string& cmd) {
    ShellRun r = Shell("cd " + dir_ + " && " + cmd);
    ASSERT_EQ(r.status, 0) << cmd << "\n" << r.out;
  }

  uint64_t Be64(const std::string& name, uint64_t off) {
    std::ifstream in(P(name), std::ios::binary);
    uint8_t b[8] = {};
    in.seekg(static_cast<std::streamoff>(off));
    in.read(reinterpret_cast<char*>(b), 8);
    return LoadBE64(b);
  }
  void Poke(const std::string& name, uint64_t off, const std::vector<uint8_t>& bytes) {
    std::fstream f(P(name), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(off));
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  void PokeBe16(const std::string& name, uint64_t off, uint16_t v) {
    Poke(name, off, {uint8_t(v >> 8), uint8_t(v)});
  }
  void PokeBe64(const std::string& name, uint64_t off, uint64_t v) {
    std::vector<uint8_t> b(8);
    StoreBE64(b.data(), v);
    Poke(name, off, b);
  }
  // The file offset of the 16-bit refcount of `cluster` (first refblock).
  uint64_t RefcountAt(const std::string& name, uint64_t cluster) {
    return Be64(name, Be64(name, 48)) + 2 * cluster;
  }

  // What qemu-img check prints (JSON) and its exit status.
  json QemuCheck(const std::string& name, int* status) {
    ShellRun r = Shell("cd " + dir_ + " && qemu-img check --output=json " + name, false);
    *status = r.status;
    return r.out.empty() ? json() : json::parse(r.out);
  }

  CheckResult Ours(const std::string& name, uint64_t max_count_bytes = 0) {
    ChainPolicy policy;
    policy.allowed_roots = {dir_};
    auto chain = OpenChain(P(name), policy);
    EXPECT_TRUE(chain.ok()) << chain.status().ToString();
    if (!chain.ok()) return {};
    CheckOptions options;
    options.max_count_bytes = max_count_bytes;
    uint64_t last = 0, calls = 0;
    options.progress = [&](uint64_t done, uint64_t total) {
      EXPECT_LE(done, total);
      EXPECT_GE(done, last);
      last = done;
      ++calls;
    };
    auto result = chain->top()->Check(options);
    EXPECT_TRUE(result.ok()) << result.status().ToString();
    return result.ok() ? *result : CheckResult{};
  }

  // Ours equals qemu-img's JSON (keys omitted there are 0 here), in one
  // pass and with windows of a few clusters. Returns qemu-img's status.
  int Compare(const std::string& name) {
    int status = -1;
    const json q = QemuCheck(name, &status);
    EXPECT_TRUE(q.is_object()) << name << ": qemu-img check printed no JSON (status " << status << ")";
    for (uint64_t window : {uint64_t{0}, uint64_t{4 * 4}, uint64_t{4 * 7}}) {
      const CheckResult r = Ours(name, window);
      SCOPED_TRACE(name + " window " + std::to_string(window));
      auto key = [&](const char* k) { return q.value(k, uint64_t{0}); };
      EXPECT_EQ(r.check_errors, key("check-errors"));
      EXPECT_EQ(r.corruptions, key("corruptions"));
      EXPECT_EQ(r.leaks, key("leaks"));
      EXPECT_EQ(r.image_end_offset, key("image-end-offset"));
      EXPECT_EQ(r.total_clusters, key("total-clusters"));
      EXPECT_EQ(r.allocated_clusters, key("allocated-clusters"));
      EXPECT_EQ(r.fragmented_clusters, key("fragmented-clusters"));
      EXPECT_EQ(r.compressed_clusters, key("compressed-clusters"));
      EXPECT_TRUE(r.failure.empty()) << r.failure;
    }
    return status;
  }

  // A 16 MiB image with data in several places, a compressed cluster and a
  // zero cluster, written out of order (fragmented).
  void MakeBusy(const std::string& name, const std::string& opts = "") {
    Sh("qemu-img create -q -f qcow2 " + (opts.empty() ? "" : "-o " + opts + " ") + name + " 16M");
    Sh("qemu-io -f qcow2 -c 'write -P 1 8M 1M' -c 'write -P 2 0 512k' -c 'write -c -P 3 4M 128k' "
       "-c 'write -z 2M 64k' -c 'write -P 4 12M 4k' " + name + " >/dev/null");
  }

  std::string dir_;
};

TEST_F(Qcow2Check, EmptyAndCleanImagesMatchQemu) {
  Sh("qemu-img create -q -f qcow2 empty.qcow2 0");
  EXPECT_EQ(Compare("empty.qcow2"), 0);
  Sh("qemu-img create -q -f qcow2 sized.qcow2 20G");
  EXPECT_EQ(Compare("sized.qcow2"), 0);
  MakeBusy("busy.qcow2");
  EXPECT_EQ(Compare("busy.qcow2"), 0);
}

TEST_F(Qcow2Check, SnapshotsSharedClustersAndOverlaysMatchQemu) {
  MakeBusy("snap.qcow2");
  Sh("qemu-img snapshot -c one snap.qcow2");
  Sh("qemu-io -f qcow2 -c 'write -P 9 8M 64k' -c 'write -P 8 1M 128k' snap.qcow2 >/dev/null");
  Sh("qemu-img snapshot -c two snap.qcow2");
  EXPECT_EQ(Compare("snap.qcow2"), 0);
  Sh("qemu-img create -q -f qcow2 -b snap.qcow2 -F qcow2 top.qcow2");
  Sh("qemu-io -f qcow2 -c 'write -P 7 3M 192k' top.qcow2 >/dev/null");
  EXPECT_EQ(Compare("top.qcow2"), 0);
}

TEST_F(Qcow2Check, OtherGeometriesMatchQemu) {
  MakeBusy("ext.qcow2", "extended_l2=on,cluster_size=128k");
  EXPECT_EQ(Compare("ext.qcow2"), 0);
  MakeBusy("small.qcow2", "cluster_size=4k,refcount_bits=1");
  EXPECT_EQ(Compare("small.qcow2"), 0);
  MakeBusy("wide.qcow2", "refcount_bits=64");
  EXPECT_EQ(Compare("wide.qcow2"), 0);
  MakeBusy("v2.qcow2", "compat=0.10");
  EXPECT_EQ(Compare("v2.qcow2"), 0);
}

TEST_F(Qcow2Check, BitmapsAreCountedAsQemuCounts) {
  MakeBusy("bitmap.qcow2");
  Sh("qemu-img bitmap --add bitmap.qcow2 b0");
  Sh("qemu-io -f qcow2 -c 'write -P 5 5M 64k' bitmap.qcow2 >/dev/null");
  Sh("qemu-img bitmap --add --granularity 4k bitmap.qcow2 b1");
  EXPECT_EQ(Compare("bitmap.qcow2"), 0);
}

TEST_F(Qcow2Check, LeaksQemuLeftBehindAreLeaks) {
  // A dirty lazy-refcounts image: qemu-io aborts without writing back.
  Sh("qemu-img create -q -f qcow2 -o lazy_refcounts=on lazy.qcow2 16M");
  ShellRun r = Shell("cd " + dir_ + " && qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -P 2 4M 64k' -c abort lazy.qcow2");
  (void)r;  // the abort kills qemu-io
  EXPECT_NE(Compare("lazy.qcow2"), 0);
}

TEST_F(Qcow2Check, LeakedClusterIsALeak) {
  MakeBusy("leak.qcow2");
  const uint64_t size = fs::file_size(P("leak.qcow2"));
  const uint64_t clusters = (size + 65535) / 65536;
  fs::resize_file(P("leak.qcow2"), (clusters + 3) * 65536);
  PokeBe16("leak.qcow2", RefcountAt("leak.qcow2", clusters + 1), 1);
  EXPECT_EQ(Compare("leak.qcow2"), 3);
}

TEST_F(Qcow2Check, RefcountTooLowIsCorruption) {
  MakeBusy("low.qcow2");
  // The L1 table's cluster (3) and the first data cluster written.
  PokeBe16("low.qcow2", RefcountAt("low.qcow2", 3), 0);
  const uint64_t l2 = Be64("low.qcow2", Be64("low.qcow2", 40)) & 0x00fffffffffffe00ull;
  const uint64_t data = Be64("low.qcow2", l2) & 0x00fffffffffffe00ull;
  PokeBe16("low.qcow2", RefcountAt("low.qcow2", data / 65536), 2);  // and a leak-like excess
  EXPECT_EQ(Compare("low.qcow2"), 2);
}

TEST_F(Qcow2Check, DamagedTableEntriesAreCorruptions) {
  MakeBusy("bits.qcow2");
  const uint64_t l1 = Be64("bits.qcow2", 40);
  const uint64_t l2 = Be64("bits.qcow2", l1) & 0x00fffffffffffe00ull;
  // L2 entry 1: reserved bits; entry 2: COPIED cleared; entry 3: unaligned.
  PokeBe64("bits.qcow2", l2 + 8, Be64("bits.qcow2", l2 + 8) | 0x100);
  PokeBe64("bits.qcow2", l2 + 16, Be64("bits.qcow2", l2 + 16) & ~(1ull << 63));
  PokeBe64("bits.qcow2", l2 + 24, Be64("bits.qcow2", l2 + 24) + 0x200);
  EXPECT_EQ(Compare("bits.qcow2"), 2);
}

TEST_F(Qcow2Check, RangesPastTheEndAreCorruptions) {
  MakeBusy("past.qcow2");
  const uint64_t l1 = Be64("past.qcow2", 40);
  const uint64_t l2 = Be64("past.qcow2", l1) & 0x00fffffffffffe00ull;
  const uint64_t size = fs::file_size(P("past.qcow2"));
  // A data cluster far past the end of the file.
  PokeBe64("past.qcow2", l2 + 5 * 8, (1ull << 63) | ((size + 10 * 65536) & ~0xffffull));
  EXPECT_EQ(Compare("past.qcow2"), 2);
}

TEST_F(Qcow2Check, ManyPassesKeepTheCountersSmall) {
  // 200 MiB of clusters in windows of 7 clusters: 500+ passes, same result.
  Sh("qemu-img create -q -f qcow2 -o cluster_size=512k many.qcow2 256M");
  Sh("qemu-io -f qcow2 -c 'write -P 1 0 100M' -c 'write -P 2 150M 50M' many.qcow2 >/dev/null");
  int status = -1;
  const json q = QemuCheck("many.qcow2", &status);
  ASSERT_EQ(status, 0);
  const CheckResult r = Ours("many.qcow2", 4 * 7);
  EXPECT_EQ(r.allocated_clusters, q.value("allocated-clusters", uint64_t{0}));
  EXPECT_EQ(r.image_end_offset, q.value("image-end-offset", uint64_t{0}));
  EXPECT_EQ(r.corruptions + r.leaks + r.check_errors, 0u);
}

}  // namespace
}  // namespace kvmfs
