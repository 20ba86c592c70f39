#include "metrics/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "metrics/exposition.h"

namespace kvmfs::metrics {

// ---- Addresses ------------------------------------------------------------------------

Result<ListenAddress> ParseListenAddress(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("metrics address '" + text + "': " + why +
                                   " (expected HOST:PORT, [IPV6]:PORT or :PORT)");
  };
  ListenAddress a;
  std::string port;
  if (!text.empty() && text[0] == '[') {
    size_t close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return bad("an IPv6 address is written [ADDR]:PORT");
    a.host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else if (size_t colon = text.rfind(':'); colon != std::string::npos) {
    a.host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (a.host.find(':') != std::string::npos) return bad("an IPv6 address is written [ADDR]:PORT");
  } else {
    port = text;
  }
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(port) > 65535)
    return bad("the port must be a number from 0 to 65535");
  if (a.host.empty()) a.host = "127.0.0.1";  // loopback unless told otherwise
  a.port = port;
  return a;
}

// ---- HTTP ----------------------------------------------------------------------------

struct HttpServer::Handler {
  RenderFn render;
  std::atomic<uint64_t> scrapes{0};

  static MHD_Result Reply(MHD_Connection* c, unsigned code, const std::string& body,
                          const char* type) {
    MHD_Response* r =
        MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
    if (r == nullptr) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
  }

  static MHD_Result Access(void* cls, MHD_Connection* c, const char* url, const char* method,
                           const char*, const char*, size_t* upload_size, void** state) {
    auto* self = static_cast<Handler*>(cls);
    // The first call only announces the request (headers read).
    if (*state == nullptr) {
      *state = self;
      return MHD_YES;
    }
    if (*upload_size != 0) {  // a body we do not want
      *upload_size = 0;
      return MHD_YES;
    }
    if (std::strcmp(method, "GET") != 0 && std::strcmp(method, "HEAD") != 0)
      return Reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n", "text/plain");
    if (std::strcmp(url, "/metrics") == 0) {
      self->scrapes.fetch_add(1, std::memory_order_relaxed);
      return Reply(c, MHD_HTTP_OK, self->render(), kTextContentType);
    }
    if (std::strcmp(url, "/") == 0)
      return Reply(c, MHD_HTTP_OK,
                   "<html><head><title>kvmfs</title></head><body>"
                   "<p>kvmfs metrics: <a href=\"/metrics\">/metrics</a></p></body></html>\n",
                   "text/html; charset=utf-8");
    return Reply(c, MHD_HTTP_NOT_FOUND, "not found: see /metrics\n", "text/plain");
  }
};

HttpServer::HttpServer(UniqueFd fd, uint16_t port, std::string description)
    : fd_(std::move(fd)), port_(port), description_(std::move(description)) {}

Result<std::unique_ptr<HttpServer>> HttpServer::Listen(const std::string& address) {
  KVMFS_ASSIGN_OR_RETURN(ListenAddress a, ParseListenAddress(address));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(a.host.c_str(), a.port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr)
    return Status::InvalidArgument("metrics address '" + address + "': " + ::gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);
  UniqueFd fd(::socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol));
  if (!fd.valid()) return Status::FromErrno(errno, "metrics " + address + ": socket");
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), res->ai_addr, res->ai_addrlen) != 0)
    return Status::FromErrno(errno, "metrics " + address + ": cannot listen there");
  if (::listen(fd.get(), 16) != 0) return Status::FromErrno(errno, "metrics " + address + ": listen");
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  uint16_t port = 0;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len) == 0)
    port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                             : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  const bool v6 = a.host.find(':') != std::string::npos;
  std::string description = (v6 ? "[" + a.host + "]" : a.host) + ":" + std::to_string(port);
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(fd), port, std::move(description)));
}

Status HttpServer::Start(RenderFn render) {
  if (daemon_ != nullptr) return Status::OK();
  handler_ = std::make_unique<Handler>();
  handler_->render = std::move(render);
  // One internal thread polls every connection: a scrape renders in well
  // under a millisecond, and a slow client cannot hold more than its slot.
  daemon_ = MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD, 0, nullptr, nullptr, &Handler::Access,
                             handler_.get(), MHD_OPTION_LISTEN_SOCKET, fd_.get(),
                             MHD_OPTION_CONNECTION_LIMIT, 32u, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                             MHD_OPTION_END);
  if (daemon_ == nullptr) return Status::FromErrno(errno ? errno : EIO, "metrics " + description_ + ": the HTTP server did not start");
  fd_.release();  // MHD_stop_daemon closes it
  return Status::OK();
}

void HttpServer::Stop() {
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
  daemon_ = nullptr;
  fd_.reset();
}

HttpServer::~HttpServer() { Stop(); }

uint64_t HttpServer::scrapes() const {
  return handler_ ? handler_->scrapes.load(std::memory_order_relaxed) : 0;
}

// ---- Files ---------------------------------------------------------------------------

Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd.valid()) return Status::FromErrno(errno, "metrics file " + tmp);
  // The umask may have taken bits: node_exporter runs as another user.
  ::fchmod(fd.get(), 0644);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Status st = Status::FromErrno(n < 0 ? errno : ENOSPC, "metrics file " + tmp);
      ::unlink(tmp.c_str());
      return st;
    }
    done += static_cast<size_t>(n);
  }
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Status st = Status::FromErrno(errno, "metrics file " + path);
    ::unlink(tmp.c_str());
    return st;
  }
  return Status::OK();
}

Result<std::unique_ptr<FileWriter>> FileWriter::Create(const std::string& path,
                                                       std::chrono::milliseconds interval,
                                                       RenderFn render) {
  KVMFS_RETURN_IF_ERROR(WriteFileAtomically(path, render()));
  std::unique_ptr<FileWriter> w(new FileWriter(path, interval, std::move(render)));
  w->writes_ = 1;
  return w;
}

void FileWriter::WriteNow() {
  Status st = WriteFileAtomically(path_, render_());
  std::lock_guard<std::mutex> lock(mu_);
  if (st.ok()) {
    ++writes_;
    warned_ = false;
  } else if (!warned_) {
    // Once per failure streak: a full disk must not flood the log.
    spdlog::warn("{}", st.ToString());
    warned_ = true;
  }
}

void FileWriter::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, interval_, [this] { return stop_; })) {
      lock.unlock();
      WriteNow();
      lock.lock();
    }
  });
}

void FileWriter::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  WriteNow();
}

FileWriter::~FileWriter() { Stop(); }

uint64_t FileWriter::writes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return writes_;
}

}  // namespace kvmfs::metrics
