// Micro-benchmark of the decoders for qcow2 compressed clusters, over the
// real clusters of an image made by `qemu-img convert -c`:
//
//   codec_bench IMAGE.qcow2 [MAX_CLUSTERS] [ROUNDS]
//
// Loads the compressed clusters (descriptor bytes as the L2 entries give
// them, trailing sector garbage included) into memory, then times each
// decoder over all of them and prints MiB/s of decompressed output per CPU
// second (median of ROUNDS). Every decoder's output is checked against zlib's / zstd's.
//
// The last line, `limit: {json}`, is the two-core decode limit of the image
// for a sequential reader (bench/run.py's decode-limit rows): the virtual
// size over half the CPU time kvmfs's decoder needs for all its compressed
// clusters, as if two cores did nothing else and every other cluster cost
// nothing. Pass a MAX_CLUSTERS of at least the image's compressed clusters.
// Standalone on purpose (it parses only the L1/L2 tables): it measures the
// decoders, not the driver.
#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_d_stableOutBuffer
#include <zstd.h>

#include <algorithm>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#ifdef KVMFS_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif
#ifdef KVMFS_BENCH_HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif

#include "kvmfs/codec.h"

namespace {

uint64_t BE64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | p[i];
  return v;
}
uint32_t BE32(const uint8_t* p) { return uint32_t(p[0]) << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "codec_bench: %s\n", why.c_str());
  std::exit(1);
}

void PreadAll(int fd, uint64_t off, void* buf, size_t n) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    ssize_t r = pread(fd, p, n, static_cast<off_t>(off));
    if (r <= 0) Die("short read at " + std::to_string(off));
    p += r;
    off += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
}

struct Image {
  uint32_t cluster_bits = 0;
  uint64_t virtual_size = 0;
  bool zstd = false;
  bool all = true;  // every compressed cluster loaded (none left out by MAX_CLUSTERS)
  std::vector<std::vector<uint8_t>> clusters;  // compressed bytes, as read by the driver
};

Image Load(const char* path, size_t max_clusters) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) Die(std::string("cannot open ") + path);
  uint8_t h[112] = {};
  PreadAll(fd, 0, h, 104);
  if (BE32(h) != 0x514649fb) Die("not a qcow2 image");
  Image img;
  img.cluster_bits = BE32(h + 20);
  img.virtual_size = BE64(h + 24);
  if (img.cluster_bits < 9 || img.cluster_bits > 21) Die("bad cluster_bits");
  const uint32_t l1_size = BE32(h + 36);
  const uint64_t l1_off = BE64(h + 40);
  if (BE32(h + 4) >= 3 && BE32(h + 100) > 104) {
    PreadAll(fd, 104, h + 104, 1);
    img.zstd = h[104] == 1;
  }
  if (BE64(h + 72) & (1u << 4)) Die("extended L2 not supported here");
  const uint64_t cs = 1ull << img.cluster_bits;
  const uint32_t csize_shift = 62 - (img.cluster_bits - 8);
  const uint64_t csize_mask = (1ull << (img.cluster_bits - 8)) - 1;
  const uint64_t offset_mask = (1ull << csize_shift) - 1;
  std::vector<uint8_t> l1(uint64_t{l1_size} * 8), l2(cs);
  PreadAll(fd, l1_off, l1.data(), l1.size());
  for (uint32_t i = 0; i < l1_size && img.clusters.size() < max_clusters; ++i) {
    const uint64_t l2_off = BE64(&l1[i * 8]) & 0x00fffffffffffe00ull;
    if (l2_off == 0) continue;
    PreadAll(fd, l2_off, l2.data(), l2.size());
    for (uint64_t j = 0; j < cs / 8 && img.clusters.size() < max_clusters; ++j) {
      const uint64_t e = BE64(&l2[j * 8]);
      if (!(e & (1ull << 62))) continue;
      if (img.clusters.size() + 1 == max_clusters) img.all = false;  // maybe more follow
      const uint64_t coff = e & offset_mask;
      const uint64_t sectors = ((e >> csize_shift) & csize_mask) + 1;
      std::vector<uint8_t> in(sectors * 512 - (coff & 511));
      PreadAll(fd, coff, in.data(), in.size());
      img.clusters.push_back(std::move(in));
    }
  }
  close(fd);
  if (img.clusters.empty()) Die("no compressed clusters");
  return img;
}

double ThreadSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

using Decoder = std::function<bool(const std::vector<uint8_t>& in, uint8_t* out, size_t n)>;

bool Zlib(const std::vector<uint8_t>& in, uint8_t* out, size_t n) {
  static z_stream z{};
  static bool ready = false;
  if (!ready) {
    inflateInit2(&z, -12);
    ready = true;
  } else {
    inflateReset(&z);
  }
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = out;
  z.avail_out = static_cast<uInt>(n);
  int r = inflate(&z, Z_FINISH);
  return (r == Z_STREAM_END || r == Z_BUF_ERROR) && z.avail_out == 0;
}

#ifdef KVMFS_HAVE_LIBDEFLATE
bool Libdeflate(const std::vector<uint8_t>& in, uint8_t* out, size_t n) {
  static libdeflate_decompressor* d = libdeflate_alloc_decompressor();
  size_t in_used = 0, out_used = 0;
  return libdeflate_deflate_decompress_ex(d, in.data(), in.size(), out, n, &in_used, &out_used) ==
             LIBDEFLATE_SUCCESS &&
         out_used == n;
}
#endif

