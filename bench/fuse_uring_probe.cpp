// fuse_uring_probe: the FUSE transport alone, without kvmfs or libfuse. Serves one
// read-only file `data` of N MiB from memory, either
//   classic: T threads, each on its own cloned /dev/fuse descriptor, read(2) a request
//            and reply with one writev(2) (what libfuse 3.14's multi-threaded loop does), or
//   uring:   FUSE-over-io_uring (kernel >= 6.14, fuse module parameter enable_uring=Y): one
//            io_uring (128-byte SQEs) and one thread per CPU queue, pinned to its CPU, each
//            with DEPTH entries registered with FUSE_IO_URING_CMD_REGISTER and answered with
//            FUSE_IO_URING_CMD_COMMIT_AND_FETCH (the kernel's fs/fuse/dev_uring.c).
// Used by bench/fuse_uring_bench.py to measure what moving kvmfs's transport to io_uring
// would give (bench/results/*-fuse-uring-*.md) before anything is built into kvmfs.
//
//   fuse_uring_probe --mode classic|uring --mount DIR [--size-mib N] [--threads T]
//                    [--depth D] [--max-read BYTES] [--self-test SECONDS]
//
// Serves until the mount goes away (umount DIR) or SIGINT/SIGTERM. With --self-test S it
// reads its own file with O_DIRECT for S seconds (1 MiB sequential, then 4 KiB random),
// compares every byte, prints the rates, unmounts and exits 0 (1 on a wrong byte or a
// failure, 77 when --mode uring is asked and the kernel does not offer it).
// Needs root (mount(2)) and /dev/fuse.
#include <fcntl.h>
#include <liburing.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

// ---- FUSE-over-io_uring uapi: include/uapi/linux/fuse.h of Linux 6.14+ (protocol 7.42;
// Debian 12's /usr/include/linux/fuse.h is 7.38 and has none of it). Same layout as there.
constexpr uint64_t kFuseOverIoUring = 1ULL << 41;  // FUSE_OVER_IO_URING (flags2 bit 9)
constexpr uint32_t kUringInOutHeaderSize = 128;     // FUSE_URING_IN_OUT_HEADER_SZ
constexpr uint32_t kUringOpInOutSize = 128;         // FUSE_URING_OP_IN_OUT_SZ
struct FuseUringEntInOut {                          // struct fuse_uring_ent_in_out
  uint64_t flags;
  uint64_t commit_id;  // the request's unique, given back with COMMIT_AND_FETCH
  uint32_t payload_sz;
  uint32_t padding;
  uint64_t reserved;
};
struct FuseUringReqHeader {           // struct fuse_uring_req_header
  char in_out[kUringInOutHeaderSize];  // fuse_in_header in, fuse_out_header out
  char op_in[kUringOpInOutSize];       // the opcode's own header (fuse_read_in...)
  FuseUringEntInOut ring_ent_in_out;
};
enum : uint32_t {  // enum fuse_uring_cmd
  kUringCmdRegister = 1,
  kUringCmdCommitAndFetch = 2,
};
struct FuseUringCmdReq {  // struct fuse_uring_cmd_req, in the SQE's 80-byte command area
  uint64_t flags;
  uint64_t commit_id;
  uint16_t qid;
  uint8_t padding[6];
};
static_assert(sizeof(FuseUringReqHeader) == 288);
static_assert(sizeof(FuseUringCmdReq) == 24);

constexpr uint64_t kRootIno = 1;
constexpr uint64_t kFileIno = 2;
constexpr uint32_t kMaxPages = 256;  // 1 MiB requests (/proc/sys/fs/fuse/max_pages_limit)
constexpr uint32_t kMaxWrite = kMaxPages * 4096;
constexpr size_t kClassicBuffer = kMaxWrite + 4096;  // the kernel wants >= max_write + headers

struct Options {
  std::string mode = "classic";
  std::string mount;
  uint64_t size_mib = 256;
  unsigned threads = 2;
  unsigned depth = 4;
  uint32_t max_read = 1u << 20;
  double self_test = 0;
};

