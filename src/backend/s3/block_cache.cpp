#include "backend/s3/block_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <lz4.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <map>

#ifdef KVMFS_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

#include "base/endian.h"

namespace kvmfs::s3 {
namespace {

// CRC-32 (zlib's polynomial): libdeflate's is several times faster (PCLMUL)
// and computes the same value, so entries stay readable either way.
uint32_t Crc32(const uint8_t* p, size_t n) {
#ifdef KVMFS_HAVE_LIBDEFLATE
  return libdeflate_crc32(0, p, n);
#else
  return static_cast<uint32_t>(crc32_z(0, p, n));
#endif
}

// ---- The entry file --------------------------------------------------------
// [header 48 bytes][identity: bucket \0 key \0 etag][payload: LZ4 block or raw]
constexpr char kMagic[8] = {'K', 'V', 'M', 'F', 'S', 'B', 'C', '1'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kFlagLz4 = 1;
constexpr size_t kHeaderSize = 48;
constexpr size_t kMaxBlock = 16u << 20;
constexpr size_t kMaxIdentity = 8192;

struct EntryHeader {
  uint32_t version = kVersion;
  uint32_t flags = 0;
  uint64_t index = 0;
  uint32_t raw_len = 0;
  uint32_t stored_len = 0;
  uint32_t ident_len = 0;
  uint32_t payload_crc = 0;  // CRC-32 of identity + payload
  // header_crc (CRC-32 of bytes 0..39) and 4 reserved bytes follow.

  void Encode(uint8_t* p) const {
    std::memcpy(p, kMagic, 8);
    StoreLE32(p + 8, version);
    StoreLE32(p + 12, flags);
    StoreLE32(p + 16, static_cast<uint32_t>(index));
    StoreLE32(p + 20, static_cast<uint32_t>(index >> 32));
    StoreLE32(p + 24, raw_len);
    StoreLE32(p + 28, stored_len);
    StoreLE32(p + 32, ident_len);
    StoreLE32(p + 36, payload_crc);
    StoreLE32(p + 40, static_cast<uint32_t>(crc32_z(0, p, 40)));
    StoreLE32(p + 44, 0);
  }
  // False when the header is not intact.
  bool Decode(const uint8_t* p) {
    if (std::memcmp(p, kMagic, 8) != 0) return false;
    if (LoadLE32(p + 40) != static_cast<uint32_t>(crc32_z(0, p, 40))) return false;
    version = LoadLE32(p + 8);
    flags = LoadLE32(p + 12);
    index = LoadLE32(p + 16) | uint64_t{LoadLE32(p + 20)} << 32;
    raw_len = LoadLE32(p + 24);
    stored_len = LoadLE32(p + 28);
    ident_len = LoadLE32(p + 32);
    payload_crc = LoadLE32(p + 36);
    return version == kVersion && (flags & ~kFlagLz4) == 0 && raw_len <= kMaxBlock &&
           stored_len <= kMaxBlock && ident_len <= kMaxIdentity;
  }
};
static_assert(kHeaderSize == 48, "entry header layout");

std::string Identity(const BlockKey& k) {
  std::string id = k.bucket;
  id.push_back('\0');
  id += k.key;
  id.push_back('\0');
  id += k.etag;
  return id;
}

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string Hex(uint64_t v, int digits) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(static_cast<size_t>(digits), '0');
  for (int i = digits - 1; i >= 0; --i, v >>= 4) out[static_cast<size_t>(i)] = kHex[v & 15];
  return out;
}

// The block index in as many hex digits as it needs.
std::string HexIndex(uint64_t v) {
  int digits = 1;
  while (digits < 16 && (v >> (4 * digits)) != 0) ++digits;
  return Hex(v, digits);
}

uint64_t DiskBytes(uint64_t file_size) { return (file_size + 4095) & ~uint64_t{4095}; }

bool IsEntryName(const std::string& n) {
  // "<16 hex>-<8 hex>-<hex index>"
  return n.size() > 26 && n[16] == '-' && n[25] == '-' &&
         n.find_first_not_of("0123456789abcdef-") == std::string::npos;
}

Status WriteAllAt(int fd, const std::vector<uint8_t>& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Status::FromErrno(n < 0 ? errno : EIO, "write");
    done += static_cast<size_t>(n);
  }
  return Status::OK();
}

// The process-wide caches, by directory.
Mutex g_caches_mu;
std::map<std::string, std::weak_ptr<BlockCache>>& Caches() {
  static auto* caches = new std::map<std::string, std::weak_ptr<BlockCache>>();
  return *caches;
}

}  // namespace

