// The metrics layer: sharded counters, histograms, label families with their
// cap, the text exposition format, progress and backend registration.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "metrics/backend_metrics.h"
#include "metrics/exposition.h"
#include "metrics/metrics.h"
#include "metrics/progress.h"

namespace kvmfs::metrics {
namespace {

// The lines of `text` that are samples of `name` (exactly, with labels).
std::vector<std::string> SampleLines(const std::string& text, const std::string& name) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name + " ", 0) == 0 || line.rfind(name + "{", 0) == 0) out.push_back(line);
  return out;
}

// Checks what Prometheus' parser insists on: each family's HELP and TYPE
// once, before its samples, and every sample of a family contiguous.
void ExpectWellFormed(const std::string& text) {
  std::istringstream in(text);
  std::set<std::string> done;
  std::string current;
  for (std::string line; std::getline(in, line);) {
    ASSERT_FALSE(line.empty());
    if (line.rfind("# HELP ", 0) == 0) {
      std::string name = line.substr(7, line.find(' ', 7) - 7);
      ASSERT_TRUE(done.insert(name).second) << "family twice: " << name;
      current = name;
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      ASSERT_EQ(line.substr(7, line.find(' ', 7) - 7), current);
      continue;
    }
    std::string name = line.substr(0, line.find_first_of("{ "));
    ASSERT_EQ(name.rfind(current, 0), 0u) << line << " outside family " << current;
  }
}

TEST(MetricsCounter, SumsEveryThreadsAdds) {
  Counter c;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&c] {
      for (int i = 0; i < 10000; ++i) c.Add(3);
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.Value(), 8u * 10000 * 3);
}

TEST(MetricsCounter, ArrayKeepsItsCountsApart) {
  CounterArray<4> a;
  a.Add(0);
  a.Add(1, 4096);
  a.Add(1, 1);
  a.Add(3, 7);
  EXPECT_EQ(a.Value(0), 1u);
  EXPECT_EQ(a.Value(1), 4097u);
  EXPECT_EQ(a.Value(2), 0u);
  EXPECT_EQ(a.Value(3), 7u);
  static_assert(sizeof(CounterArray<4>) == kShards * kCacheLine);
}

TEST(MetricsGauge, SetAndAdd) {
  Gauge g;
  g.Set(5);
  g.Add(-2.5);
  EXPECT_DOUBLE_EQ(g.Value(), 2.5);
}

TEST(MetricsHistogram, BucketsAreLessOrEqualAndCountMatchesInf) {
  Histogram h({0.001, 0.01, 0.1});
  h.ObserveNanos(1000000);    // exactly 1 ms: in le=0.001
  h.ObserveNanos(1000001);    // just over: le=0.01
  h.ObserveNanos(50000000);   // 50 ms: le=0.1
  h.ObserveNanos(2000000000); // 2 s: +Inf only
  Histogram::Snapshot s = h.Read();
  ASSERT_EQ(s.buckets.size(), 4u);
  EXPECT_EQ(s.buckets[0], 1u);
  EXPECT_EQ(s.buckets[1], 1u);
  EXPECT_EQ(s.buckets[2], 1u);
  EXPECT_EQ(s.buckets[3], 1u);
  EXPECT_EQ(s.count, 4u);
  EXPECT_NEAR(s.sum_seconds, 0.001 + 0.001000001 + 0.05 + 2, 1e-9);
}

TEST(MetricsHistogram, IgnoresBoundsThatDoNotIncrease) {
  Histogram h({0.1, 0.05, 0.1, 1});
  EXPECT_EQ(h.Read().bounds, (std::vector<double>{0.1, 1}));
}

