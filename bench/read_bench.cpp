// Micro-benchmark of the read path without FUSE: THREADS threads each read
// MIB sequential 1 MiB requests of IMAGE (each from its own region) through
// the chain opener, and the total MiB/s (wall time) is printed.
//
//   read_bench IMAGE MIB THREADS
//
// For A/B runs of two builds, alternate their binaries several times and
// compare medians: one run is seconds long and host load moves it a lot.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>
#include <vector>

#include "kvmfs/chain.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: read_bench IMAGE MIB THREADS\n");
    return 2;
  }
  kvmfs::ChainPolicy policy;
  policy.allowed_roots = {std::filesystem::path(argv[1]).parent_path().string()};
  auto chain = kvmfs::OpenChain(argv[1], policy);
  if (!chain.ok()) {
    std::fprintf(stderr, "read_bench: %s\n", chain.status().ToString().c_str());
    return 1;
  }
  kvmfs::Image& image = *chain->top();
  const uint64_t mib = std::strtoull(argv[2], nullptr, 0);
  const int threads = std::atoi(argv[3]);
  const uint64_t size_mib = image.size() >> 20;
  if (size_mib == 0 || mib == 0 || threads <= 0) return 2;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  std::atomic<bool> failed{false};
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      std::vector<uint8_t> buf(1 << 20);
      for (uint64_t i = 0; i < mib; ++i) {
        const uint64_t off = ((t * mib + i) % size_mib) << 20;
        if (!image.Read(off, buf.data(), buf.size()).ok()) failed = true;
      }
    });
  for (auto& w : workers) w.join();
  const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
  if (failed) {
    std::fprintf(stderr, "read_bench: a read failed\n");
    return 1;
  }
  std::printf("%.0f MiB/s\n", double(mib * threads) / dt.count());
  return 0;
}
