// The metadata cache budget, the L2 table cache and the decompressed-cluster
// cache (see "Metadata cache budget" in qcow2.h). A cache's lock covers only
// its map operations; loading happens outside it, so concurrent readers of
// different tables never wait on each other's I/O.
#include <algorithm>
#include <limits>
#include <type_traits>

#include "format/qcow2/qcow2.h"
#include "image/buffer_pool.h"

namespace kvmfs::qcow2 {
namespace {

constexpr uint64_t kNoTick = std::numeric_limits<uint64_t>::max();

bool IsDirty(const L2Table& t) { return t.dirty.load(std::memory_order_relaxed); }
bool IsDirty(const DecodedCluster&) { return false; }

// The cache kind a BudgetedLru<V> counts as (CacheBudget::CountLookup).
template <class V>
constexpr int KindOf() {
  return std::is_same_v<V, L2Table> ? 0 : 1;
}

}  // namespace

// ---- CacheBudget ----------------------------------------------------------------------

const std::shared_ptr<CacheBudget>& CacheBudget::Global() {
  // Never destroyed: images may outlive static destruction order.
  static const auto* global =
      new std::shared_ptr<CacheBudget>(std::make_shared<CacheBudget>(kDefaultQcow2CacheBytes));
  return *global;
}

void CacheBudget::SetLimit(uint64_t bytes) {
  limit_.store(bytes, std::memory_order_relaxed);
  Reclaim();
}

void CacheBudget::Charge(uint64_t bytes) {
  const uint64_t now = used_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  uint64_t peak = peak_.load(std::memory_order_relaxed);
  while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

void CacheBudget::Register(BudgetedCache* cache) {
  std::lock_guard<std::mutex> lock(mu_);
  caches_.push_back(cache);
}

void CacheBudget::Unregister(BudgetedCache* cache) {
  std::lock_guard<std::mutex> lock(mu_);
  caches_.erase(std::remove(caches_.begin(), caches_.end(), cache), caches_.end());
}

void CacheBudget::Reclaim() {
  if (!over()) return;
  std::lock_guard<std::mutex> lock(mu_);
  // Approximately global LRU: take from the cache whose coldest entry is the
  // oldest, down to the next cache's coldest, and repeat. A cache that frees
  // nothing (busy, or only pinned or dirty entries at or before the bound)
  // drops out of this pass.
  std::vector<BudgetedCache*> todo = caches_;
  while (over() && !todo.empty()) {
    size_t best = 0;
    uint64_t first = kNoTick, second = kNoTick;
    for (size_t i = 0; i < todo.size(); ++i) {
      const uint64_t t = todo[i]->cold_tick();
      if (t < first) {
        second = first;
        first = t;
        best = i;
      } else if (t < second) {
        second = t;
      }
    }
    if (first == kNoTick) break;  // all empty
    if (todo[best]->Evict(second, false) == 0) {
      todo[best] = todo.back();
      todo.pop_back();
    }
  }
  // Still over: whatever is evictable anywhere, waiting for busy caches
  // (their lock is a leaf, so this cannot deadlock).
  for (size_t i = 0; i < caches_.size() && over(); ++i) caches_[i]->Evict(kNoTick, true);
}

void CacheBudget::KeepSpare(std::shared_ptr<L2Table> table) {
  const uint64_t bytes = table->words.size() * 8;
  std::lock_guard<std::mutex> lock(spare_mu_);
  if (spare_.size() >= kMaxSpareTables || (spare_.size() + 1) * bytes > std::max(bytes, limit() / 16))
    return;  // freed when `table` goes
  spare_.push_back(std::move(table));
}

std::shared_ptr<L2Table> CacheBudget::TakeSpare(size_t words) {
  std::lock_guard<std::mutex> lock(spare_mu_);
  for (size_t i = spare_.size(); i-- > 0;) {
    if (spare_[i]->words.size() != words) continue;
    std::shared_ptr<L2Table> t = std::move(spare_[i]);
    spare_.erase(spare_.begin() + static_cast<ptrdiff_t>(i));
    return t;
  }
  spare_.clear();  // of another size: nobody loads those now
  return nullptr;
}

// ---- BudgetCharge ---------------------------------------------------------------------

BudgetCharge& BudgetCharge::operator=(BudgetCharge&& o) noexcept {
  if (this != &o) {
    Release();
    budget_ = o.budget_;
    bytes_ = o.bytes_;
    o.bytes_ = 0;
  }
  return *this;
}

void BudgetCharge::Set(CacheBudget& budget, uint64_t bytes) {
  if (budget_ != nullptr && budget_ != &budget) Release();
  budget_ = &budget;
  if (bytes > bytes_) {
    budget.Charge(bytes - bytes_);
    bytes_ = bytes;
    budget.Reclaim();  // the caches give the room back
  } else if (bytes < bytes_) {
    budget.Release(bytes_ - bytes);
    bytes_ = bytes;
  }
}

void BudgetCharge::Release() {
  if (budget_ != nullptr && bytes_ > 0) budget_->Release(bytes_);
  bytes_ = 0;
}

// ---- BudgetedLru ----------------------------------------------------------------------

template <class V>
BudgetedLru<V>::BudgetedLru(std::shared_ptr<CacheBudget> budget, uint64_t entry_bytes,
                            size_t max_entries)
    : budget_(std::move(budget)),
      entry_bytes_(entry_bytes),
      max_entries_(std::max<size_t>(1, max_entries)) {
  budget_->Register(this);
}

template <class V>
BudgetedLru<V>::~BudgetedLru() {
  // After this no Reclaim can reach the cache.
  budget_->Unregister(this);
  budget_->Release(entry_bytes_ * lru_.size());
}

template <class V>
void BudgetedLru<V>::PublishColdLocked() {
  cold_tick_.store(lru_.empty() ? kNoTick : lru_.back().tick, std::memory_order_relaxed);
}

template <class V>
void BudgetedLru<V>::EraseLocked(typename List::iterator it) {
  index_.erase(it->key);
  lru_.erase(it);
  budget_->Release(entry_bytes_);
}

template <class V>
std::shared_ptr<V> BudgetedLru<V>::Lookup(uint64_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  budget_->CountLookup(KindOf<V>(), it != index_.end());
  if (it == index_.end()) return nullptr;
  it->second->tick = budget_->Tick();
  lru_.splice(lru_.begin(), lru_, it->second);
  PublishColdLocked();
  return it->second->value;
}

template <class V>
std::shared_ptr<V> BudgetedLru<V>::Insert(uint64_t key, std::shared_ptr<V> value, bool replace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      if (!replace) {
        // Another reader loaded the same key meanwhile: keep the first one.
        it->second->tick = budget_->Tick();
        lru_.splice(lru_.begin(), lru_, it->second);
        PublishColdLocked();
        return it->second->value;
      }
      EraseLocked(it->second);
    }
    lru_.push_front(Entry{key, value, budget_->Tick()});
    index_.emplace(key, lru_.begin());
    budget_->Charge(entry_bytes_);
    // The cache's own bound (the decompressed clusters of one image).
    uint64_t evicted = 0;
    for (auto e = lru_.end(); lru_.size() > max_entries_ && e != lru_.begin();) {
      auto cur = std::prev(e);
      if (cur->value.use_count() == 1 && !IsDirty(*cur->value)) {
        EraseLocked(cur);
        ++evicted;
      } else {
        e = cur;
      }
    }
    if (evicted > 0) budget_->CountEvictions(KindOf<V>(), evicted);
    PublishColdLocked();
  }
  // Over the budget: evict, with no cache lock held (`value` stays pinned).
  budget_->Reclaim();
  return value;
}

