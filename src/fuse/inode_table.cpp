#include "fuse/inode_table.h"

#include "base/path.h"

namespace kvmfs::fuse {

std::vector<std::string> ChainOf(const pool::Node& node) {
  using pool::NodeKind;
  std::vector<std::string> out;
  if (node.kind == NodeKind::kFolder) return out;
  if (node.image && node.image->ok()) {
    const auto files = node.image->files();
    size_t first = node.view.kind == pool::ViewId::Kind::kLayer ? node.view.layer : 0;
    for (size_t i = first; i < files.size(); ++i) out.push_back(files[i]->path());
    return out;
  }
  if (node.image) {
    out.push_back(node.image->path());
    return out;
  }
  if (node.canonical) {
    out.push_back(node.host_path);
  } else {
    auto canonical = CanonicalPath(node.host_path);
    out.push_back(canonical.ok() ? *canonical : node.host_path);
  }
  return out;
}

InodeTable::InodeTable(pool::SetNode root) {
  Record& r = records_[FUSE_ROOT_ID];
  r.inode = std::make_shared<Inode>(FUSE_ROOT_ID, FUSE_ROOT_ID, "");
  r.nlookup = 1;
  SetNodeLocked(r, root);
}

void InodeTable::Unindex(const Record& r) {
  for (const std::string& path : r.chain) {
    auto it = by_chain_.find(path);
    if (it == by_chain_.end()) continue;
    it->second.erase(r.inode->ino);
    if (it->second.empty()) by_chain_.erase(it);
  }
}

void InodeTable::SetNodeLocked(Record& r, const pool::SetNode& node) {
  Unindex(r);
  r.node = node;
  r.chain.clear();
  r.image.reset();
  r.image_path.clear();
  if (node.kind == pool::SetNode::Kind::kPool) {
    r.chain = ChainOf(node.node);
    r.image = node.node.image;
    if (node.node.image) r.image_path = node.node.image->path();
    else if (!r.chain.empty()) r.image_path = r.chain.front();
    r.node.node.image.reset();
  }
  for (const std::string& path : r.chain) by_chain_[path].insert(r.inode->ino);
}

std::optional<InodeTable::Entry> InodeTable::Find(fuse_ino_t ino) const {
  MutexLock lock(mu_);
  auto it = records_.find(ino);
  if (it == records_.end()) return std::nullopt;
  return Entry{it->second.inode, it->second.node};
}

std::shared_ptr<Inode> InodeTable::Add(fuse_ino_t parent, const std::string& name,
                                       const pool::SetNode& node) {
  MutexLock lock(mu_);
  auto [name_it, fresh_name] = names_.try_emplace({parent, name}, 0);
  if (fresh_name) name_it->second = next_++;
  auto it = records_.find(name_it->second);
  if (it != records_.end() && it->second.node.IsDir() != node.IsDir()) {
    // A directory became a file or back: a new inode, so that the kernel
    // never sees one inode change its type. The old one lives on until
    // forgotten, under no name.
    name_it->second = next_++;
    it = records_.end();
  }
  if (it == records_.end()) {
    const fuse_ino_t ino = name_it->second;
    it = records_.emplace(ino, Record{}).first;
    it->second.inode = std::make_shared<Inode>(ino, parent, name);
  }
  Record& r = it->second;
  SetNodeLocked(r, node);
  ++r.nlookup;
  r.inode->kernel_may_cache.store(true, std::memory_order_release);
  return r.inode;
}

std::shared_ptr<pool::OpenImage> InodeTable::Update(fuse_ino_t ino, const pool::SetNode& node) {
  MutexLock lock(mu_);
  auto it = records_.find(ino);
  if (it == records_.end()) return nullptr;
  std::shared_ptr<pool::OpenImage> before = it->second.image.lock();
  SetNodeLocked(it->second, node);
  if (before && node.kind == pool::SetNode::Kind::kPool && node.node.image &&
      before != node.node.image && before->path() == node.node.image->path())
    return before;
  return nullptr;
}

void InodeTable::Moved(const pool::Namespace* ns, const std::string& old_host_path,
                       const std::string& new_host_path) {
  MutexLock lock(mu_);
  for (auto& [ino, r] : records_) {
    if (r.node.kind != pool::SetNode::Kind::kPool || r.node.ns.get() != ns ||
        r.node.node.kind == pool::NodeKind::kFolder || r.node.node.host_path != old_host_path)
      continue;
    pool::SetNode node = r.node;
    node.node.host_path = new_host_path;
    SetNodeLocked(r, node);  // (the chain is recomputed at the next Fresh())
  }
}

void InodeTable::Forget(fuse_ino_t ino, uint64_t n) {
  MutexLock lock(mu_);
  if (ino == FUSE_ROOT_ID) return;
  auto it = records_.find(ino);
  if (it == records_.end()) return;
  Record& r = it->second;
  r.nlookup = n >= r.nlookup ? 0 : r.nlookup - n;
  if (r.nlookup > 0) return;
  Unindex(r);
  records_.erase(it);
}

fuse_ino_t InodeTable::NumberOf(fuse_ino_t parent, const std::string& name) {
  MutexLock lock(mu_);
  auto [it, fresh] = names_.try_emplace({parent, name}, 0);
  if (fresh) it->second = next_++;
  return it->second;
}

std::vector<InodeTable::Dependent> InodeTable::DependingOn(const std::string& canonical_path) const {
  std::vector<Dependent> out;
  MutexLock lock(mu_);
  auto it = by_chain_.find(canonical_path);
  if (it == by_chain_.end()) return out;
  for (fuse_ino_t ino : it->second) {
    auto r = records_.find(ino);
    if (r == records_.end() || r->second.node.kind != pool::SetNode::Kind::kPool) continue;
    out.push_back(Dependent{r->second.inode, r->second.node.node, r->second.image_path});
  }
  return out;
}

std::vector<std::pair<std::string, fuse_ino_t>> InodeTable::Children(fuse_ino_t parent) const {
  std::vector<std::pair<std::string, fuse_ino_t>> out;
  MutexLock lock(mu_);
  for (auto it = names_.lower_bound({parent, std::string()});
       it != names_.end() && it->first.first == parent; ++it)
    if (records_.count(it->second) > 0) out.emplace_back(it->first.second, it->second);
  return out;
}

void InodeTable::SetListing(fuse_ino_t ino, std::shared_ptr<const std::vector<pool::DirEntry>> listing) {
  MutexLock lock(mu_);
  auto it = records_.find(ino);
  if (it != records_.end()) it->second.listing = std::move(listing);
}

std::shared_ptr<const std::vector<pool::DirEntry>> InodeTable::Listing(fuse_ino_t ino) const {
  MutexLock lock(mu_);
  auto it = records_.find(ino);
  return it == records_.end() ? nullptr : it->second.listing;
}

std::string InodeTable::PathOf(fuse_ino_t ino) const {
  MutexLock lock(mu_);
  std::string path;
  // Bounded: parents are live while their children are (the kernel holds a
  // directory while it holds anything below it).
  for (int depth = 0; ino != FUSE_ROOT_ID && depth < 4096; ++depth) {
    auto it = records_.find(ino);
    if (it == records_.end()) return "?" + path;
    path = "/" + it->second.inode->name + path;
    ino = it->second.inode->parent;
  }
  return path.empty() ? "/" : path;
}

size_t InodeTable::live() const {
  MutexLock lock(mu_);
  return records_.size();
}

uint64_t InodeTable::lookups(fuse_ino_t ino) const {
  MutexLock lock(mu_);
  auto it = records_.find(ino);
  return it == records_.end() ? 0 : it->second.nlookup;
}

}  // namespace kvmfs::fuse
