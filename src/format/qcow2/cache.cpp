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
  // Evict from the cold end; dirty tables must be written back first (by a
  // future writer), so they are skipped.
  auto victim = std::prev(lru_.end());
  while (index_.size() > capacity_ && victim != lru_.begin()) {
    auto prev = std::prev(victim);
    if (!(*victim)->dirty) {
      index_.erase((*victim)->host_offset);
      lru_.erase(victim);
    }
    victim = prev;
  }
  return table;
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
