// Opening an image with its backing chain, as QEMU resolves it, under a policy
// that keeps image content from choosing arbitrary host files.
#include "kvmfs/chain.h"

#include <sys/stat.h>

#include <algorithm>
#include <optional>
#include <set>

#include "base/path.h"
#include "kvmfs/backend.h"
#include "kvmfs/format.h"
#include "kvmfs/store.h"

namespace kvmfs {
namespace {

bool Allowed(const std::string& path, const ChainPolicy& policy) {
  return std::any_of(policy.allowed_roots.begin(), policy.allowed_roots.end(),
                     [&](const std::string& root) { return IsUnder(path, root); });
}

// Resolves a name stored in an image (backing or data file) to a canonical
// host path, refusing protocol and json: names and paths outside the roots.
Result<std::string> ResolveRelated(const std::string& image_path, const std::string& name,
                                   const std::string& what, const ChainPolicy& policy) {
  if (name.rfind("json:", 0) == 0)
    return Status::NotSupported(image_path + ": " + what + " '" + name +
                                "' is a json: specification, which kvmfs does not follow");
  auto canon = StoreOf(policy).Resolve(image_path, name);
  if (!canon.ok()) {
    if (canon.status().IsNotFound())
      return Status::NotFound(image_path + ": " + what + " '" + name + "' not found (" +
                              canon.status().message() + ")");
    return canon.status().WithContext(image_path + ": " + what);
  }
  if (!Allowed(*canon, policy))
    return Status::Permission(image_path + ": " + what + " '" + name + "' resolves to " + *canon +
                              ", outside the pool and the allowed backing roots "
                              "(allow it with -o backing_root=DIR)");
  struct stat st;
  if (!policy.block_devices && ::stat(canon->c_str(), &st) == 0 && S_ISBLK(st.st_mode))
    return Status::Permission(image_path + ": " + what + " '" + name + "' is a block device (" +
                              *canon + "); only images of a blockdev pool may name devices");
  return canon;
}

}  // namespace

Store& StoreOf(const ChainPolicy& policy) { return policy.store ? *policy.store : *HostStore(); }

Result<std::string> DetectFormat(const std::string& path, const std::string& format_hint,
                                 Store* store) {
  if (!format_hint.empty()) {
    if (FindFormat(format_hint) == nullptr)
      return Status::NotSupported(path + ": format '" + format_hint + "' is not supported");
    return format_hint;
  }
  if (const FormatDriver* said = FormatForName(path)) return std::string(said->name());
  KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> file,
                         (store != nullptr ? *store : *HostStore()).Open(path, false));
  uint8_t head[kProbeBytes];
  KVMFS_RETURN_IF_ERROR(file->ReadAt(0, head, sizeof head));
  KVMFS_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  return FormatFor(path, head, std::min<uint64_t>(size, sizeof head));
}

