#include "backend/s3/http.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <random>

#include "backend/s3/listing.h"

namespace kvmfs::s3 {
namespace {

struct CurlSlist {
  curl_slist* list = nullptr;
  ~CurlSlist() { curl_slist_free_all(list); }
  void Add(const std::string& s) { list = curl_slist_append(list, s.c_str()); }
};

std::string_view TrimCrLf(std::string_view s) {
  while (!s.empty() && (s.back() == '\r' || s.back() == '\n' || s.back() == ' ')) {
    s.remove_suffix(1);
  }
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  return s;
}

bool HeaderIs(std::string_view line, std::string_view name, std::string_view* value) {
  if (line.size() <= name.size() || line[name.size()] != ':') return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(line[i])) != name[i]) return false;
  }
  *value = TrimCrLf(line.substr(name.size() + 1));
  return true;
}

// State of one transfer, handed to curl's callbacks.
struct Transfer {
  CURL* curl;
  const HttpRequest* req;
  HttpResponse* resp;
  bool status_known = false;
  bool to_dest = false;

  void Learn() {
    if (status_known) return;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
    to_dest = req->dest != nullptr && resp->status >= 200 && resp->status < 300;
    status_known = true;
  }
};

size_t OnBody(char* p, size_t size, size_t n, void* u) {
  auto* t = static_cast<Transfer*>(u);
  size_t len = size * n;
  t->Learn();
  if (t->to_dest) {
    if (t->resp->dest_written + len > t->req->dest_len) {
      t->resp->overflow = true;
      return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
    }
    std::memcpy(t->req->dest + t->resp->dest_written, p, len);
    t->resp->dest_written += len;
    return len;
  }
  // Error bodies are small; a listing is bounded by max_body.
  size_t cap = t->req->dest != nullptr ? size_t{1} << 16 : t->req->max_body;
  if (t->resp->body.size() + len > cap) {
    t->resp->overflow = true;
    return 0;
  }
  t->resp->body.append(p, len);
  return len;
}

size_t OnHeader(char* p, size_t size, size_t n, void* u) {
  auto* t = static_cast<Transfer*>(u);
  std::string_view line(p, size * n);
  std::string_view v;
  if (line.rfind("HTTP/", 0) == 0) {
    // A new response (after 100-continue or a redirect): forget the last one.
    t->status_known = false;
    t->resp->etag.clear();
    t->resp->content_range.clear();
    t->resp->content_length = -1;
  } else if (HeaderIs(line, "etag", &v)) {
    if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
    t->resp->etag = std::string(v.substr(0, 256));
  } else if (HeaderIs(line, "last-modified", &v)) {
    t->resp->last_modified = std::string(v.substr(0, 64));
  } else if (HeaderIs(line, "content-range", &v)) {
    t->resp->content_range = std::string(v.substr(0, 128));
  } else if (HeaderIs(line, "content-length", &v)) {
    int64_t len = 0;
    bool ok = !v.empty() && v.size() <= 18;
    for (char c : v) {
      if (c < '0' || c > '9') ok = false;
      else len = len * 10 + (c - '0');
    }
    t->resp->content_length = ok ? len : -1;
  }
  return size * n;
}

}  // namespace

void EnsureCurlInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct HttpConnection::Impl {
  CURL* curl = nullptr;
  std::string sigv4;   // "aws:amz:REGION:s3"
  std::string access_key, secret_key;
  std::string token_header;
  std::string ca_file;
  uint32_t connect_timeout_ms, stall_timeout_ms;
};

HttpConnection::HttpConnection(const S3Config& config) : impl_(std::make_unique<Impl>()) {
  EnsureCurlInit();
  impl_->curl = curl_easy_init();
  impl_->sigv4 = "aws:amz:" + config.region + ":s3";
  impl_->access_key = config.credentials.access_key;
  impl_->secret_key = config.credentials.secret_key;
  if (!config.credentials.session_token.empty()) {
    impl_->token_header = "x-amz-security-token: " + config.credentials.session_token;
  }
  impl_->ca_file = config.ca_file;
  impl_->connect_timeout_ms = config.connect_timeout_ms;
  impl_->stall_timeout_ms = config.stall_timeout_ms;
}