template <class V>
void BudgetedLru<V>::Erase(uint64_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return;
  EraseLocked(it->second);
  PublishColdLocked();
}

template <class V>
void BudgetedLru<V>::EraseIf(uint64_t key, const V* value) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end() || it->second->value.get() != value) return;
  EraseLocked(it->second);
  PublishColdLocked();
}

template <class V>
std::vector<std::shared_ptr<V>> BudgetedLru<V>::Values(bool only_dirty) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<V>> out;
  for (auto it = lru_.rbegin(); it != lru_.rend(); ++it)
    if (!only_dirty || IsDirty(*it->value)) out.push_back(it->value);
  return out;
}

template <class V>
size_t BudgetedLru<V>::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return index_.size();
}

template <class V>
uint64_t BudgetedLru<V>::Evict(uint64_t bound, bool wait) {
  std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
  if (wait) {
    lock.lock();
  } else if (!lock.try_lock()) {
    return 0;
  }
  uint64_t freed = 0;
  // Ticks grow from the back to the front (taken under the lock).
  for (auto e = lru_.end(); e != lru_.begin() && budget_->over();) {
    auto cur = std::prev(e);
    if (cur->tick > bound) break;
    // use_count 1 under the lock: no request holds the value, and none can
    // get it without this lock.
    if (cur->value.use_count() == 1 && !IsDirty(*cur->value)) {
      if constexpr (std::is_same_v<V, L2Table>) budget_->KeepSpare(cur->value);
      EraseLocked(cur);
      freed += entry_bytes_;
    } else {
      e = cur;
    }
  }
  if (freed > 0) budget_->CountEvictions(KindOf<V>(), freed / entry_bytes_);
  PublishColdLocked();
  return freed;
}

