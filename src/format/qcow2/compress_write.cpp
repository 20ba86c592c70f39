// Compressed writes (the pool's `compress:` key), as QEMU's compress filter
// over qcow2 (qcow2_co_pwritev_compressed_task): a write that covers a whole
// cluster with no host cluster in this layer (unallocated or a zero
// cluster), or the image's last cluster up to the virtual size (zero
// padded), is compressed with the image's compression type into at most a
// cluster less one byte; data that does not get smaller is stored as a
// normal cluster. Compressed clusters are packed byte after byte into host
// clusters (qcow2_alloc_bytes): a host cluster's refcount counts the
// compressed clusters whose bytes touch it, which is what ReleaseEntry()
// takes back. Everything else (partial writes, overwrites of allocated or
// compressed clusters) takes the normal allocating path of write.cpp.
//
// Ordering (write.cpp): WriteAllocating() plans a compressed run under the
// exclusive lock without allocating, compresses it with no lock, places it
// (AllocCompressedBytes, refcounts raised) under the exclusive lock, writes
// the bytes with no lock (nothing names them yet) and links the L2 entry
// under the exclusive lock: data before the L2 entry, refcounts before the
// L2 table reaches the disk (FlushLocked).
#include <condition_variable>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>

#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {

void Engine::SetWriteCompression(bool on) {
  // As QEMU: no compressed clusters in an image with an external data file;
  // and none in an encrypted one (compressed clusters would be stored in
  // clear: kvmfs keeps encrypted images' clusters encrypted).
  compress_writes_ = on && !header_.has_data_file() && header_.raw.crypt_method == kCryptNone;
}

bool Engine::CompressEligible(uint64_t pos, uint64_t cend, bool allocated,
                              bool compressed) const {
  if (!compress_writes_ || allocated || compressed) return false;
  const uint64_t cs = geo_.cluster_size;
  const uint64_t cstart = pos & ~(cs - 1);
  if (pos != cstart) return false;
  return cend == cstart + cs || cend == virtual_size();
}

void Engine::CompressRun(const AllocRun& r, std::vector<uint8_t>& out,
                         std::vector<uint8_t>& padded) {
  const uint64_t cs = geo_.cluster_size;
  const uint8_t* src = r.p;
  if (r.n < cs) {
    // The last cluster of the image, past the virtual size: zeros, as QEMU.
    padded.assign(cs, 0);
    std::memcpy(padded.data(), r.p, r.n);
    src = padded.data();
  }
  // As QEMU: at most a cluster less one byte, else a normal cluster. Any
  // failure of the codec (no memory) also leaves the data uncompressed.
  out.resize(cs - 1);
  Result<size_t> n = Compress(compression_, src, cs, out.data(), out.size());
  if (!n.ok() || *n == 0) {
    out.clear();
    return;
  }
  out.resize(*n);
}

namespace {

// The clusters of one request being compressed: each is claimed once, by
// a helper of the decode pool or by the requesting thread, which then waits
// only for the clusters helpers are working on (never for a task nobody
// started, as PostDecodeTask asks).
struct CompressBatch {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<uint8_t> state;  // GUARDED_BY(mu): 0 free, 1 claimed, 2 done
  size_t done = 0;             // GUARDED_BY(mu)

  bool Claim(size_t j) {
    std::lock_guard<std::mutex> lock(mu);
    if (state[j] != 0) return false;
    state[j] = 1;
    return true;
  }
  void Done(size_t j) {
    {
      std::lock_guard<std::mutex> lock(mu);
      state[j] = 2;
      ++done;
    }
    cv.notify_all();
  }
};

}  // namespace

void Engine::CompressRuns(const std::vector<AllocRun>& runs, size_t count,
                          std::vector<std::vector<uint8_t>>& out,
                          std::vector<std::vector<uint8_t>>& padded) {
  std::vector<size_t> todo;
  for (size_t i = 0; i < count; ++i)
    if (runs[i].compress) todo.push_back(i);
  if (todo.size() <= 1) {
    for (size_t i : todo) CompressRun(runs[i], out[i], padded[i]);
    return;
  }
  auto batch = std::make_shared<CompressBatch>();
  batch->state.assign(todo.size(), 0);
  // Called only for a claimed cluster, and every claimed cluster is done
  // before this function returns: the references stay valid. A task that
  // finds its cluster claimed touches nothing but the batch.
  std::function<void(size_t)> work = [this, &runs, &out, &padded, &todo](size_t j) {
    const size_t i = todo[j];
    CompressRun(runs[i], out[i], padded[i]);
  };
  for (size_t j = 1; j < todo.size(); ++j) {
    if (!PostDecodeTask([batch, work, j] {
          if (batch->Claim(j)) {
            work(j);
            batch->Done(j);
          }
        }))
      break;  // no helper threads: this thread does them all
  }
  for (size_t j = 0; j < todo.size(); ++j)
    if (batch->Claim(j)) {
      work(j);
      batch->Done(j);
    }
  std::unique_lock<std::mutex> lock(batch->mu);
  batch->cv.wait(lock, [&] { return batch->done == todo.size(); });
}