struct Server {
  Options opt;
  std::vector<uint8_t> data;  // the file's bytes
  int fd = -1;                // the /dev/fuse descriptor of the mount
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> read_bytes{0};
  std::atomic<uint64_t> max_read_seen{0};
  uint32_t kernel_minor = 0;
};

// A reply: the out header's error and up to two pieces of payload.
struct Reply {
  int error = 0;
  const void* a = nullptr;
  size_t a_len = 0;
  const void* b = nullptr;
  size_t b_len = 0;
  bool none = false;  // FORGET and friends: no reply at all
};

void FillAttr(const Server& s, uint64_t ino, fuse_attr& a) {
  std::memset(&a, 0, sizeof a);
  a.ino = ino;
  a.nlink = ino == kRootIno ? 2 : 1;
  a.mode = ino == kRootIno ? (S_IFDIR | 0755) : (S_IFREG | 0444);
  a.size = ino == kRootIno ? 0 : s.data.size();
  a.blocks = (a.size + 511) / 512;
  a.blksize = 4096;
}

// Page-aligned buffers (O_DIRECT reads, /dev/fuse requests), freed with free().
struct FreeDeleter {
  void operator()(char* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<char[], FreeDeleter>;
AlignedBuffer AlignedAlloc(size_t bytes) {
  return AlignedBuffer(static_cast<char*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096)));
}

// Per-thread scratch for the fixed-size replies.
struct Scratch {
  fuse_entry_out entry;
  fuse_attr_out attr;
  fuse_open_out open;
  fuse_statfs_out statfs;
};

// One request: `op` is the opcode's own header, `rest` what follows it (LOOKUP's name).
void Handle(Server& s, const fuse_in_header& in, const char* op, const char* rest, Scratch& t,
            Reply& r) {
  switch (in.opcode) {
    case FUSE_LOOKUP:
      if (in.nodeid != kRootIno || std::strcmp(rest, "data") != 0) {
        r.error = -ENOENT;
        return;
      }
      std::memset(&t.entry, 0, sizeof t.entry);
      t.entry.nodeid = kFileIno;
      t.entry.entry_valid = t.entry.attr_valid = 3600;
      FillAttr(s, kFileIno, t.entry.attr);
      r.a = &t.entry, r.a_len = sizeof t.entry;
      return;
    case FUSE_GETATTR:
      std::memset(&t.attr, 0, sizeof t.attr);
      t.attr.attr_valid = 3600;
      FillAttr(s, in.nodeid, t.attr.attr);
      r.a = &t.attr, r.a_len = sizeof t.attr;
      return;
    case FUSE_OPEN:
    case FUSE_OPENDIR:
      std::memset(&t.open, 0, sizeof t.open);
      r.a = &t.open, r.a_len = sizeof t.open;
      return;
    case FUSE_READ: {
      fuse_read_in ri;
      std::memcpy(&ri, op, sizeof ri);
      uint64_t n = 0;
      if (ri.offset < s.data.size()) n = std::min<uint64_t>(ri.size, s.data.size() - ri.offset);
      s.reads.fetch_add(1, std::memory_order_relaxed);
      s.read_bytes.fetch_add(n, std::memory_order_relaxed);
      uint64_t seen = s.max_read_seen.load(std::memory_order_relaxed);
      while (ri.size > seen && !s.max_read_seen.compare_exchange_weak(seen, ri.size)) {
      }
      r.a = s.data.data() + (n ? ri.offset : 0), r.a_len = n;
      return;
    }
    case FUSE_STATFS:
      std::memset(&t.statfs, 0, sizeof t.statfs);
      t.statfs.st.bsize = t.statfs.st.frsize = 4096;
      t.statfs.st.namelen = 255;
      r.a = &t.statfs, r.a_len = sizeof t.statfs;
      return;
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
    case FUSE_FLUSH:
      return;  // empty success
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT:
      r.none = true;
      return;
    default:
      r.error = -ENOSYS;
      return;
  }
}

// ---- classic transport -----------------------------------------------------------------