// ---- Cold entries (block-status walks; owned by the qcow2 write work) -----------------
// A scan of the whole allocation map (du, SEEK_DATA, st_blocks) must not evict
// the tables in use: it peeks without touching and inserts at the cold end,
// with a tick older than any, so the budget evicts scan tables first.

template <class V>
std::shared_ptr<V> BudgetedLru<V>::Peek(uint64_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : it->second->value;
}

template <class V>
std::shared_ptr<V> BudgetedLru<V>::InsertCold(uint64_t key, std::shared_ptr<V> value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) return it->second->value;
    // Tick 0 keeps the back-to-front order of ticks that Evict relies on.
    lru_.push_back(Entry{key, value, 0});
    index_.emplace(key, std::prev(lru_.end()));
    budget_->Charge(entry_bytes_);
    PublishColdLocked();
  }
  budget_->Reclaim();
  return value;
}

template class BudgetedLru<L2Table>;
template class BudgetedLru<DecodedCluster>;

// ---- L2Cache --------------------------------------------------------------------------

L2Cache::L2Cache(std::shared_ptr<CacheBudget> budget, uint64_t table_bytes)
    : lru_(std::move(budget), table_bytes + kCacheEntryOverhead,
           std::numeric_limits<size_t>::max()) {}

std::shared_ptr<const L2Table> L2Cache::Lookup(uint64_t host_offset) {
  return lru_.Lookup(host_offset);
}

std::shared_ptr<const L2Table> L2Cache::Insert(std::shared_ptr<L2Table> table) {
  const uint64_t key = table->host_offset;
  return lru_.Insert(key, std::move(table), false);
}

std::shared_ptr<const L2Table> L2Cache::Peek(uint64_t host_offset) {
  return lru_.Peek(host_offset);
}

std::shared_ptr<const L2Table> L2Cache::InsertCold(std::shared_ptr<L2Table> table) {
  const uint64_t key = table->host_offset;
  return lru_.InsertCold(key, std::move(table));
}

std::shared_ptr<L2Table> L2Cache::LookupForWrite(uint64_t host_offset) {
  return lru_.Lookup(host_offset);
}

void L2Cache::Put(std::shared_ptr<L2Table> table) {
  const uint64_t key = table->host_offset;
  lru_.Insert(key, std::move(table), true);
}

void L2Cache::Erase(uint64_t host_offset) { lru_.Erase(host_offset); }

std::vector<std::shared_ptr<L2Table>> L2Cache::DirtyTables() const {
  // Filtered under the lock: copying every table would pin them all.
  std::vector<std::shared_ptr<L2Table>> out = lru_.Values(true);
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a->host_offset < b->host_offset; });
  return out;
}

size_t L2Cache::capacity() const {
  return std::max<uint64_t>(1, lru_.budget().limit() / lru_.entry_bytes());
}

bool L2Cache::OverBudget() const {
  lru_.budget().Reclaim();
  return lru_.budget().over();
}

