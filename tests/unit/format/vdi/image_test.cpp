// VDI images made by qemu-img / qemu-io at test time (dynamic and static,
// odd sizes), read through the chain opener and compared byte for byte and
// map for map with qemu-img; writes through the driver checked with
// qemu-img check and qemu-img compare.
#include <gtest/gtest.h>

#include <thread>

#include "kvmfs/chain.h"
#include "kvmfs/format.h"
#include "../qcow/qemu_oracle.h"

namespace kvmfs {
namespace {

using test::QemuOracleTest;
using test::ReadFileBytes;

constexpr uint64_t kMiB = 1 << 20;

class VdiImageTest : public QemuOracleTest {
 public:
  void W(Image& image, std::vector<uint8_t>& model, uint64_t off, const std::vector<uint8_t>& data) {
    Status st = image.Write(off, data.data(), data.size());
    ASSERT_TRUE(st.ok()) << st.ToString();
    std::copy(data.begin(), data.end(), model.begin() + off);
  }
  static std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = uint8_t(seed + i * 13 + (i >> 10));
    return v;
  }
  // qemu-img check is clean, qemu-img compare agrees with the model, and so
  // do our own reads after reopening.
  void ExpectImageIs(const std::string& name, const std::vector<uint8_t>& model) {
    Sh("qemu-img check -q -f vdi " + name);
    test::WriteFileBytes(P("model.raw"), model);
    Sh("qemu-img compare -q -f vdi -F raw " + name + " model.raw");
    Chain again = Open(name);
    ASSERT_FALSE(again.layers.empty());
    std::vector<uint8_t> got(model.size());
    ASSERT_TRUE(again.top()->Read(0, got.data(), got.size()).ok());
    ASSERT_TRUE(got == model);
    ExpectSameMap(*again.top(), name);
  }
};

TEST_F(VdiImageTest, ConvertedDynamicAndStaticImagesMatchQemu) {
  for (uint64_t size : {uint64_t{5 * kMiB} + 12345, uint64_t{3 * kMiB} + 512 * 7}) {
    SCOPED_TRACE(size);
    MakeMixedRaw("src.raw", size, static_cast<uint32_t>(size));
    Sh("qemu-img convert -q -f raw -O vdi src.raw dyn.vdi");
    ExpectSame("dyn.vdi");
    Sh("qemu-img convert -q -f raw -O vdi -o static=on src.raw static.vdi");
    ExpectSame("static.vdi");
    Chain chain = Open("static.vdi");
    ASSERT_FALSE(chain.layers.empty());
    EXPECT_EQ(chain.layers[0].format, "vdi");
  }
}

TEST_F(VdiImageTest, QemuIoWritesMatchQemu) {
  Sh("qemu-img create -q -f vdi q.vdi 7340000");  // odd: rounded up to 512
  Io("q.vdi", {"write -P 0x11 1000 5000", "write -P 0x22 2097152 1048576", "write -P 0x33 3M 100k",
               "write -P 0x44 7339520 512", "write -z 5M 4k"},
     "vdi");
  ExpectSame("q.vdi");
}

TEST_F(VdiImageTest, EmptyDiskMatchesQemu) {
  Sh("qemu-img create -q -f vdi empty.vdi 0");
  ExpectSame("empty.vdi");
}

TEST_F(VdiImageTest, InfoMatchesQemuImgInfo) {
  Sh("qemu-img create -q -f vdi a.vdi 3000000");
  Sh("qemu-img create -q -f vdi -o static=on b.vdi 2M");
  for (const char* name : {"a.vdi", "b.vdi"}) {
    auto want = nlohmann::json::parse(Out(std::string("qemu-img info --output=json ") + name));
    Chain chain = Open(name);
    ASSERT_FALSE(chain.layers.empty());
    ImageInfo info = chain.top()->Info();
    EXPECT_EQ(info.format, want["format"].get<std::string>());
    EXPECT_EQ(info.virtual_size, want["virtual-size"].get<uint64_t>());
    EXPECT_EQ(*info.cluster_size, want["cluster-size"].get<uint64_t>());
    EXPECT_FALSE(want.contains("format-specific"));
    EXPECT_TRUE(info.format_specific_type.empty());
  }
}

TEST_F(VdiImageTest, WritesAllocateBlocksAsQemu) {
  const uint64_t size = 9 * kMiB + 512 * 3;
  Sh("qemu-img create -q -f vdi w.vdi " + std::to_string(size));
  std::vector<uint8_t> model(size, 0);
  {
    Chain chain = Open("w.vdi", true);
    ASSERT_FALSE(chain.layers.empty());
    Image& img = *chain.top();
    ASSERT_TRUE(img.BeginWrites().ok());
    W(img, model, 5 * kMiB + 77, Pattern(1000, 1));   // a new block, not the first
    W(img, model, 5 * kMiB + 5000, Pattern(3, 2));    // in place
    W(img, model, kMiB - 100, Pattern(2 * kMiB + 300, 3));  // three new blocks
    W(img, model, size - 512, Pattern(512, 4));        // the partial last block
    ASSERT_TRUE(img.WriteZeroes(5 * kMiB, 4096, true).ok());
    std::fill(model.begin() + 5 * kMiB, model.begin() + 5 * kMiB + 4096, 0);
    ASSERT_TRUE(img.WriteZeroes(7 * kMiB, kMiB, false).ok());  // unallocated: nothing to do
    ASSERT_TRUE(img.EndWrites().ok());
  }
  ExpectImageIs("w.vdi", model);
  // Blocks were appended in the order they were first written.
  auto map = nlohmann::json::parse(Out("qemu-img map --output=json w.vdi"));
  uint64_t offset_of_block5 = 0, offset_of_block0 = 0;
  for (const auto& e : map) {
    if (!e["data"].get<bool>()) continue;
    if (e["start"].get<uint64_t>() <= 5 * kMiB && 5 * kMiB < e["start"].get<uint64_t>() + e["length"].get<uint64_t>())
      offset_of_block5 = e["offset"].get<uint64_t>() + (5 * kMiB - e["start"].get<uint64_t>());
    if (e["start"].get<uint64_t>() == 0) offset_of_block0 = e["offset"].get<uint64_t>();
  }
  EXPECT_LT(offset_of_block5, offset_of_block0);
}

TEST_F(VdiImageTest, WritesToStaticAndConvertedImages) {
  MakeMixedRaw("src.raw", 4 * kMiB + 1024, 3);
  Sh("qemu-img convert -q -f raw -O vdi -o static=on src.raw s.vdi");
  Sh("qemu-img convert -q -f raw -O vdi src.raw d.vdi");
  for (const char* name : {"s.vdi", "d.vdi"}) {
    SCOPED_TRACE(name);
    std::vector<uint8_t> model = ReadFileBytes(P("src.raw"));
    {
      Chain chain = Open(name, true);
      ASSERT_FALSE(chain.layers.empty());
      Image& img = *chain.top();
      ASSERT_TRUE(img.BeginWrites().ok());
      for (uint64_t off = 3; off < model.size(); off += 300001)
        W(img, model, off, Pattern(4099, uint8_t(off)));
      ASSERT_TRUE(img.WriteZeroes(kMiB, kMiB, true).ok());
      std::fill(model.begin() + kMiB, model.begin() + 2 * kMiB, 0);
      ASSERT_TRUE(img.Flush().ok());
      ASSERT_TRUE(img.EndWrites().ok());
    }
    ExpectImageIs(name, model);
  }
}

TEST_F(VdiImageTest, ConcurrentAllocatingWriters) {
  Sh("qemu-img create -q -f vdi cc.vdi 16M");
  Chain chain = Open("cc.vdi", true);
  ASSERT_FALSE(chain.layers.empty());
  Image& img = *chain.top();
  ASSERT_TRUE(img.BeginWrites().ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&img, t] {
      std::vector<uint8_t> buf(70000, uint8_t(t + 1)), back(70000);
      for (int i = 0; i < 40; ++i) {
        const uint64_t off = uint64_t(i) * 400000 + uint64_t(t) * 90000;
        ASSERT_TRUE(img.Write(off, buf.data(), buf.size()).ok());
        ASSERT_TRUE(img.Read(off, back.data(), back.size()).ok());
        ASSERT_EQ(back, buf);
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(img.EndWrites().ok());
  std::vector<uint8_t> model(16 * kMiB, 0);
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 40; ++i)
      std::fill_n(model.begin() + uint64_t(i) * 400000 + uint64_t(t) * 90000, 70000, uint8_t(t + 1));
  ExpectImageIs("cc.vdi", model);
}

TEST_F(VdiImageTest, ReadOnlyAndResize) {
  Sh("qemu-img create -q -f vdi r.vdi 1M");
  Chain ro = Open("r.vdi", false);
  ASSERT_FALSE(ro.layers.empty());
  uint8_t b = 1;
  EXPECT_EQ(ro.top()->Write(0, &b, 1).code(), Status::Code::kReadOnly);
  Chain rw = Open("r.vdi", true);
  ASSERT_TRUE(rw.top()->BeginWrites().ok());
  // QEMU's vdi cannot resize either ("Image format driver does not support resize").
  EXPECT_EQ(rw.top()->Resize(2 * kMiB).code(), Status::Code::kNotSupported);
  EXPECT_EQ(rw.top()->Write(kMiB, &b, 1).code(), Status::Code::kInvalidArgument);
  ASSERT_TRUE(rw.top()->EndWrites().ok());
}

TEST_F(VdiImageTest, Qcow2OverlayOnVdiBase) {
  MakeMixedRaw("src.raw", 3 * kMiB, 9);
  Sh("qemu-img convert -q -f raw -O vdi src.raw base.vdi");
  Sh("qemu-img create -q -f qcow2 -b base.vdi -F vdi top.qcow2");
  Io("top.qcow2", {"write -P 0x55 100k 200k", "write -z 2M 64k"}, "qcow2");
  ExpectSame("top.qcow2");
  Chain chain = Open("top.qcow2");
  ASSERT_EQ(chain.layers.size(), 2u);
  EXPECT_EQ(chain.layers[1].format, "vdi");
}

}  // namespace
}  // namespace kvmfs
