// Hostile VMDK input: crafted sparse headers, grain tables and descriptors,
// one rule per test. Every one must fail cleanly with the named Status (or
// read as QEMU reads it), never crash, hang or read outside the image.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "format/vmdk/vmdk.h"
#include "kvmfs/chain.h"
#include "mem_vmdk.h"

namespace kvmfs {
namespace {

using test::MemContext;
using test::MemVmdk;
using Files = std::map<std::string, std::vector<uint8_t>>;

Result<std::unique_ptr<Image>> OpenBytes(std::vector<uint8_t> bytes,
                                         std::shared_ptr<Files> files = std::make_shared<Files>()) {
  return vmdk::OpenVmdk(NewMemBackend("t.vmdk", std::move(bytes), false), MemContext("t.vmdk", files));
}

std::vector<uint8_t> Text(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

std::string Desc(const std::string& create_type, const std::string& extents,
                 const std::string& extra = "") {
  return "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"" +
         create_type + "\"\n" + extra + "\n# Extent description\n" + extents + "\n";
}

Status::Code OpenCode(std::vector<uint8_t> bytes, std::shared_ptr<Files> files = std::make_shared<Files>()) {
  auto r = OpenBytes(std::move(bytes), std::move(files));
  return r.ok() ? Status::Code::kOk : r.status().code();
}

Status ReadAll(Image& image) {
  std::vector<uint8_t> buf(image.size());
  return image.Read(0, buf.data(), buf.size());
}

TEST(VmdkSparse, ValidImageReadsItsGrains) {
  MemVmdk m;
  m.Grain(1, 0x11);
  m.Gte(2, 0);
  auto r = OpenBytes(m.b);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  Image& image = **r;
  EXPECT_EQ(image.size(), m.capacity * 512);
  std::vector<uint8_t> buf(image.size());
  ASSERT_TRUE(image.Read(0, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf[0], 0);
  EXPECT_EQ(buf[65536], 0x11);
  EXPECT_EQ(buf[131071], 0x11);
  EXPECT_EQ(buf[131072], 0);
  auto bs = image.GetBlockStatus(65536, 1 << 20);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kData);
  EXPECT_EQ(bs->length, 65536u);
  ImageInfo info = image.Info();
  EXPECT_EQ(std::get<std::string>(info.format_specific[2].value), "monolithicSparse");
  EXPECT_EQ(std::get<int64_t>(info.format_specific[0].value), 0x1234abcd);
}

TEST(VmdkSparse, GrainSizeZeroOrBeyondQemusLimitIsRefused) {
  MemVmdk m;
  m.Le64(test::kVOffGrain, 0);
  EXPECT_EQ(OpenCode(m.b), Status::Code::kCorruption);
  m.Le64(test::kVOffGrain, 0x200001);
  EXPECT_EQ(OpenCode(m.b), Status::Code::kTooLarge);
  m.Le64(test::kVOffGrain, ~uint64_t{0});
  EXPECT_EQ(OpenCode(m.b), Status::Code::kTooLarge);
}

TEST(VmdkSparse, GrainTableSizeAboveQemusLimitIsCorruption) {
  MemVmdk m;
  m.Le32(test::kVOffGtes, 513);
  EXPECT_EQ(OpenCode(m.b), Status::Code::kCorruption);
  m.Le32(test::kVOffGtes, 0);
  EXPECT_EQ(OpenCode(m.b), Status::Code::kCorruption);
}

TEST(VmdkSparse, CapacityOverflowIsTooLarge) {
  MemVmdk m;
  m.Le64(test::kVOffCapacity, ~uint64_t{0});
  EXPECT_EQ(OpenCode(m.b), Status::Code::kTooLarge);
  // A directory of more than 32M entries (QEMU's "L1 size too big").
  m.Le64(test::kVOffCapacity, (32ull << 20) * 512 * 128 + 1);
  EXPECT_EQ(OpenCode(m.b), Status::Code::kTooLarge);
}

TEST(VmdkSparse, GrainDirectoryPastEofIsCorruption) {
  MemVmdk m;
  m.Le64(test::kVOffGd, m.b.size() / 512);
  EXPECT_EQ(OpenCode(m.b), Status::Code::kCorruption);
  m.Le64(test::kVOffGd, ~uint64_t{0} - 1);  // shifting it would wrap
  EXPECT_EQ(OpenCode(m.b), Status::Code::kCorruption);
}

TEST(VmdkSparse, FileShorterThanItsOverheadIsCorruption) {
  MemVmdk m;
  m.Le64(test::kVOffGrainOffset, m.b.size() / 512 + 1);
  EXPECT_EQ(OpenCode(m.b), Status::Code::kCorruption);
}

TEST(VmdkSparse, UnsupportedVersionIsNotSupported) {
  MemVmdk m;
  m.Le32(test::kVOffVersion, 4);
  EXPECT_EQ(OpenCode(m.b), Status::Code::kNotSupported);
}

TEST(VmdkSparse, GrainTableOutOfRangeFailsTheRead) {
  MemVmdk m;
  m.Le32(m.gd_sector * 512, 0x7fffffff);  // GT 0 far past the end
  auto r = OpenBytes(m.b);
  ASSERT_TRUE(r.ok());  // as QEMU: tables are followed when used
  Status st = ReadAll(**r);
  EXPECT_EQ(st.code(), Status::Code::kCorruption) << st.ToString();
  auto bs = (*r)->GetBlockStatus(0, 4096);
  EXPECT_FALSE(bs.ok());
}

TEST(VmdkSparse, GrainPastEofFailsTheRead) {
  MemVmdk m;
  m.Gte(0, static_cast<uint32_t>(m.b.size() / 512 + 10));
  auto r = OpenBytes(m.b);
  ASSERT_TRUE(r.ok());
  std::vector<uint8_t> buf(512);
  Status st = (*r)->Read(0, buf.data(), buf.size());
  EXPECT_EQ(st.code(), Status::Code::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("past the end"), std::string::npos);
  // Another grain still reads.
  EXPECT_TRUE((*r)->Read(65536, buf.data(), buf.size()).ok());
}

// check.json as QEMU's vmdk_co_check (it-check-formats compares with
// qemu-img): a grain past the end fails the check with EINVAL's text; a
// grain table past the end reads as zeros in QEMU, so nothing is wrong.
TEST(VmdkSparse, CheckAsQemu) {
  MemVmdk clean;
  auto r = OpenBytes(clean.b);
  ASSERT_TRUE(r.ok());
  auto res = (*r)->Check({});
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->corruptions, 0u);
  EXPECT_TRUE(res->failure.empty());

  MemVmdk past;
  past.Gte(3, static_cast<uint32_t>(past.b.size() / 512 + 10));
  r = OpenBytes(past.b);
  ASSERT_TRUE(r.ok());
  uint64_t last = 0;
  CheckOptions options;
  options.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_LE(done, total);
    last = done;
  };
  res = (*r)->Check(options);
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->corruptions, 1u);
  EXPECT_EQ(res->failure, "Invalid argument");
  EXPECT_LT(last, (*r)->size());  // it stopped at the bad grain

