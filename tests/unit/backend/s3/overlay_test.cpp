// Overlays of S3 images: the empty qcow2 is what qemu-img accepts and reads
// through to its backing, creation is idempotent and tied to the ETag.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "backend/s3/overlay.h"

namespace kvmfs::s3 {
namespace {

std::string Shell(const std::string& cmd, int* rc = nullptr) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int status = ::pclose(p);
  if (rc != nullptr) *rc = status;
  return out;
}

class OverlayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvmfs-s3-overlay-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    if (std::system("qemu-img --version >/dev/null 2>&1") != 0) {
      GTEST_SKIP() << "SKIPPED: qemu-img is not installed (tools/setup-deps.sh)";
    }
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  void Write(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<long>(bytes.size()));
  }
  std::string dir_;
};

TEST_F(OverlayTest, EmptyQcow2IsCleanAndReadsItsBacking) {
  for (uint64_t size : {uint64_t{1} << 20, (uint64_t{1} << 30) + 512, uint64_t{3} << 40}) {
    std::string backing = dir_ + "/base.raw";
    ASSERT_EQ(std::system(("qemu-img create -f raw '" + backing + "' 4M >/dev/null && "
                           "qemu-io -f raw -c 'write -P 0x5a 0 4M' '" + backing +
                           "' >/dev/null").c_str()), 0);
    auto img = EncodeEmptyQcow2(size, backing, "raw");
    ASSERT_TRUE(img.ok()) << img.status().ToString();
    std::string ov = dir_ + "/ov.qcow2";
    Write(ov, *img);
    int rc;
    std::string check = Shell("qemu-img check '" + ov + "'", &rc);
    EXPECT_EQ(rc, 0) << check;
    EXPECT_NE(check.find("No errors were found"), std::string::npos) << check;
    std::string info = Shell("qemu-img info --output=json '" + ov + "'");
    EXPECT_NE(info.find("\"virtual-size\": " + std::to_string(size)), std::string::npos) << info;
    EXPECT_NE(info.find("\"backing-filename\": \"" + backing + "\""), std::string::npos) << info;
    EXPECT_NE(info.find("\"backing-filename-format\": \"raw\""), std::string::npos) << info;
    // The overlay shows its backing's bytes and takes writes as QEMU's own.
    std::string len = std::to_string(std::min<uint64_t>(size, 4 << 20));
    EXPECT_EQ(Shell("qemu-io -f qcow2 -c 'read -P 0x5a 0 " + len + "' '" + ov +
                    "' >/dev/null; echo $?"),
              "0\n");
    EXPECT_EQ(Shell("qemu-io -f qcow2 -c 'write -P 0x11 1M 64k' '" + ov + "' >/dev/null; "
                  "qemu-img check '" + ov + "' >/dev/null; echo $?"),
              "0\n");
  }
  EXPECT_FALSE(EncodeEmptyQcow2(0, "b", "raw").ok());
  EXPECT_FALSE(EncodeEmptyQcow2(uint64_t{1} << 57, "b", "raw").ok());
  EXPECT_FALSE(EncodeEmptyQcow2(1 << 20, std::string(1024, 'b'), "raw").ok());
}

TEST_F(OverlayTest, LocationIsSanitizedAndUnique) {
  auto a = OverlayLocation("/ov", "bkt", "golden/deb 12.qcow2");
  auto b = OverlayLocation("/ov", "bkt", "other/deb 12.qcow2");
  auto c = OverlayLocation("/ov", "bkt", "../..");
  EXPECT_EQ(a.path.rfind("/ov/bkt/deb_12.qcow2.", 0), 0u) << a.path;
  EXPECT_NE(a.path, b.path);
  EXPECT_EQ(c.path.find("/../"), std::string::npos) << c.path;
  EXPECT_EQ(a.meta_path, a.path + ".json");
  EXPECT_EQ(a.backing, "s3://bkt/golden/deb 12.qcow2");
}

TEST_F(OverlayTest, CreateIsIdempotentAndTiedToTheEtag) {
  OverlayTarget t{"bkt", "golden/deb12.qcow2", "etag1", 1 << 20, "qcow2"};
  auto none = FindOverlay(dir_, t);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(*none);
  auto made = CreateOverlay(dir_, t, 10 << 20);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  struct stat st;
  ASSERT_EQ(::stat(made->path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string info = Shell("qemu-img info --output=json '" + made->path + "'");
  EXPECT_NE(info.find("\"backing-filename\": \"s3://bkt/golden/deb12.qcow2\""), std::string::npos);
  EXPECT_NE(info.find("\"virtual-size\": 10485760"), std::string::npos);
  // Writes made through it survive a second CreateOverlay (no re-creation).
  ASSERT_EQ(std::system(("qemu-io -f qcow2 -U -c 'write -P 0x22 0 64k' '" + made->path +
                         "' >/dev/null 2>&1 || true").c_str()), 0);
  auto before = Shell("md5sum < '" + made->path + "'");
  auto again = CreateOverlay(dir_, t, 10 << 20);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->path, made->path);
  EXPECT_EQ(Shell("md5sum < '" + made->path + "'"), before);
  auto found = FindOverlay(dir_, t);
  ASSERT_TRUE(found.ok() && *found);
  EXPECT_EQ((*found)->path, made->path);
  // The object changed: the overlay is refused, never laid over new bytes.
  OverlayTarget t2 = t;
  t2.etag = "etag2";
  EXPECT_EQ(FindOverlay(dir_, t2).status().ToErrno(), ESTALE);
  EXPECT_EQ(CreateOverlay(dir_, t2, 10 << 20).status().ToErrno(), ESTALE);
  // A damaged sidecar is corruption.
  std::ofstream(made->meta_path) << "{not json";
  EXPECT_EQ(FindOverlay(dir_, t).status().code(), Status::Code::kCorruption);
  ::unlink(made->meta_path.c_str());
  EXPECT_EQ(FindOverlay(dir_, t).status().code(), Status::Code::kCorruption);
  EXPECT_FALSE(CreateOverlay("relative", t, 1 << 20).ok());
}

}  // namespace
}  // namespace kvmfs::s3
