#pragma once

// The engine's runs: the ones in progress (by id), memory mode's log of finished ones, and the
// ids new runs get. No CAF here.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "persistence/store.hpp"
#include "runtime/engine.hpp"
#include "workflow/ownership.hpp"
#include "workflow/run_report.hpp"

namespace troupe {

/// Runs in progress in this engine, by id: added before their run actor is spawned, removed
/// when they end (from run_handle::shared::finished, on the run actor's thread, before the
/// run's waiters are woken). Thread-safe.
class run_index {
 public:
  using run_ptr = std::shared_ptr<run_handle::shared>;

  /// False (nothing changes) when a run with this id is already in progress.
  bool add(const std::string& id, run_ptr run);
  /// The run ended: forgets it and wakes wait_until_empty().
  void remove(const std::string& id);
  bool contains(const std::string& id) const;
  std::size_t size() const;
  /// The runs in progress now.
  std::vector<run_ptr> live() const;
  /// Blocks until no run is in progress; false when `timeout` passes first.
  bool wait_until_empty(std::chrono::milliseconds timeout);
  void wait_until_empty();

 private:
  mutable std::mutex mutex_;  // guards runs_
  std::condition_variable empty_;
  std::unordered_map<std::string, run_ptr> runs_;
};

/// Memory mode's execution log: the most recent finished runs (oldest dropped first), read back
/// through engine::list_runs, get_run and node_rows as the store would answer. Thread-safe.
class memory_log {
 public:
  explicit memory_log(std::size_t capacity) : capacity_(capacity) {}

  void remember(const run_result& r);
  /// Newest first, filtered by q.status and q.workflow, at most q.limit rows.
  std::vector<run_row> list(const run_query& q) const;
  std::optional<run_row> get(std::string_view run_id) const;
  /// One row per node (its last attempt's status).
  std::vector<node_row> node_rows(std::string_view run_id) const;

 private:
  const std::size_t capacity_;
  mutable std::mutex mutex_;                            // guards runs_
  std::deque<std::shared_ptr<const run_result>> runs_;  // oldest first
};

/// The ids of this engine's new runs: the one place that makes them. 128-bit, time-ordered
/// (workflow/ownership.hpp, run_id_generator): any number of engines share one database.
/// Thread-safe.
class run_ids {
 public:
  std::string next();

 private:
  std::mutex mutex_;  // guards gen_
  run_id_generator gen_;
};

}  // namespace troupe
