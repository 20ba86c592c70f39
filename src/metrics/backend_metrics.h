// Metrics of storage backends, for backends to register their own (S3, RBD):
//
//   static metrics::BackendOp& get = metrics::BackendMetrics("s3", "get");
//   const uint64_t t0 = metrics::NowNanos();
//   ... the request, retried `retries` times ...
//   get.Done(metrics::NowNanos() - t0, ok, retries);
//
// rendered as kvmfs_backend_requests_total{backend,op},
// kvmfs_backend_errors_total{backend,op}, kvmfs_backend_retries_total{backend,op}
// and the histogram kvmfs_backend_request_duration_seconds{backend,op}.
// At most kMaxBackendSeries (backend, op) pairs. Thread-safe; Done() is
// lock-free.
#pragma once

#include <cstdint>
#include <string>

#include "metrics/metrics.h"

namespace kvmfs::metrics {

inline constexpr size_t kMaxBackendSeries = 64;

struct BackendOp {
  Counter requests;
  Counter errors;
  Counter retries;
  Histogram latency;

  // One request done (after its retries) in `ns` nanoseconds in all.
  void Done(uint64_t ns, bool ok, uint64_t retried = 0) {
    requests.Add();
    if (!ok) errors.Add();
    if (retried > 0) retries.Add(retried);
    latency.ObserveNanos(ns);
  }
};

// The metrics of operation `op` ("get", "put", "read") of backend `backend`
// ("s3", "rbd", "dir"): registered with the global registry on first use;
// the reference stays valid for the life of the process. Takes a mutex:
// keep the reference.
BackendOp& BackendMetrics(const std::string& backend, const std::string& op);

}  // namespace kvmfs::metrics
