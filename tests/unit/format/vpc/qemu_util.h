// Test helpers shared by the vpc and vhdx unit tests (on qemu_scratch.h):
// byte and info comparisons with QEMU.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/chain.h"
#include "kvmfs/format.h"
#include "../qemu_scratch.h"

namespace kvmfs::test {

// The scratch directory with the comparisons of the vpc and vhdx tests.
class QemuDirTest : public QemuScratchTest {
 public:
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
    auto expected = ReadFileBytes(P("expected.raw"));
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

};

}  // namespace kvmfs::test
