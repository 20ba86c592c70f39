#include "config/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <string>

namespace kvmfs::config {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvmfs-config-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  std::string Write(const std::string& name, const std::string& text) {
    std::string p = dir_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }
  // Parses `text` as DIR/kvmfs.yaml and returns the error message ("" if ok).
  std::string Error(const std::string& text) {
    auto c = ParseConfig(text, dir_ + "/kvmfs.yaml");
    return c.ok() ? "" : c.status().message();
  }
  std::string F() const { return dir_ + "/kvmfs.yaml"; }
  std::string dir_;
};

TEST_F(ConfigTest, SmallestConfig) {
  auto c = ParseConfig("pools:\n  - name: local0\n    path: /var/lib/libvirt/images\n",
                       "/etc/kvmfs.yaml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  ASSERT_EQ(c->pools.size(), 1u);
  EXPECT_EQ(c->pools[0].name, "local0");
  EXPECT_EQ(c->pools[0].path, "/var/lib/libvirt/images");
  EXPECT_EQ(c->pools[0].backend, Backend::kDir);
  EXPECT_FALSE(c->pools[0].readonly);
  EXPECT_EQ(c->pools[0].line, 2);
  EXPECT_EQ(c->os_release, "/etc/os-release");
  EXPECT_EQ(c->extensions, DefaultExtensions());
  EXPECT_TRUE(c->keys.empty());
}

TEST_F(ConfigTest, EveryKey) {
  std::string key = Write("secret", "passphrase");
  auto c = ParseConfig(
      "pools:\n"
      "  - name: a\n"
      "    path: /srv/a\n"
      "    backend: blockdev\n"
      "    readonly: true\n"
      "    backing_roots: [/srv/base, rel]\n"
      "    extensions: [.QCOW2, img]\n"
      "  - name: b\n"
      "    layout: kvm\n"
      "keys:\n"
      "  - match: 'secure/*'\n"
      "    file: " +
          key +
          "\n"
          "layouts:\n"
          "  kvm:\n"
          "    ubuntu: /var/lib/kvm/{id}-{version_id}/disks\n"
          "    default: /var/lib/libvirt/images\n"
          "os_release: osr\n"
          "extensions: [qcow2]\n",
      F());
  ASSERT_TRUE(c.ok()) << c.status().message();
  ASSERT_EQ(c->pools.size(), 2u);
  const PoolConfig& a = c->pools[0];
  EXPECT_EQ(a.backend, Backend::kBlockdev);
  EXPECT_TRUE(a.readonly);
  EXPECT_EQ(a.backing_roots, (std::vector<std::string>{"/srv/base", dir_ + "/rel"}));
  EXPECT_EQ(a.extensions, (std::vector<std::string>{"qcow2", "img"}));
  EXPECT_EQ(c->pools[1].layout, "kvm");
  EXPECT_EQ(c->pools[1].line, 8);
  ASSERT_EQ(c->keys.size(), 1u);
  EXPECT_EQ(c->keys[0].match, "secure/*");
  EXPECT_EQ(c->keys[0].file, key);
  EXPECT_EQ(c->layouts.at("kvm").templates.at("default"), "/var/lib/libvirt/images");
  EXPECT_EQ(c->os_release, dir_ + "/osr");
  EXPECT_EQ(c->extensions, (std::vector<std::string>{"qcow2"}));
}

TEST_F(ConfigTest, RbdPool) {
  std::ofstream(dir_ + "/ceph.conf") << "[global]\n";
  std::ofstream(dir_ + "/k.keyring") << "[client.kvm]\n";
  auto c = ParseConfig(
      "pools:\n"
      "  - name: ceph\n"
      "    backend: rbd\n"
      "    ceph_conf: ceph.conf\n"
      "    client: client.kvm\n"
      "    keyring: " + dir_ + "/k.keyring\n"
      "    pool: vms\n"
      "    namespace: tenant1\n"
      "    readonly: true\n",
      F());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const PoolConfig& p = c->pools[0];
  EXPECT_EQ(p.backend, Backend::kRbd);
  EXPECT_EQ(p.rbd.ceph_conf, dir_ + "/ceph.conf");
  EXPECT_EQ(p.rbd.client, "kvm");
  EXPECT_EQ(p.rbd.keyring, dir_ + "/k.keyring");
  EXPECT_EQ(p.rbd.pool, "vms");
  EXPECT_EQ(p.rbd.ns, "tenant1");
  EXPECT_TRUE(p.readonly);
  EXPECT_TRUE(p.path.empty());
  // The smallest: only the pool.
  auto small = ParseConfig("pools:\n  - name: c\n    backend: rbd\n    pool: rbd\n", F());
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  EXPECT_TRUE(small->pools[0].rbd.ceph_conf.empty());
  EXPECT_TRUE(small->pools[0].rbd.client.empty());
}

TEST_F(ConfigTest, S3Pool) {
  std::ofstream(dir_ + "/creds") << "[default]\n";
  auto c = ParseConfig(
      "pools:\n"
      "  - name: golden\n"
      "    backend: s3\n"
      "    endpoint: http://127.0.0.1:9000\n"
      "    region: eu-1\n"
      "    bucket: images\n"
      "    prefix: golden/\n"
      "    path_style: yes\n"
      "    credentials: " + dir_ + "/creds\n"
      "    cache_dir: cache\n"
      "    cache_max: 2G\n"
      "    overlay_dir: /var/lib/kvmfs/overlays\n",
      F());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const PoolConfig& p = c->pools[0];
  EXPECT_EQ(p.backend, Backend::kS3);
  EXPECT_EQ(p.store_backend, "s3");
  const std::map<std::string, std::string> want = {
      {"endpoint", "http://127.0.0.1:9000"}, {"region", "eu-1"}, {"bucket", "images"},
      {"prefix", "golden/"}, {"path_style", "true"}, {"credentials", dir_ + "/creds"},
      {"cache_dir", dir_ + "/cache"}, {"cache_max", std::to_string(2ull << 30)},
      {"overlay_dir", "/var/lib/kvmfs/overlays"}};
  EXPECT_EQ(p.store_options, want);
  EXPECT_TRUE(p.path.empty());
}

TEST_F(ConfigTest, S3PoolErrors) {
  EXPECT_EQ(Error("pools:\n  - name: c\n    backend: s3\n"),
            F() + ":2: pools[0].bucket: missing (the bucket of the images)");
  EXPECT_EQ(Error("pools:\n  - name: c\n    backend: s3\n    bucket: b\n    cache_dir: /c\n    cache_max: lots\n"),
            F() + ":6: pools[0].cache_max: expected a size such as 4096, 512M or 10G, got \"lots\"");
  EXPECT_EQ(Error("pools:\n  - name: c\n    backend: s3\n    bucket: b\n    endpoint: ftp://x\n"),
            F() + ":5: pools[0].endpoint: expected http://HOST[:PORT] or https://HOST[:PORT], got \"ftp://x\"");
  EXPECT_EQ(Error("pools:\n  - name: c\n    path: /x\n    bucket: b\n"),
            F() + ":4: pools[0].bucket: only for backend: s3");
  EXPECT_EQ(Error("pools:\n  - name: c\n    backend: s3\n    bucket: b\n    pool: p\n"),
            F() + ":5: pools[0].pool: only for backend: rbd");
}

TEST_F(ConfigTest, RbdPoolErrors) {
  EXPECT_EQ(Error("pools:\n  - name: c\n    backend: rbd\n"),
            F() + ":2: pools[0].pool: missing (the RADOS pool of the RBD images)");
  EXPECT_EQ(Error("pools:\n  - name: c\n    backend: rbd\n    pool: p\n    path: /x\n"),
            F() + ":5: pools[0].path: an rbd pool has no path (its images are in pool:)");
  EXPECT_EQ(Error("pools:\n  - name: c\n    backend: rbd\n    pool: a/b\n"),
            F() + ":4: pools[0].pool: expected a name without '/', '@' or ':', got \"a/b\"");
  EXPECT_EQ(Error("pools:\n  - name: c\n    backend: rbd\n    pool: p\n    keyring: /nonexistent/k\n"),
            F() + ":5: pools[0].keyring: expected a readable file, /nonexistent/k: No such file or directory");
  EXPECT_EQ(Error("pools:\n  - name: c\n    path: /x\n    pool: p\n"),
            F() + ":4: pools[0].pool: only for backend: rbd");
}

TEST_F(ConfigTest, CompressKey) {
  auto c = ParseConfig(
      "pools:\n  - name: a\n    path: /a\n    compress: zlib\n"
      "  - name: b\n    path: /b\n    compress: zstd\n"
      "  - name: c\n    path: /c\n    compress: none\n  - name: d\n    path: /d\n",
      F());
  ASSERT_TRUE(c.ok()) << c.status().message();
  ASSERT_EQ(c->pools.size(), 4u);
  EXPECT_EQ(c->pools[0].compress, Compress::kZlib);
  EXPECT_EQ(c->pools[1].compress, Compress::kZstd);
  EXPECT_EQ(c->pools[2].compress, Compress::kNone);
  EXPECT_EQ(c->pools[3].compress, Compress::kNone);
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n    compress: lz4\n"),
            F() + ":4: pools[0].compress: expected none, zlib or zstd, got \"lz4\"");
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n    compress: [zlib]\n"),
            F() + ":4: pools[0].compress: expected a string, got a list");
}

