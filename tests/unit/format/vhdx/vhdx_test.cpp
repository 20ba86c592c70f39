// VHDX driver: images made by qemu-img/qemu-io at test time, compared byte
// for byte with QEMU 7.2; writes checked with qemu-img check and compare (and
// their BAT against QEMU's own for the same writes); the log replayed as QEMU
// replays it, refused on read-only opens.
#include <fcntl.h>
#include <unistd.h>

#include <random>

#include "tests/unit/format/vhdx/vhdx_file.h"

namespace kvmfs {
namespace {

using nlohmann::json;
using test::ReadFileBytes;
using test::VhdxFile;
using test::WriteFileBytes;

class VhdxTest : public test::QemuDirTest {
 public:
  void MakeSource(const std::string& name, uint64_t size) {
    Sh("qemu-img create -q -f raw " + name + " " + std::to_string(size));
    std::vector<uint8_t> data = ReadFileBytes(P(name));
    const std::string text = "kvmfs vhdx test: pack my box with five dozen liquor jugs\n";
    for (uint64_t i = 0; i < std::min<uint64_t>(size, 200000); ++i) data[i] = text[i % text.size()];
    std::mt19937 rng(11);
    for (uint64_t i = size / 3; i < std::min<uint64_t>(size, size / 3 + 1500000); ++i)
      data[i] = uint8_t(rng());
    for (uint64_t i = size - std::min<uint64_t>(size, 3333); i < size; ++i) data[i] = 0xa5;
    WriteFileBytes(P(name), data);
  }

  void ExpectSameAsQemu(const std::string& name) {
    SCOPED_TRACE(name);
    Chain chain = Open(name);
    ASSERT_FALSE(chain.layers.empty());
    json info = QemuInfo(name, "vhdx");
    EXPECT_EQ(chain.top()->size(), info["virtual-size"].get<uint64_t>());
    ImageInfo mine = chain.top()->Info();
    EXPECT_EQ(mine.format, "vhdx");
    ASSERT_TRUE(mine.cluster_size.has_value());
    EXPECT_EQ(*mine.cluster_size, info["cluster-size"].get<uint64_t>());
    ExpectSameBytes(*chain.top(), name, "vhdx");
    // Holes (SEEK_HOLE) must read as zeros.
    uint64_t off = 0;
    std::vector<uint8_t> buf;
    while (off < chain.top()->size()) {
      auto bs = chain.top()->GetBlockStatus(off, chain.top()->size() - off);
      ASSERT_TRUE(bs.ok()) << bs.status().ToString();
      if (bs->kind != Allocation::kData) {
        buf.assign(std::min<uint64_t>(bs->length, 1 << 20), 1);
        ASSERT_TRUE(chain.top()->Read(off, buf.data(), buf.size()).ok());
        EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](uint8_t b) { return b == 0; })) << off;
      }
      off += bs->length;
    }
  }

  Status OpenStatus(const std::string& name, bool writable = false) {
    auto chain = TryOpen(name, writable, "vhdx");
    return chain.ok() ? Status::OK() : chain.status();
  }
  bool QemuOpens(const std::string& name) {
    return ShOut("qemu-img info -f vhdx " + name, false).has_value();
  }
};

TEST_F(VhdxTest, QemuMadeImagesOfEverySubformatMatchQemu) {
  for (uint64_t size : {0ull, 1048576ull * 10 + 1536, 67108864ull}) {
    if (size) MakeSource("src.raw", size);
    for (const char* opts : {"subformat=dynamic", "subformat=fixed", "subformat=fixed,block_state_zero=off",
                             "subformat=dynamic,block_size=1M,block_state_zero=off", "block_size=2M,log_size=2M"}) {
      const std::string name = "i" + std::to_string(size) + "-" + std::to_string(std::hash<std::string>()(opts) % 1000) + ".vhdx";
      SCOPED_TRACE(opts);
      if (size) Sh(std::string("qemu-img convert -f raw -O vhdx -o ") + opts + " src.raw " + name);
      else Sh(std::string("qemu-img create -q -f vhdx -o ") + opts + " " + name + " 0");
      if (size) Io(name, {"write -P 0x61 1000k 5k", "write -z 4M 1M", "write -P 0x62 " + std::to_string(size - 512) + " 512"}, "vhdx");
      ExpectSameAsQemu(name);
    }
  }
}

