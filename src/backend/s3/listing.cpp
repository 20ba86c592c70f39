#include "backend/s3/listing.h"

#include <expat.h>

#include <algorithm>
#include <cstring>
#include <ctime>

namespace kvmfs::s3 {
namespace {

constexpr size_t kMaxDepth = 16;

// Element names without a namespace prefix ("s3:Key" -> "Key").
std::string_view LocalName(const XML_Char* name) {
  std::string_view n(name);
  size_t colon = n.rfind(':');
  return colon == std::string_view::npos ? n : n.substr(colon + 1);
}

// Collects the text of leaf elements along a path of element names; the
// subclasses say what to do at the end of each element.
class XmlWalker {
 public:
  virtual ~XmlWalker() = default;

  // Parses `xml`; false with error() set on malformed or hostile input.
  bool Run(std::string_view xml) {
    XML_Parser p = XML_ParserCreate("UTF-8");
    if (p == nullptr) return Fail("out of memory");
    XML_SetUserData(p, this);
    XML_SetElementHandler(p, &XmlWalker::OnStart, &XmlWalker::OnEnd);
    XML_SetCharacterDataHandler(p, &XmlWalker::OnText);
    // No DTD, hence no entity of ours: refuse any declaration outright.
    XML_SetStartDoctypeDeclHandler(p, &XmlWalker::OnDoctype);
    XML_SetEntityDeclHandler(p, &XmlWalker::OnEntity);
    parser_ = p;
    bool ok = xml.size() <= kMaxListPageBytes &&
              XML_Parse(p, xml.data(), static_cast<int>(xml.size()), XML_TRUE) == XML_STATUS_OK;
    if (!ok && error_.empty()) {
      error_ = xml.size() > kMaxListPageBytes ? std::string("response too large")
                                              : std::string(XML_ErrorString(XML_GetErrorCode(p))) +
                                                    " at line " +
                                                    std::to_string(XML_GetCurrentLineNumber(p));
    }
    XML_ParserFree(p);
    parser_ = nullptr;
    return ok && error_.empty();
  }
  const std::string& error() const { return error_; }

 protected:
  // The element just closed, with its text; path_ still holds it last.
  virtual void End(std::string_view name, std::string& text) = 0;
  virtual void Start(std::string_view /*name*/) {}
  bool Fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
    if (parser_ != nullptr) XML_StopParser(parser_, XML_FALSE);
    return false;
  }
  // path_[i] for i counted from the innermost element (0 = current).
  std::string_view Up(size_t i) const {
    return i < path_.size() ? std::string_view(path_[path_.size() - 1 - i]) : std::string_view();
  }
  size_t depth() const { return path_.size(); }

 private:
  static void OnStart(void* u, const XML_Char* name, const XML_Char** /*attrs*/) {
    auto* w = static_cast<XmlWalker*>(u);
    if (w->path_.size() >= kMaxDepth) {
      w->Fail("nested too deeply");
      return;
    }
    w->path_.emplace_back(LocalName(name));
    w->text_.clear();
    w->Start(w->path_.back());
  }
  static void OnEnd(void* u, const XML_Char* /*name*/) {
    auto* w = static_cast<XmlWalker*>(u);
    if (w->path_.empty()) return;
    std::string name = std::move(w->path_.back());
    w->End(name, w->text_);
    w->path_.pop_back();
    w->text_.clear();
  }
  static void OnText(void* u, const XML_Char* s, int len) {
    auto* w = static_cast<XmlWalker*>(u);
    if (w->text_.size() + static_cast<size_t>(len) > kMaxXmlText) {
      w->Fail("element text longer than " + std::to_string(kMaxXmlText) + " bytes");
      return;
    }
    w->text_.append(s, static_cast<size_t>(len));
  }
  static void OnDoctype(void* u, const XML_Char*, const XML_Char*, const XML_Char*, int) {
    static_cast<XmlWalker*>(u)->Fail("DOCTYPE not allowed");
  }
  static void OnEntity(void* u, const XML_Char*, int, const XML_Char*, int, const XML_Char*,
                       const XML_Char*, const XML_Char*, const XML_Char*) {
    static_cast<XmlWalker*>(u)->Fail("entity declarations not allowed");
  }

  XML_Parser parser_ = nullptr;
  std::vector<std::string> path_;
  std::string text_;
  std::string error_;
};

bool ParseU64(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > (uint64_t{1} << 62)) return false;  // beyond any real object (S3: 5 TiB)
  *out = v;
  return true;
}

std::string StripQuotes(std::string_view s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  return std::string(s);
}

class ListWalker final : public XmlWalker {
 public:
  ListPage page;
  bool saw_root = false;

