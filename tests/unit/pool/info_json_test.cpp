#include "pool/info_json.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>

#include "pool/namespace.h"
#include "temp_dir.h"

namespace kvmfs::pool {
namespace {

using testing::TempDir;

std::string Capture(const std::string& cmd) {
  std::string out;
  std::unique_ptr<FILE, int (*)(FILE*)> p(::popen(cmd.c_str(), "r"), ::pclose);
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p.get())) > 0) out.append(buf, n);
  return out;
}

TEST(InfoJson, VmClockIsSplitLikeQemuImg) {
  SnapshotInfo s;
  s.id = "3";
  s.name = "n";
  s.vm_clock_nsec = 12'345'678'901ULL;
  auto j = SnapshotJson(s);
  EXPECT_EQ(j["vm-clock-sec"], 12);
  EXPECT_EQ(j["vm-clock-nsec"], 345'678'901);
  EXPECT_FALSE(j.contains("icount"));
  s.has_icount = true;
  s.icount = 99;
  EXPECT_EQ(SnapshotJson(s)["icount"], 99);
  // qemu-img's key order.
  std::vector<std::string> keys;
  auto full = SnapshotJson(s);
  for (auto& [k, v] : full.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"icount", "vm-clock-nsec", "name", "date-sec",
                                            "date-nsec", "vm-clock-sec", "id", "vm-state-size"}));
}

TEST(InfoJson, KeysQemuImgOmitsAreOmitted) {
  InfoSubject subject;
  subject.filename = "/p/a.raw";
  subject.info.format = "raw";
  subject.info.virtual_size = 1024;
  auto j = InfoJson(subject);
  for (const char* key : {"snapshots", "cluster-size", "encrypted", "backing-filename",
                          "full-backing-filename", "backing-filename-format", "format-specific",
                          "actual-size", "snapshot"})
    EXPECT_FALSE(j.contains(key)) << key;
  EXPECT_EQ(j["dirty-flag"], false);
}

TEST(InfoJson, FullQcow2StyleSubject) {
  InfoSubject subject;
  subject.filename = "/p/top.qcow2";
  subject.info.format = "qcow2";
  subject.info.virtual_size = 1 << 20;
  subject.info.cluster_size = 65536;
  subject.info.encrypted = true;
  subject.info.backing_filename = "base.qcow2";
  subject.info.backing_format = "qcow2";
  subject.info.format_specific_type = "qcow2";
  subject.info.format_specific = {{"compat", std::string("1.1")},
                                  {"refcount-bits", int64_t{16}},
                                  {"corrupt", false}};
  subject.full_backing_filename = "/p/base.qcow2";
  subject.actual_size = 8192;
  SnapshotInfo s;
  s.id = "1";
  s.name = "snap";
  s.disk_size = 512;
  subject.snapshots = {s};
  auto j = InfoJson(subject);
  EXPECT_EQ(j["format-specific"]["data"]["compat"], "1.1");
  EXPECT_EQ(j["format-specific"]["data"]["refcount-bits"], 16);
  EXPECT_EQ(j["format-specific"]["data"]["corrupt"], false);
  EXPECT_EQ(j["encrypted"], true);
  EXPECT_EQ(j["full-backing-filename"], "/p/base.qcow2");
  EXPECT_EQ(j["backing-filename-format"], "qcow2");
  EXPECT_EQ(j["snapshots"].size(), 1u);
  EXPECT_EQ(j["virtual-size"], 1 << 20);
  // The order of `qemu-img info --output=json` (QEMU 7.2).
  std::vector<std::string> keys;
  for (auto& [k, v] : j.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{
                      "snapshots", "backing-filename-format", "virtual-size", "filename",
                      "cluster-size", "format", "actual-size", "format-specific",
                      "full-backing-filename", "encrypted", "backing-filename", "dirty-flag"}));

  // A snapshot view: its disk size and a "snapshot" object.
  subject.snapshot = s;
  auto sj = InfoJson(subject);
  EXPECT_EQ(sj["virtual-size"], 512);
  EXPECT_EQ(sj["snapshot"]["name"], "snap");
}

