// Decompression as QEMU's qcow2-threads.c: exactly one output buffer, extra
// input ignored, short or overlong streams refused.
#include "kvmfs/codec.h"

#include <gtest/gtest.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>
#include <vector>

namespace kvmfs {
namespace {

std::vector<uint8_t> Pattern(size_t n, uint32_t seed = 1) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  // Compressible but not trivial: runs of random bytes.
  for (size_t i = 0; i < n; ++i) v[i] = (i % 64 < 16) ? uint8_t(rng()) : uint8_t(i / 64);
  return v;
}

// Raw deflate with a 4 KiB window, as QEMU writes it.
std::vector<uint8_t> RawDeflate(const std::vector<uint8_t>& in, int flush = Z_FINISH) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY), Z_OK);
  std::vector<uint8_t> out(deflateBound(&z, in.size()) + 64);
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = in.size();
  z.next_out = out.data();
  z.avail_out = out.size();
  int ret = deflate(&z, flush);
  EXPECT_TRUE(ret == Z_STREAM_END || ret == Z_OK);
  out.resize(out.size() - z.avail_out);
  deflateEnd(&z);
  return out;
}

std::vector<uint8_t> Zstd(const std::vector<uint8_t>& in) {
  std::vector<uint8_t> out(ZSTD_compressBound(in.size()));
  size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 3);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

TEST(CodecDeflate, RoundTripsOneCluster) {
  auto plain = Pattern(65536);
  auto packed = RawDeflate(plain);
  std::vector<uint8_t> out(plain.size());
  ASSERT_TRUE(
      Decompress(CompressionType::kDeflate, packed.data(), packed.size(), out.data(), out.size())
          .ok());
  EXPECT_EQ(out, plain);
}

TEST(CodecDeflate, TrailingInputIsIgnored) {
  auto plain = Pattern(4096, 7);
  auto packed = RawDeflate(plain);
  packed.resize(packed.size() + 511, 0xa5);  // the rest of the last sector
  std::vector<uint8_t> out(plain.size());
  ASSERT_TRUE(
      Decompress(CompressionType::kDeflate, packed.data(), packed.size(), out.data(), out.size())
          .ok());
  EXPECT_EQ(out, plain);
}

TEST(CodecDeflate, TruncatedStreamIsCorruption) {
  auto plain = Pattern(65536, 3);
  auto packed = RawDeflate(plain);
  packed.resize(packed.size() / 2);
  std::vector<uint8_t> out(plain.size());
  Status st =
      Decompress(CompressionType::kDeflate, packed.data(), packed.size(), out.data(), out.size());
  EXPECT_EQ(st.code(), Status::Code::kCorruption) << st.ToString();
}

TEST(CodecDeflate, StreamShorterThanOutputIsCorruption) {
  auto plain = Pattern(1000);
  auto packed = RawDeflate(plain);
  std::vector<uint8_t> out(4096);
  Status st =
      Decompress(CompressionType::kDeflate, packed.data(), packed.size(), out.data(), out.size());
  EXPECT_EQ(st.code(), Status::Code::kCorruption);
}

TEST(CodecDeflate, LongerStreamFillsExactlyTheOutput) {
  // QEMU accepts Z_BUF_ERROR with a full output: a bomb is capped at one cluster.
  auto plain = std::vector<uint8_t>(1 << 20, 0);
  auto packed = RawDeflate(plain);
  std::vector<uint8_t> out(65536 + 16, 0x77);
  ASSERT_TRUE(
      Decompress(CompressionType::kDeflate, packed.data(), packed.size(), out.data(), 65536).ok());
  EXPECT_EQ(std::vector<uint8_t>(out.begin(), out.begin() + 65536), std::vector<uint8_t>(65536, 0));
  EXPECT_EQ(out[65536], 0x77);  // nothing written past the output
}

TEST(CodecDeflate, GarbageIsCorruption) {
  std::vector<uint8_t> junk(600, 0xff);
  std::vector<uint8_t> out(4096);
  EXPECT_EQ(Decompress(CompressionType::kDeflate, junk.data(), junk.size(), out.data(), out.size())
                .code(),
            Status::Code::kCorruption);
  EXPECT_EQ(Decompress(CompressionType::kDeflate, nullptr, 0, out.data(), out.size()).code(),
            Status::Code::kCorruption);
}

TEST(CodecZstd, RoundTripsWithTrailingBytes) {
  auto plain = Pattern(65536, 5);
  auto packed = Zstd(plain);
  packed.resize(packed.size() + 300, 0);
  std::vector<uint8_t> out(plain.size());
  ASSERT_TRUE(
      Decompress(CompressionType::kZstd, packed.data(), packed.size(), out.data(), out.size())
          .ok());
  EXPECT_EQ(out, plain);
}

