#include "fuse/logging.h"

#include <fuse.h>
#include <fuse_log.h>
#include <syslog.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <mutex>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>

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

}  // namespace

void SetupLogging(bool foreground, bool debug, const std::string& level) {
  std::shared_ptr<spdlog::logger> logger;
  if (foreground) {
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