  MemVmdk far;
  far.Le32(far.gd_sector * 512, 0x7fffffff);
  r = OpenBytes(far.b);
  ASSERT_TRUE(r.ok());
  res = (*r)->Check({});
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->corruptions, 0u);
  EXPECT_TRUE(res->failure.empty());
}

TEST(VmdkSparse, ZeroedGrainEntryReadsZerosOnlyWithTheFlag) {
  MemVmdk m;
  m.Gte(0, 1);  // without the flag: data at sector 1 (the descriptor), as QEMU
  auto r = OpenBytes(m.b);
  ASSERT_TRUE(r.ok());
  std::vector<uint8_t> buf(16);
  ASSERT_TRUE((*r)->Read(0, buf.data(), buf.size()).ok());
  EXPECT_EQ(std::string(buf.begin(), buf.begin() + 6), "# Disk");
  m.Le32(test::kVOffFlags, 1 | 4);
  m.Le32(test::kVOffVersion, 2);
  r = OpenBytes(m.b);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE((*r)->Read(0, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, std::vector<uint8_t>(16, 0));
  auto bs = (*r)->GetBlockStatus(0, 1 << 20);
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->kind, Allocation::kZero);
}

TEST(VmdkSparse, MissingCidOrParentCidIsCorruption) {
  MemVmdk no_cid(2048, 128, 512, "createType=\"monolithicSparse\"\nparentCID=ffffffff\n");
  EXPECT_EQ(OpenCode(no_cid.b), Status::Code::kOk) << "parentCID contains CID, as QEMU finds it";
  MemVmdk none(2048, 128, 512, "createType=\"monolithicSparse\"\n");
  EXPECT_EQ(OpenCode(none.b), Status::Code::kCorruption);
  MemVmdk hint(2048, 128, 512, "CID=1\nparentCID=2\nparentFileNameHint=\"unterminated\n");
  EXPECT_EQ(OpenCode(hint.b), Status::Code::kCorruption);
}

