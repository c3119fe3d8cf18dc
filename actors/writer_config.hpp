#pragma once

// The writer's settings and counters, free of CAF headers so the embedding API can expose them.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

namespace troupe {

/// How much the caller pays for the execution log (see DESIGN.md, "Persistence modes").
enum class persistence_mode { memory, async, durable, sync };
std::string_view to_string(persistence_mode m);
/// Parses "memory" | "async" | "durable" | "sync".
bool parse_persistence_mode(std::string_view text, persistence_mode& out);

struct writer_config {
  persistence_mode mode = persistence_mode::async;
  /// Flush when this many rows are pending (as sent: the committer coalesces them to the newest
  /// per key, so the batch written may be smaller)...
  std::size_t batch_max = 512;
  /// ...or this long after the first of them, whichever comes first.
  std::int64_t flush_ms = 5;
  /// Durable callers waiting for a commit are answered by a commit at most this long after the
  /// first of them asked (sooner when batch_max is reached). Committing at once for every
  /// waiter makes batches of a run or two, and a writer that spends its time on per-commit cost
  /// queues everyone behind it; a short window lets one commit answer many runs.
  std::int64_t commit_delay_us = 500;
  /// Past this many pending rows, new runs wait before they start (producers are slowed
  /// instead of memory growing without bound): engine::start blocks a thread of the caller's,
  /// and queues the run when called on one of the engine's own threads.
  std::size_t pending_max = 200000;
  /// A failed commit is retried after this backoff, doubling up to the cap.
  std::int64_t retry_initial_ms = 10;
  std::int64_t retry_max_ms = 2000;
  /// Added to the committer thread's nice value (Linux; 0: unchanged). A positive value lets
  /// the scheduler threads that carry callers' runs have the CPU first when this process is
  /// alone on busy cores; but any other process then wins over the committer too, and durable
  /// callers wait for it: measured on a shared 2-core machine, +10 tripled durable's p99
  /// (docs/benchmarks.md). Off by default.
  int nice = 0;
  /// In async mode, the committer gives its core back (sched_yield) between the store's write
  /// slices of `write_slice_rows` rows (persistence/store.hpp). Not in durable
  /// and sync modes, whose callers wait for the commit itself, nor while the writer is behind
  /// (a job at its cap of 4 x batch_max rows) or draining. A commit of a few hundred rows is a
  /// millisecond or more of CPU; in one piece it holds a core that a woken scheduler thread
  /// then waits for, whatever the committer's priority (measured on a 2-core VM: nice +19 and
  /// SCHED_IDLE did not help, slices did: docs/benchmarks.md, session 4). Off only to measure.
  bool yield_slices = true;
};

/// The writer's counters at one moment, as plain numbers (writer_metrics::snapshot()), so that
/// a caller can keep them and subtract two of them.
struct writer_counts {
  std::uint64_t batches = 0;
  std::uint64_t rows = 0;           // rows committed
  std::uint64_t rows_received = 0;  // before coalescing
  std::uint64_t max_batch = 0;
  std::uint64_t retries = 0;
  std::uint64_t errors = 0;
  std::uint64_t pending = 0;
  std::int64_t lag_us = 0;
  std::int64_t commit_us_total = 0;
  std::uint64_t dead_letters = 0;
  std::uint64_t fenced_runs = 0;
  std::uint64_t lost_rows = 0;
};

/// The writer's counters, shared with the engine (read from any thread). Also the place where
/// producers wait while too much is pending.
struct writer_metrics {
  std::atomic<std::uint64_t> batches{0};
  std::atomic<std::uint64_t> rows{0};          // rows committed
  std::atomic<std::uint64_t> rows_received{0};  // before coalescing
  std::atomic<std::uint64_t> max_batch{0};
  std::atomic<std::uint64_t> last_batch{0};
  std::atomic<std::uint64_t> retries{0};
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::uint64_t> pending{0};     // rows waiting for a commit
  std::atomic<std::int64_t> lag_us{0};       // age of the oldest pending row at the last flush
  std::atomic<std::int64_t> commit_us_total{0};
  /// Rows the database refused for good (kept in its dead letters; see `troupe runs
  /// dead-letters`), runs whose rows were refused because another engine owns them now, and rows
  /// given up at a shutdown deadline (never committed).
  std::atomic<std::uint64_t> dead_letters{0};
  std::atomic<std::uint64_t> fenced_runs{0};
  std::atomic<std::uint64_t> lost_rows{0};
  /// The writer has stopped (drained, given up, or its committer died): nobody waits for room.
  std::atomic<bool> closed{false};
  std::string last_error;  // guarded by mutex
  std::mutex mutex;
  std::condition_variable drained;  // notified when pending falls below the bound

  /// Each counter read once (not one consistent cut: they move while they are read).
  writer_counts snapshot() const;

  /// Blocks the calling producer while `pending >= bound` and the writer runs.
  void wait_below(std::size_t bound);
  /// Blocks until at least `n` commits have failed, or `timeout` passes (then false). For tests
  /// and operators watching a failing database; woken by the writer, never by polling.
  bool wait_errors(std::uint64_t n, std::chrono::milliseconds timeout);
};

}  // namespace troupe
