#include "backend/s3/client.h"

#include <curl/curl.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <thread>

namespace kvmfs::s3 {
namespace {

constexpr size_t kMaxPages = 10000;

std::string NormalizePrefix(std::string prefix) {
  if (!prefix.empty() && prefix.back() != '/') prefix.push_back('/');
  return prefix;
}

std::string RangeHeader(uint64_t off, size_t len) {
  return "Range: bytes=" + std::to_string(off) + "-" + std::to_string(off + len - 1);
}

// Whether a Content-Range "bytes A-B/T" says exactly [off, off+len).
bool RangeMatches(const std::string& cr, uint64_t off, size_t len) {
  std::string want = "bytes " + std::to_string(off) + "-" + std::to_string(off + len - 1) + "/";
  return cr.compare(0, want.size(), want) == 0;
}

}  // namespace

Result<std::shared_ptr<S3Client>> S3Client::Create(S3Config config,
                                                   std::shared_ptr<BlockCache> cache) {
  KVMFS_RETURN_IF_ERROR(config.Validate());
  KVMFS_ASSIGN_OR_RETURN(Endpoint ep, ParseEndpoint(config.endpoint, config.region));
  EnsureCurlInit();
  std::shared_ptr<S3Client> client(new S3Client(std::move(config), std::move(ep), std::move(cache)));
  S3Client* self = client.get();
  client->fetcher_ = std::make_unique<BlockFetcher>(
      client->config_,
      [self](HttpConnection& conn, const ObjectRef& obj, uint64_t off, uint8_t* buf, size_t len) {
        return self->GetRange(conn, obj, off, buf, len);
      },
      [self] { return std::make_unique<HttpConnection>(self->config_); }, client->cache_);
  return client;
}

S3Client::S3Client(S3Config config, Endpoint endpoint, std::shared_ptr<BlockCache> cache)
    : config_(std::move(config)),
      endpoint_(std::move(endpoint)),
      prefix_(NormalizePrefix(config_.prefix)),
      cache_(std::move(cache)),
      counters_(metrics::StoreCountersFor(config_.pool)) {
  static constexpr const char* kKindNames[kKinds] = {"GET", "LIST", "HEAD"};
  static constexpr const char* kResultNames[kResults] = {"ok", "not_found", "denied", "changed",
                                                         "error"};
  for (int k = 0; k < kKinds; ++k) {
    for (int r = 0; r < kResults; ++r) requests_by_[k][r] = &counters_.Request(kKindNames[k], kResultNames[r]);
    retries_by_[k] = &counters_.Retries(kKindNames[k]);
  }
}

S3Client::~S3Client() { fetcher_.reset(); }

std::string S3Client::Url(const std::string& path) const {
  return "s3://" + config_.bucket + "/" + prefix_ + path;
}

std::unique_ptr<HttpConnection> S3Client::Acquire() {
  {
    MutexLock lock(mu_);
    if (!idle_.empty()) {
      auto conn = std::move(idle_.back());
      idle_.pop_back();
      return conn;
    }
  }
  return std::make_unique<HttpConnection>(config_);
}

void S3Client::Release(std::unique_ptr<HttpConnection> conn) {
  MutexLock lock(mu_);
  if (idle_.size() < 4) idle_.push_back(std::move(conn));
}

void S3Client::Execute(HttpConnection& conn, const HttpRequest& req, HttpResponse* resp,
                       const std::string& what) {
  // Ranged GETs write into `dest`; listings are GETs into the body.
  const Kind kind = req.method == "HEAD" ? kHead : req.dest != nullptr ? kGet : kList;
  for (int attempt = 1;; ++attempt) {
    ++requests_;
    conn.Perform(req, resp);
    if (Classify(*resp) == Outcome::kDone) break;
    if (attempt >= config_.retry.attempts) {
      ++failures_;
      requests_by_[kind][kError]->Add();
      spdlog::warn("s3: {}: {} (gave up after {} attempts)", what, DescribeFailure(*resp),
                   attempt);
      return;
    }
    bool slow_down = resp->status == 503 || resp->status == 429;
    auto wait = Backoff(config_.retry, attempt + 1, slow_down);
    spdlog::debug("s3: {}: {}, retry {} in {} ms", what, DescribeFailure(*resp), attempt,
                  wait.count());
    ++retries_;
    retries_by_[kind]->Add();
    std::this_thread::sleep_for(wait);
  }
  RequestResult result = kError;
  if (resp->curl_code == CURLE_OK && resp->status >= 200 && resp->status < 300) {
    const uint64_t got = resp->dest_written + resp->body.size();
    bytes_ += got;
    counters_.fetched_bytes.Add(got);
    result = kOk;
  } else {
    ++failures_;
    if (resp->curl_code == CURLE_OK) {
      result = resp->status == 404                          ? kNotFound
               : resp->status == 401 || resp->status == 403 ? kDenied
               : resp->status == 412                        ? kChanged
                                                            : kError;
    }
  }
  requests_by_[kind][result]->Add();
}

Status S3Client::ToStatus(const HttpResponse& resp, const std::string& what) const {
  if (resp.curl_code != CURLE_OK || resp.status >= 500 || resp.status == 429) {
    return Status::FromErrno(EIO, what + ": " + DescribeFailure(resp) + " (after " +
                                      std::to_string(config_.retry.attempts) + " attempts)");
  }
  if (resp.status == 403 || resp.status == 401) {
    S3Error err = ParseError(resp.body);
    std::string why = err.code == "SignatureDoesNotMatch"
                          ? "wrong secret key for access key " + config_.credentials.Redacted()
                      : err.code == "InvalidAccessKeyId"
                          ? "unknown access key " + config_.credentials.Redacted()
                          : "access denied for access key " + config_.credentials.Redacted();
    return Status::Permission(what + ": " + why + " (" + DescribeFailure(resp) + ")");
  }
  if (resp.status == 404) {
    S3Error err = ParseError(resp.body);
    if (err.code == "NoSuchBucket") return Status::NotFound(what + ": no such bucket");
    return Status::NotFound(what + ": no such object");
  }
  if (resp.status == 412) {
    return Status::FromErrno(ESTALE, what + ": the object changed (ETag no longer matches)");
  }
  if (resp.overflow) return Status::FromErrno(EIO, what + ": response larger than expected");
  return Status::FromErrno(EIO, what + ": unexpected " + DescribeFailure(resp));
}

Status S3Client::Verify() {
  HttpRequest req;
  req.url = BuildUrl(endpoint_, config_.bucket, config_.UsePathStyle(), "",
                     {{"delimiter", "/"}, {"list-type", "2"}, {"max-keys", "1"},
                      {"prefix", prefix_}});
  auto conn = Acquire();
  HttpResponse resp;
  std::string what = "s3://" + config_.bucket + "/" + prefix_ + " at " + endpoint_.scheme +
                     "://" + endpoint_.host + endpoint_.port;
  Execute(*conn, req, &resp, what);
  Release(std::move(conn));
  if (resp.curl_code == CURLE_OK && resp.status == 200) {
    auto page = ParseListPage(resp.body, what);
    return page.ok() ? Status::OK() : page.status();
  }
  return ToStatus(resp, what);
}

Result<FolderListing> S3Client::ListFresh(const std::string& folder) {
  std::string list_prefix = prefix_ + folder;
  if (!folder.empty() && folder.back() != '/') list_prefix.push_back('/');
  FolderListing out;
  size_t dropped = 0;
  std::string token;
  auto conn = Acquire();
  for (size_t page_no = 0;; ++page_no) {
    if (page_no >= kMaxPages) {
      return Status::TooLarge(Url(folder) + ": more than " + std::to_string(kMaxPages) + " pages");
    }
    QueryParams q = {{"delimiter", "/"}, {"list-type", "2"}, {"prefix", list_prefix}};
    if (!token.empty()) q.push_back({"continuation-token", token});
    HttpRequest req;
    req.url = BuildUrl(endpoint_, config_.bucket, config_.UsePathStyle(), "", q);
    HttpResponse resp;
    std::string what = "list " + Url(folder);
    Execute(*conn, req, &resp, what);
    if (resp.curl_code != CURLE_OK || resp.status != 200 || resp.overflow) {
      return ToStatus(resp, what);
    }
    KVMFS_ASSIGN_OR_RETURN(ListPage page, ParseListPage(resp.body, what));
    KVMFS_RETURN_IF_ERROR(AddPage(page, list_prefix, &out.entries, &dropped));
    if (!page.truncated) break;
    if (page.next_token == token) {
      return Status::Corruption(what + ": the server repeated its continuation token");
    }
    token = page.next_token;
  }
  Release(std::move(conn));
  if (dropped > 0) {
    spdlog::warn("s3: list {}: ignored {} entries with names the tree cannot show", Url(folder),
                 dropped);
  }
  FinishFolder(&out.entries);
  return out;
}

Result<FolderListing> S3Client::List(const std::string& folder) {
  auto fresh = ListFresh(folder);
  MutexLock lock(mu_);
  if (fresh.ok()) {
    last_good_[folder] = *fresh;
    return fresh;
  }
  auto it = last_good_.find(folder);
  // Wrong keys and a missing bucket are not outages: say so.
  if (it == last_good_.end() || fresh.status().code() == Status::Code::kPermission ||
      fresh.status().code() == Status::Code::kNotFound) {
    return fresh.status();
  }
  spdlog::error("s3: {}; serving the last good listing", fresh.status().ToString());
  FolderListing stale = it->second;
  stale.stale = true;
  stale.error = fresh.status().ToString();
  return stale;
}

Result<ObjectInfo> S3Client::Stat(const std::string& path) {
  if (path.empty() || path.back() == '/') return Status::InvalidArgument(Url(path) + ": not an object");
  HttpRequest req;
  req.method = "HEAD";
  req.url = BuildUrl(endpoint_, config_.bucket, config_.UsePathStyle(), Key(path), {});
  auto conn = Acquire();
  HttpResponse resp;
  std::string what = "stat " + Url(path);
  Execute(*conn, req, &resp, what);
  Release(std::move(conn));
  if (resp.curl_code != CURLE_OK || resp.status != 200) return ToStatus(resp, what);
  if (resp.content_length < 0 || uint64_t(resp.content_length) > (uint64_t{1} << 62)) {
    return Status::Corruption(what + ": no usable Content-Length");
  }
  ObjectInfo info;
  info.path = path;
  info.size = static_cast<uint64_t>(resp.content_length);
  info.etag = resp.etag;
  if (!ParseTime(resp.last_modified, &info.mtime_sec, &info.mtime_nsec)) {
    info.mtime_sec = info.mtime_nsec = 0;
  }
  return info;
}

Status S3Client::GetRange(HttpConnection& conn, const ObjectRef& obj, uint64_t off, uint8_t* buf,
                          size_t len) {
  if (len == 0) return Status::OK();
  HttpRequest req;
  req.url = BuildUrl(endpoint_, obj.bucket, config_.UsePathStyle(), obj.key, {});
  req.headers.push_back(RangeHeader(off, len));
  if (!obj.etag.empty()) req.headers.push_back("If-Match: \"" + obj.etag + "\"");
  req.dest = buf;
  req.dest_len = len;
  std::string what = "read s3://" + obj.bucket + "/" + obj.key + " [" + std::to_string(off) +
                     ", +" + std::to_string(len) + ")";
  HttpResponse resp;
  for (int round = 1;; ++round) {
    Execute(conn, req, &resp, what);
    bool whole = resp.curl_code == CURLE_OK && resp.dest_written == len && !resp.overflow;
    if (whole && resp.status == 206 && RangeMatches(resp.content_range, off, len)) break;
    // A server ignoring Range answers 200 with the object: right only when
    // the range is the whole object.
    if (whole && resp.status == 200 && off == 0 && obj.size == len) break;
    if (resp.curl_code != CURLE_OK || (resp.status != 206 && resp.status != 200)) {
      return ToStatus(resp, what);
    }
    // A 2xx with the wrong bytes (short, long or another range): once more.
    if (round >= config_.retry.attempts) {
      return Status::FromErrno(EIO, what + ": the server sent another range (" +
                                        resp.content_range + ", " +
                                        std::to_string(resp.dest_written) + " bytes)");
    }
  }
  return Status::OK();
}

Result<std::vector<uint8_t>> S3Client::ReadHead(const ObjectInfo& obj, size_t n) {
  std::vector<uint8_t> out(static_cast<size_t>(std::min<uint64_t>(n, obj.size)));
  if (out.empty()) return out;
  auto conn = Acquire();
  Status st = GetRange(*conn, ObjectRef{config_.bucket, Key(obj.path), obj.etag, obj.size}, 0,
                       out.data(), out.size());
  Release(std::move(conn));
  KVMFS_RETURN_IF_ERROR(st);
  return out;
}

Result<std::unique_ptr<Backend>> S3Client::OpenObject(const ObjectInfo& obj) {
  if (obj.path.empty()) return Status::InvalidArgument(Url("") + ": no object path");
  return NewS3ObjectBackend(shared_from_this(), obj);
}

ClientStats S3Client::stats() const {
  return ClientStats{requests_.load(), retries_.load(), failures_.load(), bytes_.load()};
}

}  // namespace kvmfs::s3
