// Where the metrics go: an HTTP endpoint (/metrics, libmicrohttpd) and a file
// for node_exporter's textfile collector, rewritten atomically.
//
// Both are set up in two steps around fuse_daemonize(): Listen()/Check()
// before it, so that a port in use or a missing directory fails the mount
// with a one-line reason; Start() after it, because threads do not survive
// fork().
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "base/unique_fd.h"
#include "kvmfs/status.h"

struct MHD_Daemon;

namespace kvmfs::metrics {

// What a scrape renders (normally Registry::Global().Render()).
using RenderFn = std::function<std::string()>;

// An address to listen on: "HOST:PORT", "[IPV6]:PORT", ":PORT" or "PORT".
// Without a host it is loopback (127.0.0.1): exposing the metrics to the
// network takes an explicit 0.0.0.0 or [::]. PORT 0 picks a free port.
struct ListenAddress {
  std::string host;  // "127.0.0.1" when none was given
  std::string port;
};
Result<ListenAddress> ParseListenAddress(const std::string& text);

class HttpServer {
 public:
  // Binds and listens on `address` (ParseListenAddress). Errors name the
  // address: kInvalidArgument for a bad one, the bind/listen errno otherwise.
  static Result<std::unique_ptr<HttpServer>> Listen(const std::string& address);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Serves GET/HEAD /metrics (and a short page at /) with `render` from
  // libmicrohttpd's thread. Errors: the daemon could not start.
  Status Start(RenderFn render);
  // Stops serving and closes the socket (also done by the destructor).
  void Stop();

  // The port bound (the chosen one for port 0) and "HOST:PORT".
  uint16_t port() const { return port_; }
  const std::string& description() const { return description_; }
  // Scrapes served so far.
  uint64_t scrapes() const;

 private:
  HttpServer(UniqueFd fd, uint16_t port, std::string description);
  struct Handler;

  UniqueFd fd_;
  const uint16_t port_;
  const std::string description_;
  MHD_Daemon* daemon_ = nullptr;
  std::unique_ptr<Handler> handler_;
};

// Writes `text` to `path` atomically: a temporary file in the same
// directory (mode 0644) renamed over `path`, so a reader (node_exporter)
// sees the old file or the new one, never a part. Errors name the path.
Status WriteFileAtomically(const std::string& path, const std::string& text);

// Rewrites a file with `render` every `interval` from a thread of its own,
// and once more when stopped (the final values of a clean unmount).
class FileWriter {
 public:
  // Checks that `path` can be written (writes it once, with `render`).
  static Result<std::unique_ptr<FileWriter>> Create(const std::string& path,
                                                     std::chrono::milliseconds interval,
                                                     RenderFn render);
  ~FileWriter();
  void Start();
  void Stop();
  const std::string& path() const { return path_; }
  // Writes done so far (including the one of Create()).
  uint64_t writes() const;

 private:
  FileWriter(std::string path, std::chrono::milliseconds interval, RenderFn render)
      : path_(std::move(path)), interval_(interval), render_(std::move(render)) {}
  void WriteNow();

  const std::string path_;
  const std::chrono::milliseconds interval_;
  const RenderFn render_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // GUARDED_BY(mu_)
  uint64_t writes_ = 0;  // GUARDED_BY(mu_)
  bool warned_ = false;  // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace kvmfs::metrics
