// The YAML configuration from the fuzzer (src/config: yaml-cpp, then every
// key checked): ParseConfig and ParseKeys on the text, ParseOsRelease on the
// part after a "\n@@os-release\n" line (or on the text itself), and, for an
// accepted config, PoolPath of every pool (layout templates with {fields}).
// The file is named under a directory that does not exist, so key files
// resolve nowhere; nothing is read or written on the host.
//
// Seeds: configs/kvmfs.example.yaml, the configs of the unit and integration
// tests, and small ones made by tools/fuzz_seeds.py.
#include <string_view>

#include "config/config.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  std::string_view all(reinterpret_cast<const char*>(data), size);
  constexpr std::string_view kSep = "\n@@os-release\n";
  const size_t at = all.find(kSep);
  const std::string text(all.substr(0, at));
  const std::string os_text(at == std::string_view::npos ? all : all.substr(at + kSep.size()));
  const std::string file = "/nonexistent-kvmfs-fuzz/kvmfs.yaml";
  Result<config::Config> config = config::ParseConfig(text, file);
  (void)config::ParseKeys(text, file);
  const config::OsRelease os = config::ParseOsRelease(os_text);
  if (!config.ok()) return 0;
  for (const config::PoolConfig& pool : config->pools) {
    if (pool.name.empty() || pool.name.find('/') != std::string::npos)
      fuzz::Fail("pool name accepted: '" + pool.name + "'");
    (void)config::PoolPath(*config, pool, os);
  }
  return 0;
}
