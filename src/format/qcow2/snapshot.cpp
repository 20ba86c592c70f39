// The internal snapshot table (QEMU qcow2_read_snapshots), read with every
// bound QEMU applies: entry count, extra data size, total table size, and
// all of it inside the file; and snapshot create/delete (qcow2-snapshot.c)
// as one atomic switch of fresh tables by a single header write (commit.cpp).
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "base/endian.h"
#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {

SnapshotHeaderRaw SnapshotHeaderRaw::Decode(const uint8_t* p) {
  SnapshotHeaderRaw s{};
  s.l1_table_offset = LoadBE64(p + offsetof(SnapshotHeaderRaw, l1_table_offset));
  s.l1_size = LoadBE32(p + offsetof(SnapshotHeaderRaw, l1_size));
  s.id_str_size = LoadBE16(p + offsetof(SnapshotHeaderRaw, id_str_size));
  s.name_size = LoadBE16(p + offsetof(SnapshotHeaderRaw, name_size));
  s.date_sec = LoadBE32(p + offsetof(SnapshotHeaderRaw, date_sec));
  s.date_nsec = LoadBE32(p + offsetof(SnapshotHeaderRaw, date_nsec));
  s.vm_clock_nsec = LoadBE64(p + offsetof(SnapshotHeaderRaw, vm_clock_nsec));
  s.vm_state_size = LoadBE32(p + offsetof(SnapshotHeaderRaw, vm_state_size));
  s.extra_data_size = LoadBE32(p + offsetof(SnapshotHeaderRaw, extra_data_size));
  return s;
}

SnapshotExtraData SnapshotExtraData::Decode(const uint8_t* p, size_t len) {
  uint8_t buf[sizeof(SnapshotExtraData)] = {};
  std::memcpy(buf, p, std::min(len, sizeof buf));
  SnapshotExtraData e{};
  e.vm_state_size_large = LoadBE64(buf + offsetof(SnapshotExtraData, vm_state_size_large));
  e.disk_size = LoadBE64(buf + offsetof(SnapshotExtraData, disk_size));
  e.icount = LoadBE64(buf + offsetof(SnapshotExtraData, icount));
  return e;
}

void SnapshotHeaderRaw::Encode(uint8_t* p) const {
  StoreBE64(p + offsetof(SnapshotHeaderRaw, l1_table_offset), l1_table_offset);
  StoreBE32(p + offsetof(SnapshotHeaderRaw, l1_size), l1_size);
  StoreBE16(p + offsetof(SnapshotHeaderRaw, id_str_size), id_str_size);
  StoreBE16(p + offsetof(SnapshotHeaderRaw, name_size), name_size);
  StoreBE32(p + offsetof(SnapshotHeaderRaw, date_sec), date_sec);
  StoreBE32(p + offsetof(SnapshotHeaderRaw, date_nsec), date_nsec);
  StoreBE64(p + offsetof(SnapshotHeaderRaw, vm_clock_nsec), vm_clock_nsec);
  StoreBE32(p + offsetof(SnapshotHeaderRaw, vm_state_size), vm_state_size);
  StoreBE32(p + offsetof(SnapshotHeaderRaw, extra_data_size), extra_data_size);
}

void SnapshotExtraData::Encode(uint8_t* p) const {
  StoreBE64(p + offsetof(SnapshotExtraData, vm_state_size_large), vm_state_size_large);
  StoreBE64(p + offsetof(SnapshotExtraData, disk_size), disk_size);
  StoreBE64(p + offsetof(SnapshotExtraData, icount), icount);
}

std::vector<uint8_t> EncodeSnapshotTable(const std::vector<Snapshot>& snapshots) {
  std::vector<uint8_t> out;
  for (const Snapshot& s : snapshots) {
    SnapshotHeaderRaw h = s.raw;
    h.l1_table_offset = s.l1_table_offset;
    h.l1_size = s.l1_size;
    h.id_str_size = static_cast<uint16_t>(s.info.id.size());
    h.name_size = static_cast<uint16_t>(s.info.name.size());
    h.extra_data_size = static_cast<uint32_t>(s.extra_data.size());
    const size_t start = out.size();
    out.resize(start + sizeof(SnapshotHeaderRaw));
    h.Encode(out.data() + start);
    out.insert(out.end(), s.extra_data.begin(), s.extra_data.end());
    out.insert(out.end(), s.info.id.begin(), s.info.id.end());
    out.insert(out.end(), s.info.name.begin(), s.info.name.end());
    out.resize((out.size() + 7) & ~size_t{7}, 0);
  }
  return out;
}

namespace {

// Sequential reads through a window, so a table of 65536 small entries does
// not cost four host reads per entry. Refuses bytes past the end of the file.
class TableReader {
 public:
  TableReader(Backend& file, uint64_t file_size, uint64_t start)
      : file_(file), file_size_(file_size), pos_(start) {}

  uint64_t pos() const { return pos_; }
  void Align8() { pos_ = (pos_ + 7) & ~uint64_t{7}; }

