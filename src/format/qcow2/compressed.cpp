// Compressed clusters (QEMU qcow2_co_preadv_compressed): where their bytes
// are, reading them with as few reads as their layout allows, decoding them
// on the shared pool, and the readahead of sequential readers.
//
// A compressed cluster enters the ClusterCache as soon as its bytes are
// read, in flight (a DecodedCluster queued on the decode pool), and is
// decoded there or by the first reader that needs it before a pool thread
// took it. A request starts every compressed cluster it covers, decodes
// those of its own that nobody has started, and waits only for the ones
// being decoded elsewhere: no barrier across a request or between requests.
// A sequential reader also gets a window past its request started, so the
// pool decodes the next request while this one's reply goes out.
#include <algorithm>
#include <cstring>

#include "format/qcow2/qcow2.h"
#include "image/buffer_pool.h"

namespace kvmfs::qcow2 {
namespace {

// Bounds of one run of a request: the plain bytes it may hold and the
// compressed bytes one coalesced read may fetch.
constexpr uint64_t kMaxRunPlainBytes = 8ull << 20;
constexpr uint64_t kMaxCoalescedRead = 8ull << 20;
// Compressed clusters this close together are fetched by one read (QEMU
// packs them byte after byte, so the gap is usually negative: the rounded
// csize of one overlaps the start of the next).
constexpr uint64_t kMaxCoalesceGap = 4096;
// The readahead window of a sequential stream: twice its requests, within
// these bounds, and at most half of the clusters the cluster cache keeps
// and an eighth of the budget (the window must not evict itself).
constexpr uint64_t kMinReadAhead = 256ull << 10;
constexpr uint64_t kMaxReadAhead = 4ull << 20;
// Parts of decoded clusters at least this long go into a plan as they are
// (shared with the cache); shorter ones are copied, which keeps a reply of
// many small clusters to a few pieces (writev takes at most IOV_MAX).
constexpr size_t kMinSharedPiece = 16 << 10;

std::string CompressedWhere(const std::string& name, uint64_t coffset, uint64_t csize,
                            uint64_t guest_off) {
  return name + ": compressed cluster at host offset " + Hex(coffset) + " (" +
         std::to_string(csize) + " bytes, guest offset " + Hex(guest_off) + ")";
}

}  // namespace

Status Engine::LocateCompressed(uint64_t entry, uint64_t guest_off, uint64_t* coffset,
                                uint64_t* csize, uint64_t* in_file) {
  const Geometry& g = geo_;
  *coffset = entry & g.compressed_offset_mask;
  const uint64_t sectors = ((entry >> g.csize_shift) & g.csize_mask) + 1;
  // From coffset to the end of the sector holding the last byte; at most
  // two clusters by construction of the field.
  *csize = sectors * kCompressedSectorSize - (*coffset & (kCompressedSectorSize - 1));
  if (*coffset == 0 || *coffset > kMaxHostOffset)
    return Status::Corruption(CompressedWhere(name_, *coffset, *csize, guest_off) +
                              ": invalid offset");
  if (PastEof(*file_, file_size_, *coffset, 0))
    return Status::Corruption(CompressedWhere(name_, *coffset, *csize, guest_off) +
                              ": past the end of the file");
  // Bytes past the end of the file read as zeros (the stream must not need them).
  const uint64_t known = file_size_.load(std::memory_order_relaxed);
  *in_file = known > *coffset ? std::min(*csize, known - *coffset) : 0;
  return Status::OK();
}

Result<std::shared_ptr<DecodedCluster>> Engine::LoadCompressed(uint64_t entry,
                                                               uint64_t guest_off) {
  if (std::shared_ptr<DecodedCluster> cached = cluster_cache_.Lookup(entry)) return cached;
  uint64_t coffset = 0, csize = 0, in_file = 0;
  KVMFS_RETURN_IF_ERROR(LocateCompressed(entry, guest_off, &coffset, &csize, &in_file));
  // Pooled and not zero-filled: the read overwrites all of it.
  std::shared_ptr<uint8_t[]> in = PooledBuffer(in_file);
  KVMFS_RETURN_IF_ERROR(file_->ReadAt(coffset, in.get(), in_file));
  const uint8_t* bytes = in.get();
  return cluster_cache_.Insert(entry, std::make_shared<DecodedCluster>(
                                          compression_, geo_.cluster_size, std::move(in), bytes,
                                          in_file));
}

Status Engine::AwaitDecoded(DecodedCluster& cluster, uint64_t entry, uint64_t guest_off) {
  Status st = cluster.Wait();
  if (st.ok()) return st;
  // A cluster that failed to decode leaves the cache: a later read tries again.
  cluster_cache_.EraseIf(entry, &cluster);
  uint64_t coffset = 0, csize = 0, in_file = 0;
  KVMFS_RETURN_IF_ERROR(LocateCompressed(entry, guest_off, &coffset, &csize, &in_file));
  return Status::Corruption(CompressedWhere(name_, coffset, csize, guest_off) + ": " +
                            st.message());
}

Status Engine::ReadCompressed(uint64_t entry, uint64_t off_in_cluster, uint8_t* out, size_t n,
                              uint64_t guest_off) {
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<DecodedCluster> cluster,
                         LoadCompressed(entry, guest_off));
  KVMFS_RETURN_IF_ERROR(AwaitDecoded(*cluster, entry, guest_off));
  std::memcpy(out, cluster->data() + off_in_cluster, n);
  return Status::OK();
}

