// VHD (vpc) driver: images made by qemu-img/qemu-io at test time, compared
// byte for byte, size for size and map for map with QEMU 7.2; writes checked
// with qemu-img compare; crafted headers refused as QEMU refuses them.
#include <random>

#include "base/endian.h"
#include "format/vpc/vpc.h"
#include "tests/unit/format/vpc/qemu_util.h"

namespace kvmfs {
namespace {

using nlohmann::json;
using test::ReadFileBytes;
using test::WriteFileBytes;

class VpcTest : public test::QemuDirTest {
 public:
  // A raw source with text, random, zero-written and untouched regions, of
  // an odd size.
  void MakeSource(const std::string& name, uint64_t size) {
    Sh("qemu-img create -q -f raw " + name + " " + std::to_string(size));
    std::vector<uint8_t> data = ReadFileBytes(P(name));
    const std::string text = "kvmfs vpc test: the quick brown fox jumps over the lazy dog\n";
    for (uint64_t i = 0; i < std::min<uint64_t>(size, 300000); ++i) data[i] = text[i % text.size()];
    std::mt19937 rng(7);
    for (uint64_t i = size / 2; i < std::min<uint64_t>(size, size / 2 + 777777); ++i)
      data[i] = uint8_t(rng());
    for (uint64_t i = size - std::min<uint64_t>(size, 5000); i < size; ++i) data[i] = 0x5a;
    WriteFileBytes(P(name), data);
  }

  // Footer at 0 (dynamic) or at the end (fixed): patch and fix the checksum.
  void PatchFooter(const std::string& name, uint64_t footer_off,
                   const std::function<void(uint8_t*)>& patch) {
    auto data = ReadFileBytes(P(name));
    ASSERT_GE(data.size(), footer_off + 512);
    uint8_t* f = data.data() + footer_off;
    patch(f);
    StoreBE32(f + vpc::Footer::kOffChecksum, vpc::Checksum(f, 512, vpc::Footer::kOffChecksum));
    WriteFileBytes(P(name), data);
  }

  void ExpectSameAsQemu(const std::string& name) {
    SCOPED_TRACE(name);
    Chain chain = Open(name);
    ASSERT_FALSE(chain.layers.empty());
    Image& image = *chain.top();
    json info = QemuInfo(name, "vpc");
    EXPECT_EQ(image.size(), info["virtual-size"].get<uint64_t>());
    ImageInfo mine = image.Info();
    EXPECT_EQ(mine.format, "vpc");
    EXPECT_EQ(mine.cluster_size.has_value(), info.contains("cluster-size"));
    if (mine.cluster_size && info.contains("cluster-size")) {
      EXPECT_EQ(*mine.cluster_size, info["cluster-size"].get<uint64_t>());
    }
    EXPECT_TRUE(mine.backing_filename.empty());
    ExpectSameBytes(image, name, "vpc");
  }

  // Allocation against `qemu-img map`: data where QEMU says data, zeros
  // where it says zero.
  void ExpectSameMap(const std::string& name) {
    Chain chain = Open(name);
    ASSERT_FALSE(chain.layers.empty());
    auto out = ShOut("qemu-img map -f vpc --output=json " + name);
    ASSERT_TRUE(out);
    for (const json& e : json::parse(*out)) {
      uint64_t off = e["start"].get<uint64_t>();
      const uint64_t end = off + e["length"].get<uint64_t>();
      while (off < end) {
        auto bs = chain.top()->GetBlockStatus(off, end - off);
        ASSERT_TRUE(bs.ok()) << bs.status().ToString();
        ASSERT_GT(bs->length, 0u);
        EXPECT_EQ(bs->kind == Allocation::kData, e["data"].get<bool>()) << off << " " << e.dump();
        off += bs->length;
      }
    }
  }

