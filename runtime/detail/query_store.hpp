#pragma once

#include <memory>
#include <mutex>
#include <utility>

#include "persistence/store.hpp"

namespace troupe::detail {

/// The engine's query connection (not in memory mode). The writer owns its own store object;
/// everything else that reads the log (list_runs, get_run, node_rows, the caches' store lookups,
/// resume, prior_child) goes through this one, one call at a time: a store object is used by one
/// thread at a time (persistence/store.hpp). For memory:// it is the writer's own object, which
/// locks internally.
class query_store {
 public:
  explicit query_store(std::shared_ptr<store> s) : store_(std::move(s)) {}

  /// Calls `f(store&)` with the lock held and returns what it returns. `f` may make several
  /// calls that must see one another (a run and its rows); it must not call back into this
  /// object, and should do nothing but store calls (others wait for the lock).
  template <class F>
  decltype(auto) with(F&& f) {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::forward<F>(f)(*store_);
  }

 private:
  std::shared_ptr<store> store_;
  std::mutex mutex_;
};

}  // namespace troupe::detail
