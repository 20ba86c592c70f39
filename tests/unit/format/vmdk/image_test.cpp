// VMDK images made by qemu-img / qemu-io at test time, of every subformat,
// opened through the chain opener and compared byte for byte with
// `qemu-img convert -O raw`, map for map with `qemu-img map`, and key for key
// with `qemu-img info`; writes checked with `qemu-img check` and `compare`.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "kvmfs/backend.h"
#include "kvmfs/chain.h"
#include "kvmfs/format.h"
#include "../qemu_scratch.h"

namespace kvmfs {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr uint64_t KiB = 1024, MiB = 1024 * 1024;

using test::ReadFileBytes;
using test::Shell;

// An odd size: not a multiple of the 64 KiB grain (nor of 2 KiB).
constexpr uint64_t kOddSize = 5 * MiB + 7 * 512;

class VmdkQemu : public test::QemuScratchTest {
 public:
  void Io(const std::string& image, const std::vector<std::string>& cmds) {
    QemuScratchTest::Io(image, cmds, "vmdk");
  }

  // A raw file of kOddSize with text, random, zero and hole regions and a
  // random tail in the last (partial) grain.
  void MakeSource(const std::string& name) {
    Sh("truncate -s " + std::to_string(kOddSize) + " " + name);
    Sh("yes 'kvmfs reads VMDK as QEMU does.' | head -c 300000 | dd of=" + name +
       " conv=notrunc status=none");
    Sh("head -c 205312 /dev/urandom | dd of=" + name + " bs=1024 seek=512 conv=notrunc status=none");
    Sh("head -c 131072 /dev/zero | dd of=" + name + " bs=1024 seek=1024 conv=notrunc status=none");
    Sh("printf 'UUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUU' | dd of=" + name +
       " bs=1 seek=2101248 conv=notrunc status=none");
    Sh("head -c 1000 /dev/urandom | dd of=" + name + " bs=1 seek=" +
       std::to_string(kOddSize - 1000) + " conv=notrunc status=none");
  }

  Chain Open(const std::string& name, bool writable = false) {
    ChainPolicy policy;
    policy.allowed_roots = {dir_};
    policy.writable_top = writable;
    auto chain = OpenChain(P(name), policy);
    EXPECT_TRUE(chain.ok()) << chain.status().ToString();
    return chain.ok() ? std::move(chain).value() : Chain{};
  }

  std::vector<uint8_t> Oracle(const std::string& name) {
    Sh("qemu-img convert -U -O raw " + name + " oracle.raw");
    auto bytes = ReadFileBytes(P("oracle.raw"));
    fs::remove(P("oracle.raw"));
    return bytes;
  }

  // Whole reads, odd-sized reads and plans all give qemu-img's bytes.
  void ExpectSameBytes(Image& image, const std::string& name) {
    std::vector<uint8_t> expected = Oracle(name);
    ASSERT_EQ(image.size(), expected.size()) << name;
    std::vector<uint8_t> got(expected.size());
    Status st = image.Read(0, got.data(), got.size());
    ASSERT_TRUE(st.ok()) << st.ToString();
    ASSERT_TRUE(got == expected) << name << ": bytes differ from qemu-img convert";
    std::mt19937_64 rng(42);
    for (int i = 0; i < 200; ++i) {
      uint64_t off = rng() % expected.size();
      size_t n = static_cast<size_t>(std::min<uint64_t>(1 + rng() % (300 * KiB), expected.size() - off));
      std::vector<uint8_t> piece(n);
      ASSERT_TRUE(image.Read(off, piece.data(), n).ok());
      ASSERT_TRUE(std::equal(piece.begin(), piece.end(), expected.begin() + off)) << off;
      ReadPlan plan;
      ASSERT_TRUE(image.PlanRead(off, n, plan).ok());
      std::vector<uint8_t> planned;
      for (const auto& p : plan.pieces()) {
        if (p.fd >= 0) {
          std::vector<uint8_t> b(p.length);
          ASSERT_EQ(::pread(p.fd, b.data(), b.size(), static_cast<off_t>(p.fd_offset)),
                    static_cast<ssize_t>(b.size()));
          planned.insert(planned.end(), b.begin(), b.end());
        } else {
          auto* m = static_cast<uint8_t*>(p.mem);
          planned.insert(planned.end(), m, m + p.length);
        }
      }
      ASSERT_TRUE(std::equal(planned.begin(), planned.end(), expected.begin() + off) &&
                  planned.size() == n)
          << "plan at " << off;
    }
  }