// With 1 MiB blocks a chunk is 4096 blocks: past 4 GiB the BAT interleaves
// sector bitmap entries.
TEST_F(VhdxTest, BitmapInterleavePastFourGibMatchesQemu) {
  Sh("qemu-img create -q -f vhdx -o block_size=1M big.vhdx 5G");
  Io("big.vhdx", {"write -P 0x71 4095M 2M", "write -P 0x72 4G 512", "write -P 0x73 4600M 1M",
                  "write -P 0x74 5119M 1M"}, "vhdx");
  Sh("qemu-img convert -f vhdx -O raw big.vhdx expected.raw");
  Chain chain = Open("big.vhdx");
  ASSERT_FALSE(chain.layers.empty());
  const int fd = ::open(P("expected.raw").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  for (uint64_t off : {4094ull << 20, 4096ull << 20, 4599ull << 20, 5118ull << 20, 100ull << 20}) {
    std::vector<uint8_t> want(3u << 20), got(3u << 20);
    const uint64_t n = std::min<uint64_t>(want.size(), chain.top()->size() - off);
    ASSERT_EQ(::pread(fd, want.data(), n, off), ssize_t(n));
    ASSERT_TRUE(chain.top()->Read(off, got.data(), n).ok());
    EXPECT_TRUE(std::equal(got.begin(), got.begin() + n, want.begin())) << off;
  }
  ::close(fd);
}

// ---- Writes ------------------------------------------------------------------

void WriteBoth(Image& image, std::vector<uint8_t>& model, uint64_t off, uint64_t len, uint8_t seed) {
  std::vector<uint8_t> buf(len);
  std::mt19937 rng(seed);
  for (auto& b : buf) b = uint8_t(rng());
  Status st = image.Write(off, buf.data(), buf.size());
  ASSERT_TRUE(st.ok()) << st.ToString();
  std::copy(buf.begin(), buf.end(), model.begin() + off);
}

TEST_F(VhdxTest, WritesAreCheckedCleanAndComparedEqualByQemu) {
  for (const char* sub : {"dynamic", "fixed"}) {
    SCOPED_TRACE(sub);
    const std::string name = std::string("w-") + sub + ".vhdx";
    Sh(std::string("qemu-img create -q -f vhdx -o block_size=1M,subformat=") + sub + " " + name +
       " 20M");
    Io(name, {"write -P 0x31 3M 5000"}, "vhdx");
    Sh("qemu-img convert -f vhdx -O raw " + name + " model.raw");
    auto model = ReadFileBytes(P("model.raw"));
    {
      Chain chain = Open(name, true);
      ASSERT_FALSE(chain.layers.empty());
      Image& image = *chain.top();
      ASSERT_TRUE(image.BeginWrites().ok());
      WriteBoth(image, model, 0, 512, 1);
      WriteBoth(image, model, (2u << 20) - 700, 1400, 2);
      WriteBoth(image, model, (3u << 20) + 100, 70000, 3);
      WriteBoth(image, model, (9u << 20) + 4096, 3u << 20, 4);
      WriteBoth(image, model, model.size() - 999, 999, 5);
      ASSERT_TRUE(image.WriteZeroes(3u << 20, 4096, false).ok());
      std::fill(model.begin() + (3u << 20), model.begin() + (3u << 20) + 4096, 0);
      std::vector<uint8_t> back(model.size());
      ASSERT_TRUE(image.Read(0, back.data(), back.size()).ok());
      EXPECT_TRUE(back == model);
      EXPECT_EQ(image.Resize(40u << 20).code(), Status::Code::kNotSupported);
      ASSERT_TRUE(image.EndWrites().ok());
    }
    WriteFileBytes(P("model.raw"), model);
    Sh("qemu-img check -f vhdx " + name);
    Sh("qemu-img compare -f vhdx -F raw " + name + " model.raw");
    ExpectSameAsQemu(name);
  }
}

// The same writes by QEMU and by kvmfs leave the same BAT, file size and
// header sequence (random GUIDs aside).
TEST_F(VhdxTest, AllocationsMatchQemusOwn) {
  Sh("qemu-img create -q -f vhdx -o block_size=1M q.vhdx 64M");
  Sh("cp q.vhdx k.vhdx");
  const std::vector<std::pair<uint64_t, uint64_t>> writes = {
      {5u << 20, 4096}, {0, 512}, {(7u << 20) - 10, 20}, {5u << 20, 65536}, {63u << 20, 1u << 20}};
  std::vector<std::string> cmds;
  for (auto [off, len] : writes)
    cmds.push_back("write -P 0x5a " + std::to_string(off) + " " + std::to_string(len));
  Io("q.vhdx", cmds, "vhdx");
  {
    Chain chain = Open("k.vhdx", true);
    ASSERT_FALSE(chain.layers.empty());
    ASSERT_TRUE(chain.top()->BeginWrites().ok());
    for (auto [off, len] : writes) {
      std::vector<uint8_t> buf(len, 0x5a);
      ASSERT_TRUE(chain.top()->Write(off, buf.data(), len).ok());
    }
    ASSERT_TRUE(chain.top()->EndWrites().ok());
  }
  VhdxFile q(P("q.vhdx")), k(P("k.vhdx"));
  EXPECT_EQ(q.d.size(), k.d.size());
  ASSERT_EQ(q.bat, k.bat);
  for (uint64_t i = 0; i < 64; ++i) EXPECT_EQ(q.Bat(i), k.Bat(i)) << "BAT entry " << i;
  EXPECT_EQ(LoadLE64(q.Cur() + 8) - LoadLE64(VhdxFile(P("q.vhdx")).Header(1 - q.current) + 8), 1u);
  Sh("qemu-img compare -f vhdx -F vhdx q.vhdx k.vhdx");
  Sh("qemu-img check -f vhdx k.vhdx");
  // The log entries kvmfs wrote are QEMU's shape: 8 KiB each, sequence 1, 2, ...
  const uint64_t log = k.LogOffset();
  for (uint64_t n = 0; n < 4; ++n) {
    const uint8_t* e = &k.d[log + 8192 * n];
    ASSERT_EQ(std::memcmp(e, "loge", 4), 0) << n;
    EXPECT_EQ(LoadLE32(e + 8), 8192u);
    EXPECT_EQ(LoadLE64(e + 16), n + 1);
    EXPECT_EQ(LoadLE32(e + 24), 1u);
    EXPECT_EQ(LoadLE32(e + 4), vhdx::ChecksumWithZeroField(e, 8192, 4));
    EXPECT_EQ(std::memcmp(e + 8, &q.d[log + 8192 * n + 8], 24 - 8), 0) << "entry " << n;
  }
}

TEST_F(VhdxTest, ReadOnlyOpenRefusesWrites) {
  Sh("qemu-img create -q -f vhdx d.vhdx 8M");
  Chain chain = Open("d.vhdx");
  ASSERT_FALSE(chain.layers.empty());
  EXPECT_EQ(chain.top()->BeginWrites().code(), Status::Code::kReadOnly);
}

// ---- The log -----------------------------------------------------------------

class VhdxLogTest : public VhdxTest {
 public:
  // A QEMU-written image whose last allocation's BAT update is pending in
  // the log again: the BAT entry reverted, the entry's GUID in the header.
  void MakeDirty(const std::string& name) {
    Sh("qemu-img create -q -f vhdx -o block_size=1M " + name + " 16M");
    Io(name, {"write -P 0x41 2M 1M", "write -P 0x42 9M 4096"}, "vhdx");
    VhdxFile f(P(name));
    const uint8_t* entry = &f.d[f.LogOffset() + 8192];  // the second allocation's entry
    ASSERT_EQ(std::memcmp(entry, "loge", 4), 0);
    f.SetBat(9, 2);  // back to ZERO, as before the write
    std::memcpy(f.Cur() + vhdx::Header::kOffLogGuid, entry + 32, 16);
    f.FixHeader(f.current);
    f.Save(P(name));
  }
  void Patch(const std::string& name, const std::function<void(VhdxFile&)>& fn) {
    VhdxFile f(P(name));
    fn(f);
    f.Save(P(name));
  }
};

TEST_F(VhdxLogTest, PendingLogIsRefusedReadOnlyAsQemuDoes) {
  MakeDirty("dirty.vhdx");
  EXPECT_FALSE(QemuOpens("dirty.vhdx")) << "QEMU opens it: the case tests nothing";
  Status st = OpenStatus("dirty.vhdx");
  EXPECT_EQ(st.code(), Status::Code::kNotSupported) << st.ToString();
  EXPECT_NE(st.message().find("log needs replay"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("dirty.vhdx"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("qemu-img check -r all"), std::string::npos) << st.ToString();
}

TEST_F(VhdxLogTest, WritableOpenReadsAsReplayedAndWritesOnlyForAWriter) {
  MakeDirty("dirty.vhdx");
  Sh("cp dirty.vhdx qemu.vhdx && qemu-img check -q -r all qemu.vhdx >/dev/null; true");
  Sh("qemu-img convert -f vhdx -O raw qemu.vhdx expected.raw");
  const auto before = ReadFileBytes(P("dirty.vhdx"));
  const auto expected = ReadFileBytes(P("expected.raw"));
  Chain chain = Open("dirty.vhdx", true);
  ASSERT_FALSE(chain.layers.empty());
  std::vector<uint8_t> got(expected.size());
  ASSERT_TRUE(chain.top()->Read(0, got.data(), got.size()).ok());
  EXPECT_TRUE(got == expected) << "reads before the replay differ from QEMU's after it";
  EXPECT_TRUE(ReadFileBytes(P("dirty.vhdx")) == before) << "the file was written before any writer";
  // The first writer replays it on disk, as QEMU does on a read-write open.
  ASSERT_TRUE(chain.top()->BeginWrites().ok());
  ASSERT_TRUE(chain.top()->EndWrites().ok());
  chain = Chain{};
  EXPECT_TRUE(QemuOpens("dirty.vhdx"));
  Sh("qemu-img check -f vhdx dirty.vhdx");
  Sh("qemu-img compare -f vhdx -F raw dirty.vhdx expected.raw");
  VhdxFile f(P("dirty.vhdx"));
  EXPECT_TRUE(vhdx::IsZero([&] {
    vhdx::Guid g;
    std::memcpy(g.data(), f.Cur() + vhdx::Header::kOffLogGuid, 16);
    return g;
  }()));
}

TEST_F(VhdxLogTest, EntryWithBadChecksumIsIgnoredAsQemuIgnoresIt) {
  MakeDirty("bad.vhdx");
  Patch("bad.vhdx", [](VhdxFile& f) { f.d[f.LogOffset() + 8192 + 4096 + 100] ^= 0xff; });
  ASSERT_TRUE(QemuOpens("bad.vhdx"));
  ExpectSameAsQemu("bad.vhdx");
  // No valid entry: the log GUID stays, and QEMU refuses to allocate.
  Chain chain = Open("bad.vhdx", true);
  ASSERT_FALSE(chain.layers.empty());
  ASSERT_TRUE(chain.top()->BeginWrites().ok());
  uint8_t b[512] = {1};
  EXPECT_EQ(chain.top()->Write(12u << 20, b, sizeof b).code(), Status::Code::kNotSupported);
  EXPECT_TRUE(chain.top()->Write(2u << 20, b, sizeof b).ok());  // in place: fine
}

TEST_F(VhdxLogTest, DescriptorOrDataSequenceMismatchFailsTheOpenAsQemu) {
  // A descriptor whose sequence differs (entry CRC fixed): QEMU fails the
  // open outright, read-only or not.
  MakeDirty("desc.vhdx");
  Patch("desc.vhdx", [](VhdxFile& f) {
    uint8_t* e = &f.d[f.LogOffset() + 8192];
    StoreLE64(e + 64 + 24, 77);
    StoreLE32(e + 4, vhdx::ChecksumWithZeroField(e, 8192, 4));
  });
  EXPECT_FALSE(QemuOpens("desc.vhdx"));
  EXPECT_TRUE(OpenStatus("desc.vhdx").IsCorruption());
  EXPECT_TRUE(OpenStatus("desc.vhdx", true).IsCorruption());
  // A data sector whose sequence differs: found by the replay, which fails.
  MakeDirty("data.vhdx");
  Patch("data.vhdx", [](VhdxFile& f) {
    uint8_t* e = &f.d[f.LogOffset() + 8192];
    StoreLE32(e + 4096 + 4092, 99);
    StoreLE32(e + 4, vhdx::ChecksumWithZeroField(e, 8192, 4));
  });
  Sh("cp data.vhdx data2.vhdx");
  EXPECT_FALSE(ShOut("qemu-io -f vhdx -c 'read 0 512' data2.vhdx", false).has_value());
  EXPECT_TRUE(OpenStatus("data.vhdx", true).IsCorruption());
  // A FlushedFileOffset past the end of the file.
  MakeDirty("flushed.vhdx");
  Patch("flushed.vhdx", [](VhdxFile& f) {
    uint8_t* e = &f.d[f.LogOffset() + 8192];
    StoreLE64(e + 48, 1ull << 40);
    StoreLE32(e + 4, vhdx::ChecksumWithZeroField(e, 8192, 4));
  });
  EXPECT_TRUE(OpenStatus("flushed.vhdx", true).IsCorruption());
}

// A log whose entries chain into each other around the whole buffer ends.
TEST_F(VhdxLogTest, LoopingEntriesTerminate) {
  MakeDirty("loop.vhdx");
  Patch("loop.vhdx", [](VhdxFile& f) {
    const uint64_t log = f.LogOffset();
    std::vector<uint8_t> entry(f.d.begin() + log + 8192, f.d.begin() + log + 16384);
    for (uint64_t n = 0; n < 128; ++n) {  // 1 MiB of entries with sequence n + 1
      uint8_t* e = &f.d[log + 8192 * n];
      std::memcpy(e, entry.data(), entry.size());
      StoreLE64(e + 16, n + 1);
      StoreLE64(e + 64 + 24, n + 1);
      StoreLE32(e + 4096 + 4, 0);
      StoreLE32(e + 4096 + 4092, uint32_t(n + 1));
      StoreLE32(e + 4, vhdx::ChecksumWithZeroField(e, 8192, 4));
    }
  });
  EXPECT_EQ(OpenStatus("loop.vhdx").code(), Status::Code::kNotSupported);
  Chain chain = Open("loop.vhdx", true);
  ASSERT_FALSE(chain.layers.empty());
}

// ---- Hostile headers ------------------------------------------------------

struct Crafted {
  const char* what;
  std::function<void(VhdxFile&)> patch;
  Status::Code code = Status::Code::kCorruption;
};

void SetItem32(VhdxFile& f, const vhdx::Guid& g, uint32_t v) { StoreLE32(&f.d[f.Item(g)], v); }

// One hostile patch per rule QEMU enforces (and a state QEMU opens but cannot read).
std::vector<Crafted> CraftedCases() {
  using C = Status::Code;
  return {
      {"both header CRCs bad", [](VhdxFile& f) { f.Header(0)[100] ^= 1; f.Header(1)[100] ^= 1; }},
      {"equal sequences, different headers",
       [](VhdxFile& f) {
         StoreLE64(f.Header(0) + 8, LoadLE64(f.Header(1) + 8));
         f.Header(0)[20] ^= 1;
         f.FixHeader(0);
       }},
      {"log offset not 1 MiB aligned",
       [](VhdxFile& f) { StoreLE64(f.Cur() + vhdx::Header::kOffLogOffset, 1536 * 1024); f.FixHeader(f.current); }},
      {"log version 1", [](VhdxFile& f) { f.Cur()[64] = 1; f.FixHeader(f.current); }},
      {"region table CRC", [](VhdxFile& f) { f.d[vhdx::kRegionTableOffset + 40] ^= 1; }},
      {"region count over 2047",
       [](VhdxFile& f) { StoreLE32(&f.d[vhdx::kRegionTableOffset + 8], 2048); f.FixRegionTable(); }},
      {"region overlapping the log",
       [](VhdxFile& f) { StoreLE64(&f.d[vhdx::kRegionTableOffset + 16 + 16], 1u << 20); f.FixRegionTable(); }},
      {"BAT region listed twice",
       [](VhdxFile& f) {
         std::memcpy(&f.d[vhdx::kRegionTableOffset + 16 + 32], &f.d[vhdx::kRegionTableOffset + 16], 16);
         f.FixRegionTable();
       }},
      {"unknown required region",
       [](VhdxFile& f) {
         uint8_t* t = &f.d[vhdx::kRegionTableOffset];
         StoreLE32(t + 8, 3);
         uint8_t* e = t + 16 + 64;
         std::memset(e, 0x42, 16);
         StoreLE64(e + 16, 200ull << 20);
         StoreLE32(e + 24, 1u << 20);
         StoreLE32(e + 28, 1);
         f.FixRegionTable();
       },
       C::kNotSupported},
      {"metadata signature", [](VhdxFile& f) { f.d[f.meta] = 'X'; }},
      {"unknown required metadata item",
       [](VhdxFile& f) {
         test::PutLE16(&f.d[f.meta + 10], 6);
         uint8_t* e = &f.d[f.meta + 32 + 5 * 32];
         std::memset(e, 0x43, 16);
         StoreLE32(e + 16, 65536);
         StoreLE32(e + 20, 8);
         StoreLE32(e + 24, 4);
       },
       C::kNotSupported},
      {"block size not a power of two", [](VhdxFile& f) { SetItem32(f, vhdx::kFileParametersGuid, 3u << 20); }},
      {"block size below 1 MiB", [](VhdxFile& f) { SetItem32(f, vhdx::kFileParametersGuid, 512u << 10); }},
      {"logical sector 4096", [](VhdxFile& f) { SetItem32(f, vhdx::kLogicalSectorGuid, 4096); },
       C::kNotSupported},
      {"virtual size past the BAT",
       [](VhdxFile& f) { StoreLE64(&f.d[f.Item(vhdx::kVirtualDiskSizeGuid)], 1ull << 40); }},
      {"parent locator without HasParent",
       [](VhdxFile& f) {
         test::PutLE16(&f.d[f.meta + 10], 6);
         uint8_t* e = &f.d[f.meta + 32 + 5 * 32];
         std::memcpy(e, vhdx::kParentLocatorGuid.data(), 16);
         StoreLE32(e + 16, 65536 + 4096);
         StoreLE32(e + 20, 64);
       },
       C::kNotSupported},
      {"HasParent without a parent locator",
       [](VhdxFile& f) { StoreLE32(&f.d[f.Item(vhdx::kFileParametersGuid) + 4], 2); }},
      {"present block past the end of the file",
       [](VhdxFile& f) { f.SetBat(2, (1ull << 40) | 6); }},
      {"present block overlapping the BAT", [](VhdxFile& f) { f.SetBat(2, f.bat | 6); }},
      {"block state 7 read", [](VhdxFile& f) { f.SetBat(2, f.Bat(2) | 7); }, C::kOk},
  };
}

TEST_F(VhdxTest, CraftedHeadersAreRefusedAsQemuRefusesThem) {
  Sh("qemu-img create -q -f vhdx -o block_size=1M d.vhdx 16M");
  Io("d.vhdx", {"write -P 0x12 1M 3M"}, "vhdx");
  const std::vector<Crafted> cases = CraftedCases();
  for (const Crafted& c : cases) {
    SCOPED_TRACE(c.what);
    Sh("cp d.vhdx bad.vhdx");
    VhdxFile f(P("bad.vhdx"));
    c.patch(f);
    f.Save(P("bad.vhdx"));
    Status st = OpenStatus("bad.vhdx");
    if (c.code == Status::Code::kOk) {
      // Opens (as in QEMU), but the block fails to read (EIO in QEMU).
      EXPECT_TRUE(QemuOpens("bad.vhdx"));
      ASSERT_TRUE(st.ok()) << st.ToString();
      Chain chain = Open("bad.vhdx");
      uint8_t b[512];
      EXPECT_TRUE(chain.top()->Read(2u << 20, b, sizeof b).IsCorruption());
      auto out = ShOut("qemu-io -r -f vhdx -c 'read 2M 512' bad.vhdx", false);
      EXPECT_TRUE(!out || out->find("error") != std::string::npos);
      continue;
    }
    EXPECT_FALSE(QemuOpens("bad.vhdx")) << "QEMU opens it: the case tests nothing";
    EXPECT_EQ(st.code(), c.code) << st.ToString();
    EXPECT_NE(st.message().find("bad.vhdx"), std::string::npos) << st.ToString();
  }
  // Not a VHDX at all.
  WriteFileBytes(P("junk.vhdx"), std::vector<uint8_t>(1 << 20, 0x41));
  EXPECT_TRUE(OpenStatus("junk.vhdx").IsCorruption());
}

// Pitfall 15: a present block "at 0" reads the file's first bytes for every
// position in it (QEMU adds no in-block offset), and cannot be written.
TEST_F(VhdxTest, PresentBlockAtOffsetZeroReadsAsQemu) {
  Sh("qemu-img create -q -f vhdx -o block_size=1M z.vhdx 8M");
  {
    VhdxFile f(P("z.vhdx"));
    f.SetBat(3, 6);
    f.Save(P("z.vhdx"));
  }
  ASSERT_TRUE(QemuOpens("z.vhdx"));
  // The whole disk as convert reads it (block-aligned requests)...
  Sh("qemu-img convert -f vhdx -O raw z.vhdx expected.raw");
  auto expected = ReadFileBytes(P("expected.raw"));
  Chain chain = Open("z.vhdx", true);
  ASSERT_FALSE(chain.layers.empty());
  std::vector<uint8_t> got(expected.size());
  ASSERT_TRUE(chain.top()->Read(0, got.data(), got.size()).ok());
  EXPECT_TRUE(got == expected);
  // ...and a request inside the block reads the file's start, as qemu-io shows.
  auto out = ShOut("qemu-io -r -f vhdx -c 'read -v 3149824 16' z.vhdx");
  ASSERT_TRUE(out);
  EXPECT_NE(out->find("76 68 64 78 66 69 6c 65"), std::string::npos) << *out;
  uint8_t head[16];
  ASSERT_TRUE(chain.top()->Read(3149824, head, sizeof head).ok());
  EXPECT_EQ(std::memcmp(head, "vhdxfile", 8), 0);
  ASSERT_FALSE(chain.layers.empty());
  ASSERT_TRUE(chain.top()->BeginWrites().ok());
  uint8_t b[512] = {};
  EXPECT_TRUE(chain.top()->Write(3u << 20, b, sizeof b).IsCorruption());
}

// A log placed past the end of the file is not where kvmfs writes BAT updates.
TEST_F(VhdxTest, LogPastTheEndOfTheFileIsNotWritten) {
  Sh("qemu-img create -q -f vhdx -o block_size=1M far.vhdx 8M");
  {
    VhdxFile f(P("far.vhdx"));
    for (int i = 0; i < 2; ++i) {
      StoreLE64(f.Header(i) + vhdx::Header::kOffLogOffset, 1ull << 40);
      f.FixHeader(i);
    }
    f.Save(P("far.vhdx"));
  }
  ASSERT_TRUE(QemuOpens("far.vhdx"));
  Chain chain = Open("far.vhdx", true);
  ASSERT_FALSE(chain.layers.empty());
  ASSERT_TRUE(chain.top()->BeginWrites().ok());
  uint8_t b[512] = {7};
  EXPECT_EQ(chain.top()->Write(0, b, sizeof b).code(), Status::Code::kNotSupported);
  EXPECT_LT(ReadFileBytes(P("far.vhdx")).size(), 1ull << 30);
}

TEST_F(VhdxTest, ProbeAndPeek) {
  Sh("qemu-img create -q -f vhdx d.img 8M");
  auto fmt = DetectFormat(P("d.img"), "");
  ASSERT_TRUE(fmt.ok());
  EXPECT_EQ(*fmt, "vhdx");
  const FormatDriver* vhdx = FindFormat("vhdx");
  ASSERT_NE(vhdx, nullptr);
  auto head = ReadFileBytes(P("d.img"));
  EXPECT_FALSE(vhdx->Peek(head.data(), 512).known);  // the identifier cannot tell
  EXPECT_TRUE(vhdx->caps().backing_files);
}

// ---- Chains --------------------------------------------------------------

TEST_F(VhdxTest, Qcow2OverlayOnVhdxBaseMatchesQemu) {
  Sh("qemu-img create -q -f vhdx base.vhdx 24M");
  Io("base.vhdx", {"write -P 0x21 0 10M", "write -P 0x22 20M 1M"}, "vhdx");
  Sh("qemu-img create -q -f qcow2 -b base.vhdx -F vhdx top.qcow2 24M");
  Io("top.qcow2", {"write -P 0x23 5M 64k", "write -z 20M 512k"}, "qcow2");
  Chain chain = Open("top.qcow2");
  ASSERT_EQ(chain.layers.size(), 2u);
  EXPECT_EQ(chain.layers[1].format, "vhdx");
  ExpectSameBytes(*chain.top(), "top.qcow2", "qcow2");
}

}  // namespace
}  // namespace kvmfs
