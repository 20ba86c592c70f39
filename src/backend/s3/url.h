// Request URLs as SigV4 wants them signed.
//
// libcurl's CURLOPT_AWS_SIGV4 (7.88, Debian 12) signs the path and the query
// string exactly as written: it neither sorts the parameters nor re-encodes
// them. So every URL kvmfs sends is built here already canonical: the path
// URI-encoded once (RFC 3986, '/' kept), the query's names sorted, names and
// values encoded ('/' as %2F) and an empty value written "name=".
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvmfs/status.h"

namespace kvmfs::s3 {

// RFC 3986 percent-encoding: A-Z a-z 0-9 - . _ ~ stay, every other byte
// becomes %XX (upper-case hex); '/' stays when keep_slash.
std::string UriEncode(std::string_view s, bool keep_slash);

using QueryParams = std::vector<std::pair<std::string, std::string>>;

// The canonical query string of `params` (without '?'): sorted by encoded
// name, then encoded value; "a=1&b=&c=x%2Fy". Empty for no parameters.
std::string CanonicalQuery(QueryParams params);

// Where requests go: parsed once from the configured endpoint.
struct Endpoint {
  std::string scheme;     // "http" or "https"
  std::string host;       // "127.0.0.1", "s3.eu-west-1.amazonaws.com", "[::1]"
  std::string port;       // "" or ":8080"
  std::string base_path;  // "" or "/s3" (no trailing slash)
};

// Parses "http[s]://host[:port][/path]"; an empty string gives AWS's regional
// endpoint for `region`. kInvalidArgument for anything else (user info,
// query, fragment, other schemes).
Result<Endpoint> ParseEndpoint(const std::string& endpoint, const std::string& region);

// The URL of `key` in `bucket` (key "" is the bucket itself), with `query`
// appended canonically. Path-style: scheme://host/bucket/key; virtual-host:
// scheme://bucket.host/key.
std::string BuildUrl(const Endpoint& ep, const std::string& bucket, bool path_style,
                     std::string_view key, const QueryParams& query);

}  // namespace kvmfs::s3
