// Logging: spdlog to stderr in the foreground, to syslog (ident "kvmfs",
// facility daemon) in the background. libfuse's own messages go the same way.
// In the foreground with stderr the service's journal stream (run by
// systemd: StderrIsJournal()), lines carry their syslog priority as "<N>"
// and no time or name (the journal adds them).
#pragma once

#include <string>

namespace kvmfs::fuse {

// `level` is trace|debug|info|warn|error, or "" for info (debug when `debug`).
void SetupLogging(bool foreground, bool debug, const std::string& level);

// Routes libfuse's log messages: before SetupLogging they are kept (the last
// one is returned by LastFuseMessage(), for error lines); after, they are logged.
void CaptureFuseLog();
std::string LastFuseMessage();

}  // namespace kvmfs::fuse
