// The L2 table cache and the decompressed-cluster cache: bounded LRUs whose
// lock covers only the map operations; loading happens outside it, so
// concurrent readers of different tables never wait on each other's I/O.
#include <algorithm>

#include "format/qcow2/qcow2.h"

namespace kvmfs::qcow2 {

L2Cache::L2Cache(size_t capacity_tables) : capacity_(std::max<size_t>(1, capacity_tables)) {}

std::shared_ptr<const L2Table> L2Cache::Lookup(uint64_t host_offset) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(host_offset);
  if (it == index_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return *it->second;
}

std::shared_ptr<const L2Table> L2Cache::Insert(std::shared_ptr<L2Table> table) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(table->host_offset);
  if (it != index_.end()) {
    // Another reader loaded the same table meanwhile: keep the first one.
    lru_.splice(lru_.begin(), lru_, it->second);
    return *it->second;
  }
  lru_.push_front(table);
  index_.emplace(table->host_offset, lru_.begin());
  EvictLocked();
  return table;
}

void L2Cache::EvictLocked() {
  // Evict from the cold end; dirty tables are written back by the engine
  // (after their refcount blocks) before they may go, so they are skipped.
  auto victim = std::prev(lru_.end());
  while (index_.size() > capacity_ && victim != lru_.begin()) {
    auto prev = std::prev(victim);
    if (!(*victim)->dirty) {
      index_.erase((*victim)->host_offset);
      lru_.erase(victim);
    }
    victim = prev;
  }
}

std::shared_ptr<L2Table> L2Cache::LookupForWrite(uint64_t host_offset) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(host_offset);
  if (it == index_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return *it->second;
}

void L2Cache::Put(std::shared_ptr<L2Table> table) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(table->host_offset);
  if (it != index_.end()) {
    lru_.erase(it->second);
    index_.erase(it);
  }
  lru_.push_front(std::move(table));
  index_.emplace(lru_.front()->host_offset, lru_.begin());
  EvictLocked();
}

void L2Cache::Erase(uint64_t host_offset) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(host_offset);
  if (it == index_.end()) return;
  lru_.erase(it->second);
  index_.erase(it);
}

std::vector<std::shared_ptr<L2Table>> L2Cache::DirtyTables() const {
  std::vector<std::shared_ptr<L2Table>> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& t : lru_)
      if (t->dirty) out.push_back(t);
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a->host_offset < b->host_offset; });
  return out;
}

size_t L2Cache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return index_.size();
}

ClusterCache::ClusterCache(size_t capacity) : capacity_(std::max<size_t>(1, capacity)) {}

std::shared_ptr<const std::vector<uint8_t>> ClusterCache::Lookup(uint64_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

void ClusterCache::Insert(uint64_t key, std::shared_ptr<const std::vector<uint8_t>> data) {
  std::lock_guard<std::mutex> lock(mu_);
  if (index_.count(key)) return;
  lru_.emplace_front(key, std::move(data));
  index_.emplace(key, lru_.begin());
  while (index_.size() > capacity_) {
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
}

}  // namespace kvmfs::qcow2
