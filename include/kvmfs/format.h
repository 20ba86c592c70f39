// Format drivers: turn a backend holding one image file into an Image.
//
// A driver is one folder under src/format/ that defines, in its own file,
//
//   const FormatDriver& kvmfs::KvmfsFormat_<name>();   // e.g. KvmfsFormat_qcow2
//
// and one line in src/format/meson.build's `format_drivers` list, from which
// the registry is generated. Nothing above src/format/ names a format: the
// pool, the namespace and the chain opener ask a driver what it can do
// (caps()), which names are its own (extensions()) and what its first bytes
// say (Probe(), Peek()).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvmfs/backend.h"
#include "kvmfs/cipher.h"
#include "kvmfs/image.h"
#include "kvmfs/status.h"

namespace kvmfs {

// The pool's `compress:` key (kvmfs.yaml(5)): whether guest writes are
// stored compressed. Only drivers with caps().compression may act on it
// (qcow2 does; the others ignore it); the codec is the image's own where its
// format records one (qcow2's compression_type), else the one named here.
enum class WriteCompression { kNone, kZlib, kZstd };

// What a driver may ask of the world while opening (it never opens host files
// itself).
struct OpenContext {
  // Display name for messages (the image's path).
  std::string name;
  bool writable = false;
  // Opens a file an image names (external data file, VMDK extent), resolved
  // relative to the image's directory and checked against policy (outside the
  // pool and the backing roots: kPermission). May be empty: then such images
  // fail with kNotSupported.
  std::function<Result<std::shared_ptr<Backend>>(const std::string& name)> open_related;
  // The passphrase of this image (cipher.h), found by the chain opener from
  // the image's own path (a backing file's by its path, not the overlay's).
  // Call it only during Open(), and only for an encrypted image. May be
  // empty: no key is configured (kPermission "no key configured").
  KeyLookup key;
  // With writable: store wholly written, newly allocated clusters compressed
  // (drivers without caps().compression ignore it).
  WriteCompression compress = WriteCompression::kNone;
};

// What creating an image needs: the arguments of `qemu-img create -f FMT
// [-b BACKING -F BACKING_FMT] FILE SIZE` (every other option QEMU's default).
struct CreateOptions {
  // Virtual size in bytes; qemu-img rounds it up to 512 (so does Create).
  uint64_t size = 0;
  // The backing file name as recorded in the image (relative names are
  // relative to the image's folder); empty: none. Requires
  // FormatCaps::create_backing.
  std::string backing_file;
  std::string backing_format;  // its format ("qcow2"); recorded with the name
  // The backing image, opened (its own top layer), for formats that record
  // something of it besides its name (a VMDK overlay records its parent's
  // CID); used only during Create(). May be null: such formats then fail
  // with kInvalidArgument.
  const Image* backing_image = nullptr;
};

// What a format can do, for the layers above (CONTRACT.md "The tree").
struct FormatCaps {
  bool writable = false;            // Open(ctx.writable = true) can yield a writable Image
  bool internal_snapshots = false;  // snapshots/ is shown (and mkdir works) even when empty
  bool backing_files = false;       // an image may name a backing file
  bool compression = false;         // compressed data (reads; writes with the pool's compress:)
  bool create = false;              // Create() makes empty images (qemu-img create)
  bool create_backing = false;      // Create() records a backing file (overlays, linked clones)
  bool check = false;               // Image::Check() checks (else "does not support checks")
  // Image::Resize() grows the virtual disk, as `qemu-img resize` can. Without
  // it an empty image made by `mkdir NAME.<ext>` (size 0) could never hold
  // anything, so the tree refuses to make one.
  bool resize = false;
};

// What the first bytes of an image say about its tree, without opening it:
// enough to list its directory.
struct FormatPeek {
  bool known = false;        // the fields below are known
  bool has_backing = false;  // the header names a backing file
  uint32_t snapshots = 0;    // internal snapshots the header counts
  // The virtual size the header states, when these bytes hold it (for the
  // metrics' pool capacity; raw images are sized by their file instead).
  std::optional<uint64_t> virtual_size;
};

// Bytes of the file handed to Probe() and Peek() (fewer when the file is
// shorter).
inline constexpr size_t kProbeBytes = 512;

class FormatDriver {
 public:
  virtual ~FormatDriver() = default;
  // The format name as QEMU spells it ("qcow2", "raw", "vpc").
  virtual const char* name() const = 0;
  virtual FormatCaps caps() const = 0;
  // File name extensions (lower case, no dot) that say "this format": a file
  // so named is opened with this driver, and content that is not this format
  // is an error, never another format (QEMU's -f). Default: none.
  virtual std::vector<std::string> extensions() const { return {}; }
  // A score 0..100 of how surely `head` (the first bytes, up to kProbeBytes)
  // is this format; raw answers 1. A driver must score > 50 only on its magic.
  virtual int Probe(const uint8_t* head, size_t len) const = 0;
  // What `head` (the first bytes, up to kProbeBytes) says without opening the
  // image; {known = false} when that needs more than these bytes. Only called
  // when Probe() chose this driver. Default: unknown.
  virtual FormatPeek Peek(const uint8_t* /*head*/, size_t /*len*/) const { return {}; }
  // Opens the image in `file`. Validates every header field and table location
  // before use. Errors: kCorruption (bad header or tables), kNotSupported
  // (unknown incompatible feature), kTooLarge (QEMU limits exceeded).
  virtual Result<std::unique_ptr<Image>> Open(std::shared_ptr<Backend> file,
                                              const OpenContext& ctx) const = 0;
  // Writes a new image into `file` (writable and empty) byte for byte as
  // `qemu-img create` of QEMU 7.2 makes it with default options (the
  // layout, not the random UUIDs, CIDs and timestamps some formats carry).
  // Formats that record their own file name (VMDK's extent line) take the
  // last component of file.name(). Does not flush.
  // Errors: kNotSupported (no caps().create, or a backing file without
  // caps().create_backing), kTooLarge (the size exceeds the format's limits),
  // the backend's own errors. Default: kNotSupported.
  virtual Status Create(Backend& file, const CreateOptions& options) const;
};

// All registered drivers (src/format/meson.build's list), and lookup.
std::vector<const FormatDriver*> AllFormats();
const FormatDriver* FindFormat(const std::string& name);
// The driver with the highest probe score for `head` (raw if nothing else).
const FormatDriver* ProbeFormat(const uint8_t* head, size_t len);
// The driver whose extensions() include the extension of file name `name`
// (case-insensitive), or nullptr.
const FormatDriver* FormatForName(const std::string& name);
// The format to open a file named `name` whose first bytes are `head` with:
// the format its name says (FormatForName; content that is not that format is
// then the driver's error, never raw), else the driver that probes surest
// (score > 50), else a recognised magic of a format without a driver
// (UnsupportedFormatMagic; opening it fails with kNotSupported), else "raw".
std::string FormatFor(const std::string& name, const uint8_t* head, size_t len);
// The format QEMU would name for `head` when no driver claims it (a format
// kvmfs recognises but does not serve yet), or "".
std::string UnsupportedFormatMagic(const uint8_t* head, size_t len);
// Whether kvmfs can write images of `format` (a registered writable driver).
bool FormatWritable(const std::string& format);

}  // namespace kvmfs

// Each driver's entry point, declared for the generated registry.
#define KVMFS_DECLARE_FORMAT(name) \
  namespace kvmfs {                \
  const FormatDriver& KvmfsFormat_##name(); \
  }
