// Opening an image file with its whole backing chain.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvmfs/format.h"
#include "kvmfs/image.h"
#include "kvmfs/status.h"

namespace kvmfs {

// Maximum backing-chain depth (the top image counts as 1).
inline constexpr int kMaxChainDepth = 64;

struct Layer;
struct ChainPolicy;
class Store;

// One file of a chain to open: OpenLayerFile() does it; a pool hands
// OpenChain an opener that shares one open file per host file instead
// (pool/layer_file.h).
struct LayerRequest {
  std::string path;    // canonical host path
  std::string format;  // driver name
  bool writable = false;  // open for writing when the format and the host allow
  bool top = false;       // the chain's top image (else a backing file)
  const ChainPolicy* policy = nullptr;  // for the files the image names
};
using LayerOpener = std::function<Result<Layer>(const LayerRequest&)>;

struct ChainPolicy {
  // Canonical directories an image of the chain may live in: the pool root
  // and the configured backing roots. A backing file elsewhere is refused
  // with kPermission, because image content must not choose host files.
  std::vector<std::string> allowed_roots;
  int max_depth = kMaxChainDepth;
  // Whether a file an image names (backing file, data file, VMDK extent) may
  // be a block device. Only a blockdev pool's images live on devices; in a
  // directory pool a device node (an archive unpacked as root can make one)
  // would serve a host disk: refused with kPermission.
  bool block_devices = false;
  // Open the top image for writing (O_RDWR, OpenContext::writable) when its
  // format can be written (FormatWritable) and the host lets us. A file the
  // host does not let us open for writing (EACCES, EPERM, EROFS) is opened
  // read-only instead.
  bool writable_top = false;
  // With writable_top, backing files under these directories (the pool) are
  // opened for writing too: each is an image of the pool in its own right,
  // and one open file serves both uses (pool/layer_file.h). Backing files
  // elsewhere are opened read-only.
  std::vector<std::string> writable_roots;
  // Opens each file (default: OpenLayerFile).
  LayerOpener opener;
  // Where the files live (kvmfs/store.h): paths are this store's, and so
  // are the names images store (resolved with Store::Resolve). Null: the
  // host's files (HostStore()).
  std::shared_ptr<Store> store;
  // The passphrase of the encrypted image at a canonical host path
  // (OpenContext::key asks it with the path of the layer being opened).
  // Empty: no key is configured for any image.
  std::function<Result<std::shared_ptr<const Secret>>(const std::string& path)> key_for;
  // Handed to the drivers of layers opened for writing (OpenContext::compress).
  WriteCompression compress = WriteCompression::kNone;
};

struct Layer {
  std::string path;      // canonical host path of the file
  std::string format;    // driver name
  std::shared_ptr<Image> image;
  bool writable = false;  // opened for writing
  // Why a top layer was opened read-only although ChainPolicy::writable_top
  // asked for writing (format or host file read-only); empty otherwise.
  std::string read_only_reason;
  // The store the file lives in (its locks, versions and snapshots); null:
  // the host's files.
  std::shared_ptr<Store> store;
};

struct Chain {
  std::vector<Layer> layers;  // [0] is the top image, [1] its backing file, ...
  const std::shared_ptr<Image>& top() const { return layers.front().image; }
};

// The format to use for `path`: FormatFor() its name and first bytes.
// `format_hint` non-empty wins. `store` null: the host's files.
Result<std::string> DetectFormat(const std::string& path, const std::string& format_hint,
                                 Store* store = nullptr);

// The store of `policy` (HostStore() when it names none).
Store& StoreOf(const ChainPolicy& policy);

// Opens one file of a chain with its format driver: the host file read-write
// when asked and allowed (else read-only, with the reason), the files it names
// (data file, extents) resolved relative to it and checked against
// request.policy.
Result<Layer> OpenLayerFile(const LayerRequest& request);

// Opens `path` with every backing layer (the top one writable as
// policy.writable_top says, the others read-only). Backing names are resolved
// relative to the directory of the image naming them; the recorded backing
// format is honoured (probed only when absent). Errors, each naming the image:
// kNotFound (missing backing file), kPermission (outside allowed_roots),
// kInvalidArgument (loop, or deeper than max_depth), and whatever the format
// driver reports.
Result<Chain> OpenChain(const std::string& path, const ChainPolicy& policy,
                        const std::string& format_hint = "");

}  // namespace kvmfs
