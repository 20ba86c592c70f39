// S3 XML responses: ListObjectsV2 pages and <Error> bodies, parsed with
// expat. Every byte comes from the network and is hostile: sizes are bounded
// (text per element, entries per page, nesting), DTDs and entities are
// refused, numbers are checked, and a page that breaks a rule is an error,
// never a partial answer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvmfs/status.h"

namespace kvmfs::s3 {

// Limits of one page (S3 returns at most 1000 entries per page).
inline constexpr size_t kMaxListPageBytes = 16u << 20;
inline constexpr size_t kMaxListPageEntries = 10000;
inline constexpr size_t kMaxXmlText = 4096;  // S3 keys are at most 1024 bytes
// Entries of one folder over all its pages.
inline constexpr size_t kMaxFolderEntries = 1000000;

struct ObjectEntry {
  std::string key;    // full key as listed
  uint64_t size = 0;
  std::string etag;   // without the quotes
  int64_t mtime_sec = 0;  // LastModified, seconds since the epoch (0: absent)
  uint32_t mtime_nsec = 0;
};

struct ListPage {
  std::vector<ObjectEntry> objects;
  std::vector<std::string> prefixes;  // CommonPrefixes, full ("a/b/")
  bool truncated = false;
  std::string next_token;  // NextContinuationToken
};

// Parses one ListObjectsV2 result page. Errors: kCorruption naming `what`
// (the request) and the reason.
Result<ListPage> ParseListPage(std::string_view xml, const std::string& what);

// An S3 <Error> body; fields empty when the body is not one.
struct S3Error {
  std::string code;     // "SignatureDoesNotMatch", "SlowDown", ...
  std::string message;  // bounded, control characters removed
};
S3Error ParseError(std::string_view xml);

// Parses an RFC 3339 / ISO 8601 UTC time ("2026-12-02T10:11:12.345Z") or an
// RFC 7231 HTTP date ("Wed, 02 Dec 2026 10:11:12 GMT"); false if neither.
bool ParseTime(std::string_view s, int64_t* sec, uint32_t* nsec);

// One folder of the pool as the namespace sees it: names relative to the
// folder, no '/' in them, sorted, unique.
struct FolderEntry {
  std::string name;
  bool is_folder = false;  // a CommonPrefix
  uint64_t size = 0;       // objects only
  std::string etag;
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
};

// Adds the entries of `page` (listed with prefix `folder`, delimiter "/") to
// `out`, keeping only well-formed children of `folder`: a key not under it,
// the folder's own marker object ("folder/"), empty names, "." and "..",
// names with '/' or control bytes are dropped (counted in *dropped).
// kTooLarge past kMaxFolderEntries. Sorting and deduplication: FinishFolder.
Status AddPage(const ListPage& page, const std::string& folder, std::vector<FolderEntry>* out,
               size_t* dropped);
// Sorts by name and drops duplicates (a name both object and folder keeps the
// folder, as the tree cannot show both).
void FinishFolder(std::vector<FolderEntry>* entries);

}  // namespace kvmfs::s3
