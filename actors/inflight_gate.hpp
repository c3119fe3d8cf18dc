#pragma once

#include <cstddef>
#include <deque>
#include <mutex>

#include <caf/actor.hpp>

namespace troupe {

/// The engine-wide limit on tasks in flight (node actors), shared by every run actor.
///
/// A run actor takes a slot before it spawns a node actor and gives it back when the attempt
/// ends. One that finds no slot queues itself and is sent `permit_atom` when a slot frees; it
/// then tries again. Nothing polls. Thread-safe: run actors live on any scheduler thread.
class inflight_gate {
 public:
  explicit inflight_gate(std::size_t limit) : limit_(limit) {}

  std::size_t limit() const { return limit_; }

  /// Takes a slot if one is free.
  bool try_acquire();
  /// Gives a slot back and wakes the longest-waiting run actor, if any.
  void release();
  /// Queues `run` to be woken when a slot frees (once per call).
  void wait(const caf::actor& run);
  /// A woken run actor that did not need the slot (or is ending) passes the wake on.
  void pass();
  /// `run` is ending: drops it from the queue. If it was already taken off the queue, a wake is
  /// on its way to it and would be lost, so the wake is passed on instead.
  void leave(const caf::actor& run);

  std::size_t in_use() const;

 private:
  void wake_one(std::unique_lock<std::mutex>& lock);

  mutable std::mutex mutex_;
  std::size_t limit_;
  std::size_t used_ = 0;
  std::deque<caf::actor> waiters_;
};

}  // namespace troupe
