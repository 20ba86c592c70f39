// Decompression of qcow2 compressed clusters: raw deflate (windowBits -12)
// and zstd, each producing exactly one caller-sized output buffer.
//
// Codec contexts are expensive to build and not safe to share between
// threads, so each thread keeps its own (thread_local), created on first use.
#include "kvmfs/codec.h"

#include <time.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <cerrno>

#include <atomic>
#include <memory>
#include <string>

#include "codec/stats.h"

#ifdef KVMFS_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

namespace kvmfs {
namespace {

// zstd frames written by QEMU never need more than one cluster (<= 2 MiB) of
// window; refusing larger windows bounds the memory a hostile frame can claim.
constexpr int kZstdWindowLogMax = 23;

std::string SizeText(size_t in_len, size_t out_len) {
  return std::to_string(in_len) + " compressed bytes, " + std::to_string(out_len) + " expected";
}

// zlib, as QEMU's qcow2_zlib_decompress: raw inflate with Z_FINISH; the
// stream may end (Z_STREAM_END) or stop with the output full (Z_BUF_ERROR).
Status InflateZlib(const uint8_t* in, size_t in_len, uint8_t* out, size_t out_len) {
  struct Stream {
    z_stream z{};
    bool ready = false;
    ~Stream() {
      if (ready) inflateEnd(&z);
    }
  };
  thread_local Stream s;
  if (!s.ready) {
    if (inflateInit2(&s.z, -12) != Z_OK) return Status::NoSpace("zlib: inflateInit2 failed");
    s.ready = true;
  } else if (inflateReset(&s.z) != Z_OK) {
    return Status::Corruption("zlib: inflateReset failed");
  }
  // zlib counts in uInt; clusters are <= 2 MiB and inputs <= 2 clusters.
  if (in_len > UINT32_MAX || out_len > UINT32_MAX)
    return Status::InvalidArgument("deflate: buffer too large (" + SizeText(in_len, out_len) + ")");
  s.z.next_in = const_cast<Bytef*>(in);
  s.z.avail_in = static_cast<uInt>(in_len);
  s.z.next_out = out;
  s.z.avail_out = static_cast<uInt>(out_len);
  int ret = inflate(&s.z, Z_FINISH);
  if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && s.z.avail_out == 0) return Status::OK();
  size_t produced = out_len - s.z.avail_out;
  return Status::Corruption("deflate stream invalid or short (" + SizeText(in_len, out_len) + ", " +
                            std::to_string(produced) + " produced, zlib " + std::to_string(ret) +
                            ")");
}

Status InflateRawDeflate(const uint8_t* in, size_t in_len, uint8_t* out, size_t out_len) {
#ifdef KVMFS_HAVE_LIBDEFLATE
  struct Decompressor {
    libdeflate_decompressor* d = nullptr;
    ~Decompressor() {
      if (d != nullptr) libdeflate_free_decompressor(d);
    }
  };
  thread_local Decompressor dec;
  if (dec.d == nullptr) dec.d = libdeflate_alloc_decompressor();
  if (dec.d != nullptr) {
    size_t actual_in = 0;
    size_t actual_out = 0;
    // actual_in_nbytes lets the stream end before the input does (the rest
    // of the last sector belongs to the next compressed cluster).
    libdeflate_result r =
        libdeflate_deflate_decompress_ex(dec.d, in, in_len, out, out_len, &actual_in, &actual_out);
    if (r == LIBDEFLATE_SUCCESS && actual_out == out_len) return Status::OK();
    // Streams that fill the output without a final block, or that would go
    // on past it, are accepted by QEMU's zlib path: let zlib decide.
  }
#endif
  return InflateZlib(in, in_len, out, out_len);
}

// As QEMU's qcow2_zstd_decompress: one or more frames, until the output is
// full; the last frame must be complete; no progress means corruption.
Status DecompressZstd(const uint8_t* in, size_t in_len, uint8_t* out, size_t out_len) {
  struct DCtx {
    ZSTD_DCtx* d = nullptr;
    ~DCtx() { ZSTD_freeDCtx(d); }
  };
  thread_local DCtx ctx;
  if (ctx.d == nullptr) {
    ctx.d = ZSTD_createDCtx();
    if (ctx.d == nullptr) return Status::NoSpace("zstd: cannot create a decompression context");
    ZSTD_DCtx_setParameter(ctx.d, ZSTD_d_windowLogMax, kZstdWindowLogMax);
  }
  ZSTD_DCtx_reset(ctx.d, ZSTD_reset_session_only);
  ZSTD_outBuffer output{out, out_len, 0};
  ZSTD_inBuffer input{in, in_len, 0};
  size_t ret = 0;
  while (output.pos < output.size) {
    size_t last_in = input.pos;
    size_t last_out = output.pos;
    ret = ZSTD_decompressStream(ctx.d, &output, &input);
    if (ZSTD_isError(ret))
      return Status::Corruption(std::string("zstd stream invalid (") + ZSTD_getErrorName(ret) +
                                "; " + SizeText(in_len, out_len) + ", " +
                                std::to_string(output.pos) + " produced)");
    if (input.pos <= last_in && output.pos <= last_out)
      return Status::Corruption("zstd stream short (" + SizeText(in_len, out_len) + ", " +
                                std::to_string(output.pos) + " produced)");
  }
  // A frame still unfinished with the output full decodes to more than
  // one cluster.
  if (ret > 0)
    return Status::Corruption("zstd frame longer than the output (" + SizeText(in_len, out_len) +
                              ")");
  return Status::OK();
}

// As QEMU's qcow2_zlib_compress: deflateInit2(level default, windowBits
// -12, memLevel 9), one deflate(Z_FINISH) that must end the stream.
Result<size_t> DeflateRaw(const uint8_t* in, size_t in_len, uint8_t* out, size_t out_cap) {
  struct Stream {
    z_stream z{};
    bool ready = false;
    ~Stream() {
      if (ready) deflateEnd(&z);
    }
  };
  thread_local Stream s;
  if (!s.ready) {
    if (deflateInit2(&s.z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
      return Status::NoSpace("zlib: deflateInit2 failed");
    s.ready = true;
  } else if (deflateReset(&s.z) != Z_OK) {
    return Status::FromErrno(EIO, "zlib: deflateReset failed");
  }
  if (in_len > UINT32_MAX || out_cap > UINT32_MAX)
    return Status::InvalidArgument("deflate: buffer too large (" + std::to_string(in_len) +
                                   " bytes)");
  s.z.next_in = const_cast<Bytef*>(in);
  s.z.avail_in = static_cast<uInt>(in_len);
  s.z.next_out = out;
  s.z.avail_out = static_cast<uInt>(out_cap);
  const int ret = deflate(&s.z, Z_FINISH);
  if (ret == Z_STREAM_END) return out_cap - s.z.avail_out;
  if (ret == Z_OK || ret == Z_BUF_ERROR)
    return Status::NoSpace("deflate: " + std::to_string(in_len) + " bytes do not compress into " +
                           std::to_string(out_cap));
  return Status::FromErrno(EIO, "deflate failed (zlib " + std::to_string(ret) + ")");
}

// As QEMU's qcow2_zstd_compress: one ZSTD_compressStream2(ZSTD_e_end) that
// must flush the whole frame into the output.
Result<size_t> CompressZstd(const uint8_t* in, size_t in_len, uint8_t* out, size_t out_cap) {
  struct CCtx {
    ZSTD_CCtx* c = nullptr;
    ~CCtx() { ZSTD_freeCCtx(c); }
  };
  thread_local CCtx ctx;
  if (ctx.c == nullptr) {
    ctx.c = ZSTD_createCCtx();
    if (ctx.c == nullptr) return Status::NoSpace("zstd: cannot create a compression context");
  }
  ZSTD_CCtx_reset(ctx.c, ZSTD_reset_session_only);
  ZSTD_outBuffer output{out, out_cap, 0};
  ZSTD_inBuffer input{in, in_len, 0};
  const size_t ret = ZSTD_compressStream2(ctx.c, &output, &input, ZSTD_e_end);
  if (ZSTD_isError(ret)) {
    if (ZSTD_getErrorCode(ret) == ZSTD_error_dstSize_tooSmall)
      return Status::NoSpace("zstd: " + std::to_string(in_len) + " bytes do not compress into " +
                             std::to_string(out_cap));
    return Status::FromErrno(EIO, std::string("zstd compression failed: ") + ZSTD_getErrorName(ret));
  }
  if (ret != 0)  // the frame is not flushed completely: it does not fit
    return Status::NoSpace("zstd: " + std::to_string(in_len) + " bytes do not compress into " +
                           std::to_string(out_cap));
  return output.pos;
}

}  // namespace

Result<size_t> Compress(CompressionType type, const uint8_t* in, size_t in_len, uint8_t* out,
                        size_t out_cap) {
  switch (type) {
    case CompressionType::kDeflate:
      return DeflateRaw(in, in_len, out, out_cap);
    case CompressionType::kZstd:
      return CompressZstd(in, in_len, out, out_cap);
    case CompressionType::kZlib:
      return CompressZlibStream(in, in_len, out, out_cap);
  }
  return Status::NotSupported("unknown compression type " + std::to_string(static_cast<int>(type)));
}

// As zlib's uncompress(): one whole zlib stream, checksum included, into
// the output; a stream that needs more output than there is fails.
static Result<size_t> InflateZlibStreamImpl(const uint8_t* in, size_t in_len, uint8_t* out, size_t out_len) {
  struct Stream {
    z_stream z{};
    bool ready = false;
    ~Stream() {
      if (ready) inflateEnd(&z);
    }
  };
  thread_local Stream s;
  if (!s.ready) {
    if (inflateInit(&s.z) != Z_OK) return Status::NoSpace("zlib: inflateInit failed");
    s.ready = true;
  } else if (inflateReset(&s.z) != Z_OK) {
    return Status::Corruption("zlib: inflateReset failed");
  }
  if (in_len > UINT32_MAX || out_len > UINT32_MAX)
    return Status::InvalidArgument("zlib: buffer too large (" + SizeText(in_len, out_len) + ")");
  s.z.next_in = const_cast<Bytef*>(in);
  s.z.avail_in = static_cast<uInt>(in_len);
  s.z.next_out = out;
  s.z.avail_out = static_cast<uInt>(out_len);
  int ret = inflate(&s.z, Z_FINISH);
  const size_t produced = out_len - s.z.avail_out;
  if (ret == Z_STREAM_END) return produced;
  return Status::Corruption("zlib stream invalid, truncated or longer than " +
                            std::to_string(out_len) + " bytes (" + std::to_string(in_len) +
                            " compressed bytes, " + std::to_string(produced) +
                            " produced, zlib " + std::to_string(ret) + ")");
}

Result<size_t> CompressZlibStream(const uint8_t* in, size_t in_len, uint8_t* out, size_t out_cap) {
  if (in_len > UINT32_MAX || out_cap > UINT32_MAX)
    return Status::InvalidArgument("zlib: buffer too large (" + std::to_string(in_len) + " bytes)");
  uLongf out_len = static_cast<uLongf>(out_cap);
  int ret = compress2(out, &out_len, in, static_cast<uLong>(in_len), Z_DEFAULT_COMPRESSION);
  if (ret == Z_BUF_ERROR)
    return Status::NoSpace("zlib: " + std::to_string(in_len) + " bytes do not compress into " +
                           std::to_string(out_cap));
  if (ret != Z_OK) return Status::NoSpace("zlib: compress2 failed (" + std::to_string(ret) + ")");
  return static_cast<size_t>(out_len);
}

namespace {

Status DecompressImpl(CompressionType type, const uint8_t* in, size_t in_len, uint8_t* out,
                      size_t out_len) {
  switch (type) {
    case CompressionType::kDeflate:
      return InflateRawDeflate(in, in_len, out, out_len);
    case CompressionType::kZstd:
      return DecompressZstd(in, in_len, out, out_len);
    case CompressionType::kZlib: {
      Result<size_t> n = InflateZlibStreamImpl(in, in_len, out, out_len);
      if (!n.ok()) return n.status();
      if (*n != out_len)
        return Status::Corruption("zlib stream short (" + SizeText(in_len, out_len) + ", " +
                                  std::to_string(*n) + " produced)");
      return Status::OK();
    }
  }
  return Status::NotSupported("unknown compression type " + std::to_string(static_cast<int>(type)));
}

// ---- Totals for the metrics (codec/stats.h) ----------------------------------------
// Plain relaxed atomics: one decompression is tens of microseconds, so one
// shared line per codec costs nothing next to it.
struct Totals {
  std::atomic<uint64_t> calls{0}, errors{0}, in_bytes{0}, out_bytes{0}, nanos{0};
};
constexpr size_t kTypes = 3;
Totals g_totals[kTypes];

uint64_t Nanos() {
  struct timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

void Account(CompressionType type, size_t in_len, size_t produced, bool ok, uint64_t t0) {
  const size_t i = static_cast<size_t>(type);
  if (i >= kTypes) return;
  Totals& t = g_totals[i];
  t.nanos.fetch_add(Nanos() - t0, std::memory_order_relaxed);
  t.calls.fetch_add(1, std::memory_order_relaxed);
  t.in_bytes.fetch_add(in_len, std::memory_order_relaxed);
  t.out_bytes.fetch_add(produced, std::memory_order_relaxed);
  if (!ok) t.errors.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

Result<size_t> InflateZlibStream(const uint8_t* in, size_t in_len, uint8_t* out, size_t out_len) {
  const uint64_t t0 = Nanos();
  Result<size_t> n = InflateZlibStreamImpl(in, in_len, out, out_len);
  Account(CompressionType::kZlib, in_len, n.ok() ? *n : 0, n.ok(), t0);
  return n;
}

Status Decompress(CompressionType type, const uint8_t* in, size_t in_len, uint8_t* out,
                  size_t out_len) {
  const uint64_t t0 = Nanos();
  Status st = DecompressImpl(type, in, in_len, out, out_len);
  Account(type, in_len, st.ok() ? out_len : 0, st.ok(), t0);
  return st;
}

CodecTotals DecompressTotals(CompressionType type) {
  CodecTotals out;
  const size_t i = static_cast<size_t>(type);
  if (i >= kTypes) return out;
  const Totals& t = g_totals[i];
  out.calls = t.calls.load(std::memory_order_relaxed);
  out.errors = t.errors.load(std::memory_order_relaxed);
  out.in_bytes = t.in_bytes.load(std::memory_order_relaxed);
  out.out_bytes = t.out_bytes.load(std::memory_order_relaxed);
  out.nanos = t.nanos.load(std::memory_order_relaxed);
  return out;
}

}  // namespace kvmfs
