// Helpers shared by the libFuzzer targets.
#pragma once

#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
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
    uint64_t v = 0;
    for (int k = 0; k < 8; ++k) v = v << 8 | data[i + k];
    read(v % vsize, 1 + (v >> 40) % buf.size());
  }
}

}  // namespace kvmfs::fuzz
