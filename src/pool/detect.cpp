#include "pool/detect.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "base/endian.h"
#include "base/path.h"
#include "config/config.h"
#include "kvmfs/backend.h"
#include "kvmfs/format.h"

namespace kvmfs::pool {
namespace {

constexpr size_t kProbeBytes = 512;
// Bound on remembered verdicts; the map is simply cleared when it is reached.
constexpr size_t kMaxProbeEntries = 65536;

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool StartsWith(const uint8_t* head, size_t len, const char* magic) {
  size_t n = std::strlen(magic);
  return len >= n && std::memcmp(head, magic, n) == 0;
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

bool NameSaysRaw(const std::string& name) {
  std::string ext = LowerExtension(name);
  return ext == ".raw" || ext == ".iso";
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
  if (StartsWith(head, len, "QFI\xfb")) {
    // Version 1 is qcow; any other version goes to the qcow2 driver, which
    // says what is wrong with it (QEMU would fall back to raw and show the
    // header as disk content).
    if (len >= 8 && LoadBE32(head + 4) == 1) return "qcow";
    return "qcow2";
  }
  if (len >= 68 && LoadLE32(head + 64) == 0xbeda107f) return "vdi";
  if (StartsWith(head, len, "KDMV") || StartsWith(head, len, "COWD") ||
      StartsWith(head, len, "# Disk DescriptorFile"))
    return "vmdk";
  if (StartsWith(head, len, "vhdxfile")) return "vhdx";
  if (StartsWith(head, len, "conectix")) return "vpc";
  // A driver this table does not know yet (its probe must be sure: > 50).
  const FormatDriver* best = ProbeFormat(head, len);
  if (best != nullptr && std::strcmp(best->name(), "raw") != 0 && best->Probe(head, len) > 50)
    return best->name();
  return "";
}

std::string ProbeCache::Probe(const std::string& path, const struct stat& st) {
  return ProbeEntry(path, st).verdict;
}

HeaderPeek ProbeCache::Peek(const std::string& path, const struct stat& st) {
  HeaderPeek peek;
  if (NameSaysRaw(BaseName(path))) {
    peek.format = "raw";
    peek.known = true;
    return peek;
  }
  Entry entry = ProbeEntry(path, st);
  if (entry.verdict.empty()) {
    peek.format = "raw";
    peek.known = true;
    return peek;
  }
  if (entry.verdict == "qcow2") return entry.peek;
  peek.format = entry.verdict;
  return peek;
}

ProbeCache::Entry ProbeCache::ProbeEntry(const std::string& path, const struct stat& st) {
  FileKey key = FileKey::FromStat(st);
  std::string id = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it != entries_.end() && it->second.key == key) return it->second;
  }
  std::string verdict;
  HeaderPeek peek;
  auto file = OpenLocalFile(path, false);
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
      // qcow2 (v2 and v3): backing_file_offset at 8, nb_snapshots at 60.
      if (verdict == "qcow2" && len >= 72) {
        peek.format = verdict;
        peek.known = true;
        peek.has_backing = LoadBE64(head + 8) != 0;
        peek.snapshots = LoadBE32(head + 60);
      }
    }
  }
  if (!peek.known) peek.format = verdict;
  Entry entry{key, verdict, peek};
  std::lock_guard lock(mu_);
  ++reads_;
  if (entries_.size() >= kMaxProbeEntries) entries_.clear();
  entries_[id] = entry;
  return entry;
}

std::string ProbeCache::FormatOf(const std::string& path, const struct stat& st) {
  if (NameSaysRaw(BaseName(path))) return "raw";
  std::string verdict = Probe(path, st);
  return verdict.empty() ? "raw" : verdict;
}

size_t ProbeCache::reads() const {
  std::lock_guard lock(mu_);
  return reads_;
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace kvmfs::pool