HttpConnection::~HttpConnection() {
  if (impl_->curl != nullptr) curl_easy_cleanup(impl_->curl);
  // The secret leaves memory with the connection.
  std::fill(impl_->secret_key.begin(), impl_->secret_key.end(), '\0');
}

void HttpConnection::Perform(const HttpRequest& req, HttpResponse* resp) {
  *resp = HttpResponse{};
  CURL* c = impl_->curl;
  if (c == nullptr) {
    resp->curl_code = CURLE_FAILED_INIT;
    resp->curl_error = "curl_easy_init failed";
    return;
  }
  // Reset drops per-request options but keeps the connection cache.
  curl_easy_reset(c);
  CurlSlist headers;
  // curl 7.88 neither adds nor computes this header; it signs it as sent.
  headers.Add("x-amz-content-sha256: UNSIGNED-PAYLOAD");
  if (!impl_->token_header.empty()) headers.Add(impl_->token_header);
  // (No "Expect:" to suppress 100-continue: there is no body to send, and
  // curl 7.88 would sign the empty header it then leaves out, which radosgw
  // answers with SignatureDoesNotMatch.)
  for (const std::string& h : req.headers) headers.Add(h);
  Transfer t{c, &req, resp};
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.list);
  curl_easy_setopt(c, CURLOPT_AWS_SIGV4, impl_->sigv4.c_str());
  // Not CURLOPT_USERPWD: an access key may contain ':' (Swift's "test:tester").
  curl_easy_setopt(c, CURLOPT_USERNAME, impl_->access_key.c_str());
  curl_easy_setopt(c, CURLOPT_PASSWORD, impl_->secret_key.c_str());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);  // keys may hold "." and ".." segments
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(impl_->connect_timeout_ms));
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME,
                   static_cast<long>(std::max<uint32_t>(1, impl_->stall_timeout_ms / 1000)));
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024);
  if (!impl_->ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, impl_->ca_file.c_str());
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  if (req.method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (req.method != "GET") {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }
  CURLcode rc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
  if (rc == CURLE_WRITE_ERROR && resp->overflow) rc = CURLE_OK;  // reported as overflow
  resp->curl_code = rc;
  if (rc != CURLE_OK) resp->curl_error = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc);
}

Outcome Classify(const HttpResponse& resp) {
  switch (resp.curl_code) {
    case CURLE_OK: break;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return Outcome::kRetry;
    default:
      return Outcome::kDone;
  }
  if (resp.status >= 500 || resp.status == 429) return Outcome::kRetry;
  return Outcome::kDone;
}

std::chrono::milliseconds Backoff(const RetryPolicy& policy, int attempt, bool slow_down) {
  thread_local std::minstd_rand rng(std::random_device{}());
  int shift = std::clamp(attempt - 2 + (slow_down ? 1 : 0), 0, 20);
  uint64_t full = std::min<uint64_t>(policy.cap_ms, uint64_t{policy.base_ms} << shift);
  uint64_t half = full / 2;
  uint64_t wait = half + (half > 0 ? rng() % (half + 1) : 0);
  return std::chrono::milliseconds(wait);
}

std::string DescribeFailure(const HttpResponse& resp) {
  if (resp.curl_code != CURLE_OK) {
    switch (resp.curl_code) {
      case CURLE_COULDNT_CONNECT: return "connection refused";
      case CURLE_OPERATION_TIMEDOUT: return "timed out";
      case CURLE_COULDNT_RESOLVE_HOST: return "cannot resolve host";
      default: return resp.curl_error.empty() ? "transfer failed" : resp.curl_error;
    }
  }
  std::string out = "HTTP " + std::to_string(resp.status);
  S3Error err = ParseError(resp.body);
  if (!err.code.empty()) out += " " + err.code;
  if (!err.message.empty()) out += ": " + err.message;
  return out;
}

}  // namespace kvmfs::s3