TEST(MetricsHistogram, RendersCumulativeBuckets) {
  Family<Histogram> f({"op"}, 10);
  Histogram& h = f.With({"READ"});
  for (uint64_t ns : {5000u, 20000u, 20000u, 3000000u}) h.ObserveNanos(ns);
  Exposition out;
  WriteHistogram(out, "kvmfs_test_seconds", "Test.", f);
  const std::string text = out.text();
  ExpectWellFormed(text);
  EXPECT_NE(text.find("kvmfs_test_seconds_bucket{op=\"READ\",le=\"1e-05\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("kvmfs_test_seconds_bucket{op=\"READ\",le=\"2.5e-05\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("kvmfs_test_seconds_bucket{op=\"READ\",le=\"+Inf\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("kvmfs_test_seconds_count{op=\"READ\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE kvmfs_test_seconds histogram\n"), std::string::npos);
}

TEST(MetricsFamily, SameLabelsSameSeries) {
  Family<Counter> f({"pool", "image"}, 10);
  Counter& a = f.With({"p", "a.qcow2"});
  EXPECT_EQ(&a, &f.With({"p", "a.qcow2"}));
  EXPECT_NE(&a, &f.With({"p", "b.qcow2"}));
}

TEST(MetricsFamily, CapSendsNewSeriesToOneOverflowSeries) {
  Family<Counter> f({"pool", "image"}, 3);
  for (int i = 0; i < 10; ++i) f.With({"p", "img" + std::to_string(i)}).Add();
  auto series = f.Series();
  // Three real ones plus the overflow series (which takes the other seven).
  ASSERT_EQ(series.size(), 4u);
  uint64_t other = 0;
  for (const auto& [values, c] : series)
    if (values[1] == kOverflowLabel) other = c->Value();
  EXPECT_EQ(other, 7u);
  // A series that exists keeps working after the cap.
  f.With({"p", "img0"}).Add();
  EXPECT_EQ(f.With({"p", "img0"}).Value(), 2u);
}

TEST(MetricsExposition, EscapesLabelValuesAndHelp) {
  Exposition out;
  out.Family("kvmfs_x_total", "a \\ help\nline", "counter");
  out.SampleInt("kvmfs_x_total", {{"image", "a\"b\\c\nd"}}, 1);
  EXPECT_EQ(out.text(),
            "# HELP kvmfs_x_total a \\\\ help\\nline\n# TYPE kvmfs_x_total counter\n"
            "kvmfs_x_total{image=\"a\\\"b\\\\c\\nd\"} 1\n");
}

TEST(MetricsExposition, DropsARepeatedFamilyAndBadNames) {
  Exposition out;
  out.Family("kvmfs_a", "A.", "gauge");
  out.Sample("kvmfs_a", {}, 1);
  out.Family("kvmfs_a", "again", "gauge");
  out.Sample("kvmfs_a", {}, 2);
  out.Family("0bad", "no", "gauge");
  out.Sample("0bad", {}, 3);
  EXPECT_EQ(out.text(), "# HELP kvmfs_a A.\n# TYPE kvmfs_a gauge\nkvmfs_a 1\n");
}

TEST(MetricsExposition, FormatsValues) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(123456789012.0), "123456789012");
  EXPECT_EQ(FormatValue(0.25), "0.25");
  EXPECT_EQ(FormatValue(0.00025), "0.00025");
  EXPECT_EQ(FormatValue(1.0 / 0.0), "+Inf");
  EXPECT_EQ(FormatValue(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(FormatValue(0.0 / 0.0), "NaN");
  EXPECT_TRUE(ValidMetricName("kvmfs_a:b_total"));
  EXPECT_FALSE(ValidLabelName("a:b"));
  EXPECT_FALSE(ValidMetricName("9a"));
  EXPECT_FALSE(ValidMetricName(""));
}

TEST(MetricsRegistry, RendersCollectorsInOrderAndForgetsRemovedOnes) {
  Registry r;
  uint64_t a = r.Add([](Exposition& out) {
    out.Family("kvmfs_a", "A.", "gauge");
    out.Sample("kvmfs_a", {}, 1);
  });
  r.Add([](Exposition& out) {
    out.Family("kvmfs_b", "B.", "gauge");
    out.Sample("kvmfs_b", {}, 2);
  });
  std::string text = r.Render();
  ExpectWellFormed(text);
  EXPECT_LT(text.find("kvmfs_a 1"), text.find("kvmfs_b 2"));
  r.Remove(a);
  EXPECT_EQ(r.Render().find("kvmfs_a"), std::string::npos);
}

TEST(MetricsProgress, ShownWhileRunningTheLeastAdvancedPerImage) {
  Exposition before;
  WriteProgress(before);
  EXPECT_TRUE(SampleLines(before.text(), "kvmfs_operation_progress_ratio").empty());
  {
    Progress a("check", "p", "vm.qcow2");
    Progress b("check", "p", "vm.qcow2");
    Progress c("snapshot_create", "p", "other.qcow2");
    a.Update(3, 4);
    b.Set(0.5);
    c.Set(7);  // clamped
    Exposition out;
    WriteProgress(out);
    ExpectWellFormed(out.text());
    auto lines = SampleLines(out.text(), "kvmfs_operation_progress_ratio");
    EXPECT_EQ(lines, (std::vector<std::string>{
                         "kvmfs_operation_progress_ratio{op=\"check\",pool=\"p\",image=\"vm.qcow2\"} 0.5",
                         "kvmfs_operation_progress_ratio{op=\"snapshot_create\",pool=\"p\",image=\"other.qcow2\"} 1"}));
    EXPECT_EQ(SampleLines(out.text(), "kvmfs_operations_running"),
              (std::vector<std::string>{"kvmfs_operations_running{op=\"check\"} 2",
                                        "kvmfs_operations_running{op=\"snapshot_create\"} 1"}));
  }
  Exposition after;
  WriteProgress(after);
  EXPECT_TRUE(SampleLines(after.text(), "kvmfs_operation_progress_ratio").empty());
}

TEST(MetricsProgress, SeriesBeyondTheCapCountAsOther) {
  std::vector<std::unique_ptr<Progress>> running;
  for (size_t i = 0; i < kMaxProgressSeries + 3; ++i) {
    running.push_back(std::make_unique<Progress>("check", "p", "vm" + std::to_string(i) + ".qcow2"));
    running.back()->Set(i < kMaxProgressSeries ? 0.9 : 0.1 * static_cast<double>(i - kMaxProgressSeries + 1));
  }
  Exposition out;
  WriteProgress(out);
  ExpectWellFormed(out.text());
  auto lines = SampleLines(out.text(), "kvmfs_operation_progress_ratio");
  EXPECT_EQ(lines.size(), kMaxProgressSeries + 1);
  // The three past the cap: one series, the least advanced of them.
  EXPECT_NE(std::find(lines.begin(), lines.end(),
                      "kvmfs_operation_progress_ratio{op=\"check\",pool=\"p\",image=\"_other\"} 0.1"),
            lines.end());
  EXPECT_EQ(SampleLines(out.text(), "kvmfs_operations_running"),
            (std::vector<std::string>{"kvmfs_operations_running{op=\"check\"} " +
                                      std::to_string(kMaxProgressSeries + 3)}));
  running.clear();
  Exposition after;
  WriteProgress(after);
  EXPECT_TRUE(SampleLines(after.text(), "kvmfs_operation_progress_ratio").empty());
}

TEST(MetricsBackend, RegisteredOperationsReachTheGlobalRegistry) {
  BackendOp& get = BackendMetrics("s3", "get");
  EXPECT_EQ(&get, &BackendMetrics("s3", "get"));
  get.Done(2000000, true);
  get.Done(30000000, false, 2);
  std::string text = Registry::Global().Render();
  ExpectWellFormed(text);
  EXPECT_NE(text.find("kvmfs_backend_requests_total{backend=\"s3\",op=\"get\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("kvmfs_backend_errors_total{backend=\"s3\",op=\"get\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("kvmfs_backend_retries_total{backend=\"s3\",op=\"get\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("kvmfs_backend_request_duration_seconds_bucket{backend=\"s3\",op=\"get\",le=\"0.0025\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("kvmfs_backend_request_duration_seconds_count{backend=\"s3\",op=\"get\"} 2\n"),
            std::string::npos);
}

}  // namespace
}  // namespace kvmfs::metrics