int CloneFd(int master) {
  int fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) return -1;
  uint32_t m = static_cast<uint32_t>(master);
  if (::ioctl(fd, FUSE_DEV_IOC_CLONE, &m) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void SendClassic(int fd, const fuse_in_header& in, const Reply& r) {
  if (r.none) return;
  fuse_out_header out{};
  out.unique = in.unique;
  out.error = r.error;
  iovec iov[3] = {{&out, sizeof out}, {const_cast<void*>(r.a), r.a_len},
                  {const_cast<void*>(r.b), r.b_len}};
  int n = r.error ? 1 : (r.b_len ? 3 : (r.a_len ? 2 : 1));
  out.len = sizeof out;
  for (int i = 1; i < n; ++i) out.len += static_cast<uint32_t>(iov[i].iov_len);
  ssize_t w = ::writev(fd, iov, n);
  if (w < 0 && errno != ENOENT) std::fprintf(stderr, "probe: writev: %s\n", std::strerror(errno));
}

// Reads requests from `fd` until the connection ends. Returns after INIT when `init_only`.
void ClassicLoop(Server& s, int fd, bool init_only);

void HandleInit(Server& s, int fd, const fuse_in_header& in, const char* body) {
  fuse_init_in ii{};
  std::memcpy(&ii, body, std::min<size_t>(in.len - sizeof in, sizeof ii));
  s.kernel_minor = ii.minor;
  const uint64_t kernel_flags =
      ii.flags | ((ii.flags & FUSE_INIT_EXT) ? static_cast<uint64_t>(ii.flags2) << 32 : 0);
  fuse_init_out o{};
  o.major = FUSE_KERNEL_VERSION;
  o.minor = ii.minor;  // we speak whatever the kernel does (only INIT's layout depends on it)
  o.max_readahead = ii.max_readahead;
  uint64_t want = FUSE_ASYNC_READ | FUSE_MAX_PAGES | FUSE_BIG_WRITES | FUSE_INIT_EXT;
  if (kernel_flags & FUSE_ASYNC_DIO) want |= FUSE_ASYNC_DIO;
  if (s.opt.mode == "uring") want |= kFuseOverIoUring;
  want &= kernel_flags | FUSE_INIT_EXT;
  o.flags = static_cast<uint32_t>(want);
  o.flags2 = static_cast<uint32_t>(want >> 32);
  o.max_background = 64;
  o.congestion_threshold = 48;
  o.max_write = kMaxWrite;
  o.time_gran = 1;
  o.max_pages = kMaxPages;
  Reply r;
  r.a = &o, r.a_len = sizeof o;
  SendClassic(fd, in, r);
  std::fprintf(stderr, "probe: INIT 7.%u, kernel offers io_uring: %s, asked: %s\n", ii.minor,
               (kernel_flags & kFuseOverIoUring) ? "yes" : "no",
               (want & kFuseOverIoUring) ? "yes" : "no");
}

void ClassicLoop(Server& s, int fd, bool init_only) {
  AlignedBuffer buf = AlignedAlloc(kClassicBuffer);
  Scratch t;
  while (!s.stop.load()) {
    ssize_t n = ::read(fd, buf.get(), kClassicBuffer);
    if (n < 0) {
      if (errno == EINTR || errno == ENOENT || errno == EAGAIN) continue;
      if (errno != ENODEV) std::fprintf(stderr, "probe: read: %s\n", std::strerror(errno));
      return;  // ENODEV: unmounted
    }
    if (static_cast<size_t>(n) < sizeof(fuse_in_header)) continue;
    fuse_in_header in;
    std::memcpy(&in, buf.get(), sizeof in);
    const char* body = buf.get() + sizeof in;
    if (in.opcode == FUSE_INIT) {
      HandleInit(s, fd, in, body);
      if (init_only) return;
      continue;
    }
    Reply r;
    Handle(s, in, body, body, t, r);
    SendClassic(fd, in, r);
  }
}

// ---- io_uring transport ----------------------------------------------------------------

struct Entry {
  FuseUringReqHeader* header = nullptr;
  char* payload = nullptr;
  iovec iov[2];
};

int PossibleCpus() {
  // /sys/devices/system/cpu/possible: "0-N" or "0"; the kernel makes one queue per
  // possible CPU and starts using the ring only once every queue has an entry.
  int n = 1;
  if (std::FILE* f = std::fopen("/sys/devices/system/cpu/possible", "re")) {
    int a = 0, b = 0;
    int got = std::fscanf(f, "%d-%d", &a, &b);
    n = got == 2 ? b + 1 : a + 1;
    std::fclose(f);
  }
  return n;
}

void PrepCmd(io_uring_sqe* sqe, int fd, uint32_t cmd, uint16_t qid, uint64_t commit_id,
             Entry* e, uint64_t user_data) {
  if (sqe == nullptr) return;  // never: the ring has twice DEPTH entries
  std::memset(sqe, 0, 128);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd;
  sqe->cmd_op = cmd;
  if (cmd == kUringCmdRegister) {
    sqe->addr = reinterpret_cast<uint64_t>(e->iov);
    sqe->len = 2;
  }
  sqe->user_data = user_data;
  FuseUringCmdReq req{};
  req.commit_id = commit_id;
  req.qid = qid;
  std::memcpy(sqe->cmd, &req, sizeof req);
}

// The queue `qid`'s thread: pinned to CPU qid, DEPTH entries.
void UringQueue(Server& s, uint16_t qid, std::atomic<int>& failures, std::atomic<int>& ready) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(qid, &set);
  ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set);
  io_uring ring;
  io_uring_params p{};
  p.flags = IORING_SETUP_SQE128;
  int rc = io_uring_queue_init_params(s.opt.depth * 2, &ring, &p);
  if (rc < 0) {
    std::fprintf(stderr, "probe: io_uring_queue_init (SQE128): %s\n", std::strerror(-rc));
    failures.fetch_add(1);
    ready.fetch_add(1);
    return;
  }
  const size_t payload_size = std::max<size_t>(kMaxWrite, s.opt.max_read);
  std::vector<Entry> entries(s.opt.depth);
  for (unsigned i = 0; i < s.opt.depth; ++i) {
    Entry& e = entries[i];
    e.header = static_cast<FuseUringReqHeader*>(std::aligned_alloc(4096, 4096));
    e.payload = static_cast<char*>(std::aligned_alloc(4096, payload_size));
    std::memset(e.header, 0, 4096);
    std::memset(e.payload, 0, payload_size);
    e.iov[0] = {e.header, sizeof(FuseUringReqHeader)};
    e.iov[1] = {e.payload, payload_size};
    PrepCmd(io_uring_get_sqe(&ring), s.fd, kUringCmdRegister, qid, 0, &e, i);
  }
  rc = io_uring_submit(&ring);
  if (rc < 0) std::fprintf(stderr, "probe: queue %u: submit REGISTER: %s\n", qid, std::strerror(-rc));
  ready.fetch_add(1);
  Scratch t;
  while (!s.stop.load()) {
    io_uring_cqe* cqe = nullptr;
    rc = io_uring_wait_cqe(&ring, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) break;
    const int res = cqe->res;
    const uint64_t i = cqe->user_data;
    io_uring_cqe_seen(&ring, cqe);
    if (res < 0) {
      // -ENOTCONN/-ECANCELED at unmount; anything else is the kernel refusing the protocol.
      if (res != -ENOTCONN && res != -ECANCELED) {
        std::fprintf(stderr, "probe: queue %u entry %lu: %s\n", qid,
                     static_cast<unsigned long>(i), std::strerror(-res));
        failures.fetch_add(1);
      }
      break;
    }
    Entry& e = entries[i];
    fuse_in_header in;
    std::memcpy(&in, e.header->in_out, sizeof in);
    const uint64_t commit_id = e.header->ring_ent_in_out.commit_id;
    Reply r;
    Handle(s, in, e.header->op_in, e.payload, t, r);
    fuse_out_header out{};
    out.unique = in.unique;
    out.error = r.error;
    size_t len = 0;
    if (!r.error) {
      // The reply's arguments go into the payload buffer: one copy here, one in the
      // kernel (no splice in this protocol).
      if (r.a_len) std::memcpy(e.payload, r.a, r.a_len);
      if (r.b_len) std::memcpy(e.payload + r.a_len, r.b, r.b_len);
      len = r.a_len + r.b_len;
    }
    out.len = static_cast<uint32_t>(sizeof out + len);
    std::memcpy(e.header->in_out, &out, sizeof out);
    e.header->ring_ent_in_out.payload_sz = static_cast<uint32_t>(len);
    PrepCmd(io_uring_get_sqe(&ring), s.fd, kUringCmdCommitAndFetch, qid, commit_id, &e, i);
    rc = io_uring_submit(&ring);
    if (rc < 0) {
      std::fprintf(stderr, "probe: queue %u: submit COMMIT_AND_FETCH: %s\n", qid,
                   std::strerror(-rc));
      failures.fetch_add(1);
      break;
    }
  }
  io_uring_queue_exit(&ring);
  for (Entry& e : entries) {
    std::free(e.header);
    std::free(e.payload);
  }
}

