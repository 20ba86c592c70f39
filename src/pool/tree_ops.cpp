// Images made, cloned and renamed through the tree (CONTRACT.md "The tree",
// kvmfs(8) "IMAGES MADE THROUGH THE TREE"), folders made and removed, and
// check.json. Formats are never named here: a driver says whether it creates
// images (FormatCaps::create) and overlays (create_backing), and an Image
// whether it checks (Image::Check).
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "base/path.h"
#include "base/unique_fd.h"
#include "metrics/progress.h"
#include "pool/info_json.h"
#include "pool/namespace.h"

namespace kvmfs::pool {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kProgressLogInterval = std::chrono::seconds(10);

bool Hidden(const std::string& name) { return name.empty() || name[0] == '.'; }

// Holds QEMU's read lock (or the force_share one) on one file of a chain
// while it lives.
class FileUse {
 public:
  FileUse(std::shared_ptr<LayerFile> file, LockUse use) : file_(std::move(file)), use_(use) {}
  ~FileUse() {
    if (held_) file_->Release(use_);
  }
  FileUse(const FileUse&) = delete;
  FileUse& operator=(const FileUse&) = delete;
  Status Acquire() {
    KVMFS_RETURN_IF_ERROR(file_->Acquire(use_));
    held_ = true;
    return Status::OK();
  }

 private:
  const std::shared_ptr<LayerFile> file_;
  const LockUse use_;
  bool held_ = false;
};

// Whether `path` lies under one of `roots`, lexically (without touching the
// file system: a path into the mount itself must not be followed from here).
bool LexicallyUnder(const std::string& path, const std::vector<std::string>& roots) {
  const std::string normal = std::filesystem::path(path).lexically_normal().string();
  for (const std::string& root : roots)
    if (IsUnder(normal, root)) return true;
  return false;
}

}  // namespace

// ---- check.json ---------------------------------------------------------------

Result<std::string> Namespace::CheckText(const Node& node, const std::string& path) {
  const size_t layer = node.view.kind == ViewId::Kind::kLayer ? node.view.layer : 0;
  const std::vector<std::shared_ptr<LayerFile>> files = node.image->files();
  // An image that cannot be opened cannot be checked either (qemu-img check
  // fails to open it): the reason, as info.json says it.
  if (!node.image->ok() || layer >= files.size())
    return RenderJson(ErrorJson(node.image->path(), node.image->format(),
                                node.image->ok() ? "no such layer" : node.image->status().ToString()));
  const std::shared_ptr<LayerFile>& file = files[layer];
  // As qemu-img check: a read lock, refused while another program writes.
  FileUse lock(file, options_.force_share ? LockUse::kSharedRead : LockUse::kRead);
  KVMFS_RETURN_IF_ERROR(lock.Acquire().WithContext(path));

  CheckOptions options;
  const auto start = Clock::now();
  auto last_log = start;
  // kvmfs_operation_progress_ratio{op="check"} while the check runs.
  auto [pool_label, image_label] = MetricLabels(file->path());
  metrics::Progress progress("check", pool_label, image_label);
  options.progress = [&](uint64_t done, uint64_t total) {
    progress.Update(done, total);
    const auto now = Clock::now();
    if (now - last_log < kProgressLogInterval || total == 0) return;
    last_log = now;
    spdlog::info("{}: check {}% done ({} of {} tables, {} s)", file->path(), done * 100 / total, done,
                 total, std::chrono::duration_cast<std::chrono::seconds>(now - start).count());
  };
  Result<CheckResult> result = file->image()->Check(options);
  if (!result.ok()) {
    // "This image format does not support checks" (qemu-img's exit 63) or
    // what kept the check from starting.
    spdlog::info("{}: check: {}", file->path(), result.status().ToString());
    const std::string reason = result.status().code() == Status::Code::kNotSupported
                                   ? result.status().message()
                                   : result.status().ToString();
    return RenderJson(ErrorJson(file->path(), file->format(), reason));
  }
  const CheckResult& r = *result;
  spdlog::info("{}: checked in {} ms: {} corruptions, {} leaks, {} check errors{}{}", file->path(),
               std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count(),
               r.corruptions, r.leaks, r.check_errors, r.failure.empty() ? "" : "; check failed: ",
               r.failure);
  return RenderJson(CheckJson(file->path(), file->format(), r));
}