Result<uint64_t> Engine::AllocCompressedBytes(uint64_t size) {
  const uint64_t cs = geo_.cluster_size;
  const uint32_t bits = geo_.cluster_bits;
  uint64_t off = free_byte_offset_;
  if (off != 0) {
    // The cluster must still be one of ours (a cluster whose compressed
    // data was all released drops free_byte_offset_ in UpdateRefcount) and
    // able to count one more user.
    KVMFS_ASSIGN_OR_RETURN(uint64_t rc, GetRefcount(off >> bits));
    if (rc == 0 || rc >= refcount_max() || OverlapsMetadata(off & ~(cs - 1), cs)) off = 0;
  }
  const uint64_t free_in_cluster = off != 0 ? cs - (off & (cs - 1)) : 0;
  uint64_t at = 0;
  if (off != 0 && free_in_cluster >= size) {
    KVMFS_RETURN_IF_ERROR(UpdateRefcount(off >> bits, +1));
    at = off;
  } else {
    // A new cluster, at refcount 1: this compressed cluster's reference.
    KVMFS_ASSIGN_OR_RETURN(uint64_t fresh, AllocClusters(1));
    if (off != 0 && ((off + cs - 1) & ~(cs - 1)) == fresh) {
      // Right after the partly used one: the data goes on into it.
      if (Status st = UpdateRefcount(off >> bits, +1); !st.ok()) {
        (void)UpdateRefcount(fresh >> bits, -1);
        return st;
      }
      at = off;
    } else {
      at = fresh;
    }
  }
  if (at + size - 1 > geo_.compressed_offset_mask) {
    (void)UpdateRefcountRange(at, size, -1);
    return Status::TooLarge(name_ + ": compressed cluster at " + Hex(at) +
                            " past what an L2 entry can address");
  }
  // QEMU's overlap check before the data is written.
  if (OverlapsMetadata(at, size)) {
    (void)UpdateRefcountRange(at, size, -1);
    return Status::Corruption(name_ + ": compressed data at " + Hex(at) +
                              " would overlap metadata (the refcounts are wrong)");
  }
  free_byte_offset_ = ((at + size) & (cs - 1)) != 0 ? at + size : 0;
  return at;
}

uint64_t Engine::CompressedEntry(uint64_t host, uint64_t size) const {
  // formats.md: the field holds the 512-byte sectors the data touches, less
  // one (QEMU's nb_csectors).
  const uint64_t sectors =
      (host + size - 1) / kCompressedSectorSize - host / kCompressedSectorSize;
  return kOflagCompressed | (sectors << geo_.csize_shift) | host;
}

size_t Engine::PlaceCompressedRuns(std::vector<AllocRun>& runs,
                                   std::vector<std::vector<uint8_t>>& out,
                                   std::vector<std::vector<uint8_t>>& padded, size_t count,
                                   Status* st) {
  const uint64_t cs = geo_.cluster_size;
  for (size_t i = 0; i < count; ++i) {
    AllocRun& r = runs[i];
    if (!r.compress) continue;
    if (!out[i].empty()) {
      Result<uint64_t> at = AllocCompressedBytes(out[i].size());
      if (!at.ok()) {
        *st = at.status();
        return i;
      }
      r.host = *at;
      r.csize = out[i].size();
      continue;
    }
    // Not smaller compressed: a normal cluster, as QEMU.
    Result<uint64_t> at = AllocClusters(1);
    if (!at.ok()) {
      *st = at.status();
      return i;
    }
    r.compress = false;
    r.host = *at;
    r.nclusters = 1;
    // The image's last cluster: written whole from the zero-padded copy.
    r.partial = r.n < cs;
    if (r.partial && padded[i].size() != cs) {
      padded[i].assign(cs, 0);
      std::memcpy(padded[i].data(), r.p, r.n);
    }
  }
  return count;
}

}  // namespace kvmfs::qcow2