// ---- mount, self-test, main -------------------------------------------------------------

bool Mount(Server& s) {
  s.fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (s.fd < 0) {
    std::fprintf(stderr, "probe: /dev/fuse: %s\n", std::strerror(errno));
    return false;
  }
  std::string opts = "fd=" + std::to_string(s.fd) +
                     ",rootmode=40755,user_id=0,group_id=0,allow_other,max_read=" +
                     std::to_string(s.opt.max_read);
  if (::mount("fuse_uring_probe", s.opt.mount.c_str(), "fuse.fuse_uring_probe",
              MS_NOSUID | MS_NODEV | MS_RDONLY, opts.c_str()) != 0) {
    std::fprintf(stderr, "probe: mount %s: %s\n", s.opt.mount.c_str(), std::strerror(errno));
    return false;
  }
  return true;
}

double Seconds(std::chrono::steady_clock::time_point a) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
}

// Reads the file back with O_DIRECT and checks every byte: 1 MiB sequential, then 4 KiB
// random, each for half of `seconds`. Returns false on a wrong byte or an error.
bool SelfTest(Server& s) {
  const std::string path = s.opt.mount + "/data";
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
  if (fd < 0) {
    std::fprintf(stderr, "probe: open %s: %s\n", path.c_str(), std::strerror(errno));
    return false;
  }
  AlignedBuffer buf = AlignedAlloc(1 << 20);
  const uint64_t size = s.data.size();
  bool ok = true;
  auto pass = [&](size_t block, bool random, const char* name) {
    std::mt19937_64 rng(42);
    uint64_t bytes = 0, off = 0;
    auto t0 = std::chrono::steady_clock::now();
    while (ok && Seconds(t0) < s.opt.self_test / 2) {
      if (random) off = (rng() % (size / block)) * block;
      ssize_t n = ::pread(fd, buf.get(), block, static_cast<off_t>(off));
      if (n != static_cast<ssize_t>(block) || std::memcmp(buf.get(), s.data.data() + off, block)) {
        std::fprintf(stderr, "probe: self-test %s: wrong read at %lu (%zd)\n", name,
                     static_cast<unsigned long>(off), n);
        ok = false;
      }
      bytes += block;
      if (!random) off = (off + block) % size;
    }
    double secs = Seconds(t0);
    std::printf("%s %s: %.0f MiB/s, %.0f IOPS\n", s.opt.mode.c_str(), name,
                bytes / secs / (1 << 20), bytes / block / secs);
  };
  pass(1 << 20, false, "O_DIRECT seq 1MiB");
  pass(4096, true, "O_DIRECT rand 4KiB");
  ::close(fd);
  return ok;
}