std::vector<uint8_t> EncodeCacheEntry(const BlockKey& key, const uint8_t* data, size_t len) {
  std::string id = Identity(key);
  std::vector<uint8_t> out(kHeaderSize + id.size() + static_cast<size_t>(LZ4_compressBound(
                                                         static_cast<int>(len))));
  uint8_t* payload = out.data() + kHeaderSize + id.size();
  EntryHeader h;
  h.index = key.index;
  h.raw_len = static_cast<uint32_t>(len);
  h.ident_len = static_cast<uint32_t>(id.size());
  // Compressed only when that saves something (an incompressible block is
  // stored: LZ4 stops as soon as it cannot fit len - 1 bytes).
  int clen = len > 0 ? LZ4_compress_default(reinterpret_cast<const char*>(data),
                                            reinterpret_cast<char*>(payload),
                                            static_cast<int>(len), static_cast<int>(len - 1))
                     : 0;
  if (clen > 0) {
    h.flags = kFlagLz4;
    h.stored_len = static_cast<uint32_t>(clen);
  } else {
    h.stored_len = static_cast<uint32_t>(len);
    if (len > 0) std::memcpy(payload, data, len);
  }
  std::memcpy(out.data() + kHeaderSize, id.data(), id.size());
  h.payload_crc = Crc32(out.data() + kHeaderSize, id.size() + h.stored_len);
  h.Encode(out.data());
  out.resize(kHeaderSize + id.size() + h.stored_len);
  return out;
}

bool DecodeCacheEntryInto(const uint8_t* file, size_t file_len, const BlockKey& key, uint8_t* out,
                          size_t len) {
  EntryHeader h;
  if (file_len < kHeaderSize || !h.Decode(file)) return false;
  if (file_len != kHeaderSize + h.ident_len + h.stored_len) return false;
  if (h.raw_len != len || h.index != key.index) return false;
  std::string id = Identity(key);
  if (h.ident_len != id.size() || std::memcmp(file + kHeaderSize, id.data(), id.size()) != 0) {
    return false;
  }
  if (Crc32(file + kHeaderSize, h.ident_len + h.stored_len) != h.payload_crc) return false;
  const uint8_t* payload = file + kHeaderSize + h.ident_len;
  if ((h.flags & kFlagLz4) != 0) {
    int n = LZ4_decompress_safe(reinterpret_cast<const char*>(payload), reinterpret_cast<char*>(out),
                                static_cast<int>(h.stored_len), static_cast<int>(len));
    return n >= 0 && static_cast<size_t>(n) == len;
  }
  if (h.stored_len != len) return false;
  if (len > 0) std::memcpy(out, payload, len);
  return true;
}

std::optional<std::vector<uint8_t>> DecodeCacheEntry(const std::vector<uint8_t>& file,
                                                     const BlockKey& key, size_t len) {
  std::vector<uint8_t> out(len);
  if (!DecodeCacheEntryInto(file.data(), file.size(), key, out.data(), len)) return std::nullopt;
  return out;
}

