// Placeholder until the qcow2 driver lands.
#include "kvmfs/format.h"

namespace kvmfs {
namespace {
class Qcow2Driver final : public FormatDriver {
 public:
  const char* name() const override { return "qcow2"; }
  int Probe(const uint8_t* h, size_t len) const override {
    return len >= 4 && h[0] == 'Q' && h[1] == 'F' && h[2] == 'I' && h[3] == 0xfb ? 100 : 0;
  }
  Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend>, const OpenContext& ctx) const override {
    return Status::NotSupported(ctx.name + ": qcow2 not implemented yet");
  }
};
}  // namespace
const FormatDriver& Qcow2Format() {
  static const Qcow2Driver d;
  return d;
}
}  // namespace kvmfs