bool UringEnabled() {
  std::FILE* f = std::fopen("/sys/module/fuse/parameters/enable_uring", "re");
  if (f == nullptr) return false;
  char c = 'N';
  bool got = std::fscanf(f, " %c", &c) == 1;
  std::fclose(f);
  return got && c == 'Y';
}

bool ParseArgs(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--mode" && (v = next())) o.mode = v;
    else if (a == "--mount" && (v = next())) o.mount = v;
    else if (a == "--size-mib" && (v = next())) o.size_mib = std::strtoull(v, nullptr, 10);
    else if (a == "--threads" && (v = next())) o.threads = static_cast<unsigned>(std::atoi(v));
    else if (a == "--depth" && (v = next())) o.depth = static_cast<unsigned>(std::atoi(v));
    else if (a == "--max-read" && (v = next())) o.max_read = static_cast<uint32_t>(std::atoi(v));
    else if (a == "--self-test" && (v = next())) o.self_test = std::atof(v);
    else return false;
  }
  return (o.mode == "classic" || o.mode == "uring") && !o.mount.empty() && o.size_mib > 0 &&
         o.size_mib <= 4096 && o.threads >= 1 && o.threads <= 64 && o.depth >= 1 &&
         o.depth <= 64 && o.max_read >= 4096 && o.max_read <= kMaxWrite;
}

