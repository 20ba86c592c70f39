// Test helpers for FormatDriver::Create (the qcow, vdi, vmdk, vpc and vhdx
// driver tests): an image made by kvmfs beside the one `qemu-img create`
// makes with the same size, compared byte for byte outside the fields that
// QEMU fills with random numbers or the time; then opened, written, read back
// and judged by qemu-img info, check and compare.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/format.h"
#include "qcow/qemu_oracle.h"

namespace kvmfs::test {

// A byte range of a file: [offset, offset + length).
struct ByteRange {
  uint64_t offset;
  uint64_t length;
};

class CreateOracleTest : public QemuOracleTest {
 public:
  // Makes `name` (a new file in the scratch directory) with driver `format`'s
  // Create(); returns its status.
  Status KvmfsCreate(const std::string& format, const std::string& name, const CreateOptions& options) {
    const FormatDriver* driver = FindFormat(format);
    if (driver == nullptr) return Status::NotFound(format);
    { std::ofstream touch(P(name), std::ios::binary | std::ios::trunc); }
    auto file = OpenLocalFile(P(name), true);
    if (!file.ok()) return file.status();
    KVMFS_RETURN_IF_ERROR(driver->Create(**file, options));
    return (*file)->Flush();
  }
  Status KvmfsCreate(const std::string& format, const std::string& name, uint64_t size) {
    CreateOptions options;
    options.size = size;
    return KvmfsCreate(format, name, options);
  }
  // Create() of a `format` image (file extension `ext`) over a backing file
  // refuses with kNotSupported, as QEMU has no backing files for it.
  void ExpectNoBackingFiles(const std::string& format, const std::string& ext) {
    CreateOptions backing;
    backing.size = 1 << 20;
    backing.backing_file = "base." + ext;
    backing.backing_format = format;
    EXPECT_EQ(KvmfsCreate(format, "o." + ext, backing).code(), Status::Code::kNotSupported) << format;
  }

  // `ours` and `theirs` (both in the scratch directory) have the same length
  // and the same bytes outside `skip`.
  void ExpectSameFile(const std::string& ours, const std::string& theirs,
                      const std::vector<ByteRange>& skip = {}) {
    std::vector<uint8_t> a = ReadFileBytes(P(ours));
    std::vector<uint8_t> b = ReadFileBytes(P(theirs));
    ASSERT_EQ(a.size(), b.size()) << ours << " vs " << theirs;
    for (const ByteRange& r : skip) {
      if (r.offset >= a.size()) continue;
      const uint64_t n = std::min<uint64_t>(r.length, a.size() - r.offset);
      std::fill_n(a.begin() + r.offset, n, 0);
      std::fill_n(b.begin() + r.offset, n, 0);
    }
    if (a == b) return;
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] != b[i]) {
        ADD_FAILURE() << ours << " and " << theirs << " differ first at byte " << i << " (0x"
                      << std::hex << i << std::dec << "): " << int(a[i]) << " vs " << int(b[i]);
        return;
      }
    }
  }

  // qemu-img info of `name` says `format` and `size`.
  void ExpectInfo(const std::string& name, const std::string& format, uint64_t size) {
    auto info = nlohmann::json::parse(Out("qemu-img info --output=json -f " + format + " " + name));
    EXPECT_EQ(info["format"].get<std::string>(), format) << name;
    EXPECT_EQ(info["virtual-size"].get<uint64_t>(), size) << name;
  }

  // qemu-img check of `name` is clean (formats without checks: QEMU's exit 63).
  void ExpectCheckClean(const std::string& name, const std::string& format, bool has_check = true) {
    const int rc = std::system(("cd " + dir_ + " && qemu-img check -q -f " + format + " " + name +
                                " >/dev/null 2>&1").c_str());
    ASSERT_TRUE(WIFEXITED(rc));
    EXPECT_EQ(WEXITSTATUS(rc), has_check ? 0 : 63) << "qemu-img check " << name;
  }

  // Opens `name` for writing, writes a few patterns across block boundaries
  // (and the last bytes), reads them back, reopens it and reads again, and
  // has qemu-img compare it with the model: `before` (what it reads before
  // the writes; empty: zeros) with the writes.
  void WriteReadCompare(const std::string& name, const std::string& format, uint64_t size,
                        uint64_t block, std::vector<uint8_t> before = {}) {
    std::vector<uint8_t> model = before.empty() ? std::vector<uint8_t>(size, 0) : std::move(before);
    ASSERT_EQ(model.size(), size);
    {
      Chain chain = Open(name, true);
      ASSERT_FALSE(chain.layers.empty());
      Image& img = *chain.top();
      ASSERT_EQ(img.size(), size);
      ASSERT_TRUE(img.BeginWrites().ok());
      std::vector<std::pair<uint64_t, uint64_t>> writes = {{0, 4096}, {block - 1000, 3000}};
      if (size > 3 * block) writes.push_back({3 * block - 512, block + 1024});
      writes.push_back({size - std::min<uint64_t>(size, 1536), std::min<uint64_t>(size, 1536)});
      uint8_t seed = 1;
      for (auto [off, len] : writes) {
        if (off + len > size) continue;
        std::vector<uint8_t> data(len);
        for (size_t i = 0; i < len; ++i) data[i] = uint8_t(seed * 31 + i * 7 + (i >> 9));
        Status st = img.Write(off, data.data(), len);
        ASSERT_TRUE(st.ok()) << st.ToString();
        std::copy(data.begin(), data.end(), model.begin() + off);
        ++seed;
      }
      std::vector<uint8_t> got(size);
      ASSERT_TRUE(img.Read(0, got.data(), size).ok());
      EXPECT_TRUE(got == model) << name << ": read back before reopening";
      ASSERT_TRUE(img.Flush().ok());
    }
    Chain again = Open(name);
    ASSERT_FALSE(again.layers.empty());
    std::vector<uint8_t> got(size);
    ASSERT_TRUE(again.top()->Read(0, got.data(), size).ok());
    EXPECT_TRUE(got == model) << name << ": read back after reopening";
    WriteFileBytes(P("model.raw"), model);
    Sh("qemu-img compare -q -f " + format + " -F raw " + name + " model.raw");
  }
};

}  // namespace kvmfs::test
