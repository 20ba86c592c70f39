// Configuration of one S3 pool: where the bucket is, who we are, and how hard
// to try. Filled by the pool config (kvmfs.yaml(5), `backend: s3`); nothing
// here reads YAML.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kvmfs/status.h"

namespace kvmfs::s3 {

// The keys requests are signed with. Never logged, never put in a message:
// only access_key's first four characters may appear in a diagnostic
// (Redacted()).
struct Credentials {
  std::string access_key;
  std::string secret_key;
  std::string session_token;  // optional (temporary credentials)

  bool empty() const { return access_key.empty() || secret_key.empty(); }
  // "AKIA…" style: enough to tell which key was used, nothing more.
  std::string Redacted() const;
};

// Parses an AWS shared-credentials file (INI: `[default]`, `[name]` or
// `[profile name]` sections with aws_access_key_id, aws_secret_access_key,
// aws_session_token). `profile` empty means "default". `file` names the file
// in messages. Errors: kInvalidArgument (no such profile, a key missing or
// malformed line); messages never contain a secret.
Result<Credentials> ParseCredentialsFile(std::string_view text, const std::string& profile,
                                         const std::string& file);

// Loads the credentials a pool uses: from `file` when not empty (refused with
// kPermission when it is readable by group or others), else from the
// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).
// Errors: kNotFound (file missing), kInvalidArgument (nothing found).
Result<Credentials> LoadCredentials(const std::string& file, const std::string& profile);

// Bounded retries with exponential backoff and jitter: attempt n (1-based)
// waits min(cap, base * 2^(n-1)) * [0.5, 1.0) before it.
struct RetryPolicy {
  int attempts = 5;          // total tries of one request (>= 1)
  uint32_t base_ms = 100;
  uint32_t cap_ms = 2000;
};

struct S3Config {
  // The pool's name: the `pool` label of its store counters (/metrics).
  std::string pool;
  // "http://host:port" or "https://host[:port][/base]". Empty: AWS
  // (https://s3.<region>.amazonaws.com).
  std::string endpoint;
  std::string region = "us-east-1";
  std::string bucket;
  // Folder of the bucket the pool shows: "" or "a/b/" (a missing trailing
  // slash is added by S3Client).
  std::string prefix;
  // Path-style (http://host/bucket/key) or virtual-host
  // (http://bucket.host/key). Unset: path-style for a custom endpoint,
  // virtual-host for AWS.
  std::optional<bool> path_style;
  std::string ca_file;  // PEM bundle for https; empty: the system's
  Credentials credentials;

  uint32_t connect_timeout_ms = 5000;
  // A transfer slower than 1 KiB/s for this long is a timeout.
  uint32_t stall_timeout_ms = 15000;
  RetryPolicy retry;
  // Parallel connections (ranged GETs in flight) of this client.
  uint32_t connections = 8;
  // Unit of fetching, caching and readahead (a power of two, 64 KiB..16 MiB).
  uint32_t block_size = 1u << 20;
  // The most consecutive blocks one ranged GET fetches (1..64, at most
  // 64 MiB): read-ahead goes out in groups of this many blocks, one GET
  // each, so radosgw serves 8 MiB requests rather than 1 MiB ones.
  uint32_t fetch_blocks = 8;
  // Blocks fetched ahead of a sequential reader (0: no readahead): 4 GETs
  // of 8 MiB in flight read radosgw fastest on the bench
  // (bench/results/2026-12-03-s3-*.md); a warm reader's blocks are decoded
  // from the disk cache as far ahead.
  uint32_t readahead_blocks = 32;
  // In-memory blocks kept per client (recent and read ahead): twice the
  // read-ahead, so blocks read ahead are not evicted before they are read.
  uint64_t ram_cache_bytes = 64ull << 20;

  // Checks the fields (bucket name rules, block size, region); kInvalidArgument.
  Status Validate() const;
  bool UsePathStyle() const { return path_style.value_or(!endpoint.empty()); }
};

}  // namespace kvmfs::s3