TEST_F(ConfigTest, ErrorsNameFileLineAndKey) {
  EXPECT_EQ(
      Error("pools:\n  - name: a\n    path: /x\n  - name: b\n    path: /y\n    readonly: maybe\n"),
      F() + ":6: pools[1].readonly: expected true or false, got \"maybe\"");
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n    colour: red\n"),
            F() +
                ":4: pools[0].colour: unknown key (expected one of: name, path, layout, backend, "
                "readonly, compress, "
                "backing_roots, extensions, create_mode, create_owner, create_group, ceph_conf, "
                "client, keyring, pool, namespace, endpoint, region, bucket, prefix, path_style, "
                "ca_file, credentials, profile, cache_dir, cache_max, overlay_dir)");
  EXPECT_EQ(Error("pools: []\nfoo: 1\n").substr(0, F().size() + 8), F() + ":2: foo:");
  EXPECT_EQ(Error("pools:\n  - path: /x\n"),
            F() + ":2: pools[0].name: missing (every pool needs a name)");
  EXPECT_EQ(
      Error("pools:\n  - name: a/b\n    path: /x\n"),
      F() +
          ":2: pools[0].name: expected a folder name (no '/', not starting with '.'), got \"a/b\"");
  EXPECT_EQ(Error("pools:\n  - name: ..\n    path: /x\n").substr(0, F().size() + 18),
            F() + ":2: pools[0].name:");
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n  - name: a\n    path: /y\n"),
            F() + ":4: pools[1].name: expected a unique name, \"a\" is used twice");
  EXPECT_EQ(Error("pools:\n  - name: a\n"),
            F() + ":2: pools[0]: missing path or layout (where the pool's images are)");
  EXPECT_EQ(
      Error("layouts: {l: {default: /x}}\npools:\n  - name: a\n    path: /x\n    layout: l\n"),
      F() + ":5: pools[0].layout: a pool has either path or layout, not both");
  EXPECT_EQ(Error("pools:\n  - name: a\n    layout: nope\n"),
            F() + ":3: pools[0].layout: expected the name of a layout under layouts, got \"nope\"");
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n    backend: nfs\n"),
            F() + ":4: pools[0].backend: expected dir, blockdev, rbd or s3, got \"nfs\"");
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n    backend: s3\n    bucket: b\n"),
            F() + ":3: pools[0].path: an s3 pool has no path (its images are in bucket:)");
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n    backing_roots: /y\n"),
            F() + ":4: pools[0].backing_roots: expected a list of strings, got \"/y\"");
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: [1]\n"),
            F() + ":3: pools[0].path: expected a string, got a list");
  EXPECT_EQ(Error("pools: {a: 1}\n"), F() + ":1: pools: expected a list of pools, got a mapping");
  EXPECT_EQ(Error(""), F() + ":1: pools: missing (the config has no pools)");
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n  - [\n"),
            F() + ":5: end of sequence flow not found");
  EXPECT_EQ(Error("pools: []\nkeys:\n  - match: '*'\n    file: /nonexistent/key\n"),
            F() +
                ":4: keys[0].file: expected a readable file, /nonexistent/key: No such file or "
                "directory");
  EXPECT_EQ(Error("pools: []\nkeys:\n  - file: /x\n"),
            F() + ":3: keys[0].match: missing (a glob for image paths)");
  EXPECT_EQ(Error("pools: []\nkeys:\n  - match: x\n"),
            F() + ":3: keys[0].file: missing (the passphrase file)");
  EXPECT_EQ(Error("pools: []\nkeys: x\n"),
            F() + ":2: keys: expected a list of match/file pairs, got \"x\"");
  EXPECT_EQ(Error("pools: []\nlayouts:\n  l: x\n"),
            F() + ":3: layouts.l: expected a mapping of os-release ID to path, got \"x\"");
  EXPECT_EQ(Error("pools: []\nos_release: []\n"),
            F() + ":2: os_release: expected a string, got a list");
  EXPECT_EQ(Error("pools: []\nextensions: [a/b]\n"),
            F() + ":2: extensions: expected file extensions such as qcow2, got \"a/b\"");
}

