#include "pool/snapshot_names.h"

#include <set>

namespace kvmfs::pool {
namespace {

std::string Escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '%') out += "%25";
    else if (c == '/') out += "%2F";
    else if (c == '\0') out += "%00";
    else out += c;
  }
  return out;
}

bool Unusable(const std::string& s) { return s.empty() || s == "." || s == ".."; }

}  // namespace

std::string EscapeSnapshotName(const std::string& name, const std::string& id) {
  if (!Unusable(name)) return Escape(name);
  std::string escaped_id = Escape(id);
  // A hostile image may give an unusable id as well; "@" keeps it a file name.
  return Unusable(escaped_id) ? "@" + escaped_id : escaped_id;
}

std::vector<std::string> SnapshotDirNames(const std::vector<SnapshotInfo>& snapshots) {
  std::vector<std::string> names;
  std::set<std::string> taken;
  names.reserve(snapshots.size());
  for (const SnapshotInfo& s : snapshots) {
    std::string name = EscapeSnapshotName(s.name, s.id);
    std::string suffix = "@" + Escape(s.id);
    while (!taken.insert(name).second) name += suffix;
    names.push_back(std::move(name));
  }
  return names;
}

std::optional<std::string> SnapshotNameForDir(const std::string& dir_name) {
  std::string name;
  for (size_t i = 0; i < dir_name.size(); ++i) {
    if (dir_name[i] != '%') {
      name += dir_name[i];
    } else if (dir_name.compare(i, 3, "%25") == 0) {
      name += '%';
      i += 2;
    } else if (dir_name.compare(i, 3, "%2F") == 0) {
      name += '/';
      i += 2;
    } else {
      return std::nullopt;
    }
  }
  if (Unusable(name) || dir_name.find('/') != std::string::npos) return std::nullopt;
  return name;
}

}  // namespace kvmfs::pool