// ---- Making files ---------------------------------------------------------------

Status Namespace::ApplyCreateRules(int fd, const std::string& host_path, const struct stat& folder_st,
                                   bool folder) {
  mode_t mode = options_.create_mode & 07777;
  if (folder) mode |= (mode & 0444) >> 2;  // x wherever r
  const uid_t uid = options_.create_uid.value_or(folder_st.st_uid);
  const gid_t gid = options_.create_gid.value_or(folder_st.st_gid);
  // Owner first: chown clears set-id bits that chmod sets.
  if (::fchown(fd, uid, gid) != 0) {
    const int err = errno;
    // Without CAP_CHOWN the folder's owner cannot be taken unless it is
    // ours: keep what the file got, unless the config asked for an owner.
    if (err != EPERM || options_.create_uid || options_.create_gid)
      return Status::FromErrno(err, host_path + ": chown to " + std::to_string(uid) + ":" +
                                        std::to_string(gid) + " (create_owner/create_group)");
    spdlog::debug("{}: keeps owner {}:{} (chown: {})", host_path, ::geteuid(), ::getegid(),
                  std::strerror(err));
  }
  if (::fchmod(fd, mode) != 0) return Status::FromErrno(errno, host_path + ": chmod");
  return Status::OK();
}

Status Namespace::CreateImageFile(const std::string& host_path, const struct stat& folder_st,
                                  const std::string& format, const CreateOptions& create) {
  const FormatDriver* driver = FindFormat(format);
  if (driver == nullptr || !driver->caps().create)
    return Status::NotSupported(host_path + ": kvmfs cannot create " + format + " images");
  UniqueFd fd(::open(host_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status::FromErrno(errno, host_path);
  Status st = ApplyCreateRules(fd.get(), host_path, folder_st, false);
  if (st.ok()) {
    auto file = OpenLocalFile(host_path, true);
    st = file.ok() ? driver->Create(**file, create) : file.status();
    if (st.ok()) st = (*file)->Flush();
  }
  if (!st.ok()) {
    ::unlink(host_path.c_str());  // made by this call a moment ago
    return st;
  }
  // The new name is durable with its folder.
  UniqueFd dir(::open(DirName(host_path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.valid()) (void)::fsync(dir.get());
  if (create.backing_file.empty())
    spdlog::info("created {} image {} ({} bytes)", format, host_path, create.size);
  else
    spdlog::info("created {} overlay {} over {} ({}, {} bytes)", format, host_path, create.backing_file,
                 create.backing_format, create.size);
  return Status::OK();
}

Status Namespace::LocalTree(const std::string& path) const {
  // Files and folders are made, removed and renamed on the host; a remote
  // store's (RBD, S3) are made with its own tools.
  if (store_.caps().remote)
    return Status::NotSupported(path + ": images and folders of a " + std::string(store_.kind()) +
                                " pool are made and moved with its own tools, not through kvmfs");
  return Status::OK();
}

Status Namespace::MakeDir(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  const std::string parent_path = slash == std::string::npos || slash == 0 ? "/" : p.substr(0, slash);
  KVMFS_ASSIGN_OR_RETURN(Node parent, Resolve(parent_path));
  return MakeDir(std::move(parent), path, p.substr(slash == std::string::npos ? 0 : slash + 1));
}

Status Namespace::MakeDir(Node parent, const std::string& path, const std::string& name) {
  if (parent.kind != NodeKind::kFolder) return MakeSnapshotDir(std::move(parent), path, name);
  if (options_.readonly) return Status::ReadOnly(path + ": the pool is read-only");
  KVMFS_RETURN_IF_ERROR(LocalTree(path));
  if (Hidden(name)) return Status::NotPermitted(path + ": names starting with '.' are not shown");
  if (options_.blockdev) return Status::NotPermitted(path + ": a blockdev pool shows block devices only");
  const std::string host = parent.host_path + "/" + name;
  struct stat st;
  if (::lstat(host.c_str(), &st) == 0) return Status::AlreadyExists(path + ": exists");
  if (HasExtension(name)) {
    // An image name: the format it says, or qemu-img create's default (raw)
    // for a name that says only "image" (.img).
    const FormatDriver* driver = FormatForName(name);
    if (driver == nullptr) driver = FindFormat("raw");
    // mkdir makes a 0-byte disk that truncate then sizes: a format whose
    // images cannot grow (qemu-img resize refuses them) would make a disk
    // that stays empty forever, so none is made.
    if (driver != nullptr && driver->caps().create && !driver->caps().resize) {
      const std::string format = driver->name();
      spdlog::info("{}: not created: {} images cannot be resized (nor can qemu-img resize them), "
                   "so an empty one could never hold data; make it on the host with qemu-img "
                   "create -f {} FILE SIZE",
                   host, format, format);
      return Status::NotSupported(path + ": " + format + " images cannot grow from size 0 (" +
                                  format + " cannot be resized); use qemu-img create -f " + format +
                                  " FILE SIZE on the host");
    }
    return CreateImageFile(host, parent.host_st, driver ? driver->name() : "raw", CreateOptions{});
  }
  if (::mkdir(host.c_str(), 0700) != 0) return Status::FromErrno(errno, host);
  UniqueFd fd(::open(host.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  Status rules = fd.valid() ? ApplyCreateRules(fd.get(), host, parent.host_st, true)
                            : Status::FromErrno(errno, host);
  if (!rules.ok()) {
    ::rmdir(host.c_str());
    return rules;
  }
  spdlog::info("created folder {}", host);
  return Status::OK();
}

Status Namespace::RemoveDir(const std::string& path) {
  KVMFS_ASSIGN_OR_RETURN(Node node, Resolve(path));
  return RemoveDir(node, path);
}

Status Namespace::RemoveDir(const Node& node, const std::string& path) {
  switch (node.kind) {
    case NodeKind::kImageDir:
      return Status::NotPermitted(path + ": images are not deleted through kvmfs (remove the file "
                                         "on the host)");
    case NodeKind::kFolder:
      if (options_.readonly) return Status::ReadOnly(path + ": the pool is read-only");
      KVMFS_RETURN_IF_ERROR(LocalTree(path));
      if (node.host_path == options_.source)
        return Status::NotPermitted(path + ": the pool's own folder cannot be removed");
      // Fails (ENOTEMPTY) while anything is in it, shown or not.
      if (::rmdir(node.host_path.c_str()) != 0) return Status::FromErrno(errno, node.host_path);
      spdlog::info("removed folder {}", node.host_path);
      return Status::OK();
    default:
      return RemoveSnapshotDir(node, path);
  }
}

// ---- Clones -------------------------------------------------------------------

Status Namespace::CloneImage(const Node& parent, const std::string& path, const std::string& name,
                             const std::string& target) {
  if (options_.readonly) return Status::ReadOnly(path + ": the pool is read-only");
  KVMFS_RETURN_IF_ERROR(LocalTree(path));
  if (parent.kind != NodeKind::kFolder)
    return Status::NotPermitted(path + ": overlays can only be made in folders");
  const FormatDriver* driver = Hidden(name) || !HasExtension(name) ? nullptr : FormatForName(name);
  if (driver == nullptr)
    return Status::NotPermitted(path + ": only an image name (NAME.qcow2) can be made as a link: "
                                       "an overlay of the image it points to");
  if (!driver->caps().create_backing)
    return Status::NotSupported(path + ": kvmfs cannot create " + std::string(driver->name()) +
                                " overlays");
  if (target.empty()) return Status::InvalidArgument(path + ": empty link target");
  const std::string host = parent.host_path + "/" + name;
  struct stat st;
  if (::lstat(host.c_str(), &st) == 0) return Status::AlreadyExists(path + ": exists");
  // The target as QEMU will resolve the backing name: relative to the
  // overlay's folder. Checked lexically before anything follows it.
  const std::string base = target[0] == '/' ? target : parent.host_path + "/" + target;
  const ChainPolicy& policy = cache_.policy();
  if (!LexicallyUnder(base, policy.allowed_roots))
    return Status::Permission(path + ": " + target + " is outside the pool and its backing roots");
  // Never through the mount itself (a mount point inside SOURCE): kvmfs
  // would wait on its own requests.
  if (LexicallyUnder(base, options_.hidden))
    return Status::Permission(path + ": " + target + " is a path kvmfs does not show");
  KVMFS_ASSIGN_OR_RETURN(std::string canonical, CanonicalPath(base));
  bool allowed = false;
  for (const std::string& root : policy.allowed_roots) allowed = allowed || IsUnder(canonical, root);
  if (!allowed) return Status::Permission(path + ": " + target + " is outside the pool and its backing roots");
  if (LexicallyUnder(canonical, options_.hidden))
    return Status::Permission(path + ": " + target + " is a path kvmfs does not show");
  KVMFS_ASSIGN_OR_RETURN(struct stat base_st, StatPath(canonical));
  if (!S_ISREG(base_st.st_mode) && !S_ISBLK(base_st.st_mode))
    return Status::InvalidArgument(path + ": " + target + " is not an image file");
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<OpenImage> image, cache_.Get(canonical));
  if (!image->ok()) return image->status().WithContext(path + ": " + target);
  const std::shared_ptr<Image> base_top = image->top();
  CreateOptions create;
  create.size = base_top->size();
  create.backing_file = target;
  create.backing_format = image->format();
  create.backing_image = base_top.get();  // (a VMDK overlay records its parent's CID)
  return CreateImageFile(host, parent.host_st, driver->name(), create);
}

// ---- Renames ------------------------------------------------------------------

Result<std::string> Namespace::BackedBy(const std::string& canonical) {
  std::vector<std::string> folders{options_.source};
  while (!folders.empty()) {
    const std::string folder = std::move(folders.back());
    folders.pop_back();
    DIR* d = ::opendir(folder.c_str());
    if (d == nullptr) continue;
    std::vector<std::string> names;
    while (struct dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
    ::closedir(d);
    for (const std::string& name : names) {
      if (Hidden(name)) continue;
      const std::string p = folder + "/" + name;
      if (std::find(options_.hidden.begin(), options_.hidden.end(), p) != options_.hidden.end()) continue;
      struct stat lst, st;
      if (::lstat(p.c_str(), &lst) != 0) continue;
      if (S_ISDIR(lst.st_mode)) {
        folders.push_back(p);  // (symlinked folders are not followed: no loops)
        continue;
      }
      if (::stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || IsVmdkExtentName(name)) continue;
      if (!HasExtension(name) && probe_.Probe(p, st).empty()) continue;
      const HeaderPeek peek = probe_.Peek(p, st);
      if (peek.known && !peek.has_backing) continue;  // its header names no backing file
      const FormatDriver* driver = FindFormat(peek.format);
      if (driver == nullptr || !driver->caps().backing_files) continue;
      LayerRequest request{p, peek.format, false, true, &cache_.policy()};
      Result<Layer> layer = OpenLayerFile(request);
      if (!layer.ok()) {
        spdlog::debug("{}: not checked as an overlay of {}: {}", p, canonical, layer.status().ToString());
        continue;
      }
      const std::string backing = layer->image->Info().backing_filename;
      if (backing.empty()) continue;
      auto resolved = CanonicalPath(backing[0] == '/' ? backing : folder + "/" + backing);
      if (resolved.ok() && *resolved == canonical && p != canonical) return p;
    }
  }
  return std::string();
}

Status Namespace::CheckRenameable(const Node& node, const std::string& path, bool same_folder) {
  KVMFS_ASSIGN_OR_RETURN(std::string canonical, CanonicalPath(node.host_path));
  if (std::shared_ptr<LayerFile> open = cache_.registry().Find(canonical); open && open->users() > 0)
    return Status::Busy(path + ": in use (a disk.raw of it, or of an image over it, is open)");
  KVMFS_ASSIGN_OR_RETURN(std::string user, BackedBy(canonical));
  if (!user.empty()) return Status::Busy(path + ": it is the backing file of " + user);
  KVMFS_ASSIGN_OR_RETURN(std::shared_ptr<OpenImage> image, cache_.GetCanonical(canonical, node.host_st));
  if (!image->ok()) {
    if (same_folder) return Status::OK();  // nothing inside it can be read: only its name changes
    return Status::NotPermitted(path + ": cannot be read (" + image->status().message() +
                                "), so its references cannot be checked for a move to another folder");
  }
  // Another program (a running VM) holding QEMU's locks.
  FileUse lock(image->files().front(), LockUse::kRead);
  Status locked = lock.Acquire();
  if (locked.code() == Status::Code::kBusy) return locked.WithContext(path);
  if (same_folder) return Status::OK();
  // Names inside the file that are relative to its folder.
  const ImageInfo info = image->top()->Info();
  if (!info.backing_filename.empty() && info.backing_filename[0] != '/')
    return Status::NotPermitted(path + ": its backing file name '" + info.backing_filename +
                                "' is relative to its folder (move it within its folder, or use "
                                "qemu-img rebase -u on the host)");
  for (const InfoField& f : info.format_specific) {
    const std::string* value = std::get_if<std::string>(&f.value);
    if (f.key == "data-file" || (f.key == "create-type" && value && *value != "monolithicSparse" &&
                                 *value != "streamOptimized"))
      return Status::NotPermitted(path + ": it names other files relative to its folder (" + f.key +
                                  "); move it within its folder");
  }
  return Status::OK();
}

Status Namespace::RenameImage(const Node& node, const std::string& path, const Node& new_parent,
                              const std::string& new_name) {
  if (options_.readonly) return Status::ReadOnly(path + ": the pool is read-only");
  KVMFS_RETURN_IF_ERROR(LocalTree(path));
  if (node.kind != NodeKind::kImageDir)
    return Status::NotPermitted(path + ": only images can be renamed" +
                                (node.kind == NodeKind::kFolder ? " (not folders)" : ""));
  if (new_parent.kind != NodeKind::kFolder)
    return Status::NotPermitted(path + ": an image can only be moved into a folder");
  if (Hidden(new_name)) return Status::NotPermitted(path + ": names starting with '.' are not shown");
  const std::string to = new_parent.host_path + "/" + new_name;
  if (to == node.host_path) return Status::OK();
  struct stat st;
  if (::lstat(to.c_str(), &st) == 0) return Status::AlreadyExists(to + ": exists (kvmfs never replaces)");
  // The new name must show the same image.
  const std::string format = cache_.FormatOf(node.host_path, node.host_st);
  const FormatDriver* says = FormatForName(new_name);
  const bool shown = HasExtension(new_name) || !probe_.Probe(node.host_path, node.host_st).empty();
  if (IsVmdkExtentName(new_name) || !shown || (says != nullptr && format != says->name()))
    return Status::InvalidArgument(path + ": the name " + new_name + " would not show this " + format +
                                   " image (keep its extension)");
  KVMFS_RETURN_IF_ERROR(CheckRenameable(node, path, DirName(node.host_path) == new_parent.host_path));
  if (::renameat2(AT_FDCWD, node.host_path.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) != 0)
    return Status::FromErrno(errno, node.host_path + " -> " + to);
  spdlog::info("renamed image {} to {}", node.host_path, to);
  return Status::OK();
}

}  // namespace kvmfs::pool
