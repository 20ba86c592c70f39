// HTTP over libcurl for the S3 client: one connection (a curl easy handle,
// kept alive between requests), signed with libcurl's own SigV4, and the
// classification of failures into "try again" and "give up".
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/s3/config.h"
#include "kvmfs/status.h"

namespace kvmfs::s3 {

struct HttpRequest {
  std::string method = "GET";  // "GET" or "HEAD"
  std::string url;             // canonical (url.h)
  std::vector<std::string> headers;  // "Range: bytes=0-511", "If-Match: \"...\""
  // Where a 2xx body goes: into `dest` (exactly dest_len bytes expected;
  // more is an error) or, when dest is null, into HttpResponse::body (at most
  // max_body bytes). Non-2xx bodies always go to HttpResponse::body.
  uint8_t* dest = nullptr;
  size_t dest_len = 0;
  size_t max_body = 16u << 20;
};

struct HttpResponse {
  int curl_code = 0;        // CURLcode; 0: the exchange completed
  std::string curl_error;   // libcurl's text for curl_code
  long status = 0;          // HTTP status
  std::string body;
  size_t dest_written = 0;
  bool overflow = false;    // the body did not fit `dest` / max_body
  // Response headers S3 sends that the client uses.
  std::string etag;         // without quotes
  std::string last_modified;
  std::string content_range;
  int64_t content_length = -1;
};

// One keep-alive connection. Not thread-safe: one request at a time.
class HttpConnection {
 public:
  // `config` gives the signing region, credentials, timeouts and ca_file.
  explicit HttpConnection(const S3Config& config);
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  // Sends `req` and fills `resp`. Never fails itself: transport errors are in
  // resp->curl_code.
  void Perform(const HttpRequest& req, HttpResponse* resp);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// What to do after one attempt.
enum class Outcome {
  kDone,       // a final answer (2xx, or an error retrying cannot fix)
  kRetry,      // connection refused/reset, timeout, 5xx, 429, 503 SlowDown, short body
};
Outcome Classify(const HttpResponse& resp);

// The wait before attempt `attempt` (2-based: the first retry), with jitter.
std::chrono::milliseconds Backoff(const RetryPolicy& policy, int attempt, bool slow_down);

// One-line description of a failed exchange for messages: "connection
// refused", "HTTP 503 SlowDown", "HTTP 403 SignatureDoesNotMatch: ...".
// Never contains credentials.
std::string DescribeFailure(const HttpResponse& resp);

// Initialises libcurl once per process (thread-safe).
void EnsureCurlInit();

}  // namespace kvmfs::s3
