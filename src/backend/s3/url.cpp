#include "backend/s3/url.h"

#include <algorithm>

namespace kvmfs::s3 {

std::string UriEncode(std::string_view s, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  for (unsigned char c : s) {
    bool plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/');
    if (plain) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string CanonicalQuery(QueryParams params) {
  for (auto& [name, value] : params) {
    name = UriEncode(name, false);
    value = UriEncode(value, false);
  }
  std::sort(params.begin(), params.end());
  std::string out;
  for (const auto& [name, value] : params) {
    if (!out.empty()) out.push_back('&');
    out += name;
    out.push_back('=');
    out += value;
  }
  return out;
}

Result<Endpoint> ParseEndpoint(const std::string& endpoint, const std::string& region) {
  Endpoint ep;
  if (endpoint.empty()) {
    ep.scheme = "https";
    ep.host = "s3." + region + ".amazonaws.com";
    return ep;
  }
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("s3: endpoint `" + endpoint + "`: " + why);
  };
  size_t sep = endpoint.find("://");
  if (sep == std::string::npos) return bad("expected http://HOST[:PORT] or https://...");
  ep.scheme = endpoint.substr(0, sep);
  if (ep.scheme != "http" && ep.scheme != "https") return bad("scheme must be http or https");
  std::string rest = endpoint.substr(sep + 3);
  if (rest.find_first_of("?#@ \t\r\n") != std::string::npos) {
    return bad("no user info, query, fragment or spaces allowed");
  }
  size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  if (slash != std::string::npos) {
    ep.base_path = rest.substr(slash);
    while (!ep.base_path.empty() && ep.base_path.back() == '/') ep.base_path.pop_back();
  }
  size_t colon = hostport.rfind(':');
  size_t bracket = hostport.rfind(']');
  if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket)) {
    std::string port = hostport.substr(colon + 1);
    if (port.empty() || port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        std::stoul(port) == 0 || std::stoul(port) > 65535) {
      return bad("bad port");
    }
    ep.port = ":" + port;
    hostport.resize(colon);
  }
  if (hostport.empty()) return bad("no host");
  ep.host = hostport;
  return ep;
}

std::string BuildUrl(const Endpoint& ep, const std::string& bucket, bool path_style,
                     std::string_view key, const QueryParams& query) {
  std::string url = ep.scheme + "://";
  if (path_style) {
    url += ep.host + ep.port + ep.base_path + "/" + UriEncode(bucket, false);
    if (!key.empty()) url += "/" + UriEncode(key, true);
    // The bucket itself: "/bucket" as path (radosgw and AWS sign it so).
  } else {
    url += bucket + "." + ep.host + ep.port + ep.base_path + "/" + UriEncode(key, true);
  }
  std::string q = CanonicalQuery(query);
  if (!q.empty()) url += "?" + q;
  return url;
}

}  // namespace kvmfs::s3
