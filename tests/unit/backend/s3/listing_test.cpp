// ListObjectsV2 pages and error bodies: well-formed, paged, and hostile.
#include <gtest/gtest.h>

#include "backend/s3/listing.h"

namespace kvmfs::s3 {
namespace {

constexpr char kPage[] = R"(<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>pool/</Prefix><KeyCount>4</KeyCount><MaxKeys>4</MaxKeys>
  <Delimiter>/</Delimiter><IsTruncated>true</IsTruncated>
  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
  <Contents><Key>pool/</Key><Size>0</Size><ETag>&quot;d41d&quot;</ETag></Contents>
  <Contents><Key>pool/a &amp; b.qcow2</Key><LastModified>2026-12-02T10:11:12.345Z</LastModified>
    <ETag>"9b2cf535f27731c974343645a3985328"</ETag><Size>1073741824</Size>
    <StorageClass>STANDARD</StorageClass><Owner><ID>x</ID><DisplayName>y</DisplayName></Owner>
  </Contents>
  <CommonPrefixes><Prefix>pool/vm1/</Prefix></CommonPrefixes>
  <CommonPrefixes><Prefix>pool/vm2/</Prefix></CommonPrefixes>
</ListBucketResult>)";

TEST(S3Listing, ParsesObjectsPrefixesAndToken) {
  auto page = ParseListPage(kPage, "list");
  ASSERT_TRUE(page.ok()) << page.status().ToString();
  ASSERT_EQ(page->objects.size(), 2u);
  EXPECT_EQ(page->objects[1].key, "pool/a & b.qcow2");
  EXPECT_EQ(page->objects[1].size, 1073741824u);
  EXPECT_EQ(page->objects[1].etag, "9b2cf535f27731c974343645a3985328");
  EXPECT_EQ(page->objects[1].mtime_sec, 1796206272);
  EXPECT_EQ(page->objects[1].mtime_nsec, 345000000u);
  EXPECT_EQ(page->objects[0].etag, "d41d");
  EXPECT_EQ(page->prefixes, (std::vector<std::string>{"pool/vm1/", "pool/vm2/"}));
  EXPECT_TRUE(page->truncated);
  EXPECT_EQ(page->next_token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=");
}

TEST(S3Listing, FolderKeepsWellFormedChildrenOnly) {
  ListPage p1, p2;
  p1.objects = {{"pool/", 0, "", 0, 0},        {"pool/b.raw", 5, "e1", 0, 0},
                {"other/x", 1, "", 0, 0},      {"pool/..", 1, "", 0, 0},
                {"pool/ctl\x01", 1, "", 0, 0}, {"pool/vm1", 3, "e2", 0, 0}};
  p1.prefixes = {"pool/vm1/", "pool//", "pool/x", "elsewhere/y/"};
  p2.objects = {{"pool/a.raw", 7, "e3", 0, 0}, {"pool/b.raw", 5, "e1", 0, 0}};
  p2.prefixes = {"pool/vm2/"};
  std::vector<FolderEntry> out;
  size_t dropped = 0;
  ASSERT_TRUE(AddPage(p1, "pool/", &out, &dropped).ok());
  ASSERT_TRUE(AddPage(p2, "pool/", &out, &dropped).ok());
  FinishFolder(&out);
  std::vector<std::string> names;
  for (const auto& e : out) names.push_back(e.name + (e.is_folder ? "/" : ""));
  // vm1 is both an object and a folder: the folder stays.
  EXPECT_EQ(names, (std::vector<std::string>{"a.raw", "b.raw", "vm1/", "vm2/"}));
  EXPECT_EQ(dropped, 6u);
  EXPECT_EQ(out[0].size, 7u);
  EXPECT_EQ(out[1].etag, "e1");
}

TEST(S3Listing, HostilePagesAreErrors) {
  auto bad = [](const std::string& xml) { return !ParseListPage(xml, "list").ok(); };
  EXPECT_TRUE(bad(""));
  EXPECT_TRUE(bad("<Error><Code>AccessDenied</Code></Error>"));
  EXPECT_TRUE(bad("<ListBucketResult><Contents><Key>a</Key></Contents></ListBucketResult>"));
  EXPECT_TRUE(bad("<ListBucketResult><Contents><Key>a</Key><Size>-1</Size></Contents>"
                  "</ListBucketResult>"));
  EXPECT_TRUE(bad("<ListBucketResult><Contents><Key>a</Key><Size>99999999999999999999</Size>"
                  "</Contents></ListBucketResult>"));
  EXPECT_TRUE(bad("<ListBucketResult><Contents><Key>a</Key><Key>b</Key><Size>1</Size>"
                  "</Contents></ListBucketResult>"));
  EXPECT_TRUE(bad("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>"));
  EXPECT_TRUE(bad("<ListBucketResult><IsTruncated>maybe</IsTruncated></ListBucketResult>"));
  EXPECT_TRUE(bad("<ListBucketResult><CommonPrefixes></CommonPrefixes></ListBucketResult>"));
  EXPECT_TRUE(bad("<ListBucketResult><Contents><Key>a</Key><Size>1</Size>"));  // truncated
  // Entities: a billion laughs is refused before it expands.
  EXPECT_TRUE(bad("<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaaaaaaaa\">"
                  "<!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]>"
                  "<ListBucketResult><Name>&b;</Name></ListBucketResult>"));
  EXPECT_TRUE(bad("<ListBucketResult><Name>&undefined;</Name></ListBucketResult>"));
  // Bounds: text, nesting, entries.
  EXPECT_TRUE(bad("<ListBucketResult><Contents><Key>" + std::string(5000, 'k') +
                  "</Key><Size>1</Size></Contents></ListBucketResult>"));
  std::string deep = "<ListBucketResult>";
  for (int i = 0; i < 40; ++i) deep += "<x>";
  for (int i = 0; i < 40; ++i) deep += "</x>";
  EXPECT_TRUE(bad(deep + "</ListBucketResult>"));
  std::string many = "<ListBucketResult>";
  for (size_t i = 0; i <= kMaxListPageEntries; ++i) {
    many += "<CommonPrefixes><Prefix>p" + std::to_string(i) + "/</Prefix></CommonPrefixes>";
  }
  EXPECT_TRUE(bad(many + "</ListBucketResult>"));
  // Unknown elements anywhere are ignored, as S3 adds fields over time.
  EXPECT_FALSE(bad("<ListBucketResult><New><Contents><Key>a</Key></Contents></New>"
                   "</ListBucketResult>"));
}

TEST(S3Listing, ErrorBodiesAndTimes) {
  S3Error e = ParseError(
      "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce\x7f your rate"
      "</Message><RequestId>1</RequestId></Error>");
  EXPECT_EQ(e.code, "SlowDown");
  EXPECT_EQ(e.message, "Please reduce? your rate");
  EXPECT_EQ(ParseError("not xml").code, "");
  int64_t s;
  uint32_t ns;
  ASSERT_TRUE(ParseTime("2026-12-02T10:11:12Z", &s, &ns));
  EXPECT_EQ(s, 1796206272);
  EXPECT_EQ(ns, 0u);
  ASSERT_TRUE(ParseTime("Wed, 02 Dec 2026 10:11:12 GMT", &s, &ns));
  EXPECT_EQ(s, 1796206272);
  for (const char* bad : {"", "2026-13-02T10:11:12Z", "2026-12-02 10:11:12Z", "2026-12-02T10:11:12",
                          "2026-12-02T10:11:12.Z", "Wed, 02 Foo 2026 10:11:12 GMT"}) {
    EXPECT_FALSE(ParseTime(bad, &s, &ns)) << bad;
  }
}

}  // namespace
}  // namespace kvmfs::s3
