#include "backend/s3/overlay.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "base/endian.h"
#include "base/mutex.h"
#include "base/unique_fd.h"

namespace kvmfs::s3 {
namespace {

constexpr uint32_t kClusterBits = 16;
constexpr uint64_t kCluster = uint64_t{1} << kClusterBits;
constexpr uint64_t kMaxL1Bytes = 32u << 20;      // QEMU's QCOW_MAX_L1_SIZE
constexpr uint64_t kMaxVirtualSize = uint64_t{1} << 56;
constexpr size_t kMaxBackingName = 1023;        // QEMU's limit
constexpr uint32_t kExtBackingFormat = 0xE2792ACA;
constexpr size_t kHeaderLength = 112;

Mutex g_create_mu;  // one creation at a time in this process

uint64_t Fnv1a64(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

Status WriteFileDurably(const std::string& path, const void* data, size_t len) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status::FromErrno(errno, tmp);
  const auto* p = static_cast<const uint8_t*>(data);
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::write(fd.get(), p + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Status st = Status::FromErrno(n < 0 ? errno : EIO, tmp);
      ::unlink(tmp.c_str());
      return st;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    Status st = Status::FromErrno(errno, path);
    ::unlink(tmp.c_str());
    return st;
  }
  return Status::OK();
}

Status SyncDir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid() || ::fsync(fd.get()) != 0) return Status::FromErrno(errno, dir);
  return Status::OK();
}

Status MakeDirs(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    std::string part = dir.substr(0, pos);
    if (::mkdir(part.c_str(), 0700) != 0 && errno != EEXIST) return Status::FromErrno(errno, part);
  }
  return Status::OK();
}

std::string BackingName(const OverlayTarget& t) { return "s3://" + t.bucket + "/" + t.key; }

Result<std::optional<OverlayInfo>> ReadExisting(const OverlayInfo& loc, const OverlayTarget& t) {
  struct stat st;
  if (::stat(loc.path.c_str(), &st) != 0) {
    if (errno == ENOENT) return std::optional<OverlayInfo>();
    return Status::FromErrno(errno, loc.path);
  }
  FILE* f = std::fopen(loc.meta_path.c_str(), "re");
  if (f == nullptr) return Status::Corruption(loc.path + ": its sidecar " + loc.meta_path + " is missing");
  std::string text(4096, '\0');
  text.resize(std::fread(text.data(), 1, text.size(), f));
  std::fclose(f);
  nlohmann::json meta = nlohmann::json::parse(text, nullptr, false);
  if (meta.is_discarded() || !meta.is_object() || !meta["etag"].is_string() ||
      !meta["bucket"].is_string() || !meta["key"].is_string() || !meta["size"].is_number_unsigned()) {
    return Status::Corruption(loc.meta_path + ": not an overlay description");
  }
  if (meta["bucket"] != t.bucket || meta["key"] != t.key) {
    return Status::Corruption(loc.meta_path + ": describes another object");
  }
  if (meta["etag"] != t.etag || meta["size"].get<uint64_t>() != t.object_size) {
    return Status::FromErrno(ESTALE, loc.path + ": made over version " +
                                         meta["etag"].get<std::string>() + " of " +
                                         BackingName(t) + ", which is now " + t.etag +
                                         " (move the overlay away to start over)");
  }
  return std::optional<OverlayInfo>(loc);
}

}  // namespace

OverlayInfo OverlayLocation(const std::string& overlay_dir, const std::string& bucket,
                            const std::string& key) {
  std::string base = key.substr(key.find_last_of('/') == std::string::npos
                                    ? 0
                                    : key.find_last_of('/') + 1);
  std::string clean;
  for (char c : base.substr(0, 64)) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.';
    clean.push_back(ok ? c : '_');
  }
  if (clean.empty() || clean[0] == '.') clean = "_" + clean;
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx",
                static_cast<unsigned long long>(Fnv1a64(bucket + std::string(1, '\0') + key)));
  OverlayInfo info;
  info.path = overlay_dir + "/" + bucket + "/" + clean + "." + hash + ".qcow2";
  info.meta_path = info.path + ".json";
  info.backing = "s3://" + bucket + "/" + key;
  return info;
}

Result<std::optional<OverlayInfo>> FindOverlay(const std::string& overlay_dir,
                                               const OverlayTarget& target) {
  return ReadExisting(OverlayLocation(overlay_dir, target.bucket, target.key), target);
}

