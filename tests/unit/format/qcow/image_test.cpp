// qcow images made by qemu-img / qemu-io at test time, read through the chain
// opener and compared byte for byte and map for map with qemu-img; writes
// through the driver checked with qemu-img compare.
#include <gtest/gtest.h>

#include <thread>

#include "format/qcow/qcow.h"
#include "kvmfs/chain.h"
#include "kvmfs/format.h"
#include "qemu_oracle.h"

namespace kvmfs {
namespace {

using test::QemuOracleTest;
using test::ReadFileBytes;

class QcowImageTest : public QemuOracleTest {};

TEST_F(QcowImageTest, ConvertedMixedImagesMatchQemu) {
  // Odd sizes (not a multiple of the cluster, the L2 span or 512).
  for (uint64_t size : {uint64_t{5 << 20} + 12345, uint64_t{3 << 20} + 512 * 7}) {
    SCOPED_TRACE(size);
    MakeMixedRaw("src.raw", size, static_cast<uint32_t>(size));
    Sh("qemu-img convert -q -f raw -O qcow src.raw plain.qcow");
    ExpectSame("plain.qcow");
    Chain chain = Open("plain.qcow");
    ASSERT_FALSE(chain.layers.empty());
    EXPECT_EQ(chain.layers[0].format, "qcow");
    EXPECT_EQ(chain.top()->Info().cluster_size, 4096u);
  }
  // Compressed clusters, with a last cluster that is not whole.
  MakeMixedRaw("src.raw", (3 << 20) + 512 * 7, 5);
  MakeCompressedQcow("src.raw", "comp.qcow");
  ExpectSame("comp.qcow");
}

TEST_F(QcowImageTest, CompressedImageReallyHoldsCompressedClusters) {
  MakeMixedRaw("src.raw", 4 << 20, 7);
  MakeCompressedQcow("src.raw", "comp.qcow");
  Sh("qemu-img convert -q -f raw -O qcow src.raw plain.qcow");
  // Recipe sanity: the text regions compress.
  EXPECT_LT(std::filesystem::file_size(P("comp.qcow")), std::filesystem::file_size(P("plain.qcow")));
  ExpectSame("comp.qcow");
}

TEST_F(QcowImageTest, QemuIoWritesAndBackingFilesMatchQemu) {
  // qcow over a qcow2 base, and qcow over a raw base (512-byte clusters).
  Sh("qemu-img create -q -f qcow2 base.qcow2 3M");
  Io("base.qcow2", {"write -P 0x61 0 3M", "write -z 1M 64k"}, "qcow2");
  Sh("qemu-img create -q -f qcow -b base.qcow2 -F qcow2 top.qcow 4M");
  Io("top.qcow", {"write -P 0x62 1000 5000", "write -P 0x63 1048576 4096", "write -P 0x64 3M 4k",
                  "write -P 0x65 4193792 512"},
     "qcow");
  ExpectSame("top.qcow");
  Chain chain = Open("top.qcow");
  ASSERT_EQ(chain.layers.size(), 2u);
  EXPECT_EQ(chain.layers[1].format, "qcow2");
  EXPECT_EQ(chain.top()->Info().backing_filename, "base.qcow2");
  EXPECT_TRUE(chain.top()->Info().backing_format.empty());
  EXPECT_EQ(chain.top()->Info().cluster_size, 512u);

  Sh("qemu-img create -q -f raw base.raw 2M");
  Io("base.raw", {"write -P 0x71 0 2M"}, "raw");
  Sh("qemu-img create -q -f qcow -b base.raw -F raw top2.qcow 2M");
  Io("top2.qcow", {"write -P 0x72 700 3000", "write -P 0x73 1M 1M"}, "qcow");
  ExpectSame("top2.qcow");
}

TEST_F(QcowImageTest, InfoMatchesQemuImgInfo) {
  Sh("qemu-img create -q -f qcow a.qcow 10000000");
  Sh("qemu-img create -q -f qcow -b a.qcow -F qcow b.qcow");
  for (const char* name : {"a.qcow", "b.qcow"}) {
    auto want = nlohmann::json::parse(Out(std::string("qemu-img info --output=json ") + name));
    Chain chain = Open(name);
    ASSERT_FALSE(chain.layers.empty());
    ImageInfo info = chain.top()->Info();
    EXPECT_EQ(info.format, want["format"].get<std::string>());
    EXPECT_EQ(info.virtual_size, want["virtual-size"].get<uint64_t>());
    EXPECT_EQ(*info.cluster_size, want["cluster-size"].get<uint64_t>());
    EXPECT_EQ(info.backing_filename, want.value("backing-filename", std::string()));
    EXPECT_FALSE(want.contains("format-specific"));
    EXPECT_FALSE(want.contains("backing-filename-format"));
  }
}

// ---- Writes -----------------------------------------------------------------

class QcowWriteTest : public QemuOracleTest {
 public:
  // Writes `data` at `off` through the driver and into the model.
  void W(Image& image, std::vector<uint8_t>& model, uint64_t off, std::vector<uint8_t> data) {
    Status st = image.Write(off, data.data(), data.size());
    ASSERT_TRUE(st.ok()) << st.ToString();
    std::copy(data.begin(), data.end(), model.begin() + off);
  }
  static std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = uint8_t(seed + i * 7 + (i >> 9));
    return v;
  }
  // The model (a raw file) and the image agree for qemu-img compare, and
  // through our own reads.
  void ExpectImageIs(const std::string& name, const std::vector<uint8_t>& model) {
    test::WriteFileBytes(P("model.raw"), model);
    Sh("qemu-img compare -q -f qcow -F raw " + name + " model.raw");
    Chain again = Open(name);
    ASSERT_FALSE(again.layers.empty());
    std::vector<uint8_t> got(model.size());
    ASSERT_TRUE(again.top()->Read(0, got.data(), got.size()).ok());
    ASSERT_TRUE(got == model);
  }
};

TEST_F(QcowWriteTest, WritesAsQemuReadsThem) {
  const uint64_t size = (6 << 20) + 1536;  // odd: the last cluster is partial
  Sh("qemu-img create -q -f qcow w.qcow " + std::to_string(size));
  std::vector<uint8_t> model(size, 0);
  {
    Chain chain = Open("w.qcow", true);
    ASSERT_FALSE(chain.layers.empty());
    Image& img = *chain.top();
    ASSERT_TRUE(img.BeginWrites().ok());
    ASSERT_TRUE(img.writable());
    W(img, model, 0, Pattern(4096, 1));             // one whole cluster
    W(img, model, 5000, Pattern(3, 2));             // inside a new cluster
    W(img, model, 4096 * 3 - 100, Pattern(300, 3)); // across two new clusters
    W(img, model, 2 << 20, Pattern(1 << 20, 4));    // a second L2 table, 256 clusters
    W(img, model, (2 << 20) + 4000, Pattern(9000, 5));  // in place
    W(img, model, size - 700, Pattern(700, 6));     // the partial last cluster
    W(img, model, 5 << 20, Pattern((1 << 20) + 1536, 9));  // a run longer than one step
    ASSERT_TRUE(img.WriteZeroes(2 << 20, 8192, true).ok());  // allocated: zeroed in place
    std::fill(model.begin() + (2 << 20), model.begin() + (2 << 20) + 8192, 0);
    ASSERT_TRUE(img.WriteZeroes(4 << 20, 65536, false).ok());  // unallocated, no backing: nothing
    ASSERT_TRUE(img.EndWrites().ok());
  }
  ExpectImageIs("w.qcow", model);
  // And qemu-io sees the same bytes where it looks.
  Io("w.qcow", {"read -P 0 4096 904", "read -P 0 4194304 65536"}, "qcow");
}

TEST_F(QcowWriteTest, PartialOverwriteOfCompressedClusterDecompressesIt) {
  MakeMixedRaw("src.raw", 2 << 20, 11);
  MakeCompressedQcow("src.raw", "c.qcow");
  std::vector<uint8_t> model = ReadFileBytes(P("src.raw"));
  {
    Chain chain = Open("c.qcow", true);
    ASSERT_FALSE(chain.layers.empty());
    Image& img = *chain.top();
    ASSERT_TRUE(img.BeginWrites().ok());
    for (uint64_t off = 100; off < model.size(); off += 37 * 4096 + 333)
      W(img, model, off, Pattern(1000, uint8_t(off)));
    W(img, model, 8192, Pattern(4096, 0x40));  // a whole cluster: no decompression needed
    ASSERT_TRUE(img.WriteZeroes(40000, 5000, false).ok());  // compressed: rewritten as zeros
    std::fill(model.begin() + 40000, model.begin() + 45000, 0);
    ASSERT_TRUE(img.Flush().ok());
    ASSERT_TRUE(img.EndWrites().ok());
  }
  ExpectImageIs("c.qcow", model);
}

TEST_F(QcowWriteTest, NewClustersCopyTheBackingFile) {
  Sh("qemu-img create -q -f raw base.raw 3M");
  Io("base.raw", {"write -P 0x5a 0 3M"}, "raw");
  // 4 KiB clusters over a backing file (QEMU makes 512-byte ones; the L1
  // size stays the same with cluster_bits 12 and l2_bits 9): a write of a
  // few bytes must keep the rest of its cluster from the backing file.
  Sh("qemu-img create -q -f qcow -b base.raw -F raw top.qcow 4M");
  Sh("printf '\\014\\011' | dd of=top.qcow bs=1 seek=32 conv=notrunc status=none");
  std::vector<uint8_t> model(4 << 20, 0);
  std::fill(model.begin(), model.begin() + (3 << 20), 0x5a);
  {
    Chain chain = Open("top.qcow", true);
    ASSERT_EQ(chain.layers.size(), 2u);
    Image& img = *chain.top();
    ASSERT_TRUE(img.BeginWrites().ok());
    W(img, model, 1000, Pattern(10, 1));
    W(img, model, (3 << 20) - 300, Pattern(600, 2));  // across the end of the backing file
    W(img, model, 77777, Pattern(70000, 3));
    // Zeroes over the backing file must hide it.
    ASSERT_TRUE(img.WriteZeroes(2 << 20, 10000, true).ok());
    std::fill(model.begin() + (2 << 20), model.begin() + (2 << 20) + 10000, 0);
    ASSERT_TRUE(img.EndWrites().ok());
  }
  ExpectImageIs("top.qcow", model);
  ExpectSame("top.qcow");
  EXPECT_EQ(Open("top.qcow").top()->Info().cluster_size, 4096u);
}

TEST_F(QcowWriteTest, ConcurrentWritersAndReaders) {
  Sh("qemu-img create -q -f qcow cc.qcow 8M");
  Chain chain = Open("cc.qcow", true);
  ASSERT_FALSE(chain.layers.empty());
  Image& img = *chain.top();
  ASSERT_TRUE(img.BeginWrites().ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&img, t] {
      std::vector<uint8_t> buf(6000, uint8_t(t + 1)), back(6000);
      for (int i = 0; i < 200; ++i) {
        const uint64_t off = (uint64_t(t) << 21) + uint64_t(i) * 9000;
        ASSERT_TRUE(img.Write(off, buf.data(), buf.size()).ok());
        ASSERT_TRUE(img.Read(off, back.data(), back.size()).ok());
        ASSERT_EQ(back, buf);
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(img.EndWrites().ok());
  std::vector<uint8_t> model(8 << 20, 0);
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 200; ++i)
      std::fill_n(model.begin() + (uint64_t(t) << 21) + uint64_t(i) * 9000, 6000, uint8_t(t + 1));
  ExpectImageIs("cc.qcow", model);
}

TEST_F(QcowWriteTest, ReadOnlyAndResize) {
  Sh("qemu-img create -q -f qcow r.qcow 1M");
  Chain ro = Open("r.qcow", false);
  ASSERT_FALSE(ro.layers.empty());
  uint8_t b = 1;
  EXPECT_EQ(ro.top()->Write(0, &b, 1).code(), Status::Code::kReadOnly);
  EXPECT_EQ(ro.top()->BeginWrites().code(), Status::Code::kReadOnly);
  Chain rw = Open("r.qcow", true);
  ASSERT_TRUE(rw.top()->BeginWrites().ok());
  // QEMU's qcow cannot resize either.
  EXPECT_EQ(rw.top()->Resize(2 << 20).code(), Status::Code::kNotSupported);
  EXPECT_EQ(rw.top()->Write(1 << 20, &b, 1).code(), Status::Code::kInvalidArgument);
  ASSERT_TRUE(rw.top()->EndWrites().ok());
}

}  // namespace
}  // namespace kvmfs
