#include "pool/detect.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "base/mutex.h"

#include "base/endian.h"
#include "base/path.h"
#include "config/config.h"
#include "kvmfs/backend.h"
#include "kvmfs/format.h"

namespace kvmfs::pool {
namespace {

// Bound on remembered verdicts; the map is simply cleared when it is reached.
constexpr size_t kMaxProbeEntries = 65536;

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool HasImageExtension(const std::string& name, const std::vector<std::string>& extensions) {
  std::string ext = LowerExtension(name);
  // No extension, or nothing in front of it (".qcow2" is not an image name).
  if (ext.size() < 2 || ext.size() == name.size()) return false;
  return std::find(extensions.begin(), extensions.end(), ext.substr(1)) != extensions.end();
}

bool HasImageExtension(const std::string& name) {
  return HasImageExtension(name, config::DefaultExtensions());
}

bool IsVmdkExtentName(const std::string& name) {
  std::string lower = Lower(name);
  if (!EndsWith(lower, ".vmdk")) return false;
  std::string stem = lower.substr(0, lower.size() - 5);
  if (EndsWith(stem, "-flat")) return true;
  // -sNNN / -fNNN: a dash, s or f, and exactly three digits.
  if (stem.size() >= 5) {
    const char* t = stem.c_str() + stem.size() - 5;
    return t[0] == '-' && (t[1] == 's' || t[1] == 'f') && std::isdigit((unsigned char)t[2]) &&
           std::isdigit((unsigned char)t[3]) && std::isdigit((unsigned char)t[4]);
  }
  return false;
}

std::string ProbeMagic(const uint8_t* head, size_t len) {
  const FormatDriver* best = ProbeFormat(head, len);
  if (best != nullptr && best->Probe(head, len) > 50) return best->name();
  return UnsupportedFormatMagic(head, len);
}

std::string ProbeCache::Probe(const std::string& path, const struct stat& st) {
  return ProbeEntry(path, st).verdict;
}

HeaderPeek ProbeCache::Peek(const std::string& path, const struct stat& st) {
  HeaderPeek peek;
  peek.format = FormatOf(path, st);
  const FormatDriver* driver = FindFormat(peek.format);
  if (driver == nullptr) return peek;
  // A driver that can tell without any bytes (raw) reads nothing.
  if (FormatPeek blind = driver->Peek(nullptr, 0); blind.known) {
    static_cast<FormatPeek&>(peek) = blind;
    return peek;
  }
  Entry entry = ProbeEntry(path, st);
  // Only what the content confirms: a file whose name says a format it does
  // not hold is not peeked (opening it reports why).
  if (entry.verdict == peek.format) static_cast<FormatPeek&>(peek) = entry.peek;
  return peek;
}

ProbeCache::Entry ProbeCache::ProbeEntry(const std::string& path, const struct stat& st) {
  FileKey key = FileKey::FromStat(st);
  std::string id = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  {
    MutexLock lock(mu_);
    auto it = entries_.find(id);
    if (it != entries_.end() && it->second.key == key) return it->second;
  }
  std::string verdict;
  FormatPeek peek;
  auto file = store_->Open(path, false);
  if (file.ok()) {
    uint8_t head[kProbeBytes];
    // A block device has no st_size: ask the device (BLKGETSIZE64).
    int64_t size = st.st_size;
    if (S_ISBLK(st.st_mode)) {
      auto dev_size = (*file)->Size();
      size = dev_size.ok() ? static_cast<int64_t>(*dev_size) : 0;
    }
    size_t len = static_cast<size_t>(std::min<int64_t>(size, kProbeBytes));
    if ((*file)->ReadAt(0, head, len).ok()) {
      verdict = ProbeMagic(head, len);
      if (const FormatDriver* driver = FindFormat(verdict)) peek = driver->Peek(head, len);
    }
  }
  Entry entry{key, verdict, peek};
  MutexLock lock(mu_);
  ++reads_;
  if (entries_.size() >= kMaxProbeEntries) entries_.clear();
  entries_[id] = entry;
  return entry;
}

std::string ProbeCache::FormatOf(const std::string& path, const struct stat& st) {
  if (const FormatDriver* said = FormatForName(BaseName(path))) return said->name();
  std::string verdict = Probe(path, st);
  return verdict.empty() ? "raw" : verdict;
}

size_t ProbeCache::reads() const {
  MutexLock lock(mu_);
  return reads_;
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace kvmfs::pool