void Engine::ReadAheadRange(const L1Table& l1, uint64_t off, uint64_t len, uint64_t view_end,
                            uint64_t* from, uint64_t* to) {
  const uint64_t end = off + len;
  *from = off;
  *to = end;
  uint64_t window = std::clamp<uint64_t>(2 * len, kMinReadAhead, kMaxReadAhead);
  window = std::min<uint64_t>(window, cluster_cache_.max_clusters() * geo_.cluster_size / 2);
  window = std::min<uint64_t>(window, budget().limit() / 8);
  std::lock_guard<std::mutex> lock(streams_mu_);
  ++streams_clock_;
  ReadStream* stream = nullptr;
  ReadStream* oldest = &streams_[0];
  for (ReadStream& s : streams_) {
    // Near where the stream got to: the kernel's readahead requests of one
    // reader may be served out of order by several threads.
    if (s.l1 == &l1 && off + window >= s.next && off <= s.next + window) {
      stream = &s;
      break;
    }
    if (s.used < oldest->used) oldest = &s;
  }
  if (stream == nullptr) {  // a new stream: no readahead until it proves sequential
    *oldest = ReadStream{&l1, end, end, streams_clock_};
    return;
  }
  stream->used = streams_clock_;
  stream->next = std::max(stream->next, end);
  *to = std::max(end, std::min(view_end, stream->next + window));
  // What an earlier request started already is not started again.
  *from = std::max(off, std::min(stream->started, *to));
  stream->started = std::max(stream->started, *to);
}

void Engine::StartCompressed(const L1Table& l1, uint64_t from, uint64_t to) {
  struct Miss {
    uint64_t entry, coffset, in_file;
  };
  std::vector<Miss> misses;
  for (uint64_t pos = from; pos < to;) {
    Result<Extent> e = Map(l1, pos, to - pos, MapMode::kRead);
    if (!e.ok()) break;
    if (e->type == Extent::Type::kCompressed && !cluster_cache_.Peek(e->l2_entry)) {
      Miss m{e->l2_entry, 0, 0};
      uint64_t csize = 0;
      if (!LocateCompressed(m.entry, pos, &m.coffset, &csize, &m.in_file).ok()) break;
      misses.push_back(m);
    }
    pos += e->length;
  }
  // One read per group of misses that lie close together in the file (in
  // guest order, which is file order for images written by qemu-img).
  for (size_t k = 0; k < misses.size();) {
    const uint64_t start = misses[k].coffset;
    uint64_t end = start + misses[k].in_file;
    size_t last = k + 1;
    for (; last < misses.size(); ++last) {
      const Miss& m = misses[last];
      if (m.coffset < start || m.coffset > end + kMaxCoalesceGap ||
          std::max(end, m.coffset + m.in_file) - start > kMaxCoalescedRead)
        break;
      end = std::max(end, m.coffset + m.in_file);
    }
    // Pooled and not zero-filled (the read overwrites all of it).
    std::shared_ptr<uint8_t[]> buf = PooledBuffer(end - start);
    if (!file_->ReadAt(start, buf.get(), end - start).ok()) return;
    for (; k < last; ++k) {
      const Miss& m = misses[k];
      auto cluster = std::make_shared<DecodedCluster>(compression_, geo_.cluster_size, buf,
                                                      buf.get() + (m.coffset - start), m.in_file);
      // Another reader may have started the same cluster meanwhile.
      if (cluster_cache_.Insert(m.entry, cluster) != cluster) continue;
      // Without a pool thread (one core) the reader decodes it when needed.
      // The task's pin ends with it: the cache may drop the cluster then.
      PostDecodeTask([pin = cluster_cache_.Pin(cluster), cluster]() mutable {
        cluster->TryDecode();
        cluster.reset();
        pin.reset();
      });
    }
  }
}

