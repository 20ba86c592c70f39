// Test helpers shared by the qcow and vdi driver tests: a scratch directory,
// qemu-img / qemu-io at test time, and comparisons of an Image with what
// `qemu-img convert` and `qemu-img map` say about the same file.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "kvmfs/chain.h"
#include "kvmfs/image.h"
#include "../../test_files.h"

namespace kvmfs::test {

// Runs a shell command; returns its output, or nullopt (and a test failure)
// when it fails.
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

inline std::vector<uint8_t> ReadWholeFile(const std::string& path) {
  return kvmfs::test::ReadFileBytes(path);
}

inline void WriteWholeFile(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// A fixture with a scratch directory and the qemu tools.
class QemuOracleTest : public ::testing::Test {
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
  std::string Out(const std::string& cmd) {
    auto out = Shell("cd " + dir_ + " && " + cmd);
    EXPECT_TRUE(out);
    return out.value_or("");
  }
  void Io(const std::string& image, const std::vector<std::string>& cmds, const std::string& fmt) {
    std::string cmd = "qemu-io -f " + fmt;
    for (const auto& c : cmds) cmd += " -c '" + c + "'";
    Sh(cmd + " " + image + " >/dev/null");
  }

  // A raw file of `size` bytes with zero, text, random and unwritten
  // (host hole) regions, none of them aligned to anything.
  void MakeMixedRaw(const std::string& name, uint64_t size, uint32_t seed) {
    std::vector<uint8_t> data(size, 0);
    std::mt19937 rng(seed);
    const std::string text = "kvmfs qcow/vdi test text, line after line. ";
    for (uint64_t off = 0; off < size;) {
      const uint64_t n = std::min<uint64_t>(size - off, 3000 + rng() % 300000);
      switch (rng() % 4) {
        case 0: break;  // zeros (written)
        case 1:
          for (uint64_t i = 0; i < n; ++i) data[off + i] = text[(off + i) % text.size()];
          break;
        case 2:
          for (uint64_t i = 0; i < n; ++i) data[off + i] = uint8_t(rng());
          break;
        case 3: break;  // a hole below
      }
      off += n;
    }
    WriteWholeFile(P(name), data);
    // Punch a few holes (unallocated in the host file: qemu-img convert
    // leaves them unallocated in the image).
    for (uint64_t off = size / 7; off + 200000 < size; off += size / 3) {
      Sh("fallocate -p -o " + std::to_string(off & ~uint64_t{4095}) + " -l 131072 " + name);
    }
  }

  // A qcow image of the raw file `raw` (size a multiple of 512) whose
  // clusters are written compressed, one qemu-io `write -c` per cluster
  // (qemu-img convert -c -O qcow fails in QEMU 7.2); all-zero clusters stay
  // unallocated, clusters that do not compress are stored normally by QEMU.
  void MakeCompressedQcow(const std::string& raw, const std::string& name) {
    const std::vector<uint8_t> data = ReadWholeFile(P(raw));
    ASSERT_EQ(data.size() % 512, 0u);
    Sh("qemu-img create -q -f qcow " + name + " " + std::to_string(data.size()));
    std::string cmd = "qemu-io -f qcow";
    const uint64_t cs = 4096;
    for (uint64_t off = 0, i = 0; off < data.size(); off += cs, ++i) {
      const uint64_t n = std::min<uint64_t>(cs, data.size() - off);
      if (std::all_of(data.begin() + off, data.begin() + off + n, [](uint8_t b) { return b == 0; }))
        continue;
      const std::string chunk = "chunk." + std::to_string(i);
      WriteWholeFile(P(chunk), std::vector<uint8_t>(data.begin() + off, data.begin() + off + n));
      cmd += " -c 'write -q -c -s " + chunk + " " + std::to_string(off) + " " + std::to_string(n) + "'";
    }
    Sh(cmd + " " + name + " && rm -f chunk.*");
  }

  Chain Open(const std::string& name, bool writable = false) {
    ChainPolicy policy;
    policy.allowed_roots = {dir_};
    policy.writable_top = writable;
    auto chain = OpenChain(P(name), policy);
    EXPECT_TRUE(chain.ok()) << chain.status().ToString();
    return chain.ok() ? std::move(chain).value() : Chain{};
  }

  // Every byte of `image` against `qemu-img convert -O raw` of `name`, as a
  // whole and in odd pieces across cluster and block boundaries.
  void ExpectSameBytes(Image& image, const std::string& name) {
    Sh("qemu-img convert -U -O raw " + name + " expected.raw");
    auto expected = ReadWholeFile(P("expected.raw"));
    ASSERT_EQ(image.size(), expected.size()) << name;
    std::vector<uint8_t> got(expected.size(), 0xee);
    Status st = image.Read(0, got.data(), got.size());
    ASSERT_TRUE(st.ok()) << st.ToString();
    if (got != expected) {
      const auto diff = std::mismatch(got.begin(), got.end(), expected.begin(), expected.end());
      FAIL() << name << " differs at byte " << (diff.first - got.begin());
    }
    std::vector<uint8_t> piece;
    for (uint64_t off = 0; off < expected.size(); off += 497 * 131) {
      size_t n = std::min<uint64_t>(497 * 3, expected.size() - off);
      piece.assign(n, 0xee);
      ASSERT_TRUE(image.Read(off, piece.data(), n).ok());
      ASSERT_TRUE(std::equal(piece.begin(), piece.end(), expected.begin() + off)) << name << " " << off;
    }
    // And planned (splice) reads.
    ReadPlan plan;
    const uint64_t plan_off = expected.size() / 3, plan_len = std::min<uint64_t>(expected.size() / 2, 5u << 20);
    ASSERT_TRUE(image.PlanRead(plan_off, plan_len, plan).ok());
    ASSERT_EQ(plan.size(), plan_len);
    uint64_t at = plan_off;
    for (const ReadPlan::Piece& p : plan.pieces()) {
      std::vector<uint8_t> bytes(p.length);
      if (p.fd >= 0) {
        ASSERT_EQ(::pread(p.fd, bytes.data(), p.length, p.fd_offset), ssize_t(p.length));
      } else {
        std::memcpy(bytes.data(), p.mem, p.length);
      }
      ASSERT_TRUE(std::equal(bytes.begin(), bytes.end(), expected.begin() + at)) << name << " plan " << at;
      at += p.length;
    }
  }

  // The allocation map against `qemu-img map --output=json`: data where
  // QEMU says data, and no data elsewhere.
  void ExpectSameMap(Image& top, const std::string& name) {
    nlohmann::json map = nlohmann::json::parse(Out("qemu-img map -U --output=json " + name));
    for (const nlohmann::json& e : map) {
      uint64_t off = e["start"].get<uint64_t>();
      const uint64_t end = off + e["length"].get<uint64_t>();
      const bool data = e["data"].get<bool>();
      while (off < end) {
        auto bs = ChainBlockStatus(top, off, end - off);
        ASSERT_TRUE(bs.ok()) << bs.status().ToString();
        ASSERT_GT(bs->length, 0u);
        ASSERT_EQ(bs->kind == Allocation::kData, data) << name << " at " << off << ": " << e.dump();
        off += bs->length;
      }
    }
  }

  void ExpectSame(const std::string& name) {
    Chain chain = Open(name);
    ASSERT_FALSE(chain.layers.empty());
    ExpectSameBytes(*chain.top(), name);
    ExpectSameMap(*chain.top(), name);
  }

  std::string dir_;
};

}  // namespace kvmfs::test