  // The allocation map agrees with `qemu-img map --output=json`.
  void ExpectSameMap(Image& top, const std::string& name) {
    auto out = Shell("cd " + dir_ + " && qemu-img map -U --output=json " + name);
    ASSERT_TRUE(out);
    for (const json& e : json::parse(*out)) {
      uint64_t off = e["start"].get<uint64_t>();
      const uint64_t end = off + e["length"].get<uint64_t>();
      const bool data = e["data"].get<bool>();
      while (off < end) {
        auto bs = ChainBlockStatus(top, off, end - off);
        ASSERT_TRUE(bs.ok()) << bs.status().ToString();
        ASSERT_GT(bs->length, 0u);
        EXPECT_EQ(bs->kind == Allocation::kData, data) << name << " at " << off << ": " << e.dump();
        off += bs->length;
      }
    }
  }

  // Info() against `qemu-img info --output=json`, the vmdk keys included.
  void ExpectSameInfo(Image& image, const std::string& name) {
    json q = json::parse(*Shell("cd " + dir_ + " && qemu-img info -U --output=json " + P(name)));
    ImageInfo info = image.Info();
    EXPECT_EQ(info.format, "vmdk");
    EXPECT_EQ(info.virtual_size, q["virtual-size"].get<uint64_t>());
    EXPECT_EQ(info.cluster_size.has_value(), q.contains("cluster-size")) << name;
    if (info.cluster_size && q.contains("cluster-size")) {
      EXPECT_EQ(*info.cluster_size, q["cluster-size"].get<uint64_t>());
    }
    EXPECT_EQ(info.backing_filename, q.value("backing-filename", std::string()));
    EXPECT_EQ(info.backing_format, q.value("backing-filename-format", std::string()));
    ASSERT_EQ(info.format_specific_type, q["format-specific"]["type"].get<std::string>());
    json mine = json::object();
    std::vector<std::string> keys;
    for (const auto& f : info.format_specific) {
      keys.push_back(f.key);
      std::visit(
          [&](const auto& v) {
            using T = std::decay_t<decltype(v)>;
            if constexpr (std::is_same_v<T, std::vector<InfoObject>>) {
              json list = json::array();
              for (const InfoObject& item : v) {
                json o = json::object();
                for (const auto& g : item)
                  std::visit(
                      [&](const auto& x) {
                        using U = std::decay_t<decltype(x)>;
                        if constexpr (!std::is_same_v<U, InfoObject> &&
                                      !std::is_same_v<U, std::vector<InfoObject>>)
                          o[g.key] = x;
                      },
                      g.value);
                list.push_back(o);
              }
              mine[f.key] = list;
            } else if constexpr (!std::is_same_v<T, InfoObject>) {
              mine[f.key] = v;
            }
          },
          f.value);
    }
    EXPECT_EQ(mine, q["format-specific"]["data"]) << name;
    EXPECT_EQ(keys, (std::vector<std::string>{"cid", "parent-cid", "create-type", "extents"}));
  }

  void ExpectSame(const std::string& name) {
    Chain chain = Open(name);
    ASSERT_FALSE(chain.layers.empty());
    ExpectSameBytes(*chain.top(), name);
    ExpectSameMap(*chain.top(), name);
    ExpectSameInfo(*chain.top(), name);
  }