  // Reads `n` bytes at the current position into `out` and advances.
  Status Read(uint8_t* out, size_t n, const std::string& what) {
    if (pos_ > file_size_ || n > file_size_ - pos_)
      return Status::Corruption(what + " at " + Hex(pos_) + " runs past the end of the file (" +
                                std::to_string(file_size_) + " bytes)");
    while (n > 0) {
      if (pos_ < win_start_ || pos_ >= win_start_ + win_.size()) {
        win_start_ = pos_;
        win_.resize(std::min<uint64_t>(kWindow, file_size_ - pos_));
        KVMFS_RETURN_IF_ERROR(file_.ReadAt(win_start_, win_.data(), win_.size()));
      }
      size_t k = std::min<uint64_t>(n, win_start_ + win_.size() - pos_);
      std::memcpy(out, win_.data() + (pos_ - win_start_), k);
      out += k;
      n -= k;
      pos_ += k;
    }
    return Status::OK();
  }

 private:
  static constexpr size_t kWindow = 64 * 1024;
  Backend& file_;
  const uint64_t file_size_;
  uint64_t pos_;
  uint64_t win_start_ = 0;
  std::vector<uint8_t> win_;
};

}  // namespace

Result<std::vector<Snapshot>> ReadSnapshotTable(Backend& file, uint64_t file_size,
                                                const Header& header, const std::string& name) {
  std::vector<Snapshot> out;
  const uint32_t count = header.raw.nb_snapshots;
  if (count == 0) return out;
  const uint64_t start = header.raw.snapshots_offset;
  if (start >= file_size)
    return Status::Corruption(name + ": Snapshot table at " + Hex(start) +
                              " is past the end of the file (" + std::to_string(file_size) +
                              " bytes)");
  out.reserve(count);
  TableReader in(file, file_size, start);
  std::vector<uint8_t> buf(65536);
  for (uint32_t i = 0; i < count; ++i) {
    const std::string entry = "snapshot table entry " + std::to_string(i);
    in.Align8();
    uint8_t raw[sizeof(SnapshotHeaderRaw)];
    KVMFS_RETURN_IF_ERROR(in.Read(raw, sizeof raw, name + ": " + entry));
    const SnapshotHeaderRaw h = SnapshotHeaderRaw::Decode(raw);
    if (h.extra_data_size > kMaxSnapshotExtraData)
      return Status::TooLarge(name + ": Too much extra metadata in " + entry + " (" +
                              std::to_string(h.extra_data_size) + " bytes, at most " +
                              std::to_string(kMaxSnapshotExtraData) + ")");
    KVMFS_RETURN_IF_ERROR(
        in.Read(buf.data(), h.extra_data_size, name + ": " + entry + " extra data"));
    const SnapshotExtraData extra = SnapshotExtraData::Decode(buf.data(), h.extra_data_size);

    Snapshot s;
    s.index = i;
    s.l1_table_offset = h.l1_table_offset;
    s.l1_size = h.l1_size;
    s.extra_data_size = h.extra_data_size;
    s.raw = h;
    s.extra_data.assign(buf.begin(), buf.begin() + h.extra_data_size);
    SnapshotInfo& info = s.info;
    info.vm_state_size = h.vm_state_size;
    if (h.extra_data_size >= offsetof(SnapshotExtraData, vm_state_size_large) + 8)
      info.vm_state_size = extra.vm_state_size_large;
    info.disk_size = h.extra_data_size >= offsetof(SnapshotExtraData, disk_size) + 8
                         ? extra.disk_size
                         : header.virtual_size;
    // QEMU shows icount only when recorded (-1 means "not recorded").
    if (h.extra_data_size >= offsetof(SnapshotExtraData, icount) + 8 &&
        extra.icount != ~uint64_t{0}) {
      info.icount = extra.icount;
      info.has_icount = true;
    }
    info.date_sec = h.date_sec;
    info.date_nsec = h.date_nsec;
    info.vm_clock_nsec = h.vm_clock_nsec;

    KVMFS_RETURN_IF_ERROR(in.Read(buf.data(), h.id_str_size, name + ": " + entry + " id"));
    info.id.assign(reinterpret_cast<const char*>(buf.data()), h.id_str_size);
    KVMFS_RETURN_IF_ERROR(in.Read(buf.data(), h.name_size, name + ": " + entry + " name"));
    info.name.assign(reinterpret_cast<const char*>(buf.data()), h.name_size);
    // QEMU keeps them as C strings.
    info.id.resize(strnlen(info.id.c_str(), info.id.size()));
    info.name.resize(strnlen(info.name.c_str(), info.name.size()));

    if (in.pos() - start > kMaxSnapshotTableBytes)
      return Status::TooLarge(name + ": Snapshot table is too big (more than " +
                              std::to_string(kMaxSnapshotTableBytes) + " bytes)");
    out.push_back(std::move(s));
  }
  return out;
}

// ---- Create / delete ------------------------------------------------------------------

