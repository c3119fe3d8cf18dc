#pragma once

#include <cstddef>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

namespace troupe::detail {

/// Values by string key, at most `capacity` of them, least recently used dropped first (node
/// outputs by cache key, compiled plans by spec key or content hash, task tables). `Ptr` is a
/// nullable pointer type (a shared_ptr): `find` returns a null one on a miss. Thread-safe: one
/// mutex, held only for the map work, so callers never hold it across a store read or a compile.
template <class Ptr>
class lru_cache {
 public:
  /// Capacity 0 keeps nothing: every `find` misses.
  explicit lru_cache(std::size_t capacity) : capacity_(capacity) {}

  /// The value under `key`, now the most recently used; null when there is none.
  Ptr find(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = index_.find(key);
    if (it == index_.end()) {
      return nullptr;
    }
    entries_.splice(entries_.begin(), entries_, it->second);  // now the most recently used
    return it->second->second;
  }

  /// Stores (or replaces) the value under `key`, dropping the least recently used beyond the
  /// capacity.
  void put(const std::string& key, Ptr value) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (capacity_ == 0) {
      return;
    }
    if (auto it = index_.find(key); it != index_.end()) {
      it->second->second = std::move(value);
      entries_.splice(entries_.begin(), entries_, it->second);
      return;
    }
    entries_.emplace_front(key, std::move(value));
    index_.emplace(key, entries_.begin());
    while (entries_.size() > capacity_) {
      index_.erase(entries_.back().first);
      entries_.pop_back();
    }
  }

  /// Entries held now (at most the capacity).
  std::size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
  }

  std::size_t capacity() const { return capacity_; }

 private:
  using entry = std::pair<std::string, Ptr>;

  mutable std::mutex mutex_;
  const std::size_t capacity_;
  std::list<entry> entries_;  // most recently used first
  std::unordered_map<std::string, typename std::list<entry>::iterator> index_;
};

}  // namespace troupe::detail