// Lists of objects (vmdk "extents") come after the plain fields, each
// object's keys in the driver's order.
TEST(InfoJson, FormatSpecificListsFollowTheFields) {
  InfoSubject subject;
  subject.filename = "/p/a.vmdk";
  subject.info.format = "vmdk";
  subject.info.format_specific_type = "vmdk";
  subject.info.format_specific = {
      {"cid", int64_t{7}},
      {"create-type", std::string("monolithicFlat")},
      {"extents", std::vector<InfoObject>{{{"virtual-size", int64_t{512}},
                                           {"filename", std::string("/p/a-flat.vmdk")},
                                           {"format", std::string("FLAT")}}}}};
  auto j = InfoJson(subject);
  const auto& data = j["format-specific"]["data"];
  std::vector<std::string> keys;
  for (auto& [k, v] : data.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"cid", "create-type", "extents"}));
  ASSERT_EQ(data["extents"].size(), 1u);
  EXPECT_EQ(data["extents"][0]["filename"], "/p/a-flat.vmdk");
  std::vector<std::string> ext_keys;
  for (auto& [k, v] : data["extents"][0].items()) ext_keys.push_back(k);
  EXPECT_EQ(ext_keys, (std::vector<std::string>{"virtual-size", "filename", "format"}));
}

TEST(InfoJson, ErrorJsonNamesFileFormatAndReason) {
  auto j = ErrorJson("/p/bad.qcow2", "", "Corruption: bad header");
  EXPECT_EQ(j["format"], "unknown");
  EXPECT_EQ(j["error"], "Corruption: bad header");
  EXPECT_EQ(RenderJson(j),
            "{\n    \"filename\": \"/p/bad.qcow2\",\n    \"format\": \"unknown\",\n"
            "    \"error\": \"Corruption: bad header\"\n}\n");
}

TEST(InfoJson, InvalidUtf8IsReplacedNotThrown) {
  auto j = ErrorJson("/p/x", "raw", std::string("bad \xff name"));
  EXPECT_NO_THROW(RenderJson(j));
}

// info.json of a raw image against `qemu-img info --output=json` on the same
// file. Differences by design: "filename" is the canonical host path (qemu-img
// echoes its argument), so it is compared against the path we pass.
TEST(InfoJson, RawImageMatchesQemuImg) {
  if (!testing::HaveQemuImg()) GTEST_SKIP() << "SKIPPED: qemu-img is not installed";
  TempDir dir;
  ASSERT_TRUE(TempDir::Run("qemu-img create -f raw '" + dir.P("r.raw") + "' 10M"));
  ASSERT_TRUE(TempDir::Run("dd if=/dev/urandom of='" + dir.P("r.raw") +
                           "' bs=64k count=3 seek=5 conv=notrunc"));
  NamespaceOptions options;
  options.source = dir.path();
  Namespace ns(options);
  auto st = ns.Stat("/r.raw/info.json");
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  auto file = ns.Open("/r.raw/info.json", O_RDONLY);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(static_cast<size_t>(st->st_size), file->content.size());
  EXPECT_EQ(file->content.back(), '\n');

  std::string ref_text = Capture("qemu-img info --output=json '" + dir.P("r.raw") + "'");
  auto ref = nlohmann::ordered_json::parse(ref_text);
  auto ours = nlohmann::ordered_json::parse(file->content);
  EXPECT_EQ(ref["filename"], dir.P("r.raw"));
  ASSERT_EQ(ours.size(), ref.size()) << file->content << ref_text;
  auto a = ours.begin();
  for (auto b = ref.begin(); b != ref.end(); ++a, ++b) {
    EXPECT_EQ(a.key(), b.key());  // same keys, same order
    EXPECT_EQ(a.value(), b.value()) << a.key();
  }
  // The same text, byte for byte.
  EXPECT_EQ(file->content, ref_text);
}

}  // namespace
TEST(InfoJson, ReadOnlyReasonAfterDirtyFlag) {
  InfoSubject subject;
  subject.filename = "/p/vm.vdi";
  subject.info.format = "vdi";
  subject.info.virtual_size = 4096;
  EXPECT_FALSE(InfoJson(subject).contains("read-only-reason"));
  subject.read_only_reason = "kvmfs does not write vdi images";
  auto j = InfoJson(subject);
  ASSERT_TRUE(j.contains("read-only-reason"));
  EXPECT_EQ(j["read-only-reason"], "kvmfs does not write vdi images");
  EXPECT_EQ(std::prev(j.end()).key(), "read-only-reason");
}

}  // namespace kvmfs::pool
