// S3Client: one bucket and prefix of an S3-compatible store, as the store
// layer (list / stat / open) of an `backend: s3` pool sees it.
//
//   auto client = S3Client::Create(config, BlockCache::Open(dir, max));
//   KVMFS_RETURN_IF_ERROR((*client)->Verify());      // mount / SIGHUP: keys right?
//   auto folder = (*client)->List("golden");         // ListObjectsV2, '/' delimiter
//   auto info = (*client)->Stat("golden/deb12.qcow2"); // HEAD: size, ETag, mtime
//   auto file = (*client)->OpenObject(*info);         // a read-only kvmfs Backend
//
// Paths are relative to the prefix, '/'-separated, without a leading '/'.
// Every request is signed (SigV4, libcurl), retried on connection refused,
// timeouts, 5xx, 429 and 503 SlowDown with bounded exponential backoff, and
// then fails with EIO for that request only. Nothing secret is logged.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/s3/block_cache.h"
#include "backend/s3/config.h"
#include "backend/s3/fetcher.h"
#include "backend/s3/http.h"
#include "backend/s3/listing.h"
#include "backend/s3/url.h"
#include "base/mutex.h"
#include "kvmfs/backend.h"
#include "kvmfs/status.h"
#include "metrics/store_metrics.h"

namespace kvmfs::s3 {

// One object as a listing or HEAD saw it.
struct ObjectInfo {
  std::string path;  // relative to the prefix ("golden/deb12.qcow2")
  uint64_t size = 0;
  std::string etag;  // the version; empty when the server sent none
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
};

// A folder's entries (folder.h's FolderEntry: names relative to the folder).
struct FolderListing {
  std::vector<FolderEntry> entries;
  // True when listing failed and this is the last good listing of the
  // folder; `error` says why (also logged).
  bool stale = false;
  std::string error;
};

struct ClientStats {
  uint64_t requests = 0, retries = 0, failures = 0, bytes = 0;
};

class S3Client : public std::enable_shared_from_this<S3Client> {
 public:
  // Checks `config` (kInvalidArgument) and prepares the connections; sends
  // nothing. `cache` may be null (no disk cache).
  static Result<std::shared_ptr<S3Client>> Create(S3Config config,
                                                  std::shared_ptr<BlockCache> cache);
  ~S3Client();
  S3Client(const S3Client&) = delete;
  S3Client& operator=(const S3Client&) = delete;

  // One signed ListObjectsV2 of the prefix (max-keys=1): whether the bucket
  // exists and the keys are right. kPermission ("wrong secret key
  // (SignatureDoesNotMatch)", "unknown access key (InvalidAccessKeyId)",
  // "access denied"), kNotFound (no such bucket), kIOError (unreachable
  // after the retries). One line, no secret. For mount and SIGHUP reload.
  Status Verify();

  // The entries of `folder` ("" for the pool's root), every page of
  // ListObjectsV2 with delimiter '/'. When listing fails the last good
  // listing of that folder is returned with stale = true and the error
  // logged; with none, the error. Thread-safe.
  Result<FolderListing> List(const std::string& folder);

  // HEAD of the object at `path`: kNotFound when absent. Thread-safe.
  Result<ObjectInfo> Stat(const std::string& path);

  // The first min(n, size) bytes of `obj` by one ranged GET (format
  // probing), not through the block cache. Thread-safe.
  Result<std::vector<uint8_t>> ReadHead(const ObjectInfo& obj, size_t n);

  // A read-only Backend over this version of the object: ReadAt by ranged
  // GETs through the block cache, Size() = obj.size with no round trip, and
  // kIOError ESTALE once the object's ETag changed (then Stat() it and open
  // the new version). The backend keeps the client alive.
  Result<std::unique_ptr<Backend>> OpenObject(const ObjectInfo& obj);

  // "s3://bucket/prefix/path": the name in messages and info.json.
  std::string Url(const std::string& path) const;
  // The full key of `path` (prefix + path).
  std::string Key(const std::string& path) const { return prefix_ + path; }
  const S3Config& config() const { return config_; }
  const std::shared_ptr<BlockCache>& cache() const { return cache_; }
  BlockFetcher& fetcher() { return *fetcher_; }
  ClientStats stats() const;

  // One ranged GET of [off, off+len) with If-Match: obj.etag, retried; the
  // fetcher's GetFn. ESTALE when the ETag no longer matches.
  Status GetRange(HttpConnection& conn, const ObjectRef& obj, uint64_t off, uint8_t* buf,
                  size_t len);

 private:
  S3Client(S3Config config, Endpoint endpoint, std::shared_ptr<BlockCache> cache);

  // Runs `req` on `conn` until it succeeds or the retries are spent; the
  // last response is in *resp. `what` names the request in messages.
  void Execute(HttpConnection& conn, const HttpRequest& req, HttpResponse* resp,
               const std::string& what);
  Status ToStatus(const HttpResponse& resp, const std::string& what) const;
  Result<FolderListing> ListFresh(const std::string& folder);
  std::unique_ptr<HttpConnection> Acquire();
  void Release(std::unique_ptr<HttpConnection> conn);

  const S3Config config_;
  const Endpoint endpoint_;
  const std::string prefix_;  // "" or "a/b/"
  const std::shared_ptr<BlockCache> cache_;
  std::unique_ptr<BlockFetcher> fetcher_;

  Mutex mu_;
  std::vector<std::unique_ptr<HttpConnection>> idle_ GUARDED_BY(mu_);
  std::map<std::string, FolderListing> last_good_ GUARDED_BY(mu_);

  std::atomic<uint64_t> requests_{0}, retries_{0}, failures_{0}, bytes_{0};

  // The pool's store counters (/metrics): requests by kind and result,
  // resolved once.
  enum Kind { kGet, kList, kHead, kKinds };
  enum RequestResult { kOk, kNotFound, kDenied, kChanged, kError, kResults };
  metrics::StoreCounters& counters_;
  metrics::Counter* requests_by_[kKinds][kResults] = {};
  metrics::Counter* retries_by_[kKinds] = {};
};

// The object backend (object_backend.cpp); OpenObject's result.
std::unique_ptr<Backend> NewS3ObjectBackend(std::shared_ptr<S3Client> client, ObjectInfo info);

}  // namespace kvmfs::s3
