// Credentials from an AWS shared-credentials file or the environment, and the
// checks of an S3Config.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>

#include "backend/s3/config.h"
#include "base/unique_fd.h"

namespace kvmfs::s3 {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

// A section header "[name]" or "[profile name]" names profile `name`.
std::string SectionName(std::string_view line) {
  std::string_view s = Trim(line.substr(1, line.size() - 2));
  if (s.substr(0, 8) == "profile ") s = Trim(s.substr(8));
  return std::string(s);
}

// Keys and secrets are printable ASCII without spaces.
bool Printable(std::string_view v) {
  if (v.empty() || v.size() > 4096) return false;
  for (unsigned char c : v) {
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? v : nullptr;
}

}  // namespace

std::string Credentials::Redacted() const {
  if (access_key.size() <= 4) return "****";
  return access_key.substr(0, 4) + "…";
}

Result<Credentials> ParseCredentialsFile(std::string_view text, const std::string& profile,
                                         const std::string& file) {
  const std::string want = profile.empty() ? "default" : profile;
  Credentials c;
  bool in_section = false, found = false;
  size_t line_no = 0;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = Trim(text.substr(0, nl));
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++line_no;
    if (line.empty() || line.front() == '#' || line.front() == ';') continue;
    if (line.front() == '[') {
      if (line.back() != ']') {
        return Status::InvalidArgument(file + ":" + std::to_string(line_no) + ": bad section line");
      }
      in_section = SectionName(line) == want;
      found = found || in_section;
      continue;
    }
    if (!in_section) continue;
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      // Never echo the line: it may hold a secret.
      return Status::InvalidArgument(file + ":" + std::to_string(line_no) + ": expected key = value");
    }
    std::string_view key = Trim(line.substr(0, eq));
    std::string_view value = Trim(line.substr(eq + 1));
    if (key == "aws_access_key_id") c.access_key = value;
    else if (key == "aws_secret_access_key") c.secret_key = value;
    else if (key == "aws_session_token") c.session_token = value;
  }
  if (!found) return Status::InvalidArgument(file + ": no profile [" + want + "]");
  if (c.access_key.empty() || c.secret_key.empty()) {
    return Status::InvalidArgument(file + ": profile [" + want +
                                   "] lacks aws_access_key_id or aws_secret_access_key");
  }
  if (!Printable(c.access_key) || !Printable(c.secret_key) ||
      (!c.session_token.empty() && !Printable(c.session_token))) {
    return Status::InvalidArgument(file + ": profile [" + want +
                                   "]: a key holds spaces or control characters");
  }
  return c;
}

Result<Credentials> LoadCredentials(const std::string& file, const std::string& profile) {
  if (!file.empty()) {
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Status::FromErrno(errno, "credentials file " + file);
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "credentials file " + file);
    if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(file + ": not a regular file");
    if ((st.st_mode & 077) != 0) {
      return Status::Permission(file + ": credentials file is readable by others (chmod 600)");
    }
    if (st.st_size > (1 << 20)) return Status::InvalidArgument(file + ": credentials file too large");
    std::string text(static_cast<size_t>(st.st_size), '\0');
    size_t got = 0;
    while (got < text.size()) {
      ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Status::FromErrno(errno, "credentials file " + file);
      if (n == 0) break;
      got += static_cast<size_t>(n);
    }
    text.resize(got);
    return ParseCredentialsFile(text, profile, file);
  }
  const char* ak = Env("AWS_ACCESS_KEY_ID");
  const char* sk = Env("AWS_SECRET_ACCESS_KEY");
  if (ak == nullptr || sk == nullptr) {
    return Status::InvalidArgument(
        "no S3 credentials: set `credentials:` or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
  }
  Credentials c;
  c.access_key = ak;
  c.secret_key = sk;
  if (const char* tok = Env("AWS_SESSION_TOKEN")) c.session_token = tok;
  if (!Printable(c.access_key) || !Printable(c.secret_key)) {
    return Status::InvalidArgument("AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY holds spaces or "
                                   "control characters");
  }
  return c;
}

Status S3Config::Validate() const {
  // Bucket names: 3..63 of [a-z0-9.-] (AWS); also allow '_' and upper case,
  // which older radosgw and Swift accept, but never '/' or control bytes.
  if (bucket.size() < 3 || bucket.size() > 63) {
    return Status::InvalidArgument("s3: bucket name must be 3 to 63 characters");
  }
  for (char ch : bucket) {
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == '_';
    if (!ok) return Status::InvalidArgument("s3: bucket name `" + bucket + "` has a bad character");
  }
  if (!UsePathStyle() && bucket.find_first_of("_.") != std::string::npos &&
      endpoint.rfind("https", 0) == 0) {
    return Status::InvalidArgument("s3: bucket `" + bucket +
                                   "` cannot be used with virtual-host addressing over https "
                                   "(set path_style: true)");
  }
  if (region.empty() || region.size() > 64 ||
      region.find_first_of(":/ \t\r\n") != std::string::npos) {
    return Status::InvalidArgument("s3: bad region `" + region + "`");
  }
  if (prefix.size() > 1024 || prefix.find('\0') != std::string::npos || prefix.rfind("/", 0) == 0) {
    return Status::InvalidArgument("s3: prefix must not start with / nor exceed 1024 bytes");
  }
  if (block_size < (64u << 10) || block_size > (16u << 20) || (block_size & (block_size - 1)) != 0) {
    return Status::InvalidArgument("s3: block size must be a power of two in 64 KiB..16 MiB");
  }
  if (connections < 1 || connections > 64) {
    return Status::InvalidArgument("s3: connections must be 1..64");
  }
  if (fetch_blocks < 1 || fetch_blocks > 64) {
    return Status::InvalidArgument("s3: fetch_blocks must be 1..64");
  }
  if (retry.attempts < 1 || retry.attempts > 20) {
    return Status::InvalidArgument("s3: retry attempts must be 1..20");
  }
  if (credentials.empty()) return Status::InvalidArgument("s3: no credentials");
  return Status::OK();
}

}  // namespace kvmfs::s3