TEST_F(ConfigTest, MetricsSection) {
  auto c = ParseConfig(
      "pools: []\nmetrics:\n  listen: 127.0.0.1:9101\n  file: m.prom\n  interval: 30\n"
      "  max_images: 50\n  capacity_interval: 120\n",
      F());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->metrics.listen, "127.0.0.1:9101");
  EXPECT_EQ(c->metrics.file, dir_ + "/m.prom");  // relative to the config file
  EXPECT_DOUBLE_EQ(c->metrics.interval, 30);
  EXPECT_EQ(c->metrics.max_images, 50u);
  EXPECT_DOUBLE_EQ(c->metrics.capacity_interval, 120);
  EXPECT_EQ(Error("pools: []\nmetrics:\n  port: 1\n").substr(0, F().size() + 20),
            F() + ":3: metrics.port: un");
  EXPECT_EQ(Error("pools: []\nmetrics:\n  interval: 0\n"),
            F() + ":3: metrics.interval: expected a number from 0.1 to 86400, got \"0\"");
  EXPECT_EQ(Error("pools: []\nmetrics:\n  max_images: 2.5\n"),
            F() + ":3: metrics.max_images: expected a whole number, got \"2.5\"");
  EXPECT_NE(Error("pools: []\nmetrics: yes\n"), "");
}