Result<std::shared_ptr<BlockCache>> BlockCache::Open(const std::string& dir, uint64_t max_bytes) {
  if (max_bytes < (1u << 20)) {
    return Status::InvalidArgument("cache_max must be at least 1 MiB");
  }
  if (dir.empty() || dir.front() != '/') {
    return Status::InvalidArgument("cache_dir `" + dir + "` must be an absolute path");
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "cache_dir " + dir);
  }
  char canon[PATH_MAX];
  if (::realpath(dir.c_str(), canon) == nullptr) return Status::FromErrno(errno, "cache_dir " + dir);
  std::string path = canon;
  MutexLock lock(g_caches_mu);
  auto& caches = Caches();
  if (auto it = caches.find(path); it != caches.end()) {
    if (auto cache = it->second.lock()) {
      cache->SetMaxBytes(max_bytes);
      return cache;
    }
  }
  UniqueFd lock_fd(::open((path + "/.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock_fd.valid()) return Status::FromErrno(errno, "cache_dir " + path + "/.lock");
  if (::flock(lock_fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Status::Busy("cache_dir " + path + " is in use by another kvmfs process");
    }
    return Status::FromErrno(errno, "cache_dir " + path + "/.lock");
  }
  std::shared_ptr<BlockCache> cache(new BlockCache(path, max_bytes, std::move(lock_fd)));
  KVMFS_RETURN_IF_ERROR(cache->Scan());
  caches[path] = cache;
  return cache;
}

BlockCache::BlockCache(std::string dir, uint64_t max_bytes, UniqueFd lock)
    : dir_(std::move(dir)), lock_(std::move(lock)), max_bytes_(max_bytes) {}

BlockCache::~BlockCache() = default;

void BlockCache::SetMaxBytes(uint64_t max_bytes) {
  MutexLock lock(mu_);
  max_bytes_ = max_bytes;
  EvictLocked(0);
}

uint64_t BlockCache::max_bytes() const {
  MutexLock lock(mu_);
  return max_bytes_;
}

Status BlockCache::Scan() {
  struct Found {
    std::string name;
    uint64_t bytes;
    struct timespec mtime;
  };
  std::vector<Found> found;
  for (int sub = 0; sub < 256; ++sub) {
    std::string subdir = Hex(static_cast<uint64_t>(sub), 2);
    std::string path = dir_ + "/" + subdir;
    DIR* d = ::opendir(path.c_str());
    if (d == nullptr) {
      if (errno == ENOENT) continue;
      return Status::FromErrno(errno, "cache_dir " + path);
    }
    while (struct dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string full = path + "/" + name;
      struct stat st;
      if (::lstat(full.c_str(), &st) != 0) continue;
      // Temporaries of a crashed mount and anything that is not ours go.
      if (!S_ISREG(st.st_mode) || !IsEntryName(name)) {
        if (S_ISREG(st.st_mode)) ::unlink(full.c_str());
        continue;
      }
      found.push_back({subdir + "/" + name, DiskBytes(static_cast<uint64_t>(st.st_size)),
                       st.st_mtim});
    }
    ::closedir(d);
  }
  // Oldest first, so the most recently used ends at the front of the LRU.
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
    if (a.mtime.tv_sec != b.mtime.tv_sec) return a.mtime.tv_sec < b.mtime.tv_sec;
    return a.mtime.tv_nsec < b.mtime.tv_nsec;
  });
  MutexLock lock(mu_);
  for (const Found& f : found) Index(f.name, f.bytes);
  EvictLocked(0);
  return Status::OK();
}

std::string BlockCache::RelName(const BlockKey& key) const {
  std::string obj = key.bucket;
  obj.push_back('\0');
  obj += key.key;
  uint64_t h = Fnv1a64(obj);
  return Hex(h >> 56, 2) + "/" + Hex(h, 16) + "-" + Hex(Fnv1a64(key.etag), 8) + "-" +
         HexIndex(key.index);
}

void BlockCache::Index(const std::string& name, uint64_t bytes) {
  if (auto it = index_.find(name); it != index_.end()) Forget(name);
  lru_.push_front(name);
  index_[name] = Entry{bytes, lru_.begin()};
  bytes_ += bytes;
  stats_.entries = index_.size();
  stats_.bytes = bytes_;
}

void BlockCache::Forget(const std::string& name) {
  auto it = index_.find(name);
  if (it == index_.end()) return;
  bytes_ -= it->second.bytes;
  lru_.erase(it->second.lru);
  index_.erase(it);
  stats_.entries = index_.size();
  stats_.bytes = bytes_;
}

size_t BlockCache::EvictLocked(uint64_t incoming) {
  size_t n = 0;
  while (!lru_.empty() && bytes_ + incoming > max_bytes_) {
    std::string victim = lru_.back();
    ::unlink((dir_ + "/" + victim).c_str());
    Forget(victim);
    ++stats_.evictions;
    ++n;
  }
  return n;
}

bool BlockCache::Contains(const BlockKey& key) const {
  std::string name = RelName(key);
  MutexLock lock(mu_);
  return index_.count(name) != 0;
}

std::optional<std::vector<uint8_t>> BlockCache::Get(const BlockKey& key, size_t len) {
  std::vector<uint8_t> out(len);
  if (!GetInto(key, out.data(), len)) return std::nullopt;
  return out;
}