TEST(VmdkSparse, ParentHintIsTheBackingFile) {
  MemVmdk m(2048, 128, 512, "CID=1\nparentCID=abc\nparentFileNameHint=\"base.vmdk\"\n");
  auto r = OpenBytes(m.b);
  ASSERT_TRUE(r.ok());
  ImageInfo info = (*r)->Info();
  EXPECT_EQ(info.backing_filename, "base.vmdk");
  EXPECT_EQ(info.backing_format, "vmdk");
  EXPECT_EQ(std::get<int64_t>(info.format_specific[1].value), 0xabc);
}

TEST(VmdkSparse, StreamOptimizedFooterMustBeValid) {
  MemVmdk m;
  m.Le64(test::kVOffGd, vmdk::kGdAtEnd);
  m.Le16(test::kVOffCompress, 1);
  EXPECT_EQ(OpenCode(m.b), Status::Code::kCorruption);
  // A tiny file cannot hold a footer.
  std::vector<uint8_t> tiny(m.b.begin(), m.b.begin() + 512);
  EXPECT_EQ(OpenCode(tiny), Status::Code::kCorruption);
}

TEST(VmdkSparse, CompressedGrainWithBadSizeOrStreamIsCorruption) {
  MemVmdk m;
  m.Le32(test::kVOffVersion, 3);
  m.Le32(test::kVOffFlags, 1 | (1u << 16) | (1u << 17));
  m.Le16(test::kVOffCompress, 1);
  const uint64_t sector = m.Grain(0, 0);
  m.Le32(sector * 512 + 8, 0);  // size 0
  const uint64_t s2 = m.Grain(1, 0);
  m.Le32(s2 * 512 + 8, 0x7fffffff);  // far too big
  const uint64_t s3 = m.Grain(2, 0x77);
  m.Le32(s3 * 512 + 8, 100);  // garbage stream
  auto r = OpenBytes(m.b);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::vector<uint8_t> buf(4096);
  for (uint64_t g : {0, 1, 2}) {
    Status st = (*r)->Read(g * 65536, buf.data(), buf.size());
    EXPECT_EQ(st.code(), Status::Code::kCorruption) << g << ": " << st.ToString();
  }
  EXPECT_NE((*r)->ReadOnlyReason(), "x");  // no crash asking
}

// QEMU opens version 3 images without compression read-only (changed block
// tracking); kvmfs serves them read-only with that reason.
TEST(VmdkSparse, Version3WithoutCompressionIsServedReadOnly) {
  MemVmdk m;
  m.Le32(test::kVOffVersion, 3);
  OpenContext ctx = MemContext("t.vmdk", std::make_shared<Files>());
  ctx.writable = true;
  auto r = vmdk::OpenVmdk(NewMemBackend("t.vmdk", m.b, true), ctx);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  Status st = (*r)->BeginWrites();
  EXPECT_EQ(st.code(), Status::Code::kReadOnly);
  EXPECT_NE((*r)->ReadOnlyReason().find("version 3"), std::string::npos);
  // Version 1 of the same image is writable, and writes land in a new grain.
  m.Le32(test::kVOffVersion, 1);
  r = vmdk::OpenVmdk(NewMemBackend("t.vmdk", m.b, true), ctx);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE((*r)->BeginWrites().ok());
  std::vector<uint8_t> in(1000, 0x4d), out(1000);
  ASSERT_TRUE((*r)->Write(70000, in.data(), in.size()).ok());
  ASSERT_TRUE((*r)->Read(70000, out.data(), out.size()).ok());
  EXPECT_EQ(in, out);
  EXPECT_NE(std::get<int64_t>((*r)->Info().format_specific[0].value), 0x1234abcd);  // a new CID
}