TEST_F(ConfigTest, CreateRules) {
  auto c = ParseConfig(
      "pools:\n  - name: a\n    path: /x\n  - name: b\n    path: /y\n    create_mode: 0640\n"
      "    create_owner: root\n    create_group: \"123\"\n",
      F());
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->pools[0].create_mode, 0600u);
  EXPECT_FALSE(c->pools[0].create_uid.has_value());
  EXPECT_FALSE(c->pools[0].create_gid.has_value());
  EXPECT_EQ(c->pools[1].create_mode, 0640u);
  EXPECT_EQ(c->pools[1].create_uid, 0u);
  EXPECT_EQ(c->pools[1].create_gid, 123u);
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n    create_mode: \"0888\"\n"),
            F() + ":4: pools[0].create_mode: expected an octal mode such as 0640, got \"0888\"");
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n    create_mode: \"01777\"\n"),
            F() + ":4: pools[0].create_mode: expected an octal mode such as 0640, got \"01777\"");
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n    create_owner: no-such-user-kvmfs\n"),
            F() + ":4: pools[0].create_owner: expected a user name or number, got "
                  "\"no-such-user-kvmfs\" (no such user)");
  EXPECT_EQ(Error("pools:\n  - name: a\n    path: /x\n    create_group: no-such-group-kvmfs\n"),
            F() + ":4: pools[0].create_group: expected a group name or number, got "
                  "\"no-such-group-kvmfs\" (no such group)");
}

