// The HTTP endpoint (a real socket, a real HTTP request) and the textfile
// writer.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "metrics/exposition.h"
#include "metrics/server.h"

namespace kvmfs::metrics {
namespace {

// One HTTP/1.0 request to 127.0.0.1:port; the whole reply.
std::string Http(uint16_t port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(::write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  std::string reply;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) reply.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return reply;
}

std::string TempDir() {
  char tmpl[] = "/tmp/kvmfs-metrics-test-XXXXXX";
  const char* d = ::mkdtemp(tmpl);
  EXPECT_NE(d, nullptr);
  return d ? d : "";
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(MetricsAddress, LoopbackUnlessAHostIsGiven) {
  auto a = ParseListenAddress(":9101");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, "9101");
  a = ParseListenAddress("9101");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "127.0.0.1");
  a = ParseListenAddress("0.0.0.0:80");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "0.0.0.0");
  a = ParseListenAddress("[::1]:9101");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "::1");
  EXPECT_EQ(a->port, "9101");
}

TEST(MetricsAddress, RejectsBadOnes) {
  for (const char* bad : {"", "host:", "host:port", "1.2.3.4:65536", "::1:80", "[::1]80", "[::1"}) {
    auto a = ParseListenAddress(bad);
    EXPECT_FALSE(a.ok()) << bad;
    if (!a.ok()) {
      EXPECT_NE(a.status().message().find("metrics address"), std::string::npos);
    }
  }
}

TEST(MetricsHttp, ServesMetricsWithTheTextContentType) {
  auto server = HttpServer::Listen("127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_NE((*server)->port(), 0);
  int renders = 0;
  ASSERT_TRUE((*server)->Start([&renders] {
    ++renders;
    return std::string("# HELP kvmfs_up Up.\n# TYPE kvmfs_up gauge\nkvmfs_up 1\n");
  }).ok());
  std::string reply = Http((*server)->port(), "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
  EXPECT_NE(reply.find(std::string("Content-Type: ") + kTextContentType), std::string::npos) << reply;
  EXPECT_NE(reply.find("\r\n\r\n# HELP kvmfs_up Up.\n"), std::string::npos);
  EXPECT_EQ(renders, 1);
  EXPECT_EQ((*server)->scrapes(), 1u);
  EXPECT_NE(Http((*server)->port(), "GET /nothing HTTP/1.0\r\n\r\n").find(" 404 "), std::string::npos);
  EXPECT_NE(Http((*server)->port(), "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n").find(" 405 "),
            std::string::npos);
  EXPECT_EQ(renders, 1);
  (*server)->Stop();
}

TEST(MetricsHttp, APortInUseFailsWithTheAddress) {
  auto first = HttpServer::Listen("127.0.0.1:0");
  ASSERT_TRUE(first.ok());
  auto second = HttpServer::Listen("127.0.0.1:" + std::to_string((*first)->port()));
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("127.0.0.1:"), std::string::npos);
  EXPECT_EQ(second.status().ToErrno(), EADDRINUSE);
}

TEST(MetricsFile, WrittenAtomicallyAndAgainWhenStopped) {
  const std::string dir = TempDir();
  const std::string path = dir + "/kvmfs.prom";
  int n = 0;
  auto writer = FileWriter::Create(path, std::chrono::milliseconds(20),
                                   [&n] { return "kvmfs_n " + std::to_string(++n) + "\n"; });
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  EXPECT_EQ(ReadAll(path), "kvmfs_n 1\n");
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  (*writer)->Start();
  for (int i = 0; i < 500 && (*writer)->writes() < 3; ++i) ::usleep(10000);
  EXPECT_GE((*writer)->writes(), 3u);
  (*writer)->Stop();
  const uint64_t writes = (*writer)->writes();
  EXPECT_EQ(ReadAll(path), "kvmfs_n " + std::to_string(writes) + "\n");
  // Nothing but the file itself is left in the directory.
  EXPECT_EQ(::unlink(path.c_str()), 0);
  EXPECT_EQ(::rmdir(dir.c_str()), 0);
}

TEST(MetricsFile, AMissingDirectoryFailsWithThePath) {
  auto writer = FileWriter::Create("/nonexistent-kvmfs-dir/kvmfs.prom", std::chrono::seconds(1),
                                   [] { return std::string(); });
  ASSERT_FALSE(writer.ok());
  EXPECT_NE(writer.status().message().find("/nonexistent-kvmfs-dir/kvmfs.prom"), std::string::npos);
}

}  // namespace
}  // namespace kvmfs::metrics
