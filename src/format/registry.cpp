// The table of format drivers (generated from src/format/meson.build's
// `format_drivers` list), lookup by name, by content and by file name.
#include <strings.h>

#include <algorithm>
#include <cstring>

#include "base/endian.h"
#include "base/path.h"
#include "kvmfs/format.h"

// KVMFS_FORMAT(name) once per registered driver.
#define KVMFS_FORMAT(name) KVMFS_DECLARE_FORMAT(name)
#include "format_list.inc"
#undef KVMFS_FORMAT

namespace kvmfs {
namespace {

bool StartsWith(const uint8_t* head, size_t len, const char* magic) {
  size_t n = std::strlen(magic);
  return len >= n && std::memcmp(head, magic, n) == 0;
}

}  // namespace

Status FormatDriver::Create(Backend& file, const CreateOptions&) const {
  return Status::NotSupported(file.name() + ": kvmfs cannot create " + name() + " images");
}

std::vector<const FormatDriver*> AllFormats() {
  static const std::vector<const FormatDriver*> drivers = {
#define KVMFS_FORMAT(name) &KvmfsFormat_##name(),
#include "format_list.inc"
#undef KVMFS_FORMAT
  };
  return drivers;
}

const FormatDriver* FindFormat(const std::string& name) {
  for (const FormatDriver* f : AllFormats())
    if (name == f->name()) return f;
  return nullptr;
}

const FormatDriver* ProbeFormat(const uint8_t* head, size_t len) {
  const FormatDriver* best = FindFormat("raw");
  int best_score = 0;
  for (const FormatDriver* f : AllFormats()) {
    int score = f->Probe(head, len);
    if (score > best_score) {
      best_score = score;
      best = f;
    }
  }
  return best;
}

const FormatDriver* FormatForName(const std::string& name) {
  std::string ext = LowerExtension(name);
  // No extension, or nothing in front of it (".qcow2" says nothing).
  if (ext.size() < 2 || ext.size() == name.size() || name.back() == '/') return nullptr;
  for (const FormatDriver* f : AllFormats()) {
    std::vector<std::string> exts = f->extensions();
    if (std::find(exts.begin(), exts.end(), ext.substr(1)) != exts.end()) return f;
  }
  return nullptr;
}

std::string UnsupportedFormatMagic(const uint8_t* head, size_t len) {
  // QEMU's magics of the formats kvmfs recognises; a registered driver
  // claims its own before this table is asked.
  std::string verdict;
  if (StartsWith(head, len, "QFI\xfb")) verdict = len >= 8 && LoadBE32(head + 4) == 1 ? "qcow" : "qcow2";
  else if (len >= 68 && LoadLE32(head + 64) == 0xbeda107f) verdict = "vdi";
  else if (StartsWith(head, len, "KDMV") || StartsWith(head, len, "COWD") ||
           StartsWith(head, len, "# Disk DescriptorFile"))
    verdict = "vmdk";
  else if (StartsWith(head, len, "vhdxfile")) verdict = "vhdx";
  else if (StartsWith(head, len, "conectix")) verdict = "vpc";
  if (verdict.empty() || FindFormat(verdict) != nullptr) return "";
  return verdict;
}

std::string FormatFor(const std::string& name, const uint8_t* head, size_t len) {
  if (const FormatDriver* said = FormatForName(name)) return said->name();
  const FormatDriver* best = ProbeFormat(head, len);
  if (best != nullptr && best->Probe(head, len) > 50) return best->name();
  std::string unsupported = UnsupportedFormatMagic(head, len);
  return unsupported.empty() ? "raw" : unsupported;
}

bool FormatWritable(const std::string& format) {
  const FormatDriver* f = FindFormat(format);
  return f != nullptr && f->caps().writable;
}

}  // namespace kvmfs
