// Placeholder until the codec lands.
#include "kvmfs/codec.h"
namespace kvmfs {
Status Decompress(CompressionType, const uint8_t*, size_t, uint8_t*, size_t) {
  return Status::NotSupported("compression not implemented yet");
}
}  // namespace kvmfs
