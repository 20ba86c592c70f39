// FormatDriver::Create of every driver that creates, compared with what
// `qemu-img create` (QEMU 7.2, default options) makes: byte for byte where
// the format holds nothing random, and field for field (qemu-img info and
// check) everywhere; each created image then opens through the chain opener.
#include <algorithm>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/chain.h"
#include "kvmfs/format.h"
#include "../test_files.h"

namespace kvmfs {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct ShellRun {
  int status = -1;
  std::string out;
};

ShellRun Shell(const std::string& cmd) {
  ShellRun r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int rc = ::pclose(p);
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return r;
}

using kvmfs::test::ReadFileBytes;

// Byte ranges a format fills with random or time-dependent values at
// creation (UUIDs, timestamps) and the checksums that cover them.
struct Mask {
  uint64_t off, len;
};

struct Case {
  std::string format;
  std::string ext;
  uint64_t size;
  bool backing = false;
  std::vector<Mask> masks;
};

class FormatCreate : public ::testing::TestWithParam<Case> {
 public:
  void SetUp() override {
    if (Shell("qemu-img --version").status != 0) GTEST_SKIP() << "qemu-img not installed (qemu-utils)";
    char tmpl[] = "/tmp/kvmfs-create-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = fs::canonical(tmpl).string();
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  std::string P(const std::string& name) const { return dir_ + "/" + name; }
  json Info(const std::string& name) {
    ShellRun r = Shell("cd " + dir_ + " && qemu-img info --output=json " + name);
    EXPECT_EQ(r.status, 0) << r.out;
    return r.status == 0 ? json::parse(r.out) : json();
  }

  // Creates `name` with the driver of `c`.
  Status Create(const Case& c, const std::string& name, const CreateOptions& options) {
    const FormatDriver* driver = FindFormat(c.format);
    if (driver == nullptr) return Status::NotFound(c.format);
    std::ofstream(P(name)).close();
    KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> file, OpenLocalFile(P(name), true));
    KVMFS_RETURN_IF_ERROR(driver->Create(*file, options));
    return file->Flush();
  }

  std::string dir_;
};

TEST_P(FormatCreate, MatchesQemuImgCreate) {
  const Case& c = GetParam();
  const FormatDriver* driver = FindFormat(c.format);
  ASSERT_NE(driver, nullptr);
  ASSERT_TRUE(driver->caps().create);
  const std::string size = std::to_string(c.size);
  CreateOptions options;
  options.size = c.size;
  std::string backing_args;
  if (c.backing) {
    ASSERT_EQ(Shell("cd " + dir_ + " && qemu-img create -q -f qcow2 base.qcow2 " + size).status, 0);
    options.backing_file = "base.qcow2";
    options.backing_format = "qcow2";
    backing_args = " -b base.qcow2 -F qcow2";
  }
  const std::string theirs = "qemu." + c.ext, ours = "kvmfs." + c.ext;
  ShellRun made = Shell("cd " + dir_ + " && qemu-img create -q -f " + c.format + backing_args + " " +
                   theirs + " " + size);
  ASSERT_EQ(made.status, 0) << made.out;
  Status st = Create(c, ours, options);
  ASSERT_TRUE(st.ok()) << st.ToString();

  std::vector<uint8_t> a = ReadFileBytes(P(theirs)), b = ReadFileBytes(P(ours));
  ASSERT_EQ(a.size(), b.size()) << c.format << " " << size;
  for (const Mask& m : c.masks)
    for (uint64_t i = m.off; i < m.off + m.len && i < a.size(); ++i) a[i] = b[i] = 0;
  if (a != b) {
    const auto diff = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
    FAIL() << c.format << " " << size << ": first difference at byte " << (diff.first - a.begin());
  }

  json qi = Info(theirs), ki = Info(ours);
  for (const char* key : {"virtual-size", "format", "cluster-size", "backing-filename",
                          "backing-filename-format", "format-specific"})
    EXPECT_EQ(qi.value(key, json()), ki.value(key, json())) << key;
  ShellRun check = Shell("cd " + dir_ + " && qemu-img check " + ours);
  EXPECT_TRUE(check.status == 0 || check.status == 63) << check.out;

  ChainPolicy policy;
  policy.allowed_roots = {dir_};
  auto chain = OpenChain(P(ours), policy);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_EQ(chain->top()->size(), qi["virtual-size"].get<uint64_t>());
  EXPECT_EQ(chain->layers.size(), c.backing ? 2u : 1u);
}

INSTANTIATE_TEST_SUITE_P(
    Drivers, FormatCreate,
    ::testing::Values(Case{"qcow2", "qcow2", 0, false, {}}, Case{"qcow2", "qcow2", 1000, false, {}},
                      Case{"qcow2", "qcow2", 1 << 20, false, {}}, Case{"qcow2", "qcow2", 20ull << 30, false, {}},
                      Case{"qcow2", "qcow2", 100ull << 40, false, {}}, Case{"qcow2", "qcow2", 5ull << 30, true, {}},
                      Case{"raw", "raw", 0, false, {}}, Case{"raw", "raw", 1000, false, {}}, Case{"raw", "raw", 3ull << 20, false, {}}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return info.param.format + "_" + std::to_string(info.param.size) + (info.param.backing ? "_backed" : "");
    });

TEST(FormatCreateLimits, QcowTwoRefusesWhatQemuRefuses) {
  const FormatDriver* qcow2 = FindFormat("qcow2");
  ASSERT_NE(qcow2, nullptr);
  auto file = NewMemBackend("mem.qcow2");
  CreateOptions too_large;
  too_large.size = 3ull << 50;  // an L1 table past 32 MiB
  EXPECT_EQ(qcow2->Create(*file, too_large).code(), Status::Code::kTooLarge);
  CreateOptions no_format;
  no_format.backing_file = "base.qcow2";
  EXPECT_EQ(qcow2->Create(*file, no_format).code(), Status::Code::kInvalidArgument);
  CreateOptions long_name;
  long_name.backing_file = std::string(1024, 'a');
  long_name.backing_format = "raw";
  EXPECT_EQ(qcow2->Create(*file, long_name).code(), Status::Code::kInvalidArgument);
  const FormatDriver* raw = FindFormat("raw");
  CreateOptions backed;
  backed.backing_file = "x";
  backed.backing_format = "raw";
  EXPECT_EQ(raw->Create(*file, backed).code(), Status::Code::kNotSupported);
}

TEST(FormatCreateLimits, DriversWithoutCreateSayNotSupported) {
  for (const FormatDriver* d : AllFormats()) {
    if (d->caps().create) continue;
    auto file = NewMemBackend(std::string("mem.") + d->name());
    EXPECT_EQ(d->Create(*file, CreateOptions{}).code(), Status::Code::kNotSupported) << d->name();
  }
}

}  // namespace
}  // namespace kvmfs
