// The VHDX log (formats-vhd.md §2.8): found as QEMU 7.2's vhdx_log_search
// finds it, replayed as vhdx_log_flush replays it (to disk, or as an overlay
// for reads before the first writer), and written as vhdx_log_write writes
// the one entry of a BAT update.
#include <algorithm>
#include <cstring>

#include "base/endian.h"
#include "format/vhdx/vhdx.h"

namespace kvmfs::vhdx {
namespace {

// Most descriptors a replay may hold, and most data sectors (kept in memory).
constexpr uint64_t kMaxDescriptors = 65536;
constexpr uint64_t kMaxDataSectors = 16384;  // 64 MiB

Status Bad(const std::string& name, const std::string& why) {
  return Status::Corruption(name + ": " + why);
}

// Reads 4 KiB sectors of the circular log, within a budget that bounds the
// search's work on a hostile log.
class LogReader {
 public:
  LogReader(Backend& file, uint64_t file_size, const Header& h, const std::string& name)
      : file_(file), file_size_(file_size), offset_(h.log_offset), length_(h.log_length),
        name_(name), budget_(16 * (uint64_t(h.log_length) / kLogSector) + 64) {}

  uint64_t length() const { return length_; }
  uint64_t Next(uint64_t pos) const { return pos + kLogSector >= length_ ? 0 : pos + kLogSector; }

  Status Read(uint64_t pos, uint8_t* out) {
    if (budget_ == 0) return Bad(name_, "the VHDX log search does not come to an end");
    --budget_;
    const uint64_t at = offset_ + pos;
    if (at >= file_size_) {  // past the end: zeros, as the block layer reads
      std::memset(out, 0, kLogSector);
      return Status::OK();
    }
    return file_.ReadAt(at, out, kLogSector);
  }

