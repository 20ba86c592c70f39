// The test side of fake_s3.py: starts it on 127.0.0.1 (a random port, or a
// given one to come back after a stop), stops it by PID, and drives its
// control endpoints.
#pragma once

#include <curl/curl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/s3/config.h"

#ifndef KVMFS_FAKE_S3_PY
#error "KVMFS_FAKE_S3_PY must name fake_s3.py"
#endif

namespace kvmfs::s3::testing {

inline constexpr char kBucket[] = "test-bucket";
inline constexpr char kAccessKey[] = "TESTACCESSKEY0000001";
inline constexpr char kSecretKey[] = "testsecretkey0000000000000000000000000001";

class FakeS3 {
 public:
  FakeS3() = default;
  ~FakeS3() { Stop(); }

  // Starts the server on `port` (0: any); false when it does not come up.
  bool Start(int port = 0) {
    int fds[2];
    if (::pipe(fds) != 0) return false;
    pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(fds[1], 1);
      ::close(fds[0]);
      std::string p = std::to_string(port);
      ::execlp("python3", "python3", KVMFS_FAKE_S3_PY, "--port", p.c_str(), "--bucket", kBucket,
               "--access-key", kAccessKey, "--secret-key", kSecretKey, nullptr);
      ::_exit(127);
    }
    ::close(fds[1]);
    pid_ = pid;
    char buf[32] = {0};
    ssize_t n = 0, got = 0;
    while (got < 31 && (n = ::read(fds[0], buf + got, 1)) == 1 && buf[got] != '\n') ++got;
    ::close(fds[0]);
    port_ = std::atoi(buf);
    return port_ > 0;
  }
  void Stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  int port() const { return port_; }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

  S3Config Config() const {
    S3Config c;
    c.endpoint = endpoint();
    c.bucket = kBucket;
    c.credentials.access_key = kAccessKey;
    c.credentials.secret_key = kSecretKey;
    c.retry = RetryPolicy{4, 10, 50};
    c.connect_timeout_ms = 1000;
    c.stall_timeout_ms = 1000;
    c.block_size = 64u << 10;
    c.connections = 4;
    return c;
  }

  // A control request; the response body (empty on failure).
  std::string Ctl(const std::string& path_and_query, const std::string& body = "",
                  bool post = true) const {
    CURL* c = curl_easy_init();
    std::string out;
    std::string url = endpoint() + path_and_query;
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    if (post) {
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, +[](char* p, size_t s, size_t n, void* u) {
      static_cast<std::string*>(u)->append(p, s * n);
      return s * n;
    });
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    curl_easy_perform(c);
    curl_easy_cleanup(c);
    return out;
  }
  // Stores an object; returns its ETag.
  std::string Put(const std::string& key, const std::string& data) const {
    char* esc = curl_easy_escape(nullptr, key.data(), static_cast<int>(key.size()));
    std::string etag = Ctl(std::string("/_ctl/put?key=") + esc, data);
    curl_free(esc);
    return etag;
  }
  void Fault(const std::string& kind, int count, const std::string& action,
             const std::string& body = "") const {
    Ctl("/_ctl/fault?kind=" + kind + "&count=" + std::to_string(count) + "&action=" + action,
        body);
  }
  // A counter of /_ctl/stats ("get", "list", "head", "max_active_gets").
  int Stat(const std::string& name) const {
    std::string s = Ctl("/_ctl/stats", "", false);
    size_t at = s.find("\"" + name + "\": ");
    return at == std::string::npos ? 0 : std::atoi(s.c_str() + at + name.size() + 4);
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

// Deterministic bytes for test objects; `compressible` repeats a pattern.
inline std::string TestBytes(size_t n, uint32_t seed, bool compressible = false) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    if (compressible) {
      s[i] = static_cast<char>("kvmfs-s3-"[i % 9] + (i / 4096) % 7);
    } else {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      s[i] = static_cast<char>(x);
    }
  }
  return s;
}

}  // namespace kvmfs::s3::testing
