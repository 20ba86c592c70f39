#include "pool/info_json.h"

#include <type_traits>
#include <variant>

namespace kvmfs::pool {
namespace {

constexpr uint64_t kNsecPerSec = 1000000000;

nlohmann::ordered_json ObjectJson(const InfoObject& fields);

nlohmann::ordered_json ValueJson(const InfoValue& v) {
  return std::visit(
      [](const auto& x) -> nlohmann::ordered_json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, InfoObject>) {
          return ObjectJson(x);
        } else if constexpr (std::is_same_v<T, std::vector<InfoObject>>) {
          nlohmann::ordered_json list = nlohmann::ordered_json::array();
          for (const InfoObject& o : x) list.push_back(ObjectJson(o));
          return list;
        } else {
          return nlohmann::ordered_json(x);
        }
      },
      v);
}

nlohmann::ordered_json ObjectJson(const InfoObject& fields) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const InfoField& f : fields) j[f.key] = ValueJson(f.value);
  return j;
}

}  // namespace

nlohmann::ordered_json SnapshotJson(const SnapshotInfo& s) {
  nlohmann::ordered_json j;
  if (s.has_icount) j["icount"] = s.icount;
  j["vm-clock-nsec"] = s.vm_clock_nsec % kNsecPerSec;
  j["name"] = s.name;
  j["date-sec"] = s.date_sec;
  j["date-nsec"] = s.date_nsec;
  j["vm-clock-sec"] = s.vm_clock_nsec / kNsecPerSec;
  j["id"] = s.id;
  j["vm-state-size"] = s.vm_state_size;
  return j;
}

nlohmann::ordered_json InfoJson(const InfoSubject& subject) {
  const ImageInfo& info = subject.info;
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (subject.snapshot) j["snapshot"] = SnapshotJson(*subject.snapshot);
  if (!subject.snapshots.empty()) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const SnapshotInfo& s : subject.snapshots) list.push_back(SnapshotJson(s));
    j["snapshots"] = std::move(list);
  }
  if (!info.backing_filename.empty() && !info.backing_format.empty())
    j["backing-filename-format"] = info.backing_format;
  j["virtual-size"] = subject.snapshot ? subject.snapshot->disk_size : info.virtual_size;
  j["filename"] = subject.filename;
  if (info.cluster_size) j["cluster-size"] = *info.cluster_size;
  j["format"] = info.format;
  if (subject.actual_size) j["actual-size"] = *subject.actual_size;
  if (!info.format_specific_type.empty()) {
    nlohmann::ordered_json data = nlohmann::ordered_json::object();
    for (const InfoField& f : info.format_specific) data[f.key] = ValueJson(f.value);
    j["format-specific"] = {{"type", info.format_specific_type}, {"data", std::move(data)}};
  }
  // qemu-img 7.2 puts "encrypted" between the two backing names.
  if (!info.backing_filename.empty() && !subject.full_backing_filename.empty())
    j["full-backing-filename"] = subject.full_backing_filename;
  if (info.encrypted) j["encrypted"] = true;
  if (!info.backing_filename.empty()) j["backing-filename"] = info.backing_filename;
  j["dirty-flag"] = info.dirty;
  if (!subject.read_only_reason.empty()) j["read-only-reason"] = subject.read_only_reason;
  if (subject.store_info && !subject.store_kind.empty()) j[subject.store_kind] = ObjectJson(*subject.store_info);
  return j;
}

nlohmann::ordered_json CheckJson(const std::string& filename, const std::string& format,
                                 const CheckResult& r) {
  // qemu-img's order is that of QEMU's QDict buckets for these key names.
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  auto count = [&](const char* key, uint64_t v) {
    if (v != 0) j[key] = v;
  };
  count("image-end-offset", r.image_end_offset);
  count("compressed-clusters", r.compressed_clusters);
  count("total-clusters", r.total_clusters);
  count("corruptions", r.corruptions);
  count("corruptions-fixed", r.corruptions_fixed);
  j["check-errors"] = r.check_errors;
  count("leaks", r.leaks);
  count("allocated-clusters", r.allocated_clusters);
  j["filename"] = filename;
  j["format"] = format;
  count("fragmented-clusters", r.fragmented_clusters);
  if (!r.failure.empty()) j["error"] = "Check failed: " + r.failure;
  return j;
}

nlohmann::ordered_json ErrorJson(const std::string& filename, const std::string& format,
                                 const std::string& error) {
  nlohmann::ordered_json j;
  j["filename"] = filename;
  j["format"] = format.empty() ? "unknown" : format;
  j["error"] = error;
  return j;
}

std::string RenderJson(const nlohmann::ordered_json& j) {
  return j.dump(4, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

}  // namespace kvmfs::pool