#ifdef KVMFS_BENCH_HAVE_ISAL
bool Isal(const std::vector<uint8_t>& in, uint8_t* out, size_t n) {
  static inflate_state s;
  isal_inflate_init(&s);
  s.crc_flag = IGZIP_DEFLATE;
  s.next_in = const_cast<uint8_t*>(in.data());
  s.avail_in = static_cast<uint32_t>(in.size());
  s.next_out = out;
  s.avail_out = static_cast<uint32_t>(n);
  int r = isal_inflate_stateless(&s);
  return r == ISAL_DECOMP_OK && s.avail_out == 0;
}
#endif

bool ZstdStream(const std::vector<uint8_t>& in, uint8_t* out, size_t n, bool stable) {
  static ZSTD_DCtx* d[2] = {ZSTD_createDCtx(), ZSTD_createDCtx()};
  ZSTD_DCtx* c = d[stable];
  ZSTD_DCtx_reset(c, ZSTD_reset_session_only);
  if (stable) ZSTD_DCtx_setParameter(c, ZSTD_d_stableOutBuffer, 1);
  ZSTD_outBuffer o{out, n, 0};
  ZSTD_inBuffer i{in.data(), in.size(), 0};
  while (o.pos < o.size) {
    size_t before = i.pos + o.pos;
    size_t r = ZSTD_decompressStream(c, &o, &i);
    if (ZSTD_isError(r) || i.pos + o.pos == before) return false;
  }
  return true;
}

bool Kvmfs(kvmfs::CompressionType t, const std::vector<uint8_t>& in, uint8_t* out, size_t n) {
  return kvmfs::Decompress(t, in.data(), in.size(), out, n).ok();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) Die("usage: codec_bench IMAGE.qcow2 [MAX_CLUSTERS] [ROUNDS]");
  const size_t max_clusters = argc > 2 ? std::strtoull(argv[2], nullptr, 0) : 4096;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 5;
  Image img = Load(argv[1], max_clusters);
  const size_t cs = size_t{1} << img.cluster_bits;
  std::vector<std::pair<std::string, Decoder>> decoders;
  if (img.zstd) {
    decoders.emplace_back("zstd-stream", [](auto& in, auto* o, size_t n) {
      return ZstdStream(in, o, n, false);
    });
    decoders.emplace_back("zstd-stable-out", [](auto& in, auto* o, size_t n) {
      return ZstdStream(in, o, n, true);
    });
    decoders.emplace_back("kvmfs", [](auto& in, auto* o, size_t n) {
      return Kvmfs(kvmfs::CompressionType::kZstd, in, o, n);
    });
  } else {
    decoders.emplace_back("zlib", Zlib);
#ifdef KVMFS_HAVE_LIBDEFLATE
    decoders.emplace_back("libdeflate", Libdeflate);
#endif
#ifdef KVMFS_BENCH_HAVE_ISAL
    decoders.emplace_back("isa-l", Isal);
#endif
    decoders.emplace_back("kvmfs", [](auto& in, auto* o, size_t n) {
      return Kvmfs(kvmfs::CompressionType::kDeflate, in, o, n);
    });
  }
  // Reference output: the first decoder (zlib / zstd, as QEMU).
  std::vector<std::vector<uint8_t>> want(img.clusters.size(), std::vector<uint8_t>(cs));
  for (size_t i = 0; i < img.clusters.size(); ++i)
    if (!decoders[0].second(img.clusters[i], want[i].data(), cs)) Die("reference decode failed");
  std::vector<uint8_t> out(cs);
  std::printf("%s: %zu clusters of %zu KiB (%s)\n", argv[1], img.clusters.size(), cs >> 10,
              img.zstd ? "zstd" : "zlib");
  for (auto& [name, dec] : decoders)
    for (size_t i = 0; i < img.clusters.size(); ++i)
      if (!dec(img.clusters[i], out.data(), cs) || out != want[i])
        Die(name + ": wrong output for cluster " + std::to_string(i));
  // Rounds interleave the decoders so that load from other processes hits
  // them alike; time is this thread's CPU time, not wall time.
  std::vector<std::vector<double>> mibs(decoders.size());
  for (int r = 0; r < rounds; ++r) {
    for (size_t d = 0; d < decoders.size(); ++d) {
      const double t0 = ThreadSeconds();
      for (auto& c : img.clusters) decoders[d].second(c, out.data(), cs);
      const double dt = ThreadSeconds() - t0;
      mibs[d].push_back(double(img.clusters.size() * cs) / (1 << 20) / dt);
    }
  }
  for (size_t d = 0; d < decoders.size(); ++d) {
    auto& m = mibs[d];
    std::sort(m.begin(), m.end());
    std::printf("  %-16s %8.0f MiB/s  (min %.0f, max %.0f)\n", decoders[d].first.c_str(),
                m[m.size() / 2], m.front(), m.back());
  }
  // kvmfs's decoder is the last one.
  const double one_core = mibs.back()[mibs.back().size() / 2];
  const double plain_mib = double(img.clusters.size() * cs) / (1 << 20);
  const double cpu_s = plain_mib / one_core;
  const double limit = double(img.virtual_size) / (1 << 20) / (cpu_s / 2);
  std::printf(
      "limit: {\"codec\": \"%s\", \"compressed_clusters\": %zu, \"virtual_clusters\": %llu, "
      "\"all_loaded\": %s, \"decode_MiB_s_1core\": %.1f, \"decode_cpu_s\": %.4f, "
      "\"limit_2core_MiB_s\": %.1f}\n",
      img.zstd ? "zstd" : "zlib", img.clusters.size(),
      static_cast<unsigned long long>((img.virtual_size + cs - 1) / cs), img.all ? "true" : "false",
      one_core, cpu_s, limit);
  return 0;
}