  // qemu-img check (clean) and compare with the raw mirror.
  void ExpectQemuAgrees(const std::string& name, const std::string& mirror) {
    Sh("qemu-img check -f vmdk " + name + " >/dev/null");
    Sh("qemu-img compare -f vmdk -F raw " + name + " " + mirror + " >/dev/null");
  }

};

const char* kSubformats[] = {"monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
                             "twoGbMaxExtentFlat", "streamOptimized"};

TEST_F(VmdkQemu, EverySubformatReadsAsQemuConverts) {
  MakeSource("src.raw");
  for (const char* sub : kSubformats) {
    SCOPED_TRACE(sub);
    const std::string name = std::string(sub) + ".vmdk";
    Sh(std::string("qemu-img convert -f raw -O vmdk -o subformat=") + sub + " src.raw " + name);
    ExpectSame(name);
  }
}

TEST_F(VmdkQemu, ZeroedGrainsUnallocatedAndUnalignedWrites) {
  Sh("qemu-img create -q -f vmdk -o zeroed_grain=on z.vmdk " + std::to_string(kOddSize));
  Io("z.vmdk", {"write -P 0x41 0 100k", "write -P 0x42 192k 64k", "write -z 192k 64k",
                "write -z 512k 128k", "write -P 7 1000k 3k", "write -P 9 " +
                std::to_string(kOddSize - 700) + " 700"});
  ExpectSame("z.vmdk");
}

// Descriptors that QEMU's sscanf reads oddly: a blank line before an extent
// line makes QEMU use the extent twice; RDONLY and ZERO lines are skipped.
TEST_F(VmdkQemu, DescriptorQuirksMatchQemu) {
  Sh("head -c 1048576 /dev/urandom > data.bin");
  Sh("printf '# Disk DescriptorFile\\nversion=1\\nCID=12345678\\nparentCID=ffffffff\\n"
     "createType=\"monolithicFlat\"\\n\\nRW 2048 FLAT \"data.bin\" 0\\n"
     "RDONLY 100 FLAT \"data.bin\" 0\\nRW 64 ZERO\\nRW  +1000 FLAT   \"data.bin\"   7\\r\\n' > q.vmdk");
  ExpectSame("q.vmdk");
}

// A descriptor in a file named .img is probed like any other.
TEST_F(VmdkQemu, DescriptorNamedImgIsProbed) {
  MakeSource("src.raw");
  Sh("qemu-img convert -f raw -O vmdk -o subformat=monolithicFlat src.raw d.vmdk");
  Sh("mv d.vmdk d.img");
  auto format = DetectFormat(P("d.img"), "");
  ASSERT_TRUE(format.ok());
  EXPECT_EQ(*format, "vmdk");
  ExpectSame("d.img");
}

// Several extents: 5 GiB split in 2 GiB extents, data across the seams.
TEST_F(VmdkQemu, TwoGbExtentsJoinAtTheSeams) {
  for (const char* sub : {"twoGbMaxExtentSparse", "twoGbMaxExtentFlat"}) {
    SCOPED_TRACE(sub);
    const std::string name = std::string(sub) + "-big.vmdk";
    Sh(std::string("qemu-img create -q -f vmdk -o subformat=") + sub + " " + name + " 5G");
    Io(name, {"write -P 0x31 2147450880 65536", "write -P 0x32 4294934528 40000",
              "write -P 0x33 5368709000 120"});
    Chain chain = Open(name);
    ASSERT_FALSE(chain.layers.empty());
    Image& image = *chain.top();
    ASSERT_EQ(image.size(), 5ull << 30);
    ExpectSameMap(image, name);
    ExpectSameInfo(image, name);
    Sh("qemu-img convert -O raw " + name + " big.raw");
    std::ifstream raw(P("big.raw"), std::ios::binary);
    for (uint64_t off : {2147450880ull - 4096, 4294934528ull - 512, 5368709120ull - 8192}) {
      std::vector<uint8_t> got(8192), want(8192);
      ASSERT_TRUE(image.Read(off, got.data(), got.size()).ok());
      raw.seekg(static_cast<std::streamoff>(off));
      raw.read(reinterpret_cast<char*>(want.data()), 8192);
      EXPECT_TRUE(got == want) << off;
    }
    fs::remove(P("big.raw"));
  }
}

// parentFileNameHint chains: the overlay reads through its parent while the
// parent's CID is the one it recorded, and refuses (as QEMU) once the
// parent has been written.
TEST_F(VmdkQemu, OverlayReadsThroughItsParentWhileTheCidMatches) {
  MakeSource("src.raw");
  Sh("qemu-img convert -f raw -O vmdk src.raw base.vmdk");
  Sh("qemu-img create -q -f vmdk -b base.vmdk -F vmdk over.vmdk");
  Io("over.vmdk", {"write -P 0x66 60k 10k", "write -P 0x67 3M 128k"});
  {
    Chain chain = Open("over.vmdk");
    ASSERT_EQ(chain.layers.size(), 2u);
    EXPECT_EQ(chain.layers[1].format, "vmdk");
    ExpectSame("over.vmdk");
  }
  Io("base.vmdk", {"write -P 1 0 512"});  // a new CID for the parent
  EXPECT_FALSE(Shell("cd " + dir_ + " && qemu-img convert -O raw over.vmdk x.raw", false));
  Chain chain = Open("over.vmdk");
  ASSERT_EQ(chain.layers.size(), 2u);
  std::vector<uint8_t> buf(4096);
  Status st = chain.top()->Read(2 * MiB, buf.data(), buf.size());  // unallocated here
  EXPECT_EQ(st.code(), Status::Code::kCorruption) << st.ToString();
  // Its own grains still read.
  EXPECT_TRUE(chain.top()->Read(3 * MiB, buf.data(), buf.size()).ok());
}

// A qcow2 overlay on a VMDK base.
TEST_F(VmdkQemu, Qcow2OverlayOnVmdkBase) {
  MakeSource("src.raw");
  Sh("qemu-img convert -f raw -O vmdk -o subformat=twoGbMaxExtentSparse src.raw base.vmdk");
  Sh("qemu-img create -q -f qcow2 -b base.vmdk -F vmdk top.qcow2");
  Sh("qemu-io -f qcow2 -c 'write -P 0x70 100k 200k' top.qcow2 >/dev/null");
  Chain chain = Open("top.qcow2");
  ASSERT_EQ(chain.layers.size(), 2u);
  ExpectSameBytes(*chain.top(), "top.qcow2");
  ExpectSameMap(*chain.top(), "top.qcow2");
}

// Writes through kvmfs on every subformat QEMU writes, mirrored in a raw
// file: qemu-img check is clean and compare finds them equal.
void WritePattern(Image& image, const std::string& mirror_path, uint64_t seed) {
  std::fstream mirror(mirror_path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(mirror.good());
  std::mt19937_64 rng(seed);
  const uint64_t size = image.size();
  auto put = [&](uint64_t off, const std::vector<uint8_t>& b) {
    Status st = image.Write(off, b.data(), b.size());
    ASSERT_TRUE(st.ok()) << st.ToString();
    mirror.seekp(static_cast<std::streamoff>(off));
    mirror.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  };
  auto zero = [&](uint64_t off, uint64_t len, bool unmap) {
    Status st = image.WriteZeroes(off, len, unmap);
    ASSERT_TRUE(st.ok()) << st.ToString();
    std::vector<char> z(len, 0);
    mirror.seekp(static_cast<std::streamoff>(off));
    mirror.write(z.data(), static_cast<std::streamsize>(len));
  };
  for (int i = 0; i < 40; ++i) {
    uint64_t off = rng() % size;
    uint64_t n = std::min<uint64_t>(1 + rng() % (200 * KiB), size - off);
    std::vector<uint8_t> b(n);
    for (auto& c : b) c = static_cast<uint8_t>(rng());
    put(off, b);
  }
  put(size - 333, std::vector<uint8_t>(333, 0x5a));       // the partial last grain
  put(64 * KiB - 10, std::vector<uint8_t>(20, 0xa5));     // across a grain boundary
  zero(128 * KiB, 64 * KiB, false);                        // a whole grain
  zero(300 * KiB + 3, 70 * KiB, true);                     // unaligned
  zero(4 * MiB, 512 * KiB, true);
}

TEST_F(VmdkQemu, WritesAreReadByQemu) {
  MakeSource("src.raw");
  struct Case {
    std::string sub;
    std::string opts;
  };
  for (const Case& c : {Case{"monolithicSparse", ""}, Case{"monolithicSparse", ",zeroed_grain=on"},
                        Case{"twoGbMaxExtentSparse", ""}, Case{"monolithicFlat", ""},
                        Case{"twoGbMaxExtentFlat", ""}}) {
    SCOPED_TRACE(c.sub + c.opts);
    const std::string name = "w-" + c.sub + ".vmdk";
    Sh("qemu-img convert -f raw -O vmdk -o subformat=" + c.sub + c.opts + " src.raw " + name);
    Sh("cp src.raw mirror.raw");
    std::string cid_before = json::parse(*Shell("qemu-img info --output=json " + P(name)))
                                 ["format-specific"]["data"]["cid"].dump();
    {
      Chain chain = Open(name, true);
      ASSERT_FALSE(chain.layers.empty());
      Image& image = *chain.top();
      ASSERT_TRUE(image.BeginWrites().ok()) << image.ReadOnlyReason();
      WritePattern(image, P("mirror.raw"), 7);
      EXPECT_EQ(image.Resize(image.size() + MiB).code(), Status::Code::kNotSupported);
      ASSERT_TRUE(image.EndWrites().ok());
    }
    ExpectQemuAgrees(name, "mirror.raw");
    std::string cid_after = json::parse(*Shell("qemu-img info --output=json " + P(name)))
                                ["format-specific"]["data"]["cid"].dump();
    EXPECT_NE(cid_before, cid_after) << "the first write gives the image a new CID";
    ExpectSame(name);
  }
}

TEST_F(VmdkQemu, OverlayWritesCopyFromTheParent) {
  MakeSource("src.raw");
  Sh("qemu-img convert -f raw -O vmdk src.raw base.vmdk");
  Sh("qemu-img create -q -f vmdk -b base.vmdk -F vmdk over.vmdk");
  Sh("cp src.raw mirror.raw");
  {
    Chain chain = Open("over.vmdk", true);
    ASSERT_EQ(chain.layers.size(), 2u);
    Image& image = *chain.top();
    ASSERT_TRUE(image.BeginWrites().ok()) << image.ReadOnlyReason();
    WritePattern(image, P("mirror.raw"), 11);
    ASSERT_TRUE(image.EndWrites().ok());
  }
  ExpectQemuAgrees("over.vmdk", "mirror.raw");
  ExpectSame("over.vmdk");
}

// streamOptimized takes what QEMU writes to it: whole grains not written
// yet (and the partial last grain), appended compressed.
TEST_F(VmdkQemu, StreamOptimizedTakesWholeNewGrainsAsQemu) {
  Sh("qemu-img create -q -f vmdk -o subformat=streamOptimized s.vmdk " + std::to_string(kOddSize));
  Sh("truncate -s " + std::to_string(kOddSize) + " mirror.raw");
  {
    Chain chain = Open("s.vmdk", true);
    ASSERT_FALSE(chain.layers.empty());
    Image& image = *chain.top();
    ASSERT_TRUE(image.BeginWrites().ok()) << image.ReadOnlyReason();
    std::fstream mirror(P("mirror.raw"), std::ios::in | std::ios::out | std::ios::binary);
    std::mt19937_64 rng(3);
    auto put = [&](uint64_t off, size_t n, bool random) {
      std::vector<uint8_t> b(n);
      for (size_t i = 0; i < n; ++i) b[i] = random ? uint8_t(rng()) : uint8_t("streamOptimized "[i % 16]);
      Status st = image.Write(off, b.data(), n);
      ASSERT_TRUE(st.ok()) << st.ToString();
      mirror.seekp(static_cast<std::streamoff>(off));
      mirror.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(n));
    };
    put(0, 256 * KiB, false);
    put(1 * MiB, 64 * KiB, true);
    put(kOddSize / (64 * KiB) * (64 * KiB), kOddSize % (64 * KiB), true);  // the last, partial grain
    ASSERT_TRUE(image.WriteZeroes(2 * MiB, 128 * KiB, true).ok());  // unallocated, nothing below
    std::vector<uint8_t> b(64 * KiB, 1);
    EXPECT_EQ(image.Write(3 * MiB + 512, b.data(), 4096).code(), Status::Code::kInvalidArgument);
    EXPECT_EQ(image.Write(0, b.data(), b.size()).ToErrno(), EIO);  // allocated already
    mirror.close();
    ASSERT_TRUE(image.EndWrites().ok());
  }
  ExpectQemuAgrees("s.vmdk", "mirror.raw");
  ExpectSame("s.vmdk");
}

}  // namespace
}  // namespace kvmfs
