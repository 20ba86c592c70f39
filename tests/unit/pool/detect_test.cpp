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

TEST(Detect, NameSaysRawForRawAndIso) {
  EXPECT_TRUE(NameSaysRaw("a.raw"));
  EXPECT_TRUE(NameSaysRaw("a.ISO"));
  EXPECT_FALSE(NameSaysRaw("a.img"));
  EXPECT_FALSE(NameSaysRaw("a.qcow2"));
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

}  // namespace
}  // namespace kvmfs::pool