Result<Layer> OpenLayerFile(const LayerRequest& request) {
  const std::string& current = request.path;
  // The drivers may keep what the context gives them (and ask for extents or
  // keys later): the closures own a copy of the policy.
  auto owned = std::make_shared<ChainPolicy>(request.policy ? *request.policy : ChainPolicy{});
  owned->opener = nullptr;
  if (!owned->store) owned->store = HostStore();
  Store& store = *owned->store;
  const FormatDriver* driver = FindFormat(request.format);
  if (driver == nullptr)
    return Status::NotSupported(current + ": format '" + request.format + "' is not supported");
  bool writable = false;
  std::string read_only_reason;
  std::unique_ptr<Backend> file;
  if (request.writable) {
    if (!driver->caps().writable) {
      read_only_reason = "kvmfs does not write " + request.format + " images";
    } else {
      auto rw = store.Open(current, true);
      if (rw.ok()) {
        file = std::move(rw).value();
        writable = true;
      } else if (rw.status().code() == Status::Code::kPermission ||
                 rw.status().code() == Status::Code::kReadOnly ||
                 (rw.status().code() == Status::Code::kIOError && rw.status().ToErrno() == ETXTBSY)) {
        read_only_reason = rw.status().message();  // the host says no: serve it read-only
      } else {
        return rw.status();
      }
    }
  }
  if (!file) {
    KVMFS_ASSIGN_OR_RETURN(file, store.Open(current, false));
  }

  OpenContext ctx;
  ctx.name = current;
  ctx.writable = writable;
  ctx.compress = writable ? owned->compress : WriteCompression::kNone;
  ctx.open_related = [current, owned,
                      writable](const std::string& name) -> Result<std::shared_ptr<Backend>> {
    const ChainPolicy& policy = *owned;
    KVMFS_ASSIGN_OR_RETURN(std::string related, ResolveRelated(current, name, "data file", policy));
    // A writable image writes its guest data into the data file: open it
    // read-write too, or read-only when the host refuses (the driver then
    // serves the image read-only and says why).
    if (writable) {
      auto rw = policy.store->Open(related, true);
      if (rw.ok()) return std::shared_ptr<Backend>(std::move(rw).value());
      if (rw.status().code() != Status::Code::kPermission &&
          rw.status().code() != Status::Code::kReadOnly)
        return rw.status();
    }
    KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> b, policy.store->Open(related, false));
    return std::shared_ptr<Backend>(std::move(b));
  };
  // Encryption keys: looked up by this layer's own path.
  ctx.key = [owned, current]() -> Result<std::shared_ptr<const Secret>> {
    if (!owned->key_for) return Status::Permission(current + ": no key configured");
    return owned->key_for(current);
  };
  KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Image> image,
                         driver->Open(std::shared_ptr<Backend>(std::move(file)), ctx));
  return Layer{current, request.format, std::shared_ptr<Image>(std::move(image)), writable,
               std::move(read_only_reason), owned->store};
}

Result<Chain> OpenChain(const std::string& path, const ChainPolicy& policy,
                        const std::string& format_hint) {
  Chain chain;
  std::set<std::string> seen;
  Store& store = StoreOf(policy);
  KVMFS_ASSIGN_OR_RETURN(std::string current, store.Canonical(path));
  KVMFS_ASSIGN_OR_RETURN(std::string format, DetectFormat(current, format_hint, &store));
  const LayerOpener& opener = policy.opener ? policy.opener : LayerOpener(OpenLayerFile);

  while (true) {
    const std::string& top_path = chain.layers.empty() ? current : chain.layers.front().path;
    if (static_cast<int>(chain.layers.size()) >= policy.max_depth)
      return Status::InvalidArgument(top_path + ": backing chain deeper than " +
                                     std::to_string(policy.max_depth) + " images");
    if (!seen.insert(current).second)
      return Status::InvalidArgument(top_path + ": backing loop: " + current +
                                     " is its own backing file");

    LayerRequest request;
    request.path = current;
    request.format = format;
    request.top = chain.layers.empty();
    request.writable =
        policy.writable_top &&
        (request.top || std::any_of(policy.writable_roots.begin(), policy.writable_roots.end(),
                                    [&](const std::string& root) { return IsUnder(current, root); }));
    request.policy = &policy;
    KVMFS_ASSIGN_OR_RETURN(Layer layer, opener(request));
    ImageInfo info = layer.image->Info();
    chain.layers.push_back(std::move(layer));
    if (info.backing_filename.empty()) {
      // A raw file that reads through another by itself (an RBD clone and
      // its parent snapshot) shows that one as its backing layer. (Raw
      // never reads its backing link: its own bytes are already merged.)
      std::optional<std::string> parent = format == "raw" ? store.Parent(current) : std::nullopt;
      if (!parent || !Allowed(*parent, policy)) break;
      current = *parent;  // raw too: the clone's bytes start as its parent's
      continue;
    }

    KVMFS_ASSIGN_OR_RETURN(std::string next,
                           ResolveRelated(current, info.backing_filename, "backing file", policy));
    if (!info.backing_format.empty()) {
      format = info.backing_format;
    } else {
      KVMFS_ASSIGN_OR_RETURN(format, DetectFormat(next, "", &store));
    }
    current = next;
  }

  for (size_t i = chain.layers.size() - 1; i > 0; --i)
    chain.layers[i - 1].image->SetBacking(chain.layers[i].image);
  return chain;
}

}  // namespace kvmfs
