// Differencing VHDX disks, which QEMU 7.2 cannot open: built here from two
// qemu-img-made images ([MS-VHDX] 2.6.2.6 parent locator, HasParent, sector
// bitmaps), and read through the chain opener against a model of the disk.
#include <random>

#include "tests/unit/format/vhdx/vhdx_file.h"

namespace kvmfs {
namespace {

using test::ReadFileBytes;
using test::VhdxFile;

std::vector<uint8_t> Utf16(const std::string& s) {
  std::vector<uint8_t> out;
  for (char c : s) {
    out.push_back(uint8_t(c));
    out.push_back(0);
  }
  return out;
}

class VhdxDiffTest : public test::QemuDirTest {
 public:
  static constexpr uint64_t kBlock = 1u << 20;

  // parent.vhdx (16 MiB, 1 MiB blocks, all written) and child.vhdx on it:
  // block 2 present, block 5 partially present (two sector runs), block 7
  // ZERO, the rest not present (the parent's). Returns the model.
  std::vector<uint8_t> Build(const std::string& linkage_override = "") {
    Sh("qemu-img create -q -f vhdx -o block_size=1M parent.vhdx 16M");
    Io("parent.vhdx", {"write -P 0x50 0 16M", "write -P 0x51 5M 1M"}, "vhdx");
    Sh("qemu-img create -q -f vhdx -o block_size=1M child.vhdx 16M");
    Io("child.vhdx", {"write -P 0x60 2M 1M", "write -P 0x61 5M 1M"}, "vhdx");
    Sh("qemu-img convert -f vhdx -O raw parent.vhdx model.raw");
    std::vector<uint8_t> model = ReadFileBytes(P("model.raw"));

    VhdxFile parent(P("parent.vhdx"));
    vhdx::Guid data_guid;
    std::memcpy(data_guid.data(), parent.Cur() + vhdx::Header::kOffDataWriteGuid, 16);
    VhdxFile f(P("child.vhdx"));
    StoreLE32(&f.d[f.Item(vhdx::kFileParametersGuid) + 4], 2);  // HasParent
    // The parent locator: its table entry and the item after the others.
    test::PutLE16(&f.d[f.meta + 10], 6);
    uint8_t* e = &f.d[f.meta + 32 + 5 * 32];
    std::memcpy(e, vhdx::kParentLocatorGuid.data(), 16);
    const uint32_t item_off = 65536 + 4096;
    std::vector<std::pair<std::string, std::string>> kv = {
        {"parent_linkage", linkage_override.empty() ? vhdx::GuidText(data_guid) : linkage_override},
        {"relative_path", ".\\parent.vhdx"}};
    std::vector<uint8_t> item(20 + 12 * kv.size(), 0);
    std::memcpy(item.data(), vhdx::kVhdxParentTypeGuid.data(), 16);
    test::PutLE16(item.data() + 18, uint16_t(kv.size()));
    for (size_t i = 0; i < kv.size(); ++i) {
      auto key = Utf16(kv[i].first), value = Utf16(kv[i].second);
      StoreLE32(item.data() + 20 + 12 * i, uint32_t(item.size()));
      item.insert(item.end(), key.begin(), key.end());
      StoreLE32(item.data() + 20 + 12 * i + 4, uint32_t(item.size()));
      item.insert(item.end(), value.begin(), value.end());
      test::PutLE16(item.data() + 20 + 12 * i + 8, uint16_t(key.size()));
      test::PutLE16(item.data() + 20 + 12 * i + 10, uint16_t(value.size()));
    }
    StoreLE32(e + 16, item_off);
    StoreLE32(e + 20, uint32_t(item.size()));
    StoreLE32(e + 24, 4);  // IsRequired
    std::copy(item.begin(), item.end(), f.d.begin() + f.meta + item_off);

    // BAT: not present but blocks 2, 5 (partial) and 7 (zero).
    for (uint64_t b = 0; b < 16; ++b)
      if (b != 2 && b != 5) f.SetBat(b, b == 7 ? 2 : 0);
    f.SetBat(5, (f.Bat(5) & vhdx::kBatOffsetMask) | 7);
    const uint64_t bitmap = f.d.size();  // a MiB multiple: QEMU grows files so
    f.d.resize(bitmap + (1u << 20), 0);
    f.SetBat(4096, bitmap | 6);  // the chunk's sector bitmap entry (R = 4096)
    auto set_sectors = [&](uint64_t first, uint64_t count) {
      for (uint64_t s = first; s < first + count; ++s) f.d[bitmap + s / 8] |= uint8_t(1u << (s % 8));
    };
    set_sectors(5 * 2048, 100);
    set_sectors(5 * 2048 + 1000, 500);
    f.Save(P("child.vhdx"));

    std::fill(model.begin() + 2 * kBlock, model.begin() + 3 * kBlock, 0x60);
    std::fill(model.begin() + 5 * kBlock, model.begin() + 5 * kBlock + 100 * 512, 0x61);
    std::fill(model.begin() + 5 * kBlock + 1000 * 512, model.begin() + 5 * kBlock + 1500 * 512, 0x61);
    std::fill(model.begin() + 7 * kBlock, model.begin() + 8 * kBlock, 0);
    return model;
  }
};

TEST_F(VhdxDiffTest, ChildReadsThroughItsParentLocator) {
  const std::vector<uint8_t> model = Build();
  Chain chain = Open("child.vhdx");
  ASSERT_EQ(chain.layers.size(), 2u);
  EXPECT_EQ(chain.top()->Info().backing_filename, "./parent.vhdx");
  EXPECT_EQ(chain.layers[1].format, "vhdx");
  std::vector<uint8_t> got(model.size(), 0xee);
  Status st = chain.top()->Read(0, got.data(), got.size());
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_TRUE(got == model) << "first difference at byte "
                            << (std::mismatch(got.begin(), got.end(), model.begin()).first - got.begin());
  // Unaligned pieces across the sector runs of the partial block.
  for (uint64_t off : {5 * kBlock + 99 * 512 + 7, 5 * kBlock + 999 * 512 + 300, 7 * kBlock - 5}) {
    std::vector<uint8_t> piece(3000);
    ASSERT_TRUE(chain.top()->Read(off, piece.data(), piece.size()).ok());
    EXPECT_TRUE(std::equal(piece.begin(), piece.end(), model.begin() + off)) << off;
  }
  ReadPlan plan;
  ASSERT_TRUE(chain.top()->PlanRead(0, model.size(), plan).ok());
  EXPECT_EQ(plan.size(), model.size());
  // Allocation: the child's own blocks and runs are data, the rest is the
  // parent's (unallocated here, data in the chain), block 7 zero.
  auto at = [&](uint64_t off) { return chain.top()->GetBlockStatus(off, model.size() - off); };
  EXPECT_EQ(at(0)->kind, Allocation::kUnallocated);
  EXPECT_EQ(at(2 * kBlock)->kind, Allocation::kData);
  EXPECT_EQ(at(5 * kBlock)->kind, Allocation::kData);
  EXPECT_EQ(at(5 * kBlock)->length, 100u * 512);
  EXPECT_EQ(at(5 * kBlock + 100 * 512)->kind, Allocation::kUnallocated);
  EXPECT_EQ(at(5 * kBlock + 100 * 512)->length, 900u * 512);
  EXPECT_EQ(at(7 * kBlock)->kind, Allocation::kZero);
  auto chain_bs = ChainBlockStatus(*chain.top(), 0, model.size());
  ASSERT_TRUE(chain_bs.ok());
  EXPECT_EQ(chain_bs->kind, Allocation::kData);
  // QEMU cannot open it at all: kvmfs serves it read-only.
  EXPECT_FALSE(ShOut("qemu-img info child.vhdx", false).has_value());
  Chain rw = Open("child.vhdx", true);
  ASSERT_FALSE(rw.layers.empty());
  EXPECT_EQ(rw.top()->BeginWrites().code(), Status::Code::kReadOnly);
  EXPECT_NE(rw.top()->ReadOnlyReason().find("differencing"), std::string::npos);
}

TEST_F(VhdxDiffTest, ParentThatChangedSinceIsRefused) {
  Build("{00000000-1111-2222-3333-444444444444}");
  Chain chain = Open("child.vhdx");
  ASSERT_EQ(chain.layers.size(), 2u);
  uint8_t b[512];
  EXPECT_TRUE(chain.top()->Read(2 * kBlock, b, sizeof b).ok());  // the child's own
  Status st = chain.top()->Read(0, b, sizeof b);
  EXPECT_TRUE(st.IsCorruption()) << st.ToString();
  EXPECT_NE(st.message().find("parent"), std::string::npos);
}

TEST_F(VhdxDiffTest, MissingParentIsNotFound) {
  Build();
  Sh("rm parent.vhdx");
  auto chain = TryOpen("child.vhdx");
  ASSERT_FALSE(chain.ok());
  EXPECT_TRUE(chain.status().IsNotFound()) << chain.status().ToString();
}

}  // namespace
}  // namespace kvmfs
