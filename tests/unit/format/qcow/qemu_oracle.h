// Test helpers shared by the qcow and vdi driver tests (on
// qemu_scratch.h): comparisons of an Image with what
// `qemu-img convert` and `qemu-img map` say about the same file.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "kvmfs/chain.h"
#include "kvmfs/image.h"
#include "../qemu_scratch.h"

namespace kvmfs::test {

// The scratch directory with the comparisons of the qcow and vdi tests.
class QemuOracleTest : public QemuScratchTest {
 public:
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
    WriteFileBytes(P(name), data);
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
    const std::vector<uint8_t> data = ReadFileBytes(P(raw));
    ASSERT_EQ(data.size() % 512, 0u);
    Sh("qemu-img create -q -f qcow " + name + " " + std::to_string(data.size()));
    std::string cmd = "qemu-io -f qcow";
    const uint64_t cs = 4096;
    for (uint64_t off = 0, i = 0; off < data.size(); off += cs, ++i) {
      const uint64_t n = std::min<uint64_t>(cs, data.size() - off);
      if (std::all_of(data.begin() + off, data.begin() + off + n, [](uint8_t b) { return b == 0; }))
        continue;
      const std::string chunk = "chunk." + std::to_string(i);
      WriteFileBytes(P(chunk), std::vector<uint8_t>(data.begin() + off, data.begin() + off + n));
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
    auto expected = ReadFileBytes(P("expected.raw"));
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

};

}  // namespace kvmfs::test