TEST(CodecZstd, MultipleFramesMakeOneCluster) {
  auto plain = Pattern(65536, 9);
  std::vector<uint8_t> a(plain.begin(), plain.begin() + 20000),
      b(plain.begin() + 20000, plain.end());
  auto packed = Zstd(a);
  auto second = Zstd(b);
  packed.insert(packed.end(), second.begin(), second.end());
  std::vector<uint8_t> out(plain.size());
  ASSERT_TRUE(
      Decompress(CompressionType::kZstd, packed.data(), packed.size(), out.data(), out.size())
          .ok());
  EXPECT_EQ(out, plain);
}

TEST(CodecZstd, TruncatedFrameIsCorruption) {
  auto plain = Pattern(65536, 11);
  auto packed = Zstd(plain);
  packed.resize(packed.size() - 10);
  std::vector<uint8_t> out(plain.size());
  EXPECT_EQ(Decompress(CompressionType::kZstd, packed.data(), packed.size(), out.data(), out.size())
                .code(),
            Status::Code::kCorruption);
}

TEST(CodecZstd, ShortStreamIsCorruption) {
  auto plain = Pattern(1000);
  auto packed = Zstd(plain);
  std::vector<uint8_t> out(4096);
  EXPECT_EQ(Decompress(CompressionType::kZstd, packed.data(), packed.size(), out.data(), out.size())
                .code(),
            Status::Code::kCorruption);
}

TEST(CodecZstd, FrameLongerThanOutputIsCorruption) {
  auto plain = Pattern(8192);
  auto packed = Zstd(plain);
  std::vector<uint8_t> out(4096);
  EXPECT_EQ(Decompress(CompressionType::kZstd, packed.data(), packed.size(), out.data(), out.size())
                .code(),
            Status::Code::kCorruption);
}

TEST(CodecZstd, GarbageIsCorruption) {
  std::vector<uint8_t> junk(600, 0x28);
  std::vector<uint8_t> out(4096);
  EXPECT_EQ(
      Decompress(CompressionType::kZstd, junk.data(), junk.size(), out.data(), out.size()).code(),
      Status::Code::kCorruption);
}

TEST(Codec, ConcurrentThreadsUseTheirOwnContexts) {
  auto plain = Pattern(65536, 13);
  auto d = RawDeflate(plain);
  auto z = Zstd(plain);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      std::vector<uint8_t> out(plain.size());
      for (int i = 0; i < 50; ++i) {
        bool ok =
            Decompress(CompressionType::kDeflate, d.data(), d.size(), out.data(), out.size())
                .ok() &&
            out == plain &&
            Decompress(CompressionType::kZstd, z.data(), z.size(), out.data(), out.size()).ok() &&
            out == plain;
        if (!ok) ++failures;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

// Batches: every job done, each with its own status, whoever runs it; and
// several batches at once (helpers busy with another batch).
TEST(CodecBatch, EveryJobDoneWithItsOwnStatus) {
  std::vector<std::vector<uint8_t>> plain, packed;
  for (uint32_t i = 0; i < 24; ++i) {
    plain.push_back(Pattern(65536, 100 + i));
    packed.push_back(i % 2 ? Zstd(plain.back()) : RawDeflate(plain.back()));
  }
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (CompressionType type : {CompressionType::kDeflate, CompressionType::kZstd}) {
          const uint32_t parity = type == CompressionType::kZstd ? 1 : 0;
          std::vector<std::vector<uint8_t>> out;
          std::vector<DecompressJob> jobs;
          std::vector<size_t> which;
          for (size_t i = parity; i < plain.size(); i += 2) {
            out.emplace_back(plain[i].size(), 0xee);
            which.push_back(i);
          }
          for (size_t k = 0; k < which.size(); ++k) {
            const auto& in = packed[which[k]];
            // One job in four gets a cut stream: it alone must fail.
            const bool cut = (k + t + round) % 4 == 0;
            jobs.push_back(DecompressJob{in.data(), cut ? in.size() / 3 : in.size(),
                                         out[k].data(), out[k].size(), {}});
          }
          DecompressBatch(type, jobs);
          for (size_t k = 0; k < which.size(); ++k) {
            const bool cut = (k + t + round) % 4 == 0;
            if (cut ? jobs[k].status.code() != Status::Code::kCorruption
                    : !jobs[k].status.ok() || out[k] != plain[which[k]])
              ++failures;
          }
        }
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(DecompressHelperThreads(), std::max(1u, std::thread::hardware_concurrency()) - 1);
}

TEST(CodecBatch, EmptyAndSingleJobBatches) {
  DecompressBatch(CompressionType::kDeflate, {});
  auto plain = Pattern(4096, 77);
  auto packed = RawDeflate(plain);
  std::vector<uint8_t> out(plain.size());
  DecompressJob job{packed.data(), packed.size(), out.data(), out.size(), {}};
  DecompressBatch(CompressionType::kDeflate, std::span<DecompressJob>(&job, 1));
  EXPECT_TRUE(job.status.ok()) << job.status.ToString();
  EXPECT_EQ(out, plain);
}

}  // namespace
}  // namespace kvmfs