std::shared_ptr<L2Table> L2Cache::NewTable(size_t words) const {
  std::shared_ptr<L2Table> t = lru_.budget().TakeSpare(words);
  if (!t) {
    t = std::make_shared<L2Table>();
    t->words.resize(words);
  }
  t->dirty = false;
  return t;
}

// ---- DecodedCluster -------------------------------------------------------------------

DecodedCluster::DecodedCluster(CompressionType type, size_t cluster_bytes,
                               std::shared_ptr<const uint8_t[]> input, const uint8_t* in,
                               size_t in_len)
    : type_(type),
      size_(cluster_bytes),
      data_(PooledBuffer(cluster_bytes)),
      input_(std::move(input)),
      in_(in),
      in_len_(in_len) {}

bool DecodedCluster::TryDecode() {
  uint32_t expected = kQueued;
  // acquire: the claimer sees the input its maker wrote before publishing.
  if (!state_.compare_exchange_strong(expected, kRunning, std::memory_order_acquire,
                                      std::memory_order_relaxed))
    return false;
  status_ = Decompress(type_, in_, in_len_, data_.get(), size_);
  input_.reset();  // the compressed bytes are not needed any more
  in_ = nullptr;
  // release: a waiter that sees the final state sees the data and status.
  state_.store(status_.ok() ? kReady : kFailed, std::memory_order_release);
  state_.notify_all();
  return true;
}

Status DecodedCluster::Wait() {
  TryDecode();
  uint32_t s = state_.load(std::memory_order_acquire);
  while (s < kReady) {
    state_.wait(s, std::memory_order_acquire);
    s = state_.load(std::memory_order_acquire);
  }
  return s == kReady ? Status::OK() : status_;
}

// ---- ClusterCache ---------------------------------------------------------------------

ClusterCache::ClusterCache(std::shared_ptr<CacheBudget> budget, uint64_t cluster_bytes,
                           size_t max_clusters)
    : max_clusters_(std::max<size_t>(2, max_clusters)),
      lru_(std::move(budget), cluster_bytes + kCacheEntryOverhead, max_clusters_) {}

std::shared_ptr<DecodedCluster> ClusterCache::Lookup(uint64_t key) { return lru_.Lookup(key); }

std::shared_ptr<DecodedCluster> ClusterCache::Peek(uint64_t key) { return lru_.Peek(key); }

std::shared_ptr<DecodedCluster> ClusterCache::Insert(uint64_t key,
                                                     std::shared_ptr<DecodedCluster> cluster) {
  return lru_.Insert(key, std::move(cluster), false);
}

void ClusterCache::EraseIf(uint64_t key, const DecodedCluster* cluster) {
  lru_.EraseIf(key, cluster);
}

void ClusterCache::Erase(uint64_t key) { lru_.Erase(key); }

namespace {
struct ClusterPin {
  std::shared_ptr<DecodedCluster> cluster;
  std::shared_ptr<CacheBudget> budget;
  ~ClusterPin() {
    cluster.reset();  // evictable from here on
    if (budget && budget->over()) budget->Reclaim();
  }
};
}  // namespace

std::shared_ptr<const void> ClusterCache::Pin(std::shared_ptr<DecodedCluster> cluster) const {
  auto pin = std::make_shared<ClusterPin>();
  pin->cluster = std::move(cluster);
  pin->budget = lru_.shared_budget();
  return pin;
}

void ClusterCache::ReclaimIfOver() const {
  if (lru_.budget().over()) lru_.budget().Reclaim();
}

}  // namespace kvmfs::qcow2

namespace kvmfs {

Qcow2CacheStats Qcow2CacheStatsNow() {
  const qcow2::CacheBudget& b = *qcow2::CacheBudget::Global();
  Qcow2CacheStats s;
  s.l2_hits = b.hits(0);
  s.l2_misses = b.misses(0);
  s.l2_evictions = b.evictions(0);
  s.cluster_hits = b.hits(1);
  s.cluster_misses = b.misses(1);
  s.cluster_evictions = b.evictions(1);
  s.bytes = b.used();
  s.limit_bytes = b.limit();
  return s;
}

}  // namespace kvmfs
