#include "fuse/logging.h"

#include <fuse.h>
#include <fuse_log.h>
#include <syslog.h>

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <mutex>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>

#include "fuse/systemd.h"

namespace kvmfs::fuse {
namespace {

std::mutex g_mu;
std::string g_early_text;  // GUARDED_BY(g_mu): libfuse output before logging is set up
std::atomic<bool> g_logging_ready{false};

spdlog::level::level_enum ToSpdlog(fuse_log_level level) {
  switch (level) {
    case FUSE_LOG_EMERG:
    case FUSE_LOG_ALERT:
    case FUSE_LOG_CRIT:
    case FUSE_LOG_ERR: return spdlog::level::err;
    case FUSE_LOG_WARNING: return spdlog::level::warn;
    case FUSE_LOG_NOTICE:
    case FUSE_LOG_INFO: return spdlog::level::info;
    case FUSE_LOG_DEBUG: return spdlog::level::trace;  // the protocol dump
  }
  return spdlog::level::info;
}

void FuseLog(fuse_log_level level, const char* fmt, va_list ap) {
  char buf[1024];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  if (!g_logging_ready) {
    // libfuse builds some lines from several calls: keep the raw text.
    std::lock_guard lock(g_mu);
    g_early_text += buf;
    return;
  }
  std::string msg = buf;
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  if (!msg.empty()) spdlog::log(ToSpdlog(level), "{}", msg);
}

// The log of a service whose stderr is the journal (StderrIsJournal): one
// "<N>message" line per message, N its syslog priority, which journald keeps
// as the entry's PRIORITY (so `journalctl -p warning` works).
class JournalStreamSink : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    const std::string line =
        JournalLine(Priority(msg.level), std::string_view(formatted.data(), formatted.size()));
    for (size_t done = 0; done < line.size();) {
      const ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // nowhere left to say it
      done += static_cast<size_t>(n);
    }
  }
  void flush_() override {}

 private:
  static int Priority(spdlog::level::level_enum level) {
    switch (level) {
      case spdlog::level::trace:
      case spdlog::level::debug: return LOG_DEBUG;
      case spdlog::level::info: return LOG_INFO;
      case spdlog::level::warn: return LOG_WARNING;
      case spdlog::level::err: return LOG_ERR;
      case spdlog::level::critical: return LOG_CRIT;
      default: return LOG_INFO;
    }
  }
};

}  // namespace

void SetupLogging(bool foreground, bool debug, const std::string& level) {
  std::shared_ptr<spdlog::logger> logger;
  if (foreground && StderrIsJournal()) {
    // Run by systemd (kvmfs@.service runs kvmfs -f): the journal adds the
    // time, the name and the pid, and takes the priority from the line.
    logger = std::make_shared<spdlog::logger>("kvmfs", std::make_shared<JournalStreamSink>());
    logger->set_pattern("%v");
    spdlog::register_logger(logger);
  } else if (foreground) {
    logger = spdlog::stderr_color_mt("kvmfs");
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e kvmfs[%t] %^%l%$: %v");
  } else {
    logger = spdlog::syslog_logger_mt("kvmfs", "kvmfs", LOG_PID, LOG_DAEMON);
    logger->set_pattern("%l: %v");
  }
  spdlog::level::level_enum lvl = debug ? spdlog::level::debug : spdlog::level::info;
  if (!level.empty()) lvl = spdlog::level::from_str(level);
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
  g_logging_ready = true;
}

void CaptureFuseLog() { fuse_set_log_func(FuseLog); }

std::string LastFuseMessage() {
  std::lock_guard lock(g_mu);
  std::string text = g_early_text;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  size_t nl = text.rfind('\n');
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

}  // namespace kvmfs::fuse