// ---- Compress (qcow2 compressed writes) ----

namespace kvmfs {
namespace {

// Plain zlib raw inflate with a 4 KiB window, as QEMU reads clusters (the
// library's Decompress may take libdeflate, which accepts any window).
bool InflateWindow12(const std::vector<uint8_t>& in, std::vector<uint8_t>& out) {
  z_stream z{};
  if (inflateInit2(&z, -12) != Z_OK) return false;
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  const int ret = inflate(&z, Z_FINISH);
  inflateEnd(&z);
  return ret == Z_STREAM_END && z.avail_out == 0;
}

// Random blocks of `block` bytes, each repeated once right after itself.
std::vector<uint8_t> Repeats(size_t block) {
  std::vector<uint8_t> plain(65536);
  std::mt19937 rng(3);
  for (size_t at = 0; at < plain.size(); at += 2 * block) {
    for (size_t i = 0; i < block; ++i) plain[at + i] = uint8_t(rng());
    std::copy(plain.begin() + at, plain.begin() + at + block, plain.begin() + at + block);
  }
  return plain;
}

TEST(CodecCompress, DeflateUsesQemusFourKiBWindow) {
  // Repeats 2 KiB back are found and the stream inflates with QEMU's
  // windowBits -12.
  std::vector<uint8_t> plain = Repeats(2048);
  std::vector<uint8_t> packed(plain.size() - 1);
  Result<size_t> n = Compress(CompressionType::kDeflate, plain.data(), plain.size(),
                              packed.data(), packed.size());
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_LT(*n, plain.size() * 6 / 10);
  packed.resize(*n);
  std::vector<uint8_t> out(plain.size());
  ASSERT_TRUE(InflateWindow12(packed, out));
  EXPECT_EQ(out, plain);
  // Repeats 8 KiB back are out of reach of a 4 KiB window (a 32 KiB one,
  // which QEMU could not read, would halve this): nothing to gain.
  plain = Repeats(8192);
  packed.assign(plain.size() - 1, 0);
  n = Compress(CompressionType::kDeflate, plain.data(), plain.size(), packed.data(),
               packed.size());
  EXPECT_EQ(n.status().code(), Status::Code::kNoSpace) << (n.ok() ? *n : 0);
}

TEST(CodecCompress, ZstdRoundTrips) {
  auto plain = Pattern(65536, 4);
  std::vector<uint8_t> packed(plain.size() - 1);
  Result<size_t> n =
      Compress(CompressionType::kZstd, plain.data(), plain.size(), packed.data(), packed.size());
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_LT(*n, plain.size() / 2);
  std::vector<uint8_t> out(plain.size());
  ASSERT_TRUE(Decompress(CompressionType::kZstd, packed.data(), *n, out.data(), out.size()).ok());
  EXPECT_EQ(out, plain);
}

TEST(CodecCompress, IncompressibleDataDoesNotFit) {
  std::vector<uint8_t> plain(65536);
  std::mt19937 rng(5);
  for (auto& b : plain) b = uint8_t(rng());
  std::vector<uint8_t> packed(plain.size() - 1);
  for (CompressionType t : {CompressionType::kDeflate, CompressionType::kZstd}) {
    Result<size_t> n = Compress(t, plain.data(), plain.size(), packed.data(), packed.size());
    ASSERT_FALSE(n.ok()) << static_cast<int>(t);
    EXPECT_EQ(n.status().code(), Status::Code::kNoSpace) << n.status().ToString();
  }
  // And the contexts are fine for the next cluster after a failure.
  auto text = Pattern(65536, 6);
  Result<size_t> n = Compress(CompressionType::kDeflate, text.data(), text.size(), packed.data(),
                              packed.size());
  ASSERT_TRUE(n.ok());
  std::vector<uint8_t> out(text.size());
  packed.resize(*n);
  ASSERT_TRUE(InflateWindow12(packed, out));
  EXPECT_EQ(out, text);
}

}  // namespace
}  // namespace kvmfs