Server* g_server = nullptr;
// Unmounting ends every thread's wait (ENODEV, -ENOTCONN).
void OnSignal(int) {
  if (g_server == nullptr) return;
  g_server->stop.store(true);
  ::umount2(g_server->opt.mount.c_str(), MNT_DETACH);
}

}  // namespace

int main(int argc, char** argv) {
  Server s;
  if (!ParseArgs(argc, argv, s.opt)) {
    std::fprintf(stderr,
                 "usage: fuse_uring_probe --mode classic|uring --mount DIR [--size-mib N] "
                 "[--threads T] [--depth D] [--max-read BYTES] [--self-test SECONDS]\n");
    return 2;
  }
  if (s.opt.mode == "uring" && !UringEnabled()) {
    std::fprintf(stderr, "probe: SKIPPED: FUSE-over-io_uring is off "
                         "(/sys/module/fuse/parameters/enable_uring is not Y, or no such "
                         "parameter: kernel < 6.14 or CONFIG_FUSE_IO_URING unset)\n");
    return 77;
  }
  s.data.resize(s.opt.size_mib << 20);
  std::mt19937_64 rng(7);
  for (size_t i = 0; i + 8 <= s.data.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(&s.data[i], &v, 8);
  }
  if (!Mount(s)) return 1;
  g_server = &s;
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  // INIT comes through /dev/fuse in both modes (and, with io_uring, the ring can be
  // registered only once the connection is initialized).
  ClassicLoop(s, s.fd, true);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  if (s.opt.mode == "classic") {
    for (unsigned i = 0; i < s.opt.threads; ++i) {
      int fd = i == 0 ? s.fd : CloneFd(s.fd);
      if (fd < 0) {
        std::fprintf(stderr, "probe: FUSE_DEV_IOC_CLONE: %s\n", std::strerror(errno));
        fd = s.fd;
      }
      threads.emplace_back([&s, fd] {
        ClassicLoop(s, fd, false);
        if (fd != s.fd) ::close(fd);
      });
    }
  } else {
    std::atomic<int> ready{0};
    const int queues = PossibleCpus();
    for (int q = 0; q < queues; ++q)
      threads.emplace_back([&s, q, &failures, &ready] {
        UringQueue(s, static_cast<uint16_t>(q), failures, ready);
      });
    while (ready.load() < queues) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    // FORGET and INTERRUPT still come through /dev/fuse.
    threads.emplace_back([&s] { ClassicLoop(s, s.fd, false); });
    std::fprintf(stderr, "probe: %d io_uring queues of %u entries registered\n", queues,
                 s.opt.depth);
  }

  int rc = 0;
  if (s.opt.self_test > 0) {
    // Fails fast when the kernel refused the ring (the reads would block until it is ready).
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (failures.load() > 0) {
      rc = 1;
    } else {
      rc = SelfTest(s) ? 0 : 1;
      std::printf("%s: %lu READ requests, largest %lu bytes, max_read %u\n", s.opt.mode.c_str(),
                  static_cast<unsigned long>(s.reads.load()),
                  static_cast<unsigned long>(s.max_read_seen.load()), s.opt.max_read);
    }
    ::umount2(s.opt.mount.c_str(), MNT_DETACH);
  } else {
    std::printf("ready\n");
    std::fflush(stdout);
  }
  for (std::thread& t : threads) t.join();
  if (s.opt.self_test <= 0)
    std::fprintf(stderr, "probe: %lu READ requests, %lu bytes, largest %lu\n",
                 static_cast<unsigned long>(s.reads.load()),
                 static_cast<unsigned long>(s.read_bytes.load()),
                 static_cast<unsigned long>(s.max_read_seen.load()));
  ::close(s.fd);
  return rc != 0 ? rc : (failures.load() > 0 ? 1 : 0);
}
