// The base of the format drivers' QEMU-oracle tests: a scratch directory
// that goes with the test, and qemu-img / qemu-io run in it at test time.
// qcow/qemu_oracle.h (qcow, vdi, create) and vpc/qemu_util.h (vpc, vhdx)
// build their comparisons on it, and the vmdk tests use it directly.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "../test_files.h"

namespace kvmfs::test {

// Runs a shell command; its stdout and stderr, or nullopt (and a test
// failure when `expect_ok`) when it fails.
inline std::optional<std::string> Shell(const std::string& cmd, bool expect_ok = true) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return std::nullopt;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = ::pclose(p);
  if (!WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
    if (expect_ok) ADD_FAILURE() << "command failed: " << cmd << "\n" << out;
    return std::nullopt;
  }
  return out;
}

inline bool HaveQemu() {
  return std::system("qemu-img --version >/dev/null 2>&1") == 0 &&
         std::system("qemu-io --version >/dev/null 2>&1") == 0;
}

inline void WriteFileBytes(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// A scratch directory (/tmp/kvmfs-fmt-*) with the qemu tools; skipped,
// saying why, where qemu-utils is missing.
class QemuScratchTest : public ::testing::Test {
 public:
  void SetUp() override {
    if (!HaveQemu()) GTEST_SKIP() << "qemu-img/qemu-io not installed (Debian package qemu-utils)";
    char tmpl[] = "/tmp/kvmfs-fmt-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = std::filesystem::canonical(tmpl).string();
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::string P(const std::string& name) const { return dir_ + "/" + name; }
  void Sh(const std::string& cmd) { ASSERT_TRUE(Shell("cd " + dir_ + " && " + cmd)); }
  std::optional<std::string> ShOut(const std::string& cmd, bool expect_ok = true) {
    return Shell("cd " + dir_ + " && " + cmd, expect_ok);
  }
  std::string Out(const std::string& cmd) {
    auto out = ShOut(cmd);
    EXPECT_TRUE(out);
    return out.value_or("");
  }
  // qemu-io -f fmt -c CMD... image
  void Io(const std::string& image, const std::vector<std::string>& cmds, const std::string& fmt) {
    std::string cmd = "qemu-io -f " + fmt;
    for (const auto& c : cmds) cmd += " -c '" + c + "'";
    Sh(cmd + " " + image + " >/dev/null");
  }

  std::string dir_;
};

}  // namespace kvmfs::test
