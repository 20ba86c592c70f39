// Helpers shared by the libFuzzer targets.
#pragma once

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/format.h"
#include "kvmfs/image.h"

namespace kvmfs::fuzz {

// Silences the log once (a message per input would dominate the run).
inline void Quiet() {
  static const bool once = [] {
    spdlog::set_level(spdlog::level::off);
    return true;
  }();
  (void)once;
}

// With KVMFS_FUZZ_VERBOSE set (running a target on chosen inputs, e.g. to
// see that seeds open), prints why an open failed.
inline void Note(const Status& st) {
  static const bool verbose = std::getenv("KVMFS_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "open: %s\n", st.ok() ? "ok" : st.ToString().c_str());
}

// A property the code under test promises was broken: a finding, as a crash
// is (libFuzzer saves the input).
[[noreturn]] inline void Fail(const std::string& what) {
  std::fprintf(stderr, "==FUZZ PROPERTY== %s\n", what.c_str());
  std::abort();
}

// The big-endian u64 at `p` (8 bytes).
inline uint64_t Word(const uint8_t* p) {
  uint64_t v = 0;
  for (int k = 0; k < 8; ++k) v = v << 8 | p[k];
  return v;
}

// Reads a few ranges of `image` chosen by `data` (and its start, end and
// middle), checking nothing but that reads return: the sanitizers and
// libFuzzer's -timeout/-rss_limit_mb judge.
inline void ReadSome(Image& image, const uint8_t* data, size_t size) {
  const uint64_t vsize = image.size();
  if (vsize == 0) return;
  std::vector<uint8_t> buf(1 << 16);
  auto read = [&](uint64_t off, size_t len) {
    if (off >= vsize) return;
    len = static_cast<size_t>(std::min<uint64_t>({len, vsize - off, buf.size()}));
    (void)image.Read(off, buf.data(), len);
    (void)image.GetBlockStatus(off, vsize - off);
  };
  read(0, buf.size());
  read(vsize / 2, 4096);
  read(vsize - std::min<uint64_t>(vsize, 4096), 4096);
  for (size_t i = 0; i + 8 <= std::min<size_t>(size, 64); i += 8) {
    const uint64_t v = Word(data + i);
    read(v % vsize, 1 + (v >> 40) % buf.size());
  }
}

// Walks the block status of `image` from 0 for at most `steps` runs,
// checking that every run is non-empty and inside the disk.
inline void WalkStatus(Image& image, int steps) {
  const uint64_t vsize = image.size();
  uint64_t off = 0;
  for (int i = 0; i < steps && off < vsize; ++i) {
    Result<BlockStatus> bs = image.GetBlockStatus(off, vsize - off);
    if (!bs.ok()) return;
    if (bs->length == 0 || bs->length > vsize - off)
      Fail("block status at " + std::to_string(off) + " returned length " +
           std::to_string(bs->length));
    off += bs->length;
  }
}

// Related files carried in one input: the main file, then any number of
// "\n@@file NAME\n" sections (NAME up to the line end) holding files the
// main one names (an external data file, VMDK extents). Later sections of
// the same name win.
using Files = std::map<std::string, std::vector<uint8_t>>;
inline constexpr std::string_view kFileSep = "\n@@file ";

inline std::vector<uint8_t> SplitFiles(const uint8_t* data, size_t size, Files* files) {
  std::string_view all(reinterpret_cast<const char*>(data), size);
  size_t at = all.find(kFileSep);
  std::vector<uint8_t> main(data, data + (at == std::string_view::npos ? size : at));
  while (at != std::string_view::npos) {
    const size_t name_start = at + kFileSep.size();
    const size_t nl = all.find('\n', name_start);
    if (nl == std::string_view::npos) break;
    std::string name(all.substr(name_start, nl - name_start));
    const size_t next = all.find(kFileSep, nl + 1);
    const size_t end = next == std::string_view::npos ? size : next;
    (*files)[name] = std::vector<uint8_t>(data + nl + 1, data + end);
    at = next;
  }
  return main;
}

// An open_related over `files` (absolute names refused, as the pool policy
// refuses most), writable or not.
inline std::function<Result<std::shared_ptr<Backend>>(const std::string&)> RelatedFiles(
    std::shared_ptr<Files> files, bool writable) {
  return [files, writable](const std::string& name) -> Result<std::shared_ptr<Backend>> {
    if (!name.empty() && name[0] == '/') return Status::Permission(name + ": outside the pool");
    auto it = files->find(name);
    if (it == files->end()) return Status::NotFound(name + ": no such file");
    return std::shared_ptr<Backend>(NewMemBackend(name, it->second, writable));
  };
}

// The whole content of `b` (for re-opening what a writer left).
inline std::vector<uint8_t> Contents(Backend& b) {
  Result<uint64_t> size = b.Size();
  if (!size.ok()) return {};
  std::vector<uint8_t> out(*size);
  if (!out.empty() && !b.ReadAt(0, out.data(), out.size()).ok()) return {};
  return out;
}

}  // namespace kvmfs::fuzz
