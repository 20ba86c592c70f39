#include "fuse/systemd.h"

#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <spdlog/spdlog.h>

namespace kvmfs::fuse {
namespace {

// How often the STATUS= text is compared with what was sent last: the most
// systemd hears of it, however often files are opened and closed.
constexpr std::chrono::seconds kStatusPeriod{1};
// How often the mount point is tried before it answers (a stat that fails,
// not one that waits for the loop: that one simply returns when answered).
constexpr std::chrono::milliseconds kReadyRetry{50};

uint64_t MonotonicMicros() {
  struct timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
}

}  // namespace

bool StderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  unsigned long long dev = 0, ino = 0;
  char rest = 0;
  if (std::sscanf(stream, "%llu:%llu%c", &dev, &ino, &rest) != 2) return false;
  struct stat st;
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == dev &&
         static_cast<unsigned long long>(st.st_ino) == ino;
}

std::string JournalLine(int priority, std::string_view message) {
  const std::string prefix = "<" + std::to_string(priority) + ">";
  while (!message.empty() && message.back() == '\n') message.remove_suffix(1);
  // journald reads one entry per line: each line carries the priority.
  std::string out;
  size_t begin = 0;
  for (;;) {
    const size_t nl = message.find('\n', begin);
    out += prefix;
    out.append(message.substr(begin, nl == std::string_view::npos ? std::string_view::npos : nl - begin));
    out += '\n';
    if (nl == std::string_view::npos) break;
    begin = nl + 1;
  }
  return out;
}

Notifier::Notifier(std::string mountpoint, std::function<std::string()> status)
    : mountpoint_(std::move(mountpoint)),
      status_(std::move(status)),
      active_(std::getenv("NOTIFY_SOCKET") != nullptr) {}

Notifier::~Notifier() {
  Stopping();
  Join();
}

void Notifier::Send(const std::string& state) {
  if (!active_) return;
  // unset_environment 0: kvmfs starts no children, and a message sent later
  // (STATUS, RELOADING) needs the variable still.
  const int rc = sd_notify(0, state.c_str());
  if (rc < 0) spdlog::warn("sd_notify: {}", std::strerror(-rc));
}

void Notifier::Start() {
  if (!active_ || thread_.joinable()) return;
  thread_ = std::thread([this] { Loop(); });
}

void Notifier::Loop() {
  // The mount point is mounted already; a stat(2) of it is a GETATTR that
  // only the FUSE loop answers, so once it returns the mount serves.
  for (;;) {
    struct stat st;
    const bool answered = ::stat(mountpoint_.c_str(), &st) == 0;
    MutexLock lock(mu_);
    if (stop_) return;
    if (answered) break;
    const auto until = std::chrono::steady_clock::now() + kReadyRetry;
    while (!stop_ && cv_.wait_until(mu_, until) != std::cv_status::timeout) {
    }
  }
  std::string status = status_();
  {
    MutexLock lock(mu_);
    if (stop_) return;
    ready_ = true;
    last_status_ = status;
    Send("READY=1\nSTATUS=" + status + "\nMAINPID=" + std::to_string(::getpid()));
  }
  spdlog::debug("systemd: ready ({})", status);
  for (;;) {
    {
      MutexLock lock(mu_);
      const auto until = std::chrono::steady_clock::now() + kStatusPeriod;
      while (!stop_ && cv_.wait_until(mu_, until) != std::cv_status::timeout) {
      }
      if (stop_) return;
    }
    status = status_();  // outside mu_: it takes the pool set's locks
    MutexLock lock(mu_);
    if (stop_) return;
    if (status == last_status_ || reloading_) continue;
    last_status_ = status;
    Send("STATUS=" + status);
  }
}

void Notifier::Reloading() {
  MutexLock lock(mu_);
  if (!ready_ || stop_) return;
  reloading_ = true;
  // MONOTONIC_USEC: what systemd 253's Type=notify-reload asks for.
  Send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(MonotonicMicros()) +
       "\nSTATUS=reloading the configuration");
}

void Notifier::Reloaded() {
  const std::string status = status_();
  MutexLock lock(mu_);
  if (!reloading_ || stop_) return;
  reloading_ = false;
  last_status_ = status;
  Send("READY=1\nSTATUS=" + status);
}

void Notifier::Stopping() {
  {
    MutexLock lock(mu_);
    if (stop_) return;
    stop_ = true;
    Send("STOPPING=1\nSTATUS=unmounting " + mountpoint_);
  }
  cv_.notify_all();
}

void Notifier::Join() {
  if (thread_.joinable()) thread_.join();
}

}  // namespace kvmfs::fuse