// A grain table entry pointing into the header or tables reads (as QEMU)
// but is never written over.
TEST(VmdkSparse, GrainInTheMetadataIsNotWritten) {
  MemVmdk m;
  m.Gte(0, static_cast<uint32_t>(m.gd_sector));  // the grain directory
  OpenContext ctx = MemContext("t.vmdk", std::make_shared<Files>());
  ctx.writable = true;
  auto r = vmdk::OpenVmdk(NewMemBackend("t.vmdk", m.b, true), ctx);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE((*r)->BeginWrites().ok());
  std::vector<uint8_t> buf(512, 0xee);
  EXPECT_TRUE((*r)->Read(0, buf.data(), buf.size()).ok());
  EXPECT_EQ((*r)->Write(0, buf.data(), buf.size()).code(), Status::Code::kCorruption);
  EXPECT_TRUE((*r)->Write(65536, buf.data(), buf.size()).ok());  // a fresh grain is fine
}

TEST(VmdkSparse, ProbeAndPeekFollowQemu) {
  MemVmdk m;
  EXPECT_EQ(vmdk::ProbeVmdk(m.b.data(), 512), 100);
  EXPECT_FALSE(vmdk::PeekVmdk(m.b.data(), 512).known);  // the descriptor is past 512 bytes
  std::string d = Desc("monolithicFlat", "RW 8 FLAT \"f\" 0");
  auto p = [](const std::string& s) {
    return vmdk::ProbeVmdk(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  EXPECT_EQ(p(d), 100);
  EXPECT_EQ(p("  \n# c\nversion=2\r\n"), 100);
  EXPECT_EQ(p("\nversion=1\n"), 0);  // a bare newline is not blank to QEMU
  EXPECT_EQ(p("version=4\n"), 0);
  EXPECT_EQ(p("RW 1 FLAT \"x\" 0\n"), 0);
  auto peek = vmdk::PeekVmdk(reinterpret_cast<const uint8_t*>(d.data()), d.size());
  EXPECT_TRUE(peek.known);
  EXPECT_FALSE(peek.has_backing);
  std::string child = Desc("monolithicFlat", "", "parentFileNameHint=\"b.vmdk\"\n");
  peek = vmdk::PeekVmdk(reinterpret_cast<const uint8_t*>(child.data()), child.size());
  EXPECT_TRUE(peek.known && peek.has_backing);
  std::string big = d + std::string(600, '#');
  EXPECT_FALSE(vmdk::PeekVmdk(reinterpret_cast<const uint8_t*>(big.data()), 512).known);
}

// ---- Descriptors ---------------------------------------------------------------

TEST(VmdkDescriptor, FlatExtentsConcatenate) {
  auto files = std::make_shared<Files>();
  (*files)["a"] = std::vector<uint8_t>(4096, 0xaa);
  (*files)["b"] = std::vector<uint8_t>(8192, 0xbb);
  auto r = OpenBytes(Text(Desc("twoGbMaxExtentFlat", "RW 4 FLAT \"a\" 2\nRW 8 FLAT \"b\" 0\n"
                                                      "RW 8 FLAT \"a\" 7")),
                     files);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->size(), 20u * 512);
  std::vector<uint8_t> buf((*r)->size());
  ASSERT_TRUE(ReadAll(**r).ok());
  ASSERT_TRUE((*r)->Read(0, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf[0], 0xaa);
  EXPECT_EQ(buf[4 * 512], 0xbb);
  EXPECT_EQ(buf[12 * 512], 0xaa);
  EXPECT_EQ(buf[20 * 512 - 1], 0);  // past the end of "a": zeros, as QEMU's file driver
  EXPECT_FALSE((*r)->Info().cluster_size.has_value());
}

TEST(VmdkDescriptor, ExtentOutsideThePoolIsPermission) {
  auto files = std::make_shared<Files>();
  EXPECT_EQ(OpenCode(Text(Desc("monolithicFlat", "RW 8 FLAT \"/etc/passwd\" 0")), files),
            Status::Code::kPermission);
}

// Through the chain opener: a descriptor naming /etc/passwd, or ../ out of
// the pool, is refused by policy (EACCES), relative names inside it open.
TEST(VmdkDescriptor, ChainOpenerRefusesExtentsOutsideTheRoots) {
  namespace fs = std::filesystem;
  char tmpl[] = "/tmp/kvmfs-vmdk-pol-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = fs::canonical(tmpl).string();
  fs::create_directory(dir + "/pool");
  auto write = [](const std::string& path, const std::string& s) {
    std::ofstream(path, std::ios::binary) << s;
  };
  write(dir + "/outside.bin", std::string(4096, 'x'));
  write(dir + "/pool/passwd.img", Desc("monolithicFlat", "RW 8 FLAT \"/etc/passwd\" 0"));
  write(dir + "/pool/up.vmdk", Desc("monolithicFlat", "RW 8 FLAT \"../outside.bin\" 0"));
  write(dir + "/pool/in.bin", std::string(4096, 'y'));
  write(dir + "/pool/ok.vmdk", Desc("monolithicFlat", "RW 8 FLAT \"in.bin\" 0"));
  ChainPolicy policy;
  policy.allowed_roots = {dir + "/pool"};
  auto a = OpenChain(dir + "/pool/passwd.img", policy);
  EXPECT_EQ(a.status().code(), Status::Code::kPermission) << a.status().ToString();
  EXPECT_EQ(a.status().ToErrno(), EACCES);
  auto b = OpenChain(dir + "/pool/up.vmdk", policy);
  EXPECT_EQ(b.status().code(), Status::Code::kPermission) << b.status().ToString();
  auto c = OpenChain(dir + "/pool/ok.vmdk", policy);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  fs::remove_all(dir);
}

TEST(VmdkDescriptor, SelfReferenceDuplicatesAndNestingAreRefused) {
  auto files = std::make_shared<Files>();
  std::string self = Desc("monolithicFlat", "RW 8 FLAT \"t.vmdk\" 0");
  (*files)["t.vmdk"] = Text(self);
  EXPECT_EQ(OpenCode(Text(self), files), Status::Code::kCorruption);
  // The same sparse file twice.
  MemVmdk s;
  (*files)["s"] = s.b;
  EXPECT_EQ(OpenCode(Text(Desc("twoGbMaxExtentSparse", "RW 8 SPARSE \"s\"\nRW 8 SPARSE \"s\"")), files),
            Status::Code::kCorruption);
  EXPECT_EQ(OpenCode(Text(Desc("twoGbMaxExtentSparse", "RW 8 SPARSE \"s\"")), files),
            Status::Code::kOk);
  // A sparse extent that is itself a descriptor (capacity 0, descriptor
  // offset set), and one that is a text descriptor.
  MemVmdk nested;
  nested.Le64(test::kVOffCapacity, 0);
  (*files)["n"] = nested.b;
  EXPECT_EQ(OpenCode(Text(Desc("twoGbMaxExtentSparse", "RW 8 SPARSE \"n\"")), files),
            Status::Code::kCorruption);
  (*files)["d"] = Text(Desc("twoGbMaxExtentSparse", "RW 8 SPARSE \"d\""));
  EXPECT_EQ(OpenCode(Text(Desc("twoGbMaxExtentSparse", "RW 8 SPARSE \"d\"")), files),
            Status::Code::kCorruption);
}

TEST(VmdkDescriptor, TopLevelSparseHeaderMayPointAtADescriptor) {
  auto files = std::make_shared<Files>();
  (*files)["f"] = std::vector<uint8_t>(4096, 0x3c);
  MemVmdk m;
  m.Le64(test::kVOffCapacity, 0);
  m.Le64(test::kVOffDescOffset, 40);
  std::string d = Desc("monolithicFlat", "RW 8 FLAT \"f\" 0");
  m.b.resize(40 * 512 + d.size());
  std::memcpy(m.b.data() + 40 * 512, d.data(), d.size());
  auto r = OpenBytes(m.b, files);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->size(), 8u * 512);
  EXPECT_EQ(std::get<std::string>((*r)->Info().format_specific[2].value), "monolithicFlat");
}

TEST(VmdkDescriptor, InvalidLinesAndTypes) {
  auto files = std::make_shared<Files>();
  (*files)["f"] = std::vector<uint8_t>(512);
  EXPECT_EQ(OpenCode(Text(Desc("monolithicFlat", "RW 8 FLAT \"f\"")), files), Status::Code::kCorruption);
  EXPECT_EQ(OpenCode(Text(Desc("monolithicFlat", "RW 8 FLAT \"f\" -1")), files), Status::Code::kCorruption);
  EXPECT_EQ(OpenCode(Text(Desc("monolithicFlat", "RW 8 VMFS \"f\" 3")), files), Status::Code::kCorruption);
  EXPECT_EQ(OpenCode(Text(Desc("monolithicFlat", "RW 8 SPARSE \"f\" 3")), files), Status::Code::kCorruption);
  EXPECT_EQ(OpenCode(Text(Desc("monolithicSparse", "RW 8 FLAT \"f\" 0")), files), Status::Code::kNotSupported);
  EXPECT_EQ(OpenCode(Text(Desc("streamOptimized", "RW 8 FLAT \"f\" 0")), files), Status::Code::kNotSupported);
  EXPECT_EQ(OpenCode(Text("version=1\nCID=1\nparentCID=2\nRW 8 FLAT \"f\" 0\n"), files),
            Status::Code::kCorruption);  // no createType
  EXPECT_EQ(OpenCode(Text(Desc("monolithicFlat", "RDONLY 8 FLAT \"f\" 0")), files),
            Status::Code::kCorruption);  // no usable extent
  EXPECT_EQ(OpenCode(Text(Desc("seSparse", "RW 8 SESPARSE \"f\"")), files), Status::Code::kNotSupported);
  EXPECT_EQ(OpenCode(Text(Desc("monolithicFlat", "RW 8 FLAT \"missing\" 0")), files), Status::Code::kNotFound);
  EXPECT_EQ(OpenCode(Text(Desc("monolithicFlat", "RW 9223372036854775807 FLAT \"f\" 0\n"
                                                 "RW 9223372036854775807 FLAT \"f\" 0")),
                     files),
            Status::Code::kTooLarge);
  EXPECT_EQ(OpenCode(Text(Desc("monolithicFlat", "RW 8 FLAT \"f\" 99999999999999999999")), files),
            Status::Code::kTooLarge);
  EXPECT_EQ(OpenCode(Text("abc")), Status::Code::kCorruption);  // too small
}

TEST(VmdkDescriptor, HugeDescriptorsAreBounded) {
  auto files = std::make_shared<Files>();
  (*files)["f"] = std::vector<uint8_t>(512, 1);
  // Extent lines past the first MiB are not read (QEMU's 1 MiB bound).
  std::string d = Desc("monolithicFlat", "RW 1 FLAT \"f\" 0\n");
  d += std::string((1 << 20) - d.size(), '#');
  d += "\nRW 1 FLAT \"f\" 0\n";
  auto r = OpenBytes(Text(d), files);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->size(), 512u);
  // More extents than kvmfs opens.
  std::string many;
  for (int i = 0; i < 5000; ++i) many += "RW 1 FLAT \"f\" 0\n";
  EXPECT_EQ(OpenCode(Text(Desc("monolithicFlat", many)), files), Status::Code::kTooLarge);
}

