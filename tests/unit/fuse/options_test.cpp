// The kvmfs command line: -o cache_size=SIZE.
#include "fuse/options.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace kvmfs::fuse {
namespace {

Result<Options> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "kvmfs");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data());
}

TEST(FuseOptions, CacheSizeDefaultsTo64MiB) {
  auto o = Parse({"src", "mnt"});
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->cache_size, 64ull << 20);
}

TEST(FuseOptions, CacheSizeAcceptsBytesAndSuffixes) {
  const std::pair<const char*, uint64_t> cases[] = {
      {"4096", 4096},          {"512K", 512ull << 10}, {"8M", 8ull << 20},
      {"8m", 8ull << 20},      {"2G", 2ull << 30},     {"16MiB", 16ull << 20},
      {"1GB", 1ull << 30},     {"100b", 100},
  };
  for (const auto& [text, bytes] : cases) {
    auto o = Parse({"-o", std::string("ro,cache_size=") + text, "src", "mnt"});
    ASSERT_TRUE(o.ok()) << text << ": " << o.status().ToString();
    EXPECT_EQ(o->cache_size, bytes) << text;
    EXPECT_TRUE(o->read_only);
  }
  // The option is ours: not passed to libfuse.
  auto o = Parse({"-o", "cache_size=8M", "src", "mnt"});
  ASSERT_TRUE(o.ok());
  EXPECT_TRUE(o->fuse_options.empty());
}

TEST(FuseOptions, CacheSizeRejectsNonsenseWithOneLine) {
  for (const char* text : {"", "M", "-1", "1.5M", "8X", "8 M", "0", "0M", "99999999999G",
                           "18446744073709551616", "8MM"}) {
    auto o = Parse({"-o", std::string("cache_size=") + text, "src", "mnt"});
    ASSERT_FALSE(o.ok()) << text;
    EXPECT_EQ(o.status().code(), Status::Code::kInvalidArgument) << text;
    EXPECT_NE(o.status().message().find("cache_size"), std::string::npos) << o.status().message();
    EXPECT_EQ(o.status().message().find('\n'), std::string::npos);
  }
}

TEST(FuseOptions, TimeoutsAreOursInSeconds) {
  auto o = Parse({"-o", "entry_timeout=2.5,attr_timeout=0,negative_timeout=30", "src", "mnt"});
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->entry_timeout, 2.5);
  EXPECT_EQ(o->attr_timeout, 0.0);
  EXPECT_EQ(o->negative_timeout, 30.0);
  EXPECT_TRUE(o->fuse_options.empty()) << "libfuse's low-level API has no such options";
  auto d = Parse({"src", "mnt"});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->attr_timeout, 1.0);
  for (const char* bad : {"entry_timeout=", "attr_timeout=-1", "negative_timeout=x", "attr_timeout=1e9",
                          "entry_timeout=nan"}) {
    auto e = Parse({"-o", bad, "src", "mnt"});
    ASSERT_FALSE(e.ok()) << bad;
    EXPECT_EQ(e.status().code(), Status::Code::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace kvmfs::fuse

namespace kvmfs::fuse {
namespace {

TEST(FuseOptions, KeysNamesAFile) {
  char a0[] = "kvmfs", a1[] = "-o", a2[] = "keys=/etc/kvmfs/keys.yaml,ro", a3[] = "src", a4[] = "mnt";
  char* argv[] = {a0, a1, a2, a3, a4};
  auto o = ParseCommandLine(5, argv);
  ASSERT_TRUE(o.ok()) << o.status().message();
  EXPECT_EQ(o->keys, "/etc/kvmfs/keys.yaml");
  char b2[] = "keys=";
  char* bad[] = {a0, a1, b2, a3, a4};
  EXPECT_FALSE(ParseCommandLine(5, bad).ok());
}

TEST(FuseOptions, MetricsOptionsAreOurs) {
  auto o = Parse({"-o", "metrics=127.0.0.1:9101,metrics_file=m.prom,metrics_interval=2.5,"
                        "metrics_max_images=7",
                  "src", "mnt"});
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->metrics, "127.0.0.1:9101");
  EXPECT_EQ(o->metrics_file, "m.prom");  // ValidateOptions makes it absolute
  EXPECT_DOUBLE_EQ(o->metrics_interval, 2.5);
  EXPECT_EQ(o->metrics_max_images, 7u);
  EXPECT_TRUE(o->fuse_options.empty());
}

TEST(FuseOptions, MetricsOptionsRejectNonsense) {
  for (const char* bad : {"metrics=", "metrics_file=",
                          "metrics_interval=0", "metrics_interval=x", "metrics_max_images=0",
                          "metrics_max_images=-1", "metrics_max_images=100001"}) {
    auto o = Parse({"-o", bad, "src", "mnt"});
    EXPECT_FALSE(o.ok()) << bad;
  }
}

}  // namespace
}  // namespace kvmfs::fuse