 protected:
  void Start(std::string_view name) override {
    if (depth() == 1) {
      saw_root = name == "ListBucketResult";
      if (!saw_root) Fail("not a ListBucketResult (<" + std::string(name) + ">)");
    } else if (depth() == 2 && name == "Contents") {
      if (page.objects.size() + page.prefixes.size() >= kMaxListPageEntries) {
        Fail("more than " + std::to_string(kMaxListPageEntries) + " entries in one page");
        return;
      }
      page.objects.emplace_back();
      in_contents_ = true;
      have_key_ = have_size_ = false;
    } else if (depth() == 2 && name == "CommonPrefixes") {
      if (page.objects.size() + page.prefixes.size() >= kMaxListPageEntries) {
        Fail("more than " + std::to_string(kMaxListPageEntries) + " entries in one page");
      }
      have_prefix_ = false;
    }
  }
  void End(std::string_view name, std::string& text) override {
    if (depth() == 2) {
      EndTop(name, text);
    } else if (depth() == 3 && Up(1) == "Contents" && in_contents_) {
      EndContentsField(name, text);
    } else if (depth() == 3 && Up(1) == "CommonPrefixes" && name == "Prefix") {
      if (have_prefix_) Fail("CommonPrefixes with two Prefix elements");
      have_prefix_ = true;
      page.prefixes.push_back(std::move(text));
    }
  }

 private:
  void EndTop(std::string_view name, std::string& text) {
    if (name == "IsTruncated") {
      if (text == "true") page.truncated = true;
      else if (text == "false") page.truncated = false;
      else Fail("IsTruncated is neither true nor false");
    } else if (name == "NextContinuationToken") {
      page.next_token = std::move(text);
    } else if (name == "Contents") {
      in_contents_ = false;
      if (!have_key_ || !have_size_) Fail("Contents without Key or Size");
    } else if (name == "CommonPrefixes") {
      if (!have_prefix_) Fail("CommonPrefixes without Prefix");
    }
  }
  void EndContentsField(std::string_view name, std::string& text) {
    ObjectEntry& e = page.objects.back();
    if (name == "Key") {
      if (have_key_) Fail("Contents with two Key elements");
      have_key_ = true;
      e.key = std::move(text);
    } else if (name == "Size") {
      if (have_size_ || !ParseU64(text, &e.size)) Fail("bad Size `" + text.substr(0, 32) + "`");
      have_size_ = true;
    } else if (name == "ETag") {
      e.etag = StripQuotes(text);
    } else if (name == "LastModified") {
      if (!ParseTime(text, &e.mtime_sec, &e.mtime_nsec)) e.mtime_sec = e.mtime_nsec = 0;
    }
  }

  bool in_contents_ = false, have_key_ = false, have_size_ = false, have_prefix_ = false;
};

class ErrorWalker final : public XmlWalker {
 public:
  S3Error err;

 protected:
  void End(std::string_view name, std::string& text) override {
    if (depth() != 2 || Up(1) != "Error") return;
    if (name == "Code") err.code = std::move(text);
    else if (name == "Message") err.message = std::move(text);
  }
};

// Printable ASCII only, at most `max` bytes (server text goes into logs).
std::string Sanitize(const std::string& s, size_t max) {
  std::string out;
  for (unsigned char c : s) {
    if (out.size() >= max) break;
    out.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  }
  return out;
}

bool Digits(std::string_view s, size_t pos, size_t n, int* out) {
  if (pos + n > s.size()) return false;
  int v = 0;
  for (size_t i = pos; i < pos + n; ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

bool ToEpoch(int y, int mo, int d, int h, int mi, int se, int64_t* sec) {
  if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 ||
      se > 60) {
    return false;
  }
  struct tm tm {};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = se;
  *sec = static_cast<int64_t>(timegm(&tm));
  return true;
}

bool ParseIsoTime(std::string_view s, int64_t* sec, uint32_t* nsec) {
  int y, mo, d, h, mi, se;
  if (!Digits(s, 0, 4, &y) || s.size() < 20 || s[4] != '-' || !Digits(s, 5, 2, &mo) ||
      s[7] != '-' || !Digits(s, 8, 2, &d) || s[10] != 'T' || !Digits(s, 11, 2, &h) ||
      s[13] != ':' || !Digits(s, 14, 2, &mi) || s[16] != ':' || !Digits(s, 17, 2, &se)) {
    return false;
  }
  size_t pos = 19;
  uint32_t frac = 0, scale = 1000000000;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    size_t start = pos;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      if (pos - start < 9) {
        scale /= 10;
        frac += static_cast<uint32_t>(s[pos] - '0') * scale;
      }
      ++pos;
    }
    if (pos == start) return false;
  }
  if (pos + 1 != s.size() || s[pos] != 'Z') return false;
  if (!ToEpoch(y, mo, d, h, mi, se, sec)) return false;
  *nsec = frac;
  return true;
}