 private:
  Backend& file_;
  const uint64_t file_size_, offset_, length_;
  const std::string& name_;
  uint64_t budget_;
};

// vhdx_log_hdr_is_valid.
bool HeaderValid(const LogEntryHeader& e, uint64_t log_length, const Guid& log_guid) {
  return e.signature_ok && e.entry_length <= log_length && e.entry_length % kLogSector == 0 &&
         e.sequence != 0 && e.log_guid == log_guid &&
         uint64_t(e.descriptor_count) * 32 <= e.entry_length;
}

// vhdx_log_desc_is_valid, on the 32 bytes of descriptor `d`.
bool DescriptorValid(const uint8_t* d, uint64_t sequence) {
  if (LoadLE64(d + 24) != sequence || LoadLE64(d + 16) % kLogSector != 0) return false;
  if (std::memcmp(d, "zero", 4) == 0) return LoadLE64(d + 8) % kLogSector == 0;
  return std::memcmp(d, "desc", 4) == 0;
}

uint64_t DescriptorSectors(uint64_t count) { return (count + 2 + 127) / 128; }

struct EntryCheck {
  bool valid = false;
  uint64_t next = 0;  // where the scan goes on
  LogEntryHeader header;
};

// vhdx_validate_log_entry at `pos`. `seq` > 0: the entry must follow it. An
// entry whose header is valid but whose descriptors are not fails the whole
// open, as in QEMU (vhdx_log_read_desc's EINVAL is passed up).
Result<EntryCheck> ValidateEntry(LogReader& log, uint64_t pos, uint64_t seq, const Guid& guid,
                                 const std::string& name) {
  EntryCheck c;
  uint8_t sector[kLogSector];
  KVMFS_RETURN_IF_ERROR(log.Read(pos, sector));
  c.header = LogEntryHeader::Decode(sector);
  const LogEntryHeader& h = c.header;
  if (!HeaderValid(h, log.length(), guid) || (seq > 0 && h.sequence != seq + 1)) {
    c.next = log.Next(pos);
    return c;
  }
  const uint64_t desc_sectors = DescriptorSectors(h.descriptor_count);
  uint32_t crc = 0xffffffffu;
  for (uint64_t k = 0; k < desc_sectors; ++k) {
    if (k > 0) KVMFS_RETURN_IF_ERROR(log.Read(pos, sector));
    for (uint64_t i = k == 0 ? 0 : 128 * k - 2; i < std::min<uint64_t>(h.descriptor_count, 128 * (k + 1) - 2); ++i)
      if (!DescriptorValid(sector + (64 + 32 * i) % kLogSector, h.sequence))
        return Bad(name, "VHDX log entry at log offset " + std::to_string(pos) + " has an invalid descriptor " +
                             std::to_string(i));
    if (k == 0) std::memset(sector + 4, 0, 4);
    crc = Crc32cUpdate(crc, sector, kLogSector);
    pos = log.Next(pos);
  }
  const uint64_t total = h.entry_length / kLogSector;
  for (uint64_t k = desc_sectors; k < total; ++k) {
    KVMFS_RETURN_IF_ERROR(log.Read(pos, sector));
    crc = Crc32cUpdate(crc, sector, kLogSector);
    pos = log.Next(pos);
  }
  c.next = pos;
  c.valid = ~crc == h.checksum;
  return c;
}

struct Run {
  bool valid = false;
  uint64_t start = 0, end = 0, count = 0;
  LogEntryHeader first;
};

// vhdx_log_search: from each position, the longest run of valid entries
// (the second one with any sequence, QEMU's quirk, then each one more than
// the last); the run whose first entry has the highest sequence wins.
Result<Run> Search(LogReader& log, const Guid& guid, const std::string& name) {
  Run best;
  uint64_t pos = 0;
  for (;;) {
    const uint64_t tail = pos;
    KVMFS_ASSIGN_OR_RETURN(EntryCheck c, ValidateEntry(log, pos, 0, guid, name));
    pos = c.next;
    if (c.valid) {
      Run run{true, tail, pos, 1, c.header};
      uint64_t seq = 0;
      for (;;) {
        KVMFS_ASSIGN_OR_RETURN(EntryCheck n, ValidateEntry(log, pos, seq, guid, name));
        pos = n.next;
        if (!n.valid) break;
        run.end = pos;
        ++run.count;
        seq = n.header.sequence;
      }
      if (!best.valid || run.first.sequence > best.first.sequence) best = run;
    }
    if (pos < tail) break;
  }
  return best;
}

// vhdx_log_flush's walk over the winning run, collecting what it writes,
// with its checks (FlushedFileOffset past the file, data sector sequence).
Result<std::unique_ptr<LogReplay>> Collect(LogReader& log, const Run& run, uint64_t file_size,
                                           const Guid& guid, const std::string& name) {
  auto replay = std::make_unique<LogReplay>();
  uint64_t size = (file_size + 511) / 512 * 512;
  uint64_t pos = run.start, data_sectors = 0;
  uint8_t sector[kLogSector];
  auto take = [&](uint8_t* out) -> Status {
    if (pos == run.end) return Bad(name, "VHDX log entry reaches past the active sequence");
    KVMFS_RETURN_IF_ERROR(log.Read(pos, out));
    pos = log.Next(pos);
    return Status::OK();
  };
  for (uint64_t k = 0; k < run.count; ++k) {
    if (pos == run.end) return Bad(name, "VHDX log sequence ends early");
    KVMFS_RETURN_IF_ERROR(log.Read(pos, sector));
    const LogEntryHeader h = LogEntryHeader::Decode(sector);
    if (h.flushed_file_offset > size)
      return Bad(name, "VHDX log entry's FlushedFileOffset " + std::to_string(h.flushed_file_offset) +
                           " is past the end of the file (" + std::to_string(size) + ")");
    if (!HeaderValid(h, log.length(), guid)) return Bad(name, "VHDX log entry is not valid at replay");
    if (replay->writes.size() + h.descriptor_count > kMaxDescriptors)
      return Status::NotSupported(name + ": VHDX log holds too many descriptors to replay");
    std::vector<uint8_t> descs(DescriptorSectors(h.descriptor_count) * kLogSector);
    for (size_t off = 0; off < descs.size(); off += kLogSector) KVMFS_RETURN_IF_ERROR(take(&descs[off]));
    for (uint64_t i = 0; i < h.descriptor_count; ++i) {
      const uint8_t* d = descs.data() + 64 + 32 * i;
      if (!DescriptorValid(d, h.sequence)) return Bad(name, "VHDX log descriptor is not valid at replay");
      LogWrite w;
      w.file_offset = LoadLE64(d + 16);
      if (std::memcmp(d, "desc", 4) == 0) {
        if (++data_sectors > kMaxDataSectors)
          return Status::NotSupported(name + ": VHDX log holds too much data to replay");
        KVMFS_RETURN_IF_ERROR(take(sector));
        const uint64_t seq = uint64_t(LoadLE32(sector + 4)) << 32 | LoadLE32(sector + 4092);
        if (seq != h.sequence)
          return Bad(name, "VHDX log data sector's sequence " + std::to_string(seq) +
                               " does not match its descriptor's " + std::to_string(h.sequence));
        w.data.resize(kLogSector);
        std::memcpy(w.data.data(), d + 8, 8);                // leading bytes
        std::memcpy(w.data.data() + 8, sector + 8, 4084);    // the sector's middle
        std::memcpy(w.data.data() + 4092, d + 4, 4);         // trailing bytes
      } else {
        w.zero_length = LoadLE64(d + 8);
        if (w.zero_length == 0) continue;
      }
      const uint64_t end = w.file_offset + std::max<uint64_t>(w.zero_length, w.data.size());
      if (w.file_offset > kMaxReplayEnd || end > kMaxReplayEnd)
        return Bad(name, "VHDX log writes at " + std::to_string(w.file_offset) + ", past any file");
      size = std::max(size, end);
      replay->writes.push_back(std::move(w));
    }
    // QEMU extends the file only to an unaligned LastFileOffset (rounded up).
    if (size < h.last_file_offset && h.last_file_offset % kMiB != 0) {
      if (h.last_file_offset > kMaxReplayEnd) return Bad(name, "VHDX log's LastFileOffset is past any file");
      size = (h.last_file_offset + kMiB - 1) / kMiB * kMiB;
    }
  }
  replay->final_size = size;
  replay->next_sequence = run.first.sequence + 1;
  return replay;
}

// The file as it will be after the replay (reads only).
class ReplayOverlay final : public Backend {
 public:
  ReplayOverlay(std::shared_ptr<Backend> base, std::shared_ptr<const LogReplay> replay)
      : base_(std::move(base)), replay_(std::move(replay)) {}

