#include "pool/detect.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "temp_dir.h"

namespace kvmfs::pool {
namespace {

using testing::TempDir;

std::string Bytes(const char* p, size_t n) { return std::string(p, n); }

std::string Padded(std::string head, size_t size = 512) {
  head.resize(size, '\0');
  return head;
}

std::string Probe(const std::string& bytes) {
  return ProbeMagic(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

TEST(Detect, ImageExtensionsAreCaseInsensitive) {
  for (const char* name : {"vm.qcow2", "vm.QCOW2", "a.qcow", "disk.img", "x.raw", "w.vdi",
                           "v.vmdk", "h.vhd", "h.VHDX", "cd.iso"})
    EXPECT_TRUE(HasImageExtension(name)) << name;
  for (const char* name : {"notes.txt", "qcow2", ".qcow2", "vm.qcow2.bak", "img", "x.yaml"})
    EXPECT_FALSE(HasImageExtension(name)) << name;
}

TEST(Detect, NamesSayTheirDriversFormat) {
  auto said = [](const char* name) {
    const FormatDriver* f = FormatForName(name);
    return f == nullptr ? std::string() : std::string(f->name());
  };
  EXPECT_EQ(said("a.raw"), "raw");
  EXPECT_EQ(said("a.ISO"), "raw");
  EXPECT_EQ(said("a.qcow2"), "qcow2");
  EXPECT_EQ(said("a.img"), "");
  EXPECT_EQ(said(".qcow2"), "");
  EXPECT_EQ(said("qcow2"), "");
}

TEST(Detect, VmdkExtentFilesAreRecognised) {
  EXPECT_TRUE(IsVmdkExtentName("disk-flat.vmdk"));
  EXPECT_TRUE(IsVmdkExtentName("disk-s001.vmdk"));
  EXPECT_TRUE(IsVmdkExtentName("disk-F012.VMDK"));
  EXPECT_FALSE(IsVmdkExtentName("disk.vmdk"));
  EXPECT_FALSE(IsVmdkExtentName("disk-s01.vmdk"));
  EXPECT_FALSE(IsVmdkExtentName("disk-x001.vmdk"));
  EXPECT_FALSE(IsVmdkExtentName("disk-flat.img"));
}

TEST(Detect, MagicOfEachFormat) {
  EXPECT_EQ(Probe(Padded(Bytes("QFI\xfb\0\0\0\3", 8))), "qcow2");
  EXPECT_EQ(Probe(Padded(Bytes("QFI\xfb\0\0\0\2", 8))), "qcow2");
  EXPECT_EQ(Probe(Padded(Bytes("QFI\xfb\0\0\0\1", 8))), "qcow");
  // Unknown versions go to the qcow2 driver, which rejects them with a reason.
  EXPECT_EQ(Probe(Padded(Bytes("QFI\xfb\0\0\0\0", 8))), "qcow2");
  EXPECT_EQ(Probe(Padded(Bytes("QFI\xfb\0\0\0\4", 8))), "qcow2");
  std::string vdi = Padded("<<< Oracle VM VirtualBox Disk Image >>>\n");
  const char sig[] = "\x7f\x10\xda\xbe";  // 0xbeda107f little-endian at 64
  std::memcpy(vdi.data() + 64, sig, 4);
  EXPECT_EQ(Probe(vdi), "vdi");
  EXPECT_EQ(Probe(Padded("KDMV")), "vmdk");
  EXPECT_EQ(Probe(Padded("# Disk DescriptorFile\nversion=1\n")), "vmdk");
  EXPECT_EQ(Probe(Padded("vhdxfile")), "vhdx");
  EXPECT_EQ(Probe(Padded("conectix")), "vpc");
  EXPECT_EQ(Probe(Padded("hello world\n")), "");
  EXPECT_EQ(Probe(std::string()), "");
  EXPECT_EQ(Probe("QFI"), "");  // too short to tell
}

TEST(Detect, ProbeCacheReadsOncePerFileVersion) {
  TempDir dir;
  dir.Write("mystery", Padded(Bytes("QFI\xfb\0\0\0\3", 8)));
  ProbeCache cache;
  struct stat st;
  ASSERT_EQ(::stat(dir.P("mystery").c_str(), &st), 0);
  EXPECT_EQ(cache.Probe(dir.P("mystery"), st), "qcow2");
  EXPECT_EQ(cache.Probe(dir.P("mystery"), st), "qcow2");
  EXPECT_EQ(cache.reads(), 1u);

  // A new version of the file (size changes) is probed again.
  dir.Write("mystery", "plain text, long enough to differ in size");
  ASSERT_EQ(::stat(dir.P("mystery").c_str(), &st), 0);
  EXPECT_EQ(cache.Probe(dir.P("mystery"), st), "");
  EXPECT_EQ(cache.reads(), 2u);
}

TEST(Detect, FormatOfHonoursRawNames) {
  TempDir dir;
  std::string qcow2_head = Padded(Bytes("QFI\xfb\0\0\0\3", 8));
  dir.Write("guest.raw", qcow2_head);  // a guest wrote a qcow2 header into its disk
  dir.Write("guest.img", qcow2_head);
  dir.Write("plain.img", Padded("data"));
  ProbeCache cache;
  struct stat st;
  ASSERT_EQ(::stat(dir.P("guest.raw").c_str(), &st), 0);
  EXPECT_EQ(cache.FormatOf(dir.P("guest.raw"), st), "raw");
  ASSERT_EQ(::stat(dir.P("guest.img").c_str(), &st), 0);
  EXPECT_EQ(cache.FormatOf(dir.P("guest.img"), st), "qcow2");
  ASSERT_EQ(::stat(dir.P("plain.img").c_str(), &st), 0);
  EXPECT_EQ(cache.FormatOf(dir.P("plain.img"), st), "raw");
}

// A name that says a format wins over content: a .qcow2 whose magic is broken
// (or that is empty) is a broken qcow2, never a raw disk to write into.
TEST(Detect, FormatOfNeverTakesABrokenQcow2ForRaw) {
  TempDir dir;
  dir.Write("broken.qcow2", Padded("QFI\xfa not a header"));
  dir.Write("empty.qcow2", "");
  ProbeCache cache;
  struct stat st;
  for (const char* name : {"broken.qcow2", "empty.qcow2"}) {
    ASSERT_EQ(::stat(dir.P(name).c_str(), &st), 0);
    EXPECT_EQ(cache.FormatOf(dir.P(name), st), "qcow2") << name;
    HeaderPeek peek = cache.Peek(dir.P(name), st);
    EXPECT_EQ(peek.format, "qcow2") << name;
    EXPECT_FALSE(peek.known) << name;
  }
}

TEST(Detect, PeekReadsBackingAndSnapshotsFromTheQcow2Header) {
  TempDir dir;
  std::string plain = Padded(Bytes("QFI\xfb\0\0\0\3", 8));
  std::string overlay = plain;
  overlay[15] = 0x48;  // backing_file_offset (8..15) = 0x48
  std::string snapped = plain;
  snapped[63] = 2;  // nb_snapshots (60..63) = 2
  dir.Write("plain.qcow2", plain);
  dir.Write("overlay.qcow2", overlay);
  dir.Write("snapped.qcow2", snapped);
  dir.Write("disk.raw", plain);  // the name says raw: the content is never read
  std::string vdi = Padded("<<< VirtualBox Disk Image >>>");
  vdi[64] = '\x7f', vdi[65] = '\x10', vdi[66] = '\xda', vdi[67] = '\xbe';  // VDI magic
  dir.Write("w.vdi", vdi);
  ProbeCache cache;
  auto peek = [&](const char* name) {
    struct stat st;
    EXPECT_EQ(::stat(dir.P(name).c_str(), &st), 0);
    return cache.Peek(dir.P(name), st);
  };
  HeaderPeek p = peek("plain.qcow2");
  EXPECT_EQ(p.format, "qcow2");
  EXPECT_TRUE(p.known);
  EXPECT_FALSE(p.has_backing);
  EXPECT_EQ(p.snapshots, 0u);
  p = peek("overlay.qcow2");
  EXPECT_TRUE(p.known && p.has_backing);
  p = peek("snapped.qcow2");
  EXPECT_TRUE(p.known && !p.has_backing);
  EXPECT_EQ(p.snapshots, 2u);
  p = peek("disk.raw");
  EXPECT_EQ(p.format, "raw");
  EXPECT_TRUE(p.known && !p.has_backing && p.snapshots == 0);
  p = peek("w.vdi");  // VDI has no backing files and no snapshots
  EXPECT_EQ(p.format, "vdi");
  EXPECT_TRUE(p.known && !p.has_backing && p.snapshots == 0);
  // a truncated qcow2 header says nothing
  dir.Write("short.qcow2", Bytes("QFI\xfb\0\0\0\3", 8));
  p = peek("short.qcow2");
  EXPECT_EQ(p.format, "qcow2");
  EXPECT_FALSE(p.known);
}

}  // namespace
}  // namespace kvmfs::pool
