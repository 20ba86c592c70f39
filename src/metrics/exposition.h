// Prometheus' text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/): one family
// at a time, its # HELP and # TYPE lines, then its samples.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvmfs::metrics {

// The content type of a scrape reply.
inline constexpr const char* kTextContentType = "text/plain; version=0.0.4; charset=utf-8";

using Labels = std::vector<std::pair<std::string, std::string>>;

// Whether `name` is a valid metric or label name ([a-zA-Z_:][a-zA-Z0-9_:]*;
// no ':' in label names).
bool ValidMetricName(std::string_view name);
bool ValidLabelName(std::string_view name);

// A label value or HELP text escaped as the format wants it.
std::string EscapeLabelValue(std::string_view value);
std::string EscapeHelp(std::string_view help);
// A sample value: integers exactly, others with full precision, NaN, +Inf, -Inf.
std::string FormatValue(double value);

// Builds the text of one scrape. Not thread-safe (one per scrape).
class Exposition {
 public:
  // Starts family `name` of `type` (counter, gauge, histogram, untyped).
  // The samples that follow belong to it. A family started twice in one
  // scrape is a bug of its collector: the second one is dropped (and its
  // samples with it), so the scrape stays valid.
  void Family(std::string_view name, std::string_view help, std::string_view type);
  // One sample of the current family: `name` is the family name or, for
  // histograms, name_bucket/_sum/_count.
  void Sample(std::string_view name, const Labels& labels, double value);
  void SampleInt(std::string_view name, const Labels& labels, uint64_t value);

  const std::string& text() const { return text_; }
  std::string Take() { return std::move(text_); }

 private:
  void Line(std::string_view name, const Labels& labels, const std::string& value);

  std::string text_;
  std::set<std::string, std::less<>> families_;
  bool dropping_ = false;
};

}  // namespace kvmfs::metrics
