#include "metrics/backend_metrics.h"

#include "metrics/exposition.h"

namespace kvmfs::metrics {
namespace {

Family<BackendOp>& Ops() {
  // Never destroyed; its collector is added with it.
  static Family<BackendOp>* family = [] {
    auto* f = new Family<BackendOp>({"backend", "op"}, kMaxBackendSeries);
    Registry::Global().Add([f](Exposition& out) {
      const auto series = f->Series();
      auto counter = [&](const char* name, const char* help, Counter BackendOp::*member) {
        out.Family(name, help, "counter");
        for (const auto& [v, op] : series)
          out.SampleInt(name, {{"backend", v[0]}, {"op", v[1]}}, (op->*member).Value());
      };
      counter("kvmfs_backend_requests_total", "Requests to a storage backend.", &BackendOp::requests);
      counter("kvmfs_backend_errors_total", "Backend requests that failed (after their retries).",
              &BackendOp::errors);
      counter("kvmfs_backend_retries_total", "Backend requests retried.", &BackendOp::retries);
      const std::string name = "kvmfs_backend_request_duration_seconds";
      out.Family(name, "Duration of backend requests, retries included.", "histogram");
      for (const auto& [v, op] : series)
        WriteHistogramSeries(out, name, {{"backend", v[0]}, {"op", v[1]}}, op->latency);
    });
    return f;
  }();
  return *family;
}

}  // namespace

BackendOp& BackendMetrics(const std::string& backend, const std::string& op) {
  return Ops().With({backend, op});
}

}  // namespace kvmfs::metrics
