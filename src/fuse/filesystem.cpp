#include "fuse/filesystem.h"

#include <spdlog/spdlog.h>

namespace kvmfs::fuse {

const char* OpName(Op op) {
  static const char* const kNames[] = {
      "LOOKUP", "FORGET", "GETATTR", "SETATTR", "OPENDIR", "READDIR", "READDIRPLUS", "RELEASEDIR",
      "OPEN", "READ", "WRITE", "RELEASE", "FLUSH", "FSYNC", "FALLOCATE", "LSEEK", "STATFS",
      "MKDIR", "RMDIR", "SYMLINK", "RENAME", "REFUSED"};
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<size_t>(Op::kCount_));
  return kNames[static_cast<size_t>(op)];
}

Filesystem::Filesystem(pool::PoolRoot& root_in, pool::SetNode root_node)
    : root(root_in), inodes(std::move(root_node)), cache(inodes) {}

void Filesystem::Count(Op op, fuse_ino_t ino) {
  // Only at debug level: a counter every thread increments is one cache line
  // every read would bounce between cores.
  if (!spdlog::should_log(spdlog::level::debug)) return;
  counts_[static_cast<size_t>(op)].fetch_add(1, std::memory_order_relaxed);
  spdlog::debug("request {} ino {}", OpName(op), ino);
}

void Filesystem::AddHandle(FileHandle* handle) {
  MutexLock lock(handles_mu_);
  handles_.insert(handle);
}

void Filesystem::RemoveHandle(FileHandle* handle) {
  MutexLock lock(handles_mu_);
  handles_.erase(handle);
}

std::vector<FileHandle*> Filesystem::TakeHandles() {
  MutexLock lock(handles_mu_);
  std::vector<FileHandle*> out(handles_.begin(), handles_.end());
  handles_.clear();
  return out;
}

std::string Filesystem::CountsText() const {
  std::string out;
  for (size_t i = 0; i < counts_.size(); ++i) {
    uint64_t n = counts_[i].load(std::memory_order_relaxed);
    if (n == 0) continue;
    if (!out.empty()) out += ", ";
    out += std::string(OpName(static_cast<Op>(i))) + " " + std::to_string(n);
  }
  return out.empty() ? "none" : out;
}

Result<InodeTable::Entry> Filesystem::Fresh(fuse_ino_t ino) {
  auto entry = inodes.Find(ino);
  if (!entry) return Status::FromErrno(ESTALE, "inode " + std::to_string(ino) + " is not known");
  KVMFS_RETURN_IF_ERROR(Pools()->Refresh(entry->node));
  if (auto before = inodes.Update(ino, entry->node)) {
    spdlog::info("{}: changed outside kvmfs; dropping what the kernel caches of its views",
                 before->path());
    cache.ImageChanged(before->path());
  }
  return std::move(*entry);
}

fuse_entry_param Filesystem::EntryOf(fuse_ino_t ino, const pool::SetNode& node,
                                     const struct stat& st) const {
  fuse_entry_param e{};
  e.ino = ino;
  e.generation = 0;  // numbers are never reused
  e.attr = st;
  e.attr.st_ino = ino;
  e.attr_timeout = AttrTimeout(node);
  e.entry_timeout = EntryTimeout(node);
  return e;
}

std::string Filesystem::PathOf(fuse_ino_t ino, const char* name) const {
  std::string path = inodes.PathOf(ino);
  if (name == nullptr) return path;
  return (path == "/" ? "" : path) + "/" + name;
}

}  // namespace kvmfs::fuse
