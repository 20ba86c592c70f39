// Test helpers shared by the vpc and vhdx unit tests: a scratch directory,
// qemu-img/qemu-io at test time, and byte/info comparisons with QEMU.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/chain.h"
#include "kvmfs/format.h"
#include "../../test_files.h"

namespace kvmfs::test {

// Runs a shell command; stdout+stderr, or nullopt (and a failure) when it fails.
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

inline std::vector<uint8_t> ReadFile(const std::string& path) {
  return kvmfs::test::ReadFileBytes(path);
}

inline void WriteFile(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// A scratch directory with qemu at hand.
class QemuDirTest : public ::testing::Test {
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
  void Io(const std::string& image, const std::vector<std::string>& cmds, const std::string& fmt) {
    std::string cmd = "qemu-io -f " + fmt;
    for (const auto& c : cmds) cmd += " -c '" + c + "'";
    Sh(cmd + " " + image + " >/dev/null");
  }

  Result<Chain> TryOpen(const std::string& name, bool writable = false,
                        const std::string& format = "") {
    ChainPolicy policy;
    policy.allowed_roots = {dir_};
    policy.writable_top = writable;
    return OpenChain(P(name), policy, format);
  }
  Chain Open(const std::string& name, bool writable = false, const std::string& format = "") {
    auto chain = TryOpen(name, writable, format);
    EXPECT_TRUE(chain.ok()) << chain.status().ToString();
    return chain.ok() ? std::move(chain).value() : Chain{};
  }

  // Every byte of `image` against `qemu-img convert -f fmt -O raw`, whole
  // and in odd pieces that cross block boundaries.
  void ExpectSameBytes(Image& image, const std::string& name, const std::string& fmt) {
    Sh("qemu-img convert -f " + fmt + " -O raw " + name + " expected.raw");
    auto expected = ReadFile(P("expected.raw"));
    ASSERT_EQ(image.size(), expected.size()) << name;
    std::vector<uint8_t> got(expected.size(), 0xee);
    Status st = image.Read(0, got.data(), got.size());
    ASSERT_TRUE(st.ok()) << st.ToString();
    if (got != expected) {
      const auto diff = std::mismatch(got.begin(), got.end(), expected.begin());
      FAIL() << name << " differs at byte " << (diff.first - got.begin());
    }
    std::vector<uint8_t> piece;
    const uint64_t step = expected.size() / 37 + 4093;
    for (uint64_t off = 0; off < expected.size(); off += step) {
      size_t n = std::min<uint64_t>(4096 * 3 + 17, expected.size() - off);
      piece.assign(n, 0xee);
      ASSERT_TRUE(image.Read(off, piece.data(), n).ok());
      ASSERT_TRUE(std::equal(piece.begin(), piece.end(), expected.begin() + off)) << off;
    }
    // And through a read plan (file pieces for read-only files).
    ReadPlan plan;
    ASSERT_TRUE(image.PlanRead(0, expected.size(), plan).ok());
    ASSERT_EQ(plan.size(), expected.size());
    uint64_t pos = 0;
    for (const ReadPlan::Piece& p : plan.pieces()) {
      std::vector<uint8_t> bytes(p.length);
      if (p.fd >= 0) {
        ASSERT_EQ(::pread(p.fd, bytes.data(), p.length, static_cast<off_t>(p.fd_offset)),
                  static_cast<ssize_t>(p.length));
      } else {
        std::memcpy(bytes.data(), p.mem, p.length);
      }
      ASSERT_TRUE(std::equal(bytes.begin(), bytes.end(), expected.begin() + pos)) << "plan " << pos;
      pos += p.length;
    }
  }

  nlohmann::json QemuInfo(const std::string& name, const std::string& fmt) {
    auto out = ShOut("qemu-img info -U --output=json -f " + fmt + " " + name);
    return out ? nlohmann::json::parse(*out) : nlohmann::json();
  }

  std::string dir_;
};

}  // namespace kvmfs::test
