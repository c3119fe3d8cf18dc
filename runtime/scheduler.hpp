#pragma once

// troupe's actor scheduler for CAF 0.17: work stealing whose idle workers block on a condition
// variable and are woken whenever work queues up, instead of CAF's stock policy, where an idle
// worker either polls (sleeping 50 us at a time, which no enqueue can cut short) or blocks and
// then never hears of work queued behind a busy worker.

#include <chrono>

namespace caf {
class actor_system_config;
}

namespace troupe {

/// Tuning of the waking scheduler; the defaults suit a service answering single runs fast.
struct scheduler_tuning {
  /// Rounds an idle worker looks at its own queue (and, every `steal_interval` rounds, at the
  /// others') before it blocks: 1000 rounds are some tens of microseconds, long enough that a
  /// worker between two bursts of messages is still looking when the next arrives (the sender
  /// then needs no system call to wake it), short enough to leave the core soon when idle.
  unsigned spin_rounds = 1000;
  unsigned steal_interval = 10;
  /// How long a blocked worker waits before it looks at the other queues by itself: a safety
  /// net only, since every enqueue wakes a blocked worker.
  std::chrono::milliseconds blocked_recheck{1000};
};

/// Makes every actor system built from `config` use the waking scheduler. Its workers count is
/// CAF's `scheduler.max-threads`. Contract: a job enqueued from outside the workers (the clock,
/// an I/O thread, a caller's thread) wakes a blocked worker when there is one; a job a worker
/// queues for itself waits at most for that worker's current job (one queued behind another
/// wakes a blocked worker, which steals it); a worker blocks only after it has announced itself
/// as blocked and then found every queue empty, so no enqueue can be missed. Actors must not
/// block a worker for long (blocking work belongs on a thread pool): a job waits behind it.
void use_waking_scheduler(caf::actor_system_config& config, scheduler_tuning tuning = {});

} // namespace troupe
