#pragma once

// The writer's batching policy as a plain class: which rows go into the next commit, when a
// commit is due (batch_max, flush_ms, commit_delay_us for waiting callers), whom a commit
// answers and with what, backoff after a failure, and giving up at a shutdown deadline. It owns
// no threads, clocks or actors: the caller passes the time with every event, so tests drive it
// on a virtual clock. The writer actor (writer_actor.cpp) only moves messages in and out of it.
// Not thread-safe: one owner.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "actors/writer_config.hpp"
#include "messages/messages.hpp"
#include "persistence/store.hpp"

namespace troupe {

/// One job for the committer: changes in the order they were sent (it coalesces them).
struct commit_job {
  std::vector<persist> parts;
  /// sync mode: a transaction per row (the slow baseline).
  bool each = false;
  /// Give the core back between the store's write slices (writer_config::yield_slices): only
  /// in async mode and while the writer keeps up (a job below its cap, not draining).
  bool yield = false;
};

/// What the committer did with a job.
struct commit_outcome {
  /// Rows not committed because of a transient error (the committer stops at the first one);
  /// they are retried after the backoff. Empty when everything was settled.
  write_batch retry;
  std::optional<store_error> error;  // that transient error
  std::uint64_t commits = 0;         // transactions that succeeded
  std::uint64_t rows = 0;            // rows they held
  std::uint64_t largest = 0;         // rows in the largest of them
  std::int64_t commit_us = 0;        // time inside store::write
  /// Runs whose rows the store refused because another owner holds them (write_outcome).
  std::vector<std::string> fenced_runs;
  /// Rows the database refused for good, kept as dead letters; the runs they belong to, and the
  /// first error.
  std::uint64_t dead_letters = 0;
  std::vector<std::string> refused_runs;
  std::string refused_error;
};

class write_policy {
 public:
  using waiter_id = std::uint64_t;
  /// A waiting caller's answer: an empty `error` means its rows are committed.
  struct answer {
    waiter_id id = 0;
    std::string error;
  };
  /// What the owner should do now.
  struct step {
    enum class kind {
      idle,                // nothing: an armed timer, the job in flight or the backoff will call
      commit,              // take_job() and hand it to the committer now
      flush_behind_queue,  // due, but more is queued: send yourself flush(generation) behind it
      arm_timer,           // call flush(generation) at `at_us`
    };
    kind what = kind::idle;
    std::int64_t at_us = 0;
    std::uint64_t generation = 0;
  };

  explicit write_policy(writer_config config);

  /// Rows from a run. `rows.sent_us` (when the sender handed them over) is when its batch
  /// starts ageing; 0 or less: `now_us`.
  void absorb(persist rows, std::int64_t now_us);
  /// A caller waits until everything absorbed so far is committed. `run_id` (may be empty)
  /// names the run whose rows it waits for: if any of them was refused (a dead letter, a
  /// fence), the answer says so.
  waiter_id add_waiter(std::string run_id, std::int64_t now_us);

  /// Decides after every event. `queue_empty`: nothing else is waiting in the owner's mailbox
  /// (when the writer is behind, it absorbs what is queued before committing).
  step next(std::int64_t now_us, bool queue_empty);
  /// A flush message arrived (from a timer or queued): true when it is current and a commit
  /// should start now (then call take_job()).
  bool flush(std::uint64_t generation);
  /// Takes what the next commit writes: the oldest changes, at most 4 x batch_max rows (a
  /// writer that fell behind catches up in bounded transactions). Only when next() said commit
  /// or flush() said true. Waiters with nothing left to commit are answered by the next settle.
  commit_job take_job();
  /// True when take_job() would have no rows: answer_idle() settles the waiters instead.
  bool nothing_to_write() const { return pending_rows_ == 0; }
  /// No rows to write: the waiters are answered at once (none of their rows is outstanding).
  std::vector<answer> answer_idle();
  /// The committer's outcome. Returns the callers it answers. After a transient failure the
  /// rows not committed go back in front of newer ones (which win when coalesced), the
  /// waiters keep waiting, and retry_after_ms() says when to call retry_due().
  std::vector<answer> settle(commit_outcome& outcome, std::int64_t now_us);
  bool retrying() const { return retrying_; }
  std::int64_t retry_after_ms() const { return backoff_ms_; }
  void retry_due() { retrying_ = false; }

  /// Shutdown: from now on everything pending is committed as fast as it can be.
  void drain() { draining_ = true; }
  bool draining() const { return draining_; }
  /// Draining, and nothing is left: no rows, no job out, no waiter.
  bool drained() const;
  /// The drain deadline passed: every waiter is answered with an error naming `why`, and what
  /// is not committed is dropped. Returns the waiters' answers; `dropped` gets the row count.
  std::vector<answer> give_up(const std::string& why, std::size_t& dropped);

  bool in_flight() const { return in_flight_; }
  /// Rows not committed yet: pending ones and the job in flight.
  std::size_t uncommitted() const { return pending_rows_ + flight_rows_; }
  /// Age of the oldest row of the last successful job when it was committed (µs).
  std::int64_t last_lag_us() const { return last_lag_us_; }

 private:
  struct waiter {
    waiter_id id;
    std::uint64_t seq;  // answered by a commit of every change up to this one
    std::int64_t since_us;
    std::string run_id;
  };
  answer answer_for(waiter& w);
  void note_trouble(const std::string& run_id, const std::string& message);

  writer_config config_;
  // Changes as they came, oldest first: parts_[i] is change number front_seq_ + i.
  std::vector<persist> parts_;
  std::size_t pending_rows_ = 0;
  std::uint64_t front_seq_ = 1;
  std::uint64_t last_seq_ = 0;
  std::vector<waiter> waiters_;  // in order of seq
  waiter_id next_waiter_ = 1;

  // Flush scheduling: while rows are pending (and no retry is due), exactly one flush message
  // of the current generation is armed or queued. Bumping the generation makes it stale.
  std::uint64_t generation_ = 0;
  bool timer_armed_ = false;
  std::int64_t timer_due_us_ = 0;
  bool flush_queued_ = false;

  // The job the committer is writing.
  bool in_flight_ = false;
  std::vector<waiter> flight_waiters_;
  std::uint64_t flight_last_seq_ = 0;
  std::size_t flight_rows_ = 0;
  std::int64_t flight_first_sent_us_ = 0;

  bool retrying_ = false;
  std::int64_t backoff_ms_ = 0;
  bool draining_ = false;
  std::int64_t last_lag_us_ = 0;

  // Durable and sync modes: runs some of whose rows were refused (dead letters, fences), until a
  // waiter of that run is told. Bounded: the oldest entries go first.
  std::unordered_map<std::string, std::string> trouble_;
  std::deque<std::string> trouble_order_;
};

}  // namespace troupe