TEST_F(ConfigTest, MissingFile) {
  auto c = LoadConfig(dir_ + "/none.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(), dir_ + "/none.yaml: No such file or directory");
}

TEST(OsRelease, ParsesQuotesAndComments) {
  OsRelease os = ParseOsRelease(
      "# c\nNAME=\"Ubuntu\"\nID=ubuntu\nVERSION_ID='22.04'\nID_LIKE=debian\n\nbad\n");
  EXPECT_EQ(os["name"], "Ubuntu");
  EXPECT_EQ(os["id"], "ubuntu");
  EXPECT_EQ(os["version_id"], "22.04");
  EXPECT_EQ(os["id_like"], "debian");
  EXPECT_EQ(os.count("bad"), 0u);
}

TEST_F(ConfigTest, LayoutResolution) {
  std::string osr =
      Write("os-release", "ID=ubuntu\nVERSION_ID=\"22.04\"\nID_LIKE=debian\nVARIANT=Server\n");
  auto c = ParseConfig(
      "layouts:\n"
      "  kvm:\n"
      "    ubuntu: /var/lib/kvm/{id}-{VERSION_ID}/{variant}\n"
      "    debian: /deb\n"
      "    default: /def\n"
      "  deb:\n"
      "    debian: /deb/{version_id}\n"
      "    default: /def\n"
      "  none:\n"
      "    fedora: /f\n"
      "  bad:\n"
      "    default: /x/{codename}\n"
      "pools:\n"
      "  - {name: a, layout: kvm}\n"
      "  - {name: b, layout: deb}\n"
      "  - {name: c, layout: none}\n"
      "  - {name: d, layout: bad}\n"
      "os_release: " +
          osr + "\n",
      F());
  ASSERT_TRUE(c.ok()) << c.status().message();
  auto os = LoadOsRelease(c->os_release);
  ASSERT_TRUE(os.ok());
  auto a = PoolPath(*c, c->pools[0], *os);
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(*a, "/var/lib/kvm/ubuntu-22.04/server");
  auto b = PoolPath(*c, c->pools[1], *os);  // via ID_LIKE
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, "/deb/22.04");
  auto none = PoolPath(*c, c->pools[2], *os);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("no entry for ID \"ubuntu\""), std::string::npos);
  auto bad = PoolPath(*c, c->pools[3], *os);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(
      bad.status().message(),
      F() + ":12: layouts.bad.default: unknown os-release field {codename} (not in " + osr + ")");
  // No ID at all: default.
  auto d = PoolPath(*c, c->pools[0], OsRelease{});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, "/def");
}

// configs/kvmfs.example.yaml is valid up to its key file, which exists only
// on a configured host (keys are read after pools and layouts).
TEST(ExampleConfig, ParsesUpToItsKeyFile) {
  auto c = LoadConfig(KVMFS_EXAMPLE_CONFIG);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(
                ": keys[0].file: expected a readable file, /etc/kvmfs/keys/secure.pass"),
            std::string::npos)
      << c.status().message();
}

}  // namespace
}  // namespace kvmfs::config

// ---- keys files (-o keys=FILE) ----------------------------------------------

namespace kvmfs::config {
namespace {

TEST_F(ConfigTest, KeysFileHoldsOnlyKeys) {
  std::string key = Write("k.pass", "secret");
  auto keys = ParseKeys("keys:\n  - match: \"vms/*.luks\"\n    file: k.pass\n", F());
  ASSERT_TRUE(keys.ok()) << keys.status().message();
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ((*keys)[0].match, "vms/*.luks");
  EXPECT_EQ((*keys)[0].file, key);  // relative to the keys file
  EXPECT_EQ((*keys)[0].line, 2);
  EXPECT_EQ((*keys)[0].source, F());
}

TEST_F(ConfigTest, KeysFileErrorsNameFileLineAndKey) {
  auto error = [&](const std::string& text) {
    auto k = ParseKeys(text, F());
    return k.ok() ? "" : k.status().message();
  };
  EXPECT_EQ(error("pools: []\nkeys: []\n"),
            F() + ":1: pools: unknown key (expected one of: keys)");
  EXPECT_EQ(error("other: 1\n"), F() + ":1: keys: missing (a keys file holds a keys: list)");
  EXPECT_EQ(error("keys:\n  - match: x\n"), F() + ":2: keys[0].file: missing (the passphrase file)");
  auto missing = LoadKeys(dir_ + "/nope.yaml");
  EXPECT_FALSE(missing.ok());
}

}  // namespace
}  // namespace kvmfs::config