  Status OpenStatus(const std::string& name) {
    auto chain = TryOpen(name, false, "vpc");
    return chain.ok() ? Status::OK() : chain.status();
  }
  bool QemuOpens(const std::string& name) {
    return ShOut("qemu-img info -f vpc " + name, false).has_value();
  }
};

TEST_F(VpcTest, FixedAndDynamicOfOddSizesMatchQemu) {
  for (uint64_t size : {1048576ull, 10485767ull, 66060800ull, 104857600ull}) {
    MakeSource("src.raw", size);
    for (const char* sub : {"dynamic", "fixed"}) {
      for (const char* force : {"off", "on"}) {
        const std::string name = std::string(sub) + "-" + force + "-" + std::to_string(size) + ".vhd";
        Sh(std::string("qemu-img convert -f raw -O vpc -o subformat=") + sub + ",force_size=" +
           force + " src.raw " + name);
        ExpectSameAsQemu(name);
      }
    }
  }
}

TEST_F(VpcTest, QemuIoWrittenDynamicImageMatchesBytesAndMap) {
  Sh("qemu-img create -q -f vpc -o subformat=dynamic d.vhd 64M");
  Io("d.vhd", {"write -P 0x11 0 4096", "write -P 0x22 10M 3M", "write -z 20M 1M",
               "write -P 0x33 67124736 512"}, "vpc");
  ExpectSameAsQemu("d.vhd");
  ExpectSameMap("d.vhd");
}

TEST_F(VpcTest, CreatorAppChoosesChsOrCurrentSizeAsQemu) {
  Sh("qemu-img create -q -f vpc d.vhd 16M");
  Io("d.vhd", {"write -P 0x44 0 16M"}, "vpc");
  const std::vector<std::string> creators = {"win ", "qem2", "d2v ", "CTXS", std::string("tap\0", 4),
                                             "tap ", "vpc ", std::string("d2v\0", 4), "vbox", "xyz!"};
  for (const std::string& creator : creators) {
    SCOPED_TRACE("creator '" + creator + "'");
    Sh("cp d.vhd c.vhd");
    // current_size smaller than the CHS size and not a whole sector: both
    // rules are visible, and the floor to 512.
    PatchFooter("c.vhd", 0, [&](uint8_t* f) {
      std::memcpy(f + vpc::Footer::kOffCreatorApp, creator.data(), 4);
      StoreBE64(f + vpc::Footer::kOffCurrentSize, (8u << 20) + 700);
    });
    ExpectSameAsQemu("c.vhd");
  }
  // The maximal geometry means current_size whatever the creator.
  Sh("cp d.vhd m.vhd");
  PatchFooter("m.vhd", 0, [](uint8_t* f) {
    StoreBE16(f + vpc::Footer::kOffCylinders, 65535);
    f[vpc::Footer::kOffHeads] = 16;
    f[vpc::Footer::kOffSectors] = 255;
    StoreBE64(f + vpc::Footer::kOffCurrentSize, 12u << 20);
  });
  ExpectSameAsQemu("m.vhd");
}

TEST_F(VpcTest, FixedWithOversizedCurrentSizeShowsFooterBytesAsQemu) {
  Sh("qemu-img create -q -f vpc -o subformat=fixed f.vhd 4M");
  Io("f.vhd", {"write -P 0x66 0 4M"}, "vpc");
  const uint64_t size = ReadFileBytes(P("f.vhd")).size();
  PatchFooter("f.vhd", size - 512, [](uint8_t* f) {
    std::memcpy(f + vpc::Footer::kOffCreatorApp, "win ", 4);
    StoreBE64(f + vpc::Footer::kOffCurrentSize, 6u << 20);
  });
  ExpectSameAsQemu("f.vhd");
}

TEST_F(VpcTest, DifferencingTypeReadsAsStandaloneDynamicAsQemu) {
  Sh("qemu-img create -q -f vpc d.vhd 8M");
  Io("d.vhd", {"write -P 0x77 2M 1M"}, "vpc");
  PatchFooter("d.vhd", 0, [](uint8_t* f) { StoreBE32(f + vpc::Footer::kOffType, 4); });
  ExpectSameAsQemu("d.vhd");
  Chain chain = Open("d.vhd");
  ASSERT_EQ(chain.layers.size(), 1u);
}

TEST_F(VpcTest, ProbeAndPeek) {
  Sh("qemu-img create -q -f vpc -o subformat=dynamic d.img 8M");
  Sh("qemu-img create -q -f vpc -o subformat=fixed f.img 8M");
  auto fmt = DetectFormat(P("d.img"), "");
  ASSERT_TRUE(fmt.ok());
  EXPECT_EQ(*fmt, "vpc");
  // A fixed VHD keeps its footer at the end: QEMU probes it as raw.
  fmt = DetectFormat(P("f.img"), "");
  ASSERT_TRUE(fmt.ok());
  EXPECT_EQ(*fmt, "raw");
  const FormatDriver* vpc = FindFormat("vpc");
  ASSERT_NE(vpc, nullptr);
  auto head = ReadFileBytes(P("d.img"));
  FormatPeek peek = vpc->Peek(head.data(), 512);
  EXPECT_TRUE(peek.known);
  EXPECT_FALSE(peek.has_backing);
  EXPECT_EQ(FormatForName("x.VHD"), vpc);
}

// ---- Writes ------------------------------------------------------------------

// Writes through the driver land where QEMU reads them: qemu-img compare
// against a raw file given the same writes.
void WriteBoth(Image& image, std::vector<uint8_t>& model, uint64_t off, uint64_t len, uint8_t seed) {
  std::vector<uint8_t> buf(len);
  std::mt19937 rng(seed);
  for (auto& b : buf) b = uint8_t(rng());
  Status st = image.Write(off, buf.data(), buf.size());
  ASSERT_TRUE(st.ok()) << st.ToString();
  std::copy(buf.begin(), buf.end(), model.begin() + off);
}

TEST_F(VpcTest, WritesAreReadByQemuAsWritten) {
  for (const char* sub : {"dynamic", "fixed"}) {
    SCOPED_TRACE(sub);
    const std::string name = std::string("w-") + sub + ".vhd";
    Sh(std::string("qemu-img create -q -f vpc -o subformat=") + sub + " " + name + " 20M");
    Io(name, {"write -P 0x31 3M 5000"}, "vpc");
    Sh("qemu-img convert -f vpc -O raw " + name + " model.raw");
    auto model = ReadFileBytes(P("model.raw"));
    {
      Chain chain = Open(name, true);
      ASSERT_FALSE(chain.layers.empty());
      Image& image = *chain.top();
      ASSERT_TRUE(image.BeginWrites().ok());
      WriteBoth(image, model, 0, 512, 1);                       // first block, new
      WriteBoth(image, model, (2u << 20) - 700, 1400, 2);       // across two blocks
      WriteBoth(image, model, (3u << 20) + 100, 70000, 3);      // into QEMU's block
      WriteBoth(image, model, (9u << 20) + 4096, 3u << 20, 4);  // several blocks
      WriteBoth(image, model, model.size() - 999, 999, 5);      // the last bytes
      ASSERT_TRUE(image.WriteZeroes(3u << 20, 4096, false).ok());
      std::fill(model.begin() + (3u << 20), model.begin() + (3u << 20) + 4096, 0);
      ASSERT_TRUE(image.WriteZeroes(15u << 20, 1u << 20, true).ok());  // unallocated: nothing
      std::vector<uint8_t> back(model.size());
      ASSERT_TRUE(image.Read(0, back.data(), back.size()).ok());
      EXPECT_TRUE(back == model);
      EXPECT_EQ(image.Resize(40u << 20).code(), Status::Code::kNotSupported);
      ASSERT_TRUE(image.EndWrites().ok());
    }
    WriteFileBytes(P("model.raw"), model);
    Sh("qemu-img compare -f vpc -F raw " + name + " model.raw");
    ExpectSameAsQemu(name);
  }
}

TEST_F(VpcTest, ReadOnlyOpenRefusesWrites) {
  Sh("qemu-img create -q -f vpc d.vhd 8M");
  Chain chain = Open("d.vhd");
  ASSERT_FALSE(chain.layers.empty());
  EXPECT_FALSE(chain.top()->writable());
  EXPECT_EQ(chain.top()->BeginWrites().code(), Status::Code::kReadOnly);
  uint8_t b[512] = {};
  EXPECT_EQ(chain.top()->Write(0, b, sizeof b).code(), Status::Code::kReadOnly);
}

// ---- Hostile headers: refused where QEMU refuses, with the file named --------

struct Crafted {
  const char* what;
  std::function<void(std::vector<uint8_t>&)> patch;
  bool fix_checksum = true;
  Status::Code code = Status::Code::kCorruption;
};

TEST_F(VpcTest, CraftedHeadersAreRefusedAsQemuRefusesThem) {
  Sh("qemu-img create -q -f vpc d.vhd 8M");
  Io("d.vhd", {"write -P 0x12 0 3M"}, "vpc");
  const auto good = ReadFileBytes(P("d.vhd"));
  const size_t dyn = 512, bat = 1536;
  const std::vector<Crafted> cases = {
      {"bad footer checksum", [](auto& d) { d[100] ^= 1; }, false},
      {"block size not a power of two",
       [&](auto& d) { StoreBE32(d.data() + dyn + vpc::DynHeader::kOffBlockSize, 3u << 20); }},
      {"block size below 512",
       [&](auto& d) { StoreBE32(d.data() + dyn + vpc::DynHeader::kOffBlockSize, 256); }},
      {"page table too small",
       [&](auto& d) { StoreBE32(d.data() + dyn + vpc::DynHeader::kOffMaxTableEntries, 2); }},
      {"max table entries too large",
       [&](auto& d) {
         StoreBE32(d.data() + dyn + vpc::DynHeader::kOffMaxTableEntries, 0x7fffffff);
       }},
      {"BAT past the end of the file",
       [&](auto& d) { StoreBE64(d.data() + dyn + vpc::DynHeader::kOffTableOffset, 1ull << 40); }},
      {"BAT entry past the end of the file",
       [&](auto& d) { StoreBE32(d.data() + bat + 8, 0x00ffffff); }},
      {"BAT entry ending past the end of the file",
       [&](auto& d) { StoreBE32(d.data() + bat + 8, uint32_t(d.size() / 512) - 100); }},
      {"dynamic header magic", [&](auto& d) { d[dyn] = 'X'; }},
      {"dynamic header offset all ones",
       [](auto& d) { StoreBE64(d.data() + vpc::Footer::kOffDataOffset, ~0ull); }},
      {"size past 2040 GiB",
       [](auto& d) {
         std::memcpy(d.data() + vpc::Footer::kOffCreatorApp, "win ", 4);
         StoreBE64(d.data() + vpc::Footer::kOffCurrentSize, 2041ull << 30);
       },
       true, Status::Code::kTooLarge},
      {"truncated file", [](auto& d) { d.resize(d.size() - (1u << 20)); }},
  };
  for (const Crafted& c : cases) {
    SCOPED_TRACE(c.what);
    auto data = good;
    c.patch(data);
    if (c.fix_checksum)
      StoreBE32(data.data() + vpc::Footer::kOffChecksum,
                vpc::Checksum(data.data(), 512, vpc::Footer::kOffChecksum));
    WriteFileBytes(P("bad.vhd"), data);
    EXPECT_FALSE(QemuOpens("bad.vhd")) << "QEMU opens it: the case tests nothing";
    Status st = OpenStatus("bad.vhd");
    EXPECT_EQ(st.code(), c.code) << st.ToString();
    EXPECT_NE(st.message().find("bad.vhd"), std::string::npos) << st.ToString();
  }
  // Not a VHD at all, and an empty file.
  WriteFileBytes(P("junk.vhd"), std::vector<uint8_t>(4096, 0x41));
  EXPECT_TRUE(OpenStatus("junk.vhd").IsCorruption());
  WriteFileBytes(P("empty.vhd"), {});
  EXPECT_TRUE(OpenStatus("empty.vhd").IsCorruption());
  // What QEMU ignores, kvmfs ignores: the trailing footer and the dynamic
  // header checksum.
  auto data = good;
  data[data.size() - 300] ^= 0xff;
  data[dyn + vpc::DynHeader::kOffChecksum] ^= 0xff;
  WriteFileBytes(P("ignored.vhd"), data);
  EXPECT_TRUE(QemuOpens("ignored.vhd"));
  ExpectSameAsQemu("ignored.vhd");
}

}  // namespace
}  // namespace kvmfs
