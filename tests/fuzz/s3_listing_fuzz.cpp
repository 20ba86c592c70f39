// An S3 ListObjectsV2 page from the fuzzer (what a hostile or broken server
// may send): parsed, merged into a folder whose prefix the first input byte
// picks, and checked against the folder's promises (names without '/',
// never "." or "..", sorted and unique); also read as an <Error> body.
// Seeds: tests/unit/backend/s3/listing_test.cpp's pages, or any radosgw
// listing (`curl --aws-sigv4 ... '/bucket?delimiter=%2F&list-type=2'`).
#include <cstdlib>
#include <string>
#include <string_view>

#include "backend/s3/listing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs::s3;
  if (size == 0) return 0;
  static const char* kFolders[] = {"", "pool/", "a/b/", "p"};
  std::string folder = kFolders[data[0] % 4];
  std::string_view xml(reinterpret_cast<const char*>(data + 1), size - 1);
  (void)ParseError(xml);
  int64_t sec;
  uint32_t nsec;
  (void)ParseTime(xml.substr(0, 40), &sec, &nsec);
  auto page = ParseListPage(xml, "fuzz");
  if (!page.ok()) return 0;
  if (page->truncated && page->next_token.empty()) std::abort();
  std::vector<FolderEntry> entries;
  size_t dropped = 0;
  if (!AddPage(*page, folder, &entries, &dropped).ok()) return 0;
  if (!AddPage(*page, folder, &entries, &dropped).ok()) return 0;  // a repeated page
  FinishFolder(&entries);
  for (size_t i = 0; i < entries.size(); ++i) {
    const std::string& n = entries[i].name;
    if (n.empty() || n == "." || n == ".." || n.find('/') != std::string::npos) std::abort();
    if (i > 0 && !(entries[i - 1].name < n)) std::abort();
  }
  return 0;
}
