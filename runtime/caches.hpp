#pragma once

// The engine's two caches in memory over the store: node outputs (`cache` on a node) and the
// compiled child plans of `dynamic` nodes (the spec cache). No CAF here.

#include <cstddef>
#include <string>

#include "runtime/detail/lru_cache.hpp"
#include "runtime/detail/query_store.hpp"
#include "runtime/plans.hpp"
#include "workflow/json.hpp"
#include "workflow/plan.hpp"

namespace troupe {

/// Memoized node outputs by cache key: a bounded memory cache (least recently used dropped
/// first) over the store, which keeps them all. Thread-safe. Only the store lookup blocks.
class output_cache {
 public:
  /// `store`: the engine's query connection, null in memory mode (memory only); it must outlive
  /// this cache.
  output_cache(std::size_t entries, detail::query_store* store);

  /// Memory only; null on a miss. Called on run actors' threads.
  json_ptr find(const std::string& key) { return memory_.find(key); }
  /// Fills memory only: the run actor sends the store row to the writer with its records.
  void remember(const std::string& key, json_ptr output) { memory_.put(key, std::move(output)); }
  /// Memory, then the store; a store hit is kept in memory, a store that cannot answer is a miss
  /// (the task runs, which is always correct). Blocking: called on the blocking pool. Requires a
  /// store (has_store()).
  json_ptr load(const std::string& key);
  bool has_store() const { return store_ != nullptr; }

 private:
  detail::lru_cache<json_ptr> memory_;
  detail::query_store* store_;
};

/// Compiled child plans of `dynamic` nodes by the node's cache key: a hit skips the generating
/// task as well as the compile. Memory first (bounded, least recently used dropped first), then
/// the store's "spec" entry, whose document is compiled once. Thread-safe.
class spec_cache {
 public:
  /// `store` may be null (memory only); `store` and `plans` must outlive this cache.
  spec_cache(std::size_t entries, detail::query_store* store, plan_registry& plans);

  /// Null on a miss. May block (a store read, a compile): called on the blocking pool.
  plan_ptr lookup(const std::string& key);
  /// Fills memory only: the node actor sends the store row to the writer.
  void remember(const std::string& key, plan_ptr p) { memory_.put(key, std::move(p)); }
  /// Plans held in memory now (at most `entries`).
  std::size_t size() const { return memory_.size(); }

 private:
  detail::lru_cache<plan_ptr> memory_;
  detail::query_store* store_;
  plan_registry& plans_;
};

}  // namespace troupe