bool Engine::SnapshotAlive(uint64_t serial) const {
  for (const Snapshot& s : snapshots_)
    if (s.serial == serial) return true;
  return false;
}

Result<SnapshotInfo> Engine::CreateSnapshot(const std::string& name) {
  std::unique_lock<std::shared_mutex> lock = LockExclusive();
  KVMFS_RETURN_IF_ERROR(CheckWritable());
  if (header_.has_data_file())
    return Status::NotSupported(name_ + ": internal snapshots are not possible with an external "
                                        "data file");
  if (name.empty() || name.size() > 0xffff)
    return Status::InvalidArgument(name_ + ": invalid snapshot name");
  for (const Snapshot& s : snapshots_)
    if (s.info.name == name)
      return Status::FromErrno(EEXIST, name_ + ": a snapshot named '" + name + "' already exists");
  if (snapshots_.size() >= kMaxSnapshots)
    return Status::TooLarge(name_ + ": too many snapshots (" + std::to_string(snapshots_.size()) +
                            ")");
  uint64_t max_id = 0;
  for (const Snapshot& s : snapshots_)
    max_id = std::max<uint64_t>(max_id, std::strtoull(s.info.id.c_str(), nullptr, 10));
  const std::string id = std::to_string(max_id + 1);
  // The old state is made durable first; then the snapshot is one atomic
  // switch (commit.cpp): the current L1 becomes the snapshot's, the active
  // disk gets a new L1 and copies of the L2 tables whose COPIED flags clear.
  KVMFS_RETURN_IF_ERROR(Fatal(FlushLocked()));
  CommitPlan plan;
  plan.create = true;
  plan.table = snapshots_;
  Snapshot s;
  s.serial = next_serial_++;
  s.l1_table_offset = l1_offset_;
  s.l1_size = static_cast<uint32_t>(l1_.size());
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  s.info.id = id;
  s.info.name = name;
  s.info.date_sec = static_cast<uint32_t>(now.tv_sec);
  s.info.date_nsec = static_cast<uint32_t>(now.tv_nsec);
  s.info.disk_size = virtual_size();
  s.info.has_icount = true;
  s.raw.date_sec = s.info.date_sec;
  s.raw.date_nsec = s.info.date_nsec;
  SnapshotExtraData extra{0, s.info.disk_size, 0};
  s.extra_data.resize(sizeof(SnapshotExtraData));
  extra.Encode(s.extra_data.data());
  s.extra_data_size = static_cast<uint32_t>(s.extra_data.size());
  s.index = static_cast<uint32_t>(plan.table.size());
  plan.table.push_back(s);
  const uint64_t table_bytes = EncodeSnapshotTable(plan.table).size();
  if (table_bytes > kMaxSnapshotTableBytes)
    return Status::TooLarge(name_ + ": snapshot table would be too big");
  KVMFS_RETURN_IF_ERROR(Fatal(PrepareCommit(table_bytes / geo_.cluster_size + 2)));
  // Refcount limits are checked as the walk goes; a refusal leaves the file
  // as it was and memory is reloaded from it (RunCommit).
  KVMFS_RETURN_IF_ERROR(RunCommit(lock, plan));
  return s.info;
}

Status Engine::DeleteSnapshot(const std::string& id) {
  std::unique_lock<std::shared_mutex> lock = LockExclusive();
  KVMFS_RETURN_IF_ERROR(CheckWritable());
  size_t idx = snapshots_.size();
  for (size_t i = 0; i < snapshots_.size(); ++i)
    if (snapshots_[i].info.id == id) {
      idx = i;
      break;
    }
  if (idx == snapshots_.size())
    return Status::NotFound(name_ + ": no snapshot with id '" + id + "'");
  const Snapshot& victim = snapshots_[idx];
  KVMFS_RETURN_IF_ERROR(ValidateTable(victim.l1_table_offset, victim.l1_size, 8, kMaxL1Bytes,
                                      geo_.cluster_size, "snapshot " + id + " L1 table", name_));
  CommitPlan plan;
  plan.create = false;
  plan.victim_l1_offset = victim.l1_table_offset;
  KVMFS_ASSIGN_OR_RETURN(plan.victim_l1, LoadL1(victim.l1_table_offset, victim.l1_size,
                                                "Snapshot L1 table of snapshot " + id));
  plan.charge.Set(budget(), plan.victim_l1.size() * 8);
  plan.table = snapshots_;
  plan.table.erase(plan.table.begin() + static_cast<std::ptrdiff_t>(idx));
  // One atomic switch (commit.cpp): the snapshot's references go, and the
  // active tables whose clusters it no longer shares regain COPIED. Views
  // of the victim fail from then on (SnapshotAlive).
  KVMFS_RETURN_IF_ERROR(Fatal(FlushLocked()));
  KVMFS_RETURN_IF_ERROR(
      Fatal(PrepareCommit(EncodeSnapshotTable(plan.table).size() / geo_.cluster_size + 2)));
  return RunCommit(lock, plan);
}

}  // namespace kvmfs::qcow2
