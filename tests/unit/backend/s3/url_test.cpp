// Canonical URLs: what libcurl 7.88 signs as written must be what a SigV4
// server rebuilds (see also client_test: a strict server accepts them).
#include <gtest/gtest.h>

#include "backend/s3/url.h"

namespace kvmfs::s3 {
namespace {

TEST(S3Url, UriEncodeKeepsUnreservedOnly) {
  EXPECT_EQ(UriEncode("aZ09-._~", false), "aZ09-._~");
  EXPECT_EQ(UriEncode("a b+c/d=e&f", false), "a%20b%2Bc%2Fd%3De%26f");
  EXPECT_EQ(UriEncode("dir/a b.raw", true), "dir/a%20b.raw");
  EXPECT_EQ(UriEncode("\xc3\xbc", true), "%C3%BC");
  EXPECT_EQ(UriEncode(std::string("\0\xff", 2), false), "%00%FF");
}

TEST(S3Url, CanonicalQuerySortsEncodesAndWritesEmptyValues) {
  EXPECT_EQ(CanonicalQuery({}), "");
  EXPECT_EQ(CanonicalQuery({{"prefix", "a/b c"}, {"list-type", "2"}, {"delimiter", "/"}}),
            "delimiter=%2F&list-type=2&prefix=a%2Fb%20c");
  EXPECT_EQ(CanonicalQuery({{"uploads", ""}}), "uploads=");
  EXPECT_EQ(CanonicalQuery({{"continuation-token", "1+2/3=="}, {"a", "x"}}),
            "a=x&continuation-token=1%2B2%2F3%3D%3D");
  // Sorted by the encoded name (AWS's rule), then value.
  EXPECT_EQ(CanonicalQuery({{"b", "2"}, {"b", "1"}, {"B", "0"}}), "B=0&b=1&b=2");
}

TEST(S3Url, ParseEndpoint) {
  auto ep = ParseEndpoint("http://127.0.0.1:8080", "us-east-1");
  ASSERT_TRUE(ep.ok());
  EXPECT_EQ(ep->scheme, "http");
  EXPECT_EQ(ep->host, "127.0.0.1");
  EXPECT_EQ(ep->port, ":8080");
  EXPECT_EQ(ep->base_path, "");
  ep = ParseEndpoint("https://[::1]:9000/s3/", "r");
  ASSERT_TRUE(ep.ok());
  EXPECT_EQ(ep->host, "[::1]");
  EXPECT_EQ(ep->port, ":9000");
  EXPECT_EQ(ep->base_path, "/s3");
  ep = ParseEndpoint("", "eu-west-1");
  ASSERT_TRUE(ep.ok());
  EXPECT_EQ(ep->scheme + "://" + ep->host, "https://s3.eu-west-1.amazonaws.com");
  for (const char* bad : {"ftp://h", "h:80", "http://", "http://u:p@h", "http://h:0",
                          "http://h:99999", "http://h:8a", "http://h/?x", "http://h#f"}) {
    EXPECT_FALSE(ParseEndpoint(bad, "r").ok()) << bad;
  }
}

TEST(S3Url, PathStyleAndVirtualHost) {
  Endpoint ep = *ParseEndpoint("http://127.0.0.1:7480", "r");
  EXPECT_EQ(BuildUrl(ep, "bkt", true, "dir/a b.raw", {}),
            "http://127.0.0.1:7480/bkt/dir/a%20b.raw");
  EXPECT_EQ(BuildUrl(ep, "bkt", true, "", {{"list-type", "2"}, {"delimiter", "/"}}),
            "http://127.0.0.1:7480/bkt?delimiter=%2F&list-type=2");
  Endpoint aws = *ParseEndpoint("", "us-east-1");
  EXPECT_EQ(BuildUrl(aws, "bkt", false, "k/../x", {}),
            "https://bkt.s3.us-east-1.amazonaws.com/k/../x");
  EXPECT_EQ(BuildUrl(aws, "bkt", false, "", {{"list-type", "2"}}),
            "https://bkt.s3.us-east-1.amazonaws.com/?list-type=2");
}

}  // namespace
}  // namespace kvmfs::s3
