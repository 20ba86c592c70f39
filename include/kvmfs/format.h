// Format drivers: turn a backend holding one image file into an Image.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/image.h"
#include "kvmfs/status.h"

namespace kvmfs {

// What a driver may ask of the world while opening (it never opens host files
// itself).
struct OpenContext {
  // Display name for messages (the image's path).
  std::string name;
  bool writable = false;
  // Opens a file an image names (external data file), resolved relative to the
  // image's directory and checked against policy. May be empty: then such
  // images fail with kNotSupported.
  std::function<Result<std::shared_ptr<Backend>>(const std::string& name)> open_related;
};

class FormatDriver {
 public:
  virtual ~FormatDriver() = default;
  // The format name as QEMU spells it ("qcow2", "raw").
  virtual const char* name() const = 0;
  // A score 0..100 of how surely `head` (the first bytes, up to 512) is this
  // format; raw answers 1.
  virtual int Probe(const uint8_t* head, size_t len) const = 0;
  // Opens the image in `file`. Validates every header field and table location
  // before use. Errors: kCorruption (bad header or tables), kNotSupported
  // (unknown incompatible feature), kTooLarge (QEMU limits exceeded).
  virtual Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend> file,
                                              const OpenContext& ctx) const = 0;
};

// All drivers, and lookup by name / by content.
const FormatDriver* FindFormat(const std::string& name);
// The driver with the highest probe score for `head` (raw if nothing else).
const FormatDriver* ProbeFormat(const uint8_t* head, size_t len);
std::vector<const FormatDriver*> AllFormats();

// Registered by each driver's translation unit.
const FormatDriver& RawFormat();
const FormatDriver& Qcow2Format();

}  // namespace kvmfs
