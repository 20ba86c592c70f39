// A VMDK from the fuzzer: a sparse file or a descriptor, and the files its
// extents name, all in memory. The input is the image file, then any number
// of "\n@@file NAME\n" sections (NAME up to the line end) holding the
// related files; open_related finds them by name (an absolute name is
// refused, as the pool policy refuses most). The image is opened through
// the whole driver, read at ranges the input picks, and, when its last byte
// is odd, opened for writing and written a little.
//
// Seeds: qemu-img-made images of every subformat (qemu-img create -f vmdk -o
// subformat=S, a few qemu-io writes), and descriptors with their extents
// appended, e.g. for monolithicFlat:
//   { cat d.vmdk; printf '\n@@file d-flat.vmdk\n'; cat d-flat.vmdk; } > seeds/flat
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmfs;
  fuzz::Quiet();
  auto files = std::make_shared<fuzz::Files>();
  std::vector<uint8_t> main = fuzz::SplitFiles(data, size, files.get());
  const bool write = size > 0 && (data[size - 1] & 1);
  auto file = std::shared_ptr<Backend>(NewMemBackend("fuzz.vmdk", std::move(main), write));
  OpenContext ctx;
  ctx.name = "fuzz.vmdk";
  ctx.writable = write;
  ctx.open_related = fuzz::RelatedFiles(files, write);
  auto image = FindFormat("vmdk")->Open(file, ctx);
  fuzz::Note(image.status());
  if (!image.ok()) return 0;
  Image& img = **image;
  (void)img.Info();
  (void)img.ActualSize();
  fuzz::ReadSome(img, data, size);
  if (write && img.BeginWrites().ok()) {
    const uint64_t vsize = img.size();
    std::vector<uint8_t> buf(70000, 0x5a);
    for (size_t i = 0; i + 8 <= std::min<size_t>(size, 48) && vsize > 0; i += 8) {
      uint64_t v = 0;
      for (int k = 0; k < 8; ++k) v = v << 8 | data[i + k];
      const uint64_t off = v % vsize;
      const size_t len = static_cast<size_t>(std::min<uint64_t>(1 + (v >> 44) % buf.size(), vsize - off));
      if (v & 1) (void)img.WriteZeroes(off, len, v & 2);
      else (void)img.Write(off, buf.data(), len);
    }
    (void)img.EndWrites();
    fuzz::ReadSome(img, data, size);
  }
  return 0;
}
