#include "crypto/key_ring.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "base/path.h"

namespace kvmfs::crypto {

Result<Secret> ReadKeyFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return Status::FromErrno(errno, "key file " + path);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "key file " + path);
  if (!S_ISREG(st.st_mode))
    return Status::InvalidArgument("key file " + path + ": not a regular file");
  if (uint64_t(st.st_size) > kMaxKeyFileBytes)
    return Status::InvalidArgument("key file " + path + ": larger than " +
                                   std::to_string(kMaxKeyFileBytes) + " bytes");
  // Read straight into the secret's locked pages: no std::string copy of
  // the passphrase is ever made.
  KVMFS_ASSIGN_OR_RETURN(Secret secret, Secret::Allocate(kMaxKeyFileBytes + 1));
  size_t got = 0;
  while (got < secret.size()) {
    ssize_t n = ::read(fd, secret.data() + got, secret.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "key file " + path);
    if (n == 0) break;
    got += size_t(n);
  }
  if (got > kMaxKeyFileBytes)
    return Status::InvalidArgument("key file " + path + ": larger than " +
                                   std::to_string(kMaxKeyFileBytes) + " bytes");
  secret.Truncate(got);
  return secret;
}

std::vector<std::string> KeyFileWarnings(const std::vector<KeyRule>& rules) {
  std::vector<std::string> out;
  for (const KeyRule& r : rules) {
    struct stat st;
    if (::stat(r.file.c_str(), &st) != 0) continue;  // reported when it is needed
    if ((st.st_mode & 077) == 0) continue;
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
    out.push_back(r.origin + ": key file " + r.file + " has mode " + mode +
                  ": it is accessible by group or others; it should be readable by its owner "
                  "only (chmod 600)");
  }
  return out;
}

KeyRing::KeyRing(std::vector<KeyRule> rules, std::vector<std::string> roots)
    : rules_(std::move(rules)), roots_(std::move(roots)) {}

Result<std::shared_ptr<const Secret>> KeyRing::KeyFor(const std::string& path) const {
  std::string relative;
  for (const std::string& root : roots_) {
    if (IsUnder(path, root) && path.size() > root.size()) {
      relative = path.substr(root == "/" ? 1 : root.size() + 1);
      break;
    }
  }
  for (const KeyRule& r : rules_) {
    const bool absolute = !r.match.empty() && r.match[0] == '/';
    const std::string& subject = absolute ? path : relative;
    if (subject.empty() || ::fnmatch(r.match.c_str(), subject.c_str(), 0) != 0) continue;
    auto secret = ReadKeyFile(r.file);
    if (!secret.ok()) {
      // Whatever the host said (missing file, EISDIR, EIO), a key that cannot
      // be read is a key problem to the reader of disk.raw: EACCES.
      Status st = secret.status();
      if (st.code() != Status::Code::kPermission) st = Status::Permission(st.message());
      return st.WithContext(path + ": unreadable key (" + r.origin + ")");
    }
    return std::shared_ptr<const Secret>(std::make_shared<Secret>(std::move(secret).value()));
  }
  return Status::Permission(path + ": no key configured (add a keys: entry matching \"" +
                            (relative.empty() ? path : relative) +
                            "\" to the config, or mount with -o keys=FILE)");
}

}  // namespace kvmfs::crypto