bool ParseHttpDate(std::string_view s, int64_t* sec, uint32_t* nsec) {
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  // "Wed, 02 Dec 2026 10:11:12 GMT"
  int d, y, h, mi, se;
  if (s.size() != 29 || s[3] != ',' || !Digits(s, 5, 2, &d) || !Digits(s, 12, 4, &y) ||
      !Digits(s, 17, 2, &h) || s[19] != ':' || !Digits(s, 20, 2, &mi) || s[22] != ':' ||
      !Digits(s, 23, 2, &se) || s.substr(26) != "GMT") {
    return false;
  }
  int mo = 0;
  for (int i = 0; i < 12; ++i) {
    if (s.substr(8, 3) == kMonths[i]) mo = i + 1;
  }
  if (mo == 0 || !ToEpoch(y, mo, d, h, mi, se, sec)) return false;
  *nsec = 0;
  return true;
}

bool GoodName(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 255) return false;
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f || c == '/') return false;
  }
  return true;
}

}  // namespace

bool ParseTime(std::string_view s, int64_t* sec, uint32_t* nsec) {
  return ParseIsoTime(s, sec, nsec) || ParseHttpDate(s, sec, nsec);
}

Result<ListPage> ParseListPage(std::string_view xml, const std::string& what) {
  ListWalker w;
  if (!w.Run(xml)) return Status::Corruption(what + ": bad listing: " + Sanitize(w.error(), 200));
  if (!w.saw_root) return Status::Corruption(what + ": bad listing: empty");
  if (w.page.truncated && w.page.next_token.empty()) {
    return Status::Corruption(what + ": bad listing: truncated without NextContinuationToken");
  }
  if (w.page.next_token.size() > 2048) {
    return Status::Corruption(what + ": bad listing: continuation token too long");
  }
  return std::move(w.page);
}

S3Error ParseError(std::string_view xml) {
  ErrorWalker w;
  if (xml.size() > (1u << 16)) return {};
  (void)w.Run(xml);  // a partial <Error> still names its code
  w.err.code = Sanitize(w.err.code, 64);
  w.err.message = Sanitize(w.err.message, 200);
  return w.err;
}

Status AddPage(const ListPage& page, const std::string& folder, std::vector<FolderEntry>* out,
               size_t* dropped) {
  if (out->size() + page.objects.size() + page.prefixes.size() > kMaxFolderEntries) {
    return Status::TooLarge("s3 folder `" + folder + "`: more than " +
                            std::to_string(kMaxFolderEntries) + " entries");
  }
  for (const ObjectEntry& o : page.objects) {
    std::string_view key(o.key);
    if (key.size() <= folder.size() || key.compare(0, folder.size(), folder) != 0 ||
        !GoodName(key.substr(folder.size()))) {
      // The folder's own marker ("folder/") lands here too: not an entry.
      if (key != folder) ++*dropped;
      continue;
    }
    FolderEntry e;
    e.name = std::string(key.substr(folder.size()));
    e.size = o.size;
    e.etag = o.etag;
    e.mtime_sec = o.mtime_sec;
    e.mtime_nsec = o.mtime_nsec;
    out->push_back(std::move(e));
  }
  for (const std::string& p : page.prefixes) {
    std::string_view pv(p);
    if (pv.size() < folder.size() + 2 || pv.compare(0, folder.size(), folder) != 0 ||
        pv.back() != '/' || !GoodName(pv.substr(folder.size(), pv.size() - folder.size() - 1))) {
      ++*dropped;
      continue;
    }
    FolderEntry e;
    e.name = std::string(pv.substr(folder.size(), pv.size() - folder.size() - 1));
    e.is_folder = true;
    out->push_back(std::move(e));
  }
  return Status::OK();
}

void FinishFolder(std::vector<FolderEntry>* entries) {
  // Folders sort before objects of the same name, so unique() keeps them.
  std::sort(entries->begin(), entries->end(), [](const FolderEntry& a, const FolderEntry& b) {
    if (a.name != b.name) return a.name < b.name;
    return a.is_folder > b.is_folder;
  });
  entries->erase(std::unique(entries->begin(), entries->end(),
                             [](const FolderEntry& a, const FolderEntry& b) {
                               return a.name == b.name;
                             }),
                 entries->end());
}

}  // namespace kvmfs::s3
