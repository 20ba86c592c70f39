// Helpers of the qcow2 write tests: a scratch directory, qemu-img at test
// time, writable opens (with an optional fault-injecting wrapper), and an
// in-memory reference disk the image is compared with.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "format/qcow2/options.h"
#include "kvmfs/backend.h"
#include "kvmfs/chain.h"
#include "kvmfs/format.h"
#include "../../test_files.h"

namespace kvmfs::test {

namespace fs = std::filesystem;

// Sanitizer builds run several times slower: they do a part of the rounds.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr int kRoundsDivisor = 3;
#else
inline constexpr int kRoundsDivisor = 1;
#endif

// Runs `cmd` in a shell; returns the exit status (-1 if it did not exit) and
// fills `out` with stdout+stderr.
inline int RunCmd(const std::string& cmd, std::string* out = nullptr) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
  const int rc = ::pclose(p);
  if (out) *out = text;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

inline bool HaveQemuTools() {
  return RunCmd("qemu-img --version") == 0 && RunCmd("qemu-io --version") == 0;
}

inline std::vector<uint8_t> ReadHostFile(const std::string& path) {
  return kvmfs::test::ReadFileBytes(path);
}

inline void WriteHostFile(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// One writable image: the qcow2 active view over its (read-only) backing
// chain. `fault` wraps the image file when set.
struct WritableImage {
  std::shared_ptr<Backend> file;  // what the engine writes (maybe the fault wrapper)
  std::unique_ptr<Image> image;
  Chain backing;  // keeps the backing layers alive
};

class WriteTest : public ::testing::Test {
 public:
  void SetUp() override {
    if (!HaveQemuTools()) GTEST_SKIP() << "qemu-img/qemu-io not installed (qemu-utils)";
    // tmpfs when there is one: the engine fdatasyncs at every ordering
    // point, which a disk makes slow and tmpfs makes free.
    char shm[] = "/dev/shm/kvmfs-qcow2w-XXXXXX";
    char tmp[] = "/tmp/kvmfs-qcow2w-XXXXXX";
    char* tmpl = ::mkdtemp(shm) != nullptr ? shm : tmp;
    if (tmpl == tmp) {
      ASSERT_NE(::mkdtemp(tmp), nullptr);
    }
    dir_ = fs::canonical(tmpl).string();
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  std::string P(const std::string& name) const { return dir_ + "/" + name; }

  // Runs a shell command in the scratch directory; fails the test on error.
  std::string Sh(const std::string& cmd) {
    std::string out;
    const int rc = RunCmd("cd " + dir_ + " && " + cmd, &out);
    EXPECT_EQ(rc, 0) << cmd << "\n" << out;
    return out;
  }
  // `qemu-img check` exit status (0 clean, 2 corrupt, 3 leaks).
  int Check(const std::string& name, std::string* out = nullptr) {
    std::string text;
    const int rc = RunCmd("cd " + dir_ + " && qemu-img check " + name, &text);
    if (out) *out = text;
    return rc;
  }

  Result<WritableImage> OpenWritable(const std::string& name,
                                     std::shared_ptr<FaultInjector> faults = nullptr,
                                     Qcow2Options options = {}) {
    KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> local, OpenLocalFile(P(name), true));
    WritableImage w;
    w.file = std::shared_ptr<Backend>(std::move(local));
    if (faults) w.file = std::shared_ptr<Backend>(NewFaultBackend(w.file, faults));
    OpenContext ctx;
    ctx.name = P(name);
    ctx.writable = true;
    const std::string dir = dir_;
    ctx.open_related = [dir](const std::string& n) -> Result<std::shared_ptr<Backend>> {
      KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> b, OpenLocalFile(dir + "/" + n, true));
      return std::shared_ptr<Backend>(std::move(b));
    };
    KVMFS_ASSIGN_OR_RETURN(w.image, OpenQcow2(w.file, ctx, options));
    const std::string backing = w.image->Info().backing_filename;
    if (!backing.empty()) {
      ChainPolicy policy;
      policy.allowed_roots = {dir_};
      KVMFS_ASSIGN_OR_RETURN(w.backing,
                             OpenChain(P(backing), policy, w.image->Info().backing_format));
      w.image->SetBacking(w.backing.top());
    }
    return w;
  }

  // The guest view of `name` as qemu-img sees it (snapshot: -l name).
  std::vector<uint8_t> QemuRaw(const std::string& name, const std::string& snapshot = "") {
    const std::string opt = snapshot.empty() ? "" : " -l snapshot.name=" + snapshot;
    Sh("qemu-img convert -U -O raw" + opt + " " + name + " qemu.raw");
    auto v = ReadHostFile(P("qemu.raw"));
    fs::remove(P("qemu.raw"));
    return v;
  }

  std::string dir_;
};

inline std::vector<uint8_t> ReadImage(Image& image, uint64_t off, uint64_t len) {
  std::vector<uint8_t> buf(len, 0xee);
  Status st = image.Read(off, buf.data(), buf.size());
  EXPECT_TRUE(st.ok()) << st.ToString();
  return buf;
}

// The first differing byte, or -1.
inline int64_t FirstDiff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  return a.size() == b.size() ? -1 : static_cast<int64_t>(n);
}

}  // namespace kvmfs::test