Result<OverlayInfo> CreateOverlay(const std::string& overlay_dir, const OverlayTarget& target,
                                  uint64_t virtual_size) {
  if (overlay_dir.empty() || overlay_dir[0] != '/') {
    return Status::InvalidArgument("overlay_dir `" + overlay_dir + "` must be an absolute path");
  }
  OverlayInfo loc = OverlayLocation(overlay_dir, target.bucket, target.key);
  KVMFS_ASSIGN_OR_RETURN(std::vector<uint8_t> image,
                         EncodeEmptyQcow2(virtual_size, loc.backing, target.backing_format));
  MutexLock lock(g_create_mu);
  KVMFS_ASSIGN_OR_RETURN(auto existing, ReadExisting(loc, target));
  if (existing) return *existing;
  std::string dir = overlay_dir + "/" + target.bucket;
  KVMFS_RETURN_IF_ERROR(MakeDirs(dir));
  // The sidecar first: a qcow2 without one is never left behind.
  nlohmann::json meta = {{"bucket", target.bucket},       {"key", target.key},
                         {"etag", target.etag},           {"size", target.object_size},
                         {"backing", loc.backing},        {"backing_format", target.backing_format},
                         {"virtual_size", virtual_size}};
  std::string text = meta.dump(2) + "\n";
  KVMFS_RETURN_IF_ERROR(WriteFileDurably(loc.meta_path, text.data(), text.size()));
  KVMFS_RETURN_IF_ERROR(WriteFileDurably(loc.path, image.data(), image.size()));
  KVMFS_RETURN_IF_ERROR(SyncDir(dir));
  return loc;
}

Result<std::vector<uint8_t>> EncodeEmptyQcow2(uint64_t virtual_size, const std::string& backing,
                                              const std::string& backing_format) {
  if (virtual_size == 0 || virtual_size > kMaxVirtualSize) {
    return Status::InvalidArgument("overlay: virtual size " + std::to_string(virtual_size) +
                                   " out of range");
  }
  if (backing.empty() || backing.size() > kMaxBackingName || backing_format.size() > 16 ||
      backing_format.find('\0') != std::string::npos) {
    return Status::InvalidArgument("overlay: backing name or format too long");
  }
  const uint64_t l2_entries = kCluster / 8;
  const uint64_t l1_size = (virtual_size + kCluster * l2_entries - 1) / (kCluster * l2_entries);
  if (l1_size * 8 > kMaxL1Bytes) return Status::InvalidArgument("overlay: L1 table too large");
  const uint64_t l1_clusters = (l1_size * 8 + kCluster - 1) / kCluster;
  const uint64_t refcount_table = kCluster, refcount_block = 2 * kCluster, l1 = 3 * kCluster;
  const uint64_t clusters = 3 + l1_clusters;  // all in use, refcount 1

  // Header cluster: header, backing-format extension, end, backing name.
  std::vector<uint8_t> out(l1 + l1_size * 8, 0);
  uint8_t* h = out.data();
  StoreBE32(h + 0, 0x514649fb);
  StoreBE32(h + 4, 3);
  size_t fmt_padded = (backing_format.size() + 7) & ~size_t{7};
  size_t ext_end = kHeaderLength + (backing_format.empty() ? 0 : 8 + fmt_padded) + 8;
  StoreBE64(h + 8, ext_end);
  StoreBE32(h + 16, static_cast<uint32_t>(backing.size()));
  StoreBE32(h + 20, kClusterBits);
  StoreBE64(h + 24, virtual_size);
  StoreBE32(h + 36, static_cast<uint32_t>(l1_size));
  StoreBE64(h + 40, l1);
  StoreBE64(h + 48, refcount_table);
  StoreBE32(h + 56, 1);
  StoreBE32(h + 96, 4);  // 16-bit refcounts
  StoreBE32(h + 100, kHeaderLength);
  size_t pos = kHeaderLength;
  if (!backing_format.empty()) {
    StoreBE32(h + pos, kExtBackingFormat);
    StoreBE32(h + pos + 4, static_cast<uint32_t>(backing_format.size()));
    std::copy(backing_format.begin(), backing_format.end(), h + pos + 8);
    pos += 8 + fmt_padded;
  }
  pos += 8;  // end of extensions: type 0, length 0
  std::copy(backing.begin(), backing.end(), h + pos);
  StoreBE64(out.data() + refcount_table, refcount_block);
  for (uint64_t c = 0; c < clusters; ++c) StoreBE16(out.data() + refcount_block + 2 * c, 1);
  return out;
}

}  // namespace kvmfs::s3
