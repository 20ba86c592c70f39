// The internal snapshot table (QEMU qcow2_read_snapshots), read with every
// bound QEMU applies: entry count, extra data size, total table size, and
// all of it inside the file.
#include <algorithm>
#include <cstring>

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

}  // namespace kvmfs::qcow2