  Status ReadAt(uint64_t off, void* buf, size_t len) override {
    KVMFS_RETURN_IF_ERROR(base_->ReadAt(off, buf, len));
    auto* p = static_cast<uint8_t*>(buf);
    for (const LogWrite& w : replay_->writes) {  // in order: later ones win
      const uint64_t wlen = w.zero_length ? w.zero_length : w.data.size();
      const uint64_t from = std::max(off, w.file_offset);
      const uint64_t to = std::min(off + len, w.file_offset + wlen);
      if (from >= to) continue;
      if (w.zero_length) std::memset(p + (from - off), 0, to - from);
      else std::memcpy(p + (from - off), w.data.data() + (from - w.file_offset), to - from);
    }
    return Status::OK();
  }
  Status WriteAt(uint64_t, const void*, size_t) override { return ReadOnly(); }
  Status Flush() override { return Status::OK(); }
  Result<uint64_t> Size() override {
    KVMFS_ASSIGN_OR_RETURN(uint64_t size, base_->Size());
    return std::max(size, replay_->final_size);
  }
  Status Truncate(uint64_t) override { return ReadOnly(); }
  Result<uint64_t> AllocatedBytes() override { return base_->AllocatedBytes(); }
  bool writable() const override { return false; }
  const std::string& name() const override { return base_->name(); }

