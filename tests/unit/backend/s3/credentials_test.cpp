// Credentials from a shared-credentials file or the environment; messages
// never carry a secret.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <fstream>

#include "backend/s3/config.h"

namespace kvmfs::s3 {
namespace {

constexpr char kFile[] = R"(# comment
[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key = s3cr3t/default+key

[profile backup]
aws_access_key_id=AKIABACKUP
aws_secret_access_key=backupsecret
aws_session_token = tok
[broken]
aws_access_key_id = AKIABROKEN
)";

TEST(S3Credentials, ParsesDefaultAndNamedProfiles) {
  auto d = ParseCredentialsFile(kFile, "", "creds");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->access_key, "AKIADEFAULT");
  EXPECT_EQ(d->secret_key, "s3cr3t/default+key");
  auto b = ParseCredentialsFile(kFile, "backup", "creds");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->access_key, "AKIABACKUP");
  EXPECT_EQ(b->session_token, "tok");
  EXPECT_EQ(b->Redacted(), "AKIA…");
}

TEST(S3Credentials, ErrorsNameTheFileNotTheSecret) {
  auto missing = ParseCredentialsFile(kFile, "nope", "creds");
  EXPECT_EQ(missing.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("[nope]"), std::string::npos);
  auto broken = ParseCredentialsFile(kFile, "broken", "creds");
  EXPECT_FALSE(broken.ok());
  auto junk = ParseCredentialsFile("[default]\nsupersecretline\n", "", "creds");
  EXPECT_FALSE(junk.ok());
  EXPECT_EQ(junk.status().message().find("supersecret"), std::string::npos);
  auto space = ParseCredentialsFile("[default]\naws_access_key_id=a b\naws_secret_access_key=x\n",
                                    "", "creds");
  EXPECT_FALSE(space.ok());
}

TEST(S3Credentials, FileMustBePrivateAndEnvironmentIsTheFallback) {
  char tmpl[] = "/tmp/kvmfs-s3-creds-XXXXXX";
  int fd = ::mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  ::close(fd);
  std::ofstream(tmpl) << kFile;
  ::chmod(tmpl, 0644);
  EXPECT_EQ(LoadCredentials(tmpl, "").status().code(), Status::Code::kPermission);
  ::chmod(tmpl, 0600);
  auto c = LoadCredentials(tmpl, "backup");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->access_key, "AKIABACKUP");
  ::unlink(tmpl);
  EXPECT_EQ(LoadCredentials(tmpl, "").status().code(), Status::Code::kNotFound);

  ::setenv("AWS_ACCESS_KEY_ID", "AKIAENV", 1);
  ::setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
  ::unsetenv("AWS_SESSION_TOKEN");
  auto e = LoadCredentials("", "");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->access_key, "AKIAENV");
  EXPECT_EQ(e->secret_key, "envsecret");
  ::unsetenv("AWS_SECRET_ACCESS_KEY");
  auto none = LoadCredentials("", "");
  EXPECT_EQ(none.status().code(), Status::Code::kInvalidArgument);
  ::unsetenv("AWS_ACCESS_KEY_ID");
}

TEST(S3Config, ValidateChecksBucketRegionAndSizes) {
  S3Config c;
  c.bucket = "golden-images";
  c.credentials = {"AK", "SK", ""};
  c.endpoint = "http://127.0.0.1:1";
  EXPECT_TRUE(c.Validate().ok());
  EXPECT_TRUE(c.UsePathStyle());
  S3Config aws = c;
  aws.endpoint.clear();
  EXPECT_FALSE(aws.UsePathStyle());
  for (auto mutate : std::vector<void (*)(S3Config&)>{
           [](S3Config& x) { x.bucket = "ab"; },
           [](S3Config& x) { x.bucket = "a/b"; },
           [](S3Config& x) { x.region = "us east"; },
           [](S3Config& x) { x.prefix = "/abs"; },
           [](S3Config& x) { x.block_size = 3 << 20; },
           [](S3Config& x) { x.block_size = 32 << 10; },
           [](S3Config& x) { x.connections = 0; },
           [](S3Config& x) { x.credentials.secret_key.clear(); },
       }) {
    S3Config bad = c;
    mutate(bad);
    EXPECT_FALSE(bad.Validate().ok());
  }
}

}  // namespace
}  // namespace kvmfs::s3