// COWD (vmfsSparse) extents, laid out by hand: 4096-entry grain tables.
TEST(VmdkDescriptor, CowdExtentReads) {
  std::vector<uint8_t> c(64 * 512, 0);
  std::memcpy(c.data(), "COWD", 4);
  StoreLE32(c.data() + 4, 1);
  StoreLE32(c.data() + 12, 100);  // sectors
  StoreLE32(c.data() + 16, 8);    // grain: 4 KiB
  StoreLE32(c.data() + 20, 4);    // GD at sector 4
  StoreLE32(c.data() + 24, 1);    // one GD entry
  StoreLE32(c.data() + 4 * 512, 5);  // GT at sector 5 (4096 entries = 32 sectors)
  StoreLE32(c.data() + 5 * 512 + 4 * 2, 40);  // grain 2 at sector 40
  std::memset(c.data() + 40 * 512, 0xc0, 8 * 512);
  auto files = std::make_shared<Files>();
  (*files)["c"] = c;
  auto r = OpenBytes(Text(Desc("vmfsSparse", "RW 100 VMFSSPARSE \"c\"")), files);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->size(), 100u * 512);
  std::vector<uint8_t> buf((*r)->size());
  ASSERT_TRUE((*r)->Read(0, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf[2 * 4096 - 1], 0);
  EXPECT_EQ(buf[2 * 4096], 0xc0);
  EXPECT_EQ(buf[3 * 4096 - 1], 0xc0);
  EXPECT_EQ(buf[3 * 4096], 0);
  // A GD too big for QEMU and a zero grain size.
  StoreLE32(c.data() + 24, (32u << 20) + 1);
  (*files)["c"] = c;
  EXPECT_EQ(OpenCode(Text(Desc("vmfsSparse", "RW 100 VMFSSPARSE \"c\"")), files),
            Status::Code::kTooLarge);
  StoreLE32(c.data() + 24, 1);
  StoreLE32(c.data() + 16, 0);
  (*files)["c"] = c;
  EXPECT_EQ(OpenCode(Text(Desc("vmfsSparse", "RW 100 VMFSSPARSE \"c\"")), files),
            Status::Code::kCorruption);
}

}  // namespace
}  // namespace kvmfs
