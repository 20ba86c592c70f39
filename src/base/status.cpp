#include "kvmfs/status.h"

#include <cstring>

namespace kvmfs {

Status Status::FromErrno(int err, std::string context) {
  std::string msg = std::move(context) + ": " + std::strerror(err);
  switch (err) {
    case ENOENT: return Status(Code::kNotFound, std::move(msg));
    case EACCES:
    case EPERM: return Status(Code::kPermission, std::move(msg));
    case ENOSPC: return Status(Code::kNoSpace, std::move(msg));
    case EROFS: return Status(Code::kReadOnly, std::move(msg));
    case EEXIST: return Status(Code::kAlreadyExists, std::move(msg));
    case EBUSY:
    case EAGAIN: return Status(Code::kBusy, std::move(msg));
    default: return Status(Code::kIOError, std::move(msg), err);
  }
}

int Status::ToErrno() const {
  switch (code_) {
    case Code::kOk: return 0;
    case Code::kCorruption: return EIO;
    case Code::kNotFound: return ENOENT;
    case Code::kNotSupported: return ENOTSUP;
    case Code::kInvalidArgument: return EINVAL;
    case Code::kIOError: return errno_ ? errno_ : EIO;
    case Code::kReadOnly: return EROFS;
    case Code::kPermission: return EACCES;
    case Code::kBusy: return EBUSY;
    case Code::kNoSpace: return ENOSPC;
    case Code::kTooLarge: return EFBIG;
    case Code::kAlreadyExists: return EEXIST;
  }
  return EIO;
}

std::string Status::ToString() const {
  const char* name = "OK";
  switch (code_) {
    case Code::kOk: return "OK";
    case Code::kCorruption: name = "Corruption"; break;
    case Code::kNotFound: name = "Not found"; break;
    case Code::kNotSupported: name = "Not supported"; break;
    case Code::kInvalidArgument: name = "Invalid argument"; break;
    case Code::kIOError: name = "I/O error"; break;
    case Code::kReadOnly: name = "Read-only"; break;
    case Code::kPermission: name = "Permission denied"; break;
    case Code::kBusy: name = "Busy"; break;
    case Code::kNoSpace: name = "No space"; break;
    case Code::kTooLarge: name = "Too large"; break;
    case Code::kAlreadyExists: name = "Already exists"; break;
  }
  return std::string(name) + ": " + msg_;
}

Status Status::WithContext(const std::string& ctx) const {
  if (ok()) return *this;
  return Status(code_, ctx + ": " + msg_, errno_);
}

}  // namespace kvmfs