 private:
  Status ReadOnly() const { return Status::ReadOnly(base_->name() + ": log replay overlay"); }
  const std::shared_ptr<Backend> base_;
  const std::shared_ptr<const LogReplay> replay_;
};

}  // namespace

Result<std::unique_ptr<LogReplay>> FindLogReplay(Backend& file, uint64_t file_size,
                                                 const Header& h, const std::string& name) {
  if (h.log_offset < kMiB || h.log_offset % kMiB != 0)
    return Bad(name, "VHDX log offset " + std::to_string(h.log_offset) +
                         " is not a multiple of 1 MiB past the header section");
  if (h.log_version != 0) return Bad(name, "VHDX log version " + std::to_string(h.log_version));
  if (IsZero(h.log_guid) || h.log_length == 0) return std::unique_ptr<LogReplay>();
  if (h.log_length % kMiB != 0)
    return Bad(name, "VHDX log length " + std::to_string(h.log_length) + " is not a multiple of 1 MiB");
  LogReader log(file, file_size, h, name);
  KVMFS_ASSIGN_OR_RETURN(Run run, Search(log, h.log_guid, name));
  if (!run.valid) return std::unique_ptr<LogReplay>();  // opens as if clean
  return Collect(log, run, file_size, h.log_guid, name);
}

std::unique_ptr<Backend> NewReplayOverlay(std::shared_ptr<Backend> base,
                                          std::shared_ptr<const LogReplay> replay) {
  return std::make_unique<ReplayOverlay>(std::move(base), std::move(replay));
}

Status ReplayToDisk(Backend& file, State& s, const Guid& session, const LogReplay& replay,
                    const std::string& name) {
  // vhdx_log_flush: the first visible write's header update, every write
  // synced, the file extended, a flush, then the log GUID cleared.
  KVMFS_RETURN_IF_ERROR(UpdateHeaders(file, s, session, true, nullptr));
  for (const LogWrite& w : replay.writes) {
    if (w.zero_length) KVMFS_RETURN_IF_ERROR(file.WriteZeroes(w.file_offset, w.zero_length, false));
    else KVMFS_RETURN_IF_ERROR(file.WriteAt(w.file_offset, w.data.data(), w.data.size()));
    KVMFS_RETURN_IF_ERROR(file.Flush());
  }
  KVMFS_ASSIGN_OR_RETURN(uint64_t size, file.Size());
  if (size < replay.final_size) KVMFS_RETURN_IF_ERROR(file.Truncate(replay.final_size));
  KVMFS_RETURN_IF_ERROR(file.Flush());
  const Guid zero{};
  return UpdateHeaders(file, s, session, false, &zero).WithContext(name + ": clearing the log");
}

Status WriteBatEntryThroughLog(Backend& file, State& s, const Guid& session, LogCursor& cursor,
                               uint64_t index, const std::string& name) {
  const uint64_t log_offset = s.header().log_offset, log_length = s.header().log_length;
  // QEMU appends only to an empty log, and needs room for the entry and the
  // sector its circular buffer keeps open.
  if (!IsZero(s.header().log_guid))
    return Status::NotSupported(name + ": the VHDX log is not empty (its GUID is set without a "
                                       "valid entry); run 'qemu-img check -r all' first");
  if (log_length < kMiB || log_length % kMiB != 0)
    return Status::NotSupported(name + ": VHDX log of " + std::to_string(log_length) +
                                " bytes cannot hold a BAT update");
  // A log outside the file would be written there first (QEMU would).
  KVMFS_ASSIGN_OR_RETURN(uint64_t size_now, file.Size());
  if (log_offset > size_now || log_length > size_now - log_offset)
    return Status::NotSupported(name + ": the VHDX log (" + std::to_string(log_length) +
                                " bytes at " + std::to_string(log_offset) +
                                ") lies past the end of the file");
  KVMFS_RETURN_IF_ERROR(file.Flush());  // the new block's data before its entry
  const Guid guid = NewRandomGuid();
  KVMFS_RETURN_IF_ERROR(UpdateHeaders(file, s, session, false, &guid));
  const uint64_t seq = cursor.sequence == 0 ? 1 : cursor.sequence;

  const uint64_t entry_off = s.bat_offset + 8 * index;
  const uint64_t page_off = entry_off / kLogSector * kLogSector;
  uint8_t page[kLogSector];
  KVMFS_RETURN_IF_ERROR(file.ReadAt(page_off, page, sizeof page));
  StoreLE64(page + (entry_off - page_off), s.bat[index]);
  KVMFS_ASSIGN_OR_RETURN(uint64_t file_size, file.Size());
  file_size = (file_size + 511) / 512 * 512;

  std::vector<uint8_t> entry(2 * kLogSector, 0);
  uint8_t* e = entry.data();
  std::memcpy(e, "loge", 4);
  StoreLE32(e + 8, uint32_t(entry.size()));
  StoreLE32(e + 12, cursor.tail);
  StoreLE64(e + 16, seq);
  StoreLE32(e + 24, 1);  // one descriptor
  std::memcpy(e + 32, guid.data(), 16);
  StoreLE64(e + 48, file_size);  // FlushedFileOffset
  StoreLE64(e + 56, file_size);  // LastFileOffset
  uint8_t* d = e + 64;
  std::memcpy(d, "desc", 4);
  std::memcpy(d + 4, page + 4092, 4);  // trailing bytes
  std::memcpy(d + 8, page, 8);         // leading bytes
  StoreLE64(d + 16, page_off);
  StoreLE64(d + 24, seq);
  uint8_t* data = e + kLogSector;
  std::memcpy(data, "data", 4);
  StoreLE32(data + 4, uint32_t(seq >> 32));
  std::memcpy(data + 8, page + 8, 4084);
  StoreLE32(data + 4092, uint32_t(seq));
  StoreLE32(e + 4, ChecksumWithZeroField(e, entry.size(), 4));

  uint64_t pos = cursor.position;
  for (size_t k = 0; k < entry.size(); k += kLogSector) {
    KVMFS_RETURN_IF_ERROR(file.WriteAt(log_offset + pos, e + k, kLogSector));
    pos = pos + kLogSector >= log_length ? 0 : pos + kLogSector;
  }
  cursor.sequence = seq + 1;
  cursor.position = pos;
  cursor.tail = uint32_t(pos);
  KVMFS_RETURN_IF_ERROR(file.Flush());
  // The entry is durable: replay it in place, then mark the log empty.
  KVMFS_RETURN_IF_ERROR(file.WriteAt(page_off, page, sizeof page));
  KVMFS_RETURN_IF_ERROR(file.Flush());
  const Guid zero{};
  return UpdateHeaders(file, s, session, false, &zero);
}

}  // namespace kvmfs::vhdx
