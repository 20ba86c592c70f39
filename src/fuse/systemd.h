// Running under systemd (configs/kvmfs@.service, Type=notify): readiness and
// status through sd_notify(3), and whether stderr is the journal.
#pragma once

#include <condition_variable>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

#include "base/mutex.h"

namespace kvmfs::fuse {

// Whether fd 2 is the journal stream systemd connected the service's stderr
// to: $JOURNAL_STREAM is "DEV:INODE" of that stream and must match fd 2's
// st_dev:st_ino (a redirection since, e.g. `kvmfs -f ... 2>file` run from a
// service's shell, leaves it unmatched). As systemd.exec(5) documents.
bool StderrIsJournal();

// The line journald reads from a stream for a message at syslog priority
// `priority` (LOG_ERR ...): "<N>message\n" (sd-daemon(3)); journald adds the
// time, the identifier and the pid itself.
std::string JournalLine(int priority, std::string_view message);

// Tells the service manager about the mount when $NOTIFY_SOCKET is set
// (nothing otherwise):
//   READY=1    once the mount point answers a stat(2), i.e. the FUSE loop
//              serves (from a thread of its own, started by Start());
//   STATUS=... with READY, then whenever the text changes, checked once a
//              second (the rate limit);
//   RELOADING=1 / READY=1 around a SIGHUP reload (only once ready);
//   STOPPING=1 when the loop ended (unmount or signal).
// Thread-safe.
class Notifier {
 public:
  // `status` renders the STATUS= text (StatusLine()); it is called from the
  // notifier's thread and from Reloaded(), and must be thread-safe.
  Notifier(std::string mountpoint, std::function<std::string()> status);
  // Stopping() and Join().
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  bool active() const { return active_; }
  void Start();
  void Reloading();
  void Reloaded();
  // STOPPING=1 (once); the thread is told to end. It may still be inside the
  // stat(2) of a mount that never answered: Join() only after the session
  // is unmounted (that fails the stat).
  void Stopping();
  void Join();

 private:
  void Send(const std::string& state) REQUIRES(mu_);
  void Loop();

  const std::string mountpoint_;
  const std::function<std::string()> status_;
  const bool active_;
  Mutex mu_;  // also orders the messages: each is sent under it
  std::condition_variable_any cv_;  // waits on mu_
  bool stop_ GUARDED_BY(mu_) = false;
  bool ready_ GUARDED_BY(mu_) = false;
  bool reloading_ GUARDED_BY(mu_) = false;  // RELOADING=1 sent, READY=1 not yet
  std::string last_status_ GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace kvmfs::fuse
