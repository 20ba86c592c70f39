// A LUKS1 header (and key material) from the fuzzer: decoded and validated
// as a LUKS area as long as the input, described for info.json, and, when
// its iteration counts are small enough for a fuzzer, unlocked with a fixed
// passphrase (key slot reads, AF merge, digest check).
#include "fuzz_util.h"
#include "kvmfs/cipher.h"

#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  auto header = DecodeLuksHeader(data, size, size, "fuzz.luks");
  if (!header.ok()) return 0;
  (void)header->InfoFields(true);
  // kLuksMaxIterations bounds a real unlock; a fuzzer wants milliseconds.
  uint64_t work = header->mk_iterations;
  for (const LuksKeySlot& s : header->slots)
    if (s.active) work += s.iterations;
  if (work > 2000) return 0;
  auto pass = Secret::Copy(reinterpret_cast<const uint8_t*>("fuzz"), 4);
  if (!pass.ok()) return 0;
  auto read = [data, size](uint64_t off, uint8_t* buf, size_t len) -> Status {
    if (off > size || len > size - off) return Status::Corruption("fuzz.luks: read past the end");
    std::memcpy(buf, data + off, len);
    return Status::OK();
  };
  auto master = LuksUnlock(*header, *pass, read, "fuzz.luks");
  if (master.ok()) (void)LuksCipher(*header, *master);
  return 0;
}