Result<size_t> Engine::DecodeCompressedRun(const L1Table& l1, const Extent& first, uint64_t off,
                                           size_t len, uint64_t view_end,
                                           std::vector<RunCluster>& run) {
  uint64_t from = 0, to = 0;
  ReadAheadRange(l1, off, len, view_end, &from, &to);
  // A read within one cluster that starts nothing else is decoded right here.
  if (to > from && to > off + first.length) StartCompressed(l1, from, to);

  // The run: `first`, then the compressed clusters that follow it. A Map()
  // result that is not compressed is left for the caller to map again.
  size_t done = 0;
  uint64_t plain_bytes = 0;
  Status load_error;
  for (Extent e = first;;) {
    const size_t n = static_cast<size_t>(e.length);
    Result<std::shared_ptr<DecodedCluster>> cluster = LoadCompressed(e.l2_entry, off + done);
    if (!cluster.ok()) {
      load_error = cluster.status();
      break;
    }
    run.push_back(RunCluster{std::move(*cluster), e.l2_entry, off + done, n});
    done += n;
    plain_bytes += geo_.cluster_size;
    if (done == len || plain_bytes >= kMaxRunPlainBytes) break;
    Result<Extent> next = Map(l1, off + done, len - done, MapMode::kRead);
    if (!next.ok()) {
      load_error = next.status();
      break;
    }
    if (next->type != Extent::Type::kCompressed) break;
    e = *next;
  }
  // Whatever no thread has started is decoded here, then the rest awaited;
  // the first bad cluster in guest order is the error.
  for (RunCluster& c : run) c.cluster->TryDecode();
  for (RunCluster& c : run) KVMFS_RETURN_IF_ERROR(AwaitDecoded(*c.cluster, c.entry, c.guest_off));
  if (!load_error.ok()) return load_error;
  return done;
}

Result<size_t> Engine::ReadCompressedRun(const L1Table& l1, const Extent& first, uint64_t off,
                                         uint8_t* out, size_t len, uint64_t view_end) {
  std::vector<RunCluster> run;
  KVMFS_ASSIGN_OR_RETURN(size_t done, DecodeCompressedRun(l1, first, off, len, view_end, run));
  const uint64_t cluster_mask = geo_.cluster_size - 1;
  for (const RunCluster& c : run) {
    std::memcpy(out, c.cluster->data() + (c.guest_off & cluster_mask), c.n);
    out += c.n;
  }
  // The run pinned its clusters past the Reclaim() of their inserts.
  run.clear();
  cluster_cache_.ReclaimIfOver();
  return done;
}

Result<size_t> Engine::PlanCompressedRun(const L1Table& l1, const Extent& first, uint64_t off,
                                         size_t len, uint64_t view_end, ReadPlan& plan) {
  std::vector<RunCluster> run;
  KVMFS_ASSIGN_OR_RETURN(size_t done, DecodeCompressedRun(l1, first, off, len, view_end, run));
  const uint64_t cluster_mask = geo_.cluster_size - 1;
  for (RunCluster& c : run) {
    const uint8_t* bytes = c.cluster->data() + (c.guest_off & cluster_mask);
    if (c.n >= kMinSharedPiece) {
      plan.AddShared(bytes, c.n, cluster_cache_.Pin(std::move(c.cluster)));
      continue;
    }
    KVMFS_ASSIGN_OR_RETURN(uint8_t * p, plan.AddMemory(c.n, false));
    std::memcpy(p, bytes, c.n);
  }
  run.clear();
  cluster_cache_.ReclaimIfOver();
  return done;
}

}  // namespace kvmfs::qcow2
