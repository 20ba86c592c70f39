// The VMDK text descriptor from the fuzzer, without the files it names:
// ProbeVmdk and PeekVmdk on its first bytes, ParseDescriptor (createType,
// extent lines: access, sectors, type, quoted names, offsets) and
// ParseDescriptorIds (CID, parentCID, parentFileNameHint in the first
// 10 KiB window). format_vmdk_fuzz.cpp reaches the same through the whole
// driver; this one spends every execution on the text.
//
// Seeds: the descriptors qemu-img writes for every subformat (tools/fuzz.sh).
#include <string_view>

#include "format/vmdk/vmdk.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  (void)vmdk::ProbeVmdk(data, std::min(size, kProbeBytes));
  (void)vmdk::PeekVmdk(data, std::min(size, kProbeBytes));
  std::string_view text(reinterpret_cast<const char*>(data), size);
  Result<vmdk::Descriptor> d = vmdk::ParseDescriptor(text, "fuzz.vmdk");
  if (d.ok()) {
    for (const vmdk::ExtentLine& e : d->extents)
      if (e.file_name.size() > vmdk::kMaxNameBytes) fuzz::Fail("extent name longer than the limit");
  }
  Result<vmdk::DescriptorIds> ids =
      vmdk::ParseDescriptorIds(text.substr(0, std::min(size, vmdk::kDescWindow)), "fuzz.vmdk");
  if (ids.ok() && ids->cid_len > 0 && ids->cid_pos + ids->cid_len > size)
    fuzz::Fail("CID position outside the text");
  return 0;
}