bool BlockCache::GetInto(const BlockKey& key, uint8_t* out, size_t len) {
  std::string name = RelName(key);
  {
    MutexLock lock(mu_);
    auto it = index_.find(name);
    if (it == index_.end()) {
      ++stats_.misses;
      return false;
    }
    lru_.splice(lru_.begin(), lru_, it->second.lru);
  }
  std::string path = dir_ + "/" + name;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOATIME));
  if (!fd.valid() && errno == EPERM) fd.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  bool ok = false;
  struct stat st;
  if (fd.valid() && ::fstat(fd.get(), &st) == 0 &&
      static_cast<uint64_t>(st.st_size) <= kMaxBlock + 65536) {
    // Grown once per thread, never zeroed again.
    thread_local std::vector<uint8_t> file;
    const size_t size = static_cast<size_t>(st.st_size);
    if (file.size() < size) file.resize(size);
    ssize_t n = ::pread(fd.get(), file.data(), size, 0);
    ok = n == static_cast<ssize_t>(size) && DecodeCacheEntryInto(file.data(), size, key, out, len);
    // The LRU order of the next mount comes from mtimes (outside the lock).
    if (ok) ::futimens(fd.get(), nullptr);
  }
  MutexLock lock(mu_);
  if (!ok) {
    // Torn, foreign or gone: never served, removed so it is fetched anew.
    if (fd.valid()) {
      ::unlink(path.c_str());
      ++stats_.torn;
      spdlog::warn("s3 cache: dropped a damaged entry {} (s3://{}/{} block {})", path, key.bucket,
                   key.key, key.index);
    }
    Forget(name);
    ++stats_.misses;
    return false;
  }
  ++stats_.hits;
  return true;
}

BlockCache::PutResult BlockCache::Put(const BlockKey& key, const uint8_t* data, size_t len) {
  if (len > kMaxBlock) return {};
  std::string name = RelName(key);
  std::vector<uint8_t> bytes = EncodeCacheEntry(key, data, len);
  std::string tmp;
  {
    MutexLock lock(mu_);
    if (index_.count(name) != 0) return {};
    tmp = dir_ + "/" + name.substr(0, 2) + "/tmp." + std::to_string(::getpid()) + "." +
          std::to_string(++tmp_counter_);
  }
  Status st;
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid() && errno == ENOENT) {
    ::mkdir((dir_ + "/" + name.substr(0, 2)).c_str(), 0700);
    fd.reset(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  }
  if (!fd.valid()) {
    st = Status::FromErrno(errno, tmp);
  } else {
    st = WriteAllAt(fd.get(), bytes);
    fd.reset();
    if (st.ok() && ::rename(tmp.c_str(), (dir_ + "/" + name).c_str()) != 0) {
      st = Status::FromErrno(errno, "rename " + tmp);
    }
  }
  MutexLock lock(mu_);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    if (!warned_) spdlog::warn("s3 cache {}: cannot store blocks: {}", dir_, st.ToString());
    warned_ = true;
    return {};
  }
  uint64_t disk = DiskBytes(bytes.size());
  PutResult r{true, EvictLocked(disk)};
  Index(name, disk);
  ++stats_.inserts;
  return r;
}

void BlockCache::DropOtherVersions(const std::string& bucket, const std::string& key,
                                   const std::string& etag) {
  BlockKey probe{bucket, key, etag, 0};
  std::string keep = RelName(probe);
  std::string obj_prefix = keep.substr(0, 2 + 1 + 16 + 1);  // "xx/<obj hash>-"
  std::string keep_prefix = keep.substr(0, obj_prefix.size() + 8 + 1);
  MutexLock lock(mu_);
  std::vector<std::string> victims;
  for (const auto& [name, entry] : index_) {
    if (name.compare(0, obj_prefix.size(), obj_prefix) == 0 &&
        name.compare(0, keep_prefix.size(), keep_prefix) != 0) {
      victims.push_back(name);
    }
  }
  for (const std::string& v : victims) {
    ::unlink((dir_ + "/" + v).c_str());
    Forget(v);
    ++stats_.evictions;
  }
}

BlockCacheStats BlockCache::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

}  // namespace kvmfs::s3
