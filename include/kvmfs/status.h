// Status and Result<T>: errors are values (after leveldb's Status).
//
// A Status is OK or carries a Code and a message that names the file and the
// place (offset, field) that failed. It becomes an errno in exactly one place,
// ToErrno(), used at the FUSE edge.
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <utility>

namespace kvmfs {

class [[nodiscard]] Status {
 public:
  enum class Code {
    kOk = 0,
    kCorruption,       // image metadata is invalid                  -> EIO
    kNotFound,         // a file (e.g. a backing file) does not exist -> ENOENT
    kNotSupported,     // valid but unsupported feature               -> ENOTSUP
    kInvalidArgument,  // bad request or bad configuration            -> EINVAL
    kIOError,          // the host said no; errno() holds why          -> errno
    kReadOnly,         // write to a read-only view or image          -> EROFS
    kPermission,       // missing/wrong key, refused by policy         -> EACCES
    kBusy,             // image locked by another program             -> EBUSY
    kNoSpace,          //                                              -> ENOSPC
    kTooLarge,         // exceeds a hard limit                        -> EFBIG
    kAlreadyExists,    // e.g. a snapshot of that name exists         -> EEXIST
  };

  Status() = default;  // OK
  static Status OK() { return Status(); }
  static Status Corruption(std::string msg) { return Status(Code::kCorruption, std::move(msg)); }
  static Status NotFound(std::string msg) { return Status(Code::kNotFound, std::move(msg)); }
  static Status NotSupported(std::string msg) { return Status(Code::kNotSupported, std::move(msg)); }
  static Status InvalidArgument(std::string msg) { return Status(Code::kInvalidArgument, std::move(msg)); }
  static Status ReadOnly(std::string msg) { return Status(Code::kReadOnly, std::move(msg)); }
  static Status Permission(std::string msg) { return Status(Code::kPermission, std::move(msg)); }
  static Status Busy(std::string msg) { return Status(Code::kBusy, std::move(msg)); }
  static Status NoSpace(std::string msg) { return Status(Code::kNoSpace, std::move(msg)); }
  static Status TooLarge(std::string msg) { return Status(Code::kTooLarge, std::move(msg)); }
  static Status AlreadyExists(std::string msg) { return Status(Code::kAlreadyExists, std::move(msg)); }
  // An operation kvmfs does not offer on this node (EPERM, "Operation not
  // permitted"; an I/O error code carrying EPERM, unlike kPermission).
  static Status NotPermitted(std::string msg) { return Status(Code::kIOError, std::move(msg), EPERM); }
  // From an errno value; ENOENT maps to kNotFound, EACCES/EPERM to kPermission,
  // ENOSPC to kNoSpace, EROFS to kReadOnly, everything else keeps its errno.
  static Status FromErrno(int err, std::string context);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  bool IsCorruption() const { return code_ == Code::kCorruption; }
  bool IsNotFound() const { return code_ == Code::kNotFound; }
  const std::string& message() const { return msg_; }
  // The errno to hand to the kernel for this status (0 when OK).
  int ToErrno() const;
  // "Corruption: <message>" style text for logs and info.json.
  std::string ToString() const;

  // Prefixes the message with context ("vm1.qcow2: " + message); no-op when OK.
  Status WithContext(const std::string& ctx) const;

 private:
  Status(Code c, std::string msg, int err = 0) : code_(c), msg_(std::move(msg)), errno_(err) {}
  Code code_ = Code::kOk;
  std::string msg_;
  int errno_ = 0;  // for kIOError
};

// A value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}                    // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {              // NOLINT: implicit by design
    if (status_.ok()) status_ = Status::InvalidArgument("Result built from an OK status");
  }
  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace kvmfs

// Early-return helpers for Status and Result.
#define KVMFS_RETURN_IF_ERROR(expr)            \
  do {                                         \
    ::kvmfs::Status _st = (expr);              \
    if (!_st.ok()) return _st;                 \
  } while (0)

#define KVMFS_CONCAT_INNER(a, b) a##b
#define KVMFS_CONCAT(a, b) KVMFS_CONCAT_INNER(a, b)
#define KVMFS_ASSIGN_OR_RETURN(lhs, expr) \
  KVMFS_ASSIGN_OR_RETURN_IMPL(KVMFS_CONCAT(_res_, __LINE__), lhs, expr)
#define KVMFS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()
