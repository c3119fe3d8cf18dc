#include "actors/writer_actor.hpp"

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/response_promise.hpp>
#include <caf/stateful_actor.hpp>

#include "actors/traced_actor.hpp"
#include "messages/messages.hpp"

namespace troupe {

std::string_view to_string(persistence_mode m) {
  switch (m) {
    case persistence_mode::memory:
      return "memory";
    case persistence_mode::async:
      return "async";
    case persistence_mode::durable:
      return "durable";
    case persistence_mode::sync:
      return "sync";
  }
  return "unknown";
}

bool parse_persistence_mode(std::string_view text, persistence_mode& out) {
  for (auto m : {persistence_mode::memory, persistence_mode::async, persistence_mode::durable,
                 persistence_mode::sync}) {
    if (text == to_string(m)) {
      out = m;
      return true;
    }
  }
  return false;
}

writer_counts writer_metrics::snapshot() const {
  writer_counts c;
  c.batches = batches.load();
  c.rows = rows.load();
  c.rows_received = rows_received.load();
  c.max_batch = max_batch.load();
  c.retries = retries.load();
  c.errors = errors.load();
  c.pending = pending.load();
  c.lag_us = lag_us.load();
  c.commit_us_total = commit_us_total.load();
  return c;
}

void writer_metrics::wait_below(std::size_t bound) {
  if (pending.load(std::memory_order_relaxed) < bound) {
    return;
  }
  std::unique_lock<std::mutex> lock(mutex);
  drained.wait(lock, [&] { return pending.load() < bound; });
}

bool writer_metrics::wait_errors(std::uint64_t n, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex);
  return drained.wait_for(lock, timeout, [&] { return errors.load() >= n; });
}

namespace {

std::int64_t steady_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A scheduled actor: it never blocks, so a run actor's rows reach it without waking a thread.
// It only decides when a batch is due and whom a commit answers; its committer does the rest.
struct writer_state {
  caf::actor committer;  // owns the store; one job at a time
  writer_config config;
  std::shared_ptr<writer_metrics> metrics;

  // Changes as they came, oldest first. The committer coalesces them (newest state per key)
  // when it builds the batch: that work stays off the scheduler threads that carry the runs.
  // parts[i] is change number front_seq + i; last_seq numbers the newest ever received.
  std::vector<persist> parts;
  std::size_t pending_rows = 0;
  std::uint64_t front_seq = 1;
  std::uint64_t last_seq = 0;
  // Durable callers, in order: each is answered after a commit of every change up to its own.
  struct waiter {
    std::uint64_t seq;
    std::int64_t since_us;
    caf::response_promise promise;
  };
  std::vector<waiter> waiters;

  std::uint64_t generation = 0;  // bumping it makes an armed flush timer stale
  // While rows are pending (and no retry is due), exactly one of these holds a flush message
  // of the current generation: a timer for the batch's age, or a message queued behind what is
  // already in the mailbox. Without one, rows would wait for traffic that may never come.
  bool timer_armed = false;
  std::int64_t timer_due_us = 0;  // when the armed timer fires
  bool flush_queued = false;
  bool retrying = false;  // a failed commit waits for its backoff timer
  // The batch the committer is writing: its callers, its size and the age of its oldest row.
  // Rows that arrive meanwhile wait for the next one.
  bool in_flight = false;
  std::vector<waiter> flight_waiters;
  std::uint64_t flight_last_seq = 0;
  std::size_t flight_rows = 0;
  std::int64_t flight_first_pending_us = 0;
  std::int64_t backoff_ms = 0;

  caf::response_promise drain_waiter;
  bool draining = false;

  static inline const char* name = "writer";
  std::uint64_t trace_rows() const { return metrics ? metrics->rows.load() : 0; }
  std::uint64_t trace_batches() const { return metrics ? metrics->batches.load() : 0; }

  std::size_t pending() const { return pending_rows; }
  // What the metrics call pending (and producers are slowed by): everything not committed yet.
  std::size_t uncommitted() const { return pending_rows + flight_rows; }
};
using writer_actor = caf::stateful_actor<writer_state>;

// Builds one batch from changes in the order they were sent: the newest state per key wins,
// so a "running" row followed by a "succeeded" one for the same attempt costs one row. The
// rows are moved once, into the batch, and duplicates are found with one table of indices
// (keep_newest_rows): no allocation per row on the committer's core, whose every microsecond
// is taken from the scheduler threads (a hash map of string keys did this before; with the
// stores' JSON texts made the same way, the committer now uses 29% less CPU in async mode:
// docs/benchmarks.md, session 5). In async mode moving the rows gives the core back every
// slice, like the store's write (the pacer's yield is empty otherwise).
write_batch coalesce(std::vector<persist>& parts, const std::function<void()>& yield) {
  write_batch b;
  std::size_t runs = 0;
  std::size_t nodes = 0;
  std::size_t workflows = 0;
  std::size_t cache = 0;
  for (const auto& p : parts) {
    runs += p.runs.size();
    nodes += p.nodes.size();
    workflows += p.workflows.size();
    cache += p.cache.size();
  }
  b.runs.reserve(runs);
  b.nodes.reserve(nodes);
  b.workflows.reserve(workflows);
  b.cache.reserve(cache);
  slice_pacer pacer(yield);
  auto take = [&pacer](auto& from, auto& to) {
    for (auto& r : from) {
      pacer.next_row();
      to.push_back(std::move(r));
    }
  };
  for (auto& p : parts) {
    take(p.runs, b.runs);
    take(p.nodes, b.nodes);
    take(p.workflows, b.workflows);
    take(p.cache, b.cache);
  }
  parts.clear();
  // Unsliced: finding the duplicates of 2,000 rows takes about 50 µs (measured), less than one
  // slice of writing.
  keep_newest_rows(b);
  return b;
}

// A failed batch goes back in front of what arrived while it was being written: those changes
// are newer, and the next batch lets them win.
void put_back(writer_state& st, write_batch& b, std::int64_t sent_us) {
  persist back;
  back.nodes = std::move(b.nodes);
  back.runs = std::move(b.runs);
  back.workflows = std::move(b.workflows);
  back.cache = std::move(b.cache);
  back.sent_us = sent_us;
  st.pending_rows += back.size();
  st.parts.insert(st.parts.begin(), std::move(back));
  st.front_seq = st.flight_last_seq;  // it stands for every change the failed job held
}

// A failed commit, for the metrics; wakes whoever waits on them (wait_errors()).
void note_error(writer_state& st, const store_error& e) {
  {
    std::lock_guard<std::mutex> lock(st.metrics->mutex);
    st.metrics->errors.fetch_add(1);
    st.metrics->last_error = e.message;
  }
  st.metrics->drained.notify_all();
}

void publish_pending(writer_state& st) {
  const std::size_t p = st.uncommitted();
  st.metrics->pending.store(p);
  if (p < st.config.pending_max) {
    // Producers blocked in wait_below() re-check under the mutex.
    std::lock_guard<std::mutex> lock(st.metrics->mutex);
    st.metrics->drained.notify_all();
  }
}

void arm_retry(writer_actor* self) {
  auto& st = self->state;
  st.retrying = true;
  st.backoff_ms = st.backoff_ms == 0 ? st.config.retry_initial_ms
                                     : std::min(st.backoff_ms * 2, st.config.retry_max_ms);
  self->delayed_send(self, std::chrono::milliseconds(st.backoff_ms), retry_due_atom::value);
}

// One job for the committer: a batch written as one transaction, or (sync mode) as one
// transaction per row.
struct commit_job {
  std::vector<persist> parts;  // coalesced by the committer
  bool each = false;
  /// Give the core back between slices (writer_config::yield_slices). Not when the writer is
  /// behind: a saturated machine would then starve the committer, and its backlog would grow
  /// until producers are slowed (measured: async's closed-loop committed runs/s fell by a
  /// fifth with slices on every job).
  bool yield = false;
};

// What the committer did with a job. A failed batch comes back whole, so that nothing pending
// is lost: its rows rejoin the pending set (upserts are idempotent, so rows that sync mode had
// already committed one by one are simply written again).
struct commit_outcome {
  write_batch batch;  // only when the commit failed
  std::optional<store_error> error;
  std::uint64_t commits = 0;  // transactions that succeeded
  std::uint64_t rows = 0;
  std::uint64_t largest = 0;  // rows in the largest of them
  std::int64_t commit_us = 0;  // time inside store::write
  std::int64_t finished_us = 0;
};

}  // namespace
}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::commit_job)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::commit_outcome)

namespace troupe {
namespace {

// The committer: the writer's blocking half, on a thread of its own. Keeping store calls here
// leaves the writer itself an ordinary scheduled actor: run actors hand it rows without waking
// a thread (a message to a detached actor that sleeps costs a futex wake-up in the sender's
// turn), the writer wakes this thread once per batch, and rows keep coalescing while a batch
// is written.
struct committer_state {
  std::shared_ptr<store> db;
  // Between slices of a job that may yield (commit_job::yield). Not a wait: with no other
  // thread ready on this core it returns at once. It enters the kernel, which is where a
  // pending preemption takes effect.
  std::function<void()> yield = [] { ::sched_yield(); };
  // Whether the store has `yield` now (commit_job::yield). Set only when it changes: wrappers
  // pass it down, and may wrap it, on every call.
  bool yield_installed = false;
  static inline const char* name = "committer";
};
using committer_actor = caf::stateful_actor<committer_state>;

commit_outcome run_job(store& db, commit_job& job, const std::function<void()>& yield) {
  commit_outcome out;
  write_batch batch = coalesce(job.parts, yield);
  auto one = [&](const write_batch& b) {
    auto t0 = steady_us();
    auto res = db.write(b);
    out.commit_us += steady_us() - t0;
    if (!res) {
      out.error = res.error();
      return false;
    }
    out.commits += 1;
    out.rows += b.size();
    out.largest = std::max<std::uint64_t>(out.largest, b.size());
    return true;
  };
  bool ok = true;
  if (!job.each) {
    ok = one(batch);
  } else {
    // sync mode: the slow baseline, a commit for every single change.
    for (const auto& r : batch.nodes) {
      write_batch b;
      b.nodes.push_back(r);
      if (!(ok = one(b))) {
        break;
      }
    }
    for (std::size_t i = 0; ok && i < batch.runs.size(); ++i) {
      write_batch b;
      b.runs.push_back(batch.runs[i]);
      ok = one(b);
    }
    if (ok && (!batch.workflows.empty() || !batch.cache.empty())) {
      write_batch b;
      b.workflows = batch.workflows;
      b.cache = batch.cache;
      ok = one(b);
    }
  }
  if (!ok) {
    out.batch = std::move(batch);
  }
  out.finished_us = steady_us();
  return out;
}

void renice_this_thread(int nice) {
  if (nice == 0) {
    return;
  }
  const auto tid = static_cast<id_t>(::syscall(SYS_gettid));
  errno = 0;
  int current = ::getpriority(PRIO_PROCESS, tid);
  if (errno == 0) {
    ::setpriority(PRIO_PROCESS, tid, current + nice);  // best effort
  }
}

caf::behavior committer_behavior(committer_actor* self, std::shared_ptr<store> db, int nice) {
  self->state.db = std::move(db);
  // A detached actor is initialized on its own thread: this renices only the committer.
  renice_this_thread(nice);
  return {
      [self](commit_job& job) -> caf::result<commit_outcome> {
        auto& db = *self->state.db;
        auto rp = self->make_response_promise<commit_outcome>();
        auto& st = self->state;
        // A job that must not yield is written unsliced too: fewer, larger statements.
        if (job.yield != st.yield_installed) {
          db.set_write_yield(job.yield ? st.yield : nullptr);
          st.yield_installed = job.yield;
        }
        static const std::function<void()> no_yield;
        commit_outcome out = run_job(db, job, job.yield ? st.yield : no_yield);
        const bool ok = !out.error;
        rp.deliver(std::move(out));
        if (ok) {
          // After the answer: housekeeping (a WAL checkpoint) must not sit in anyone's latency.
          db.maintain();
        }
        return rp;
      },
  };
}

void on_outcome(writer_actor* self, commit_outcome& o);
void schedule_flush(writer_actor* self);

// The first waiter whose changes a commit up to change number `seq` does not cover (waiters
// are in order of their changes).
std::vector<writer_state::waiter>::iterator first_waiter_after(writer_state& st,
                                                               std::uint64_t seq) {
  return std::find_if(st.waiters.begin(), st.waiters.end(),
                      [seq](const auto& w) { return w.seq > seq; });
}

// Hands everything pending to the committer as one job. At most one job is in flight; rows
// and callers arriving meanwhile wait for the next one, which the outcome schedules.
void start_commit(writer_actor* self) {
  auto& st = self->state;
  if (st.in_flight) {
    return;
  }
  ++st.generation;  // timers armed for these rows are stale from now on
  st.timer_armed = false;
  st.flush_queued = false;
  if (st.pending() == 0) {
    for (auto& w : st.waiters) {
      w.promise.deliver(caf::ok_atom::value);
    }
    st.waiters.clear();
    return;
  }
  // The changes move to the committer (no copies) and come back only if the commit fails.
  commit_job job;
  job.each = st.config.mode == persistence_mode::sync;
  // A writer that fell behind catches up in bounded steps: one huge transaction spills
  // SQLite's page cache and costs more per row, which would only put it further behind.
  const std::size_t max_rows = 4 * std::max<std::size_t>(st.config.batch_max, 1);
  std::size_t k = 0;
  std::size_t rows = 0;
  while (k < st.parts.size() && (k == 0 || rows < max_rows)) {
    const persist& m = st.parts[k++];
    rows += m.size();
  }
  job.parts.assign(std::make_move_iterator(st.parts.begin()),
                   std::make_move_iterator(st.parts.begin() + static_cast<std::ptrdiff_t>(k)));
  st.parts.erase(st.parts.begin(), st.parts.begin() + static_cast<std::ptrdiff_t>(k));
  // Durable and sync callers wait for the commit itself: a slice given away lengthens their
  // wait (in one quick measurement, durable's writer fell from about 60% of the raw ceiling
  // to 45%). Async callers never wait.
  job.yield = st.config.yield_slices && st.config.mode == persistence_mode::async &&
              !st.draining && rows < max_rows;
  st.flight_last_seq = st.front_seq + k - 1;
  st.front_seq += k;
  st.in_flight = true;
  st.flight_rows = rows;
  st.pending_rows -= rows;
  st.flight_first_pending_us = job.parts.front().sent_us;
  auto covered = first_waiter_after(st, st.flight_last_seq);
  st.flight_waiters.assign(std::make_move_iterator(st.waiters.begin()),
                           std::make_move_iterator(covered));
  st.waiters.erase(st.waiters.begin(), covered);
  self->request(st.committer, caf::infinite, std::move(job))
      .then([self](commit_outcome& o) { on_outcome(self, o); },
            [self](caf::error& e) {
              // The committer is gone (the engine is stopping): nothing can be written.
              self->quit(std::move(e));
            });
}

void finish_drain_if_done(writer_actor* self) {
  auto& st = self->state;
  if (st.pending() == 0 && st.waiters.empty()) {
    st.drain_waiter.deliver(caf::ok_atom::value);
    self->quit();
  } else {
    start_commit(self);
  }
}

void on_outcome(writer_actor* self, commit_outcome& o) {
  auto& st = self->state;
  st.in_flight = false;
  st.flight_rows = 0;
  st.metrics->commit_us_total.fetch_add(o.commit_us);
  if (o.commits > 0) {
    st.metrics->batches.fetch_add(o.commits);
    st.metrics->rows.fetch_add(o.rows);
    st.metrics->last_batch.store(o.largest);
    auto prev = st.metrics->max_batch.load();
    while (o.largest > prev && !st.metrics->max_batch.compare_exchange_weak(prev, o.largest)) {
    }
  }
  if (o.error) {
    // Back into pending, behind nothing: its callers keep waiting for a commit that includes
    // their rows, and the batch is retried after the backoff.
    put_back(st, o.batch, st.flight_first_pending_us);
    if (!st.flight_waiters.empty()) {
      st.waiters.insert(st.waiters.begin(), std::make_move_iterator(st.flight_waiters.begin()),
                        std::make_move_iterator(st.flight_waiters.end()));
      st.flight_waiters.clear();
    }
    st.metrics->pending.store(st.uncommitted());
    note_error(st, *o.error);
    arm_retry(self);
    return;
  }
  st.metrics->lag_us.store(o.finished_us - st.flight_first_pending_us);
  st.retrying = false;
  st.backoff_ms = 0;
  publish_pending(st);
  for (auto& w : st.flight_waiters) {
    w.promise.deliver(caf::ok_atom::value);
  }
  st.flight_waiters.clear();
  // Callers that asked while this job was out, for changes it held or older ones.
  auto done = first_waiter_after(st, st.flight_last_seq);
  for (auto w = st.waiters.begin(); w != done; ++w) {
    w->promise.deliver(caf::ok_atom::value);
  }
  st.waiters.erase(st.waiters.begin(), done);
  if (st.draining) {
    finish_drain_if_done(self);
    return;
  }
  schedule_flush(self);
}

void absorb(writer_state& st, persist& m) {
  const std::size_t n = m.size();
  if (n == 0) {
    return;  // a caller asking for a commit of what it sent before
  }
  if (m.sent_us <= 0) {
    m.sent_us = steady_us();
  }
  if (st.parts.empty()) {
    st.front_seq = st.last_seq + 1;
  }
  ++st.last_seq;
  st.metrics->rows_received.fetch_add(n);
  st.pending_rows += n;
  st.parts.push_back(std::move(m));
  st.metrics->pending.store(st.uncommitted());
}

// Decides when what is pending gets committed.
void schedule_flush(writer_actor* self) {
  auto& st = self->state;
  if (st.in_flight || st.retrying) {
    return;  // the outcome, or the backoff timer, schedules what comes next
  }
  if (st.pending() == 0 && st.waiters.empty()) {
    return;
  }
  if (st.config.mode == persistence_mode::sync || st.draining) {
    start_commit(self);
    return;
  }
  const bool queue_empty = self->mailbox().empty();
  const std::int64_t now = steady_us();
  // The batch's age counts from when its oldest row was sent: rows that queued in the mailbox
  // during a long commit may already be due.
  std::int64_t due = st.config.flush_ms * 1000;
  if (!st.parts.empty()) {
    due = st.parts.front().sent_us + st.config.flush_ms * 1000 - now;
  }
  if (!st.waiters.empty()) {
    // Group commit: durable callers wait, so the batch is due after the commit window.
    due = std::min(due, st.waiters.front().since_us + st.config.commit_delay_us - now);
  }
  if (st.pending() >= st.config.batch_max || (due <= 0 && queue_empty)) {
    start_commit(self);
    return;
  }
  if (due <= 0) {
    // Due, but more is queued: absorb it first (when the writer is behind it must batch more,
    // not commit each message alone), then commit. The message goes behind the queue.
    if (!st.flush_queued) {
      st.flush_queued = true;
      self->send(self, flush_due_atom::value, st.generation);
    }
    return;
  }
  // A waiter can make the batch due sooner than an armed timer: arm another one (the same
  // generation; whichever fires first commits, the later one is stale).
  if (!st.timer_armed || now + due < st.timer_due_us) {
    st.timer_armed = true;
    st.timer_due_us = now + due;
    self->delayed_send(self, std::chrono::microseconds(due), flush_due_atom::value,
                       st.generation);
  }
}

caf::result<caf::ok_atom> accept(writer_actor* self, persist& m, bool ack) {
  auto& st = self->state;
  const std::int64_t since = m.sent_us > 0 ? m.sent_us : steady_us();
  absorb(st, m);
  caf::result<caf::ok_atom> answer = caf::ok_atom::value;
  if (ack) {
    auto rp = self->make_response_promise<caf::ok_atom>();
    st.waiters.push_back({st.last_seq, since, rp});
    answer = rp;
  }
  schedule_flush(self);
  return answer;
}

caf::behavior writer_behavior(writer_actor* self, caf::actor committer, writer_config config,
                              std::shared_ptr<writer_metrics> metrics) {
  auto& st = self->state;
  st.committer = committer;
  st.config = config;
  st.metrics = std::move(metrics);
  // The committer lives as long as the writer: whichever way the writer ends (drained, or
  // told to exit at a deadline), the store is closed after the job in hand.
  self->attach_functor([committer](const caf::error&) {
    caf::anon_send_exit(committer, caf::exit_reason::user_shutdown);
  });
  return {
      [self](persist& m) { accept(self, m, false); },
      [self](commit_atom, persist& m) -> caf::result<caf::ok_atom> {
        return accept(self, m, true);
      },
      [self](flush_due_atom, std::uint64_t generation) {
        auto& st = self->state;
        if (generation != st.generation) {
          return;  // stale: its rows were committed already
        }
        st.timer_armed = false;
        st.flush_queued = false;
        if (!st.in_flight && !st.retrying) {
          start_commit(self);
        }
      },
      [self](retry_due_atom) {
        auto& st = self->state;
        st.metrics->retries.fetch_add(1);
        st.retrying = false;
        start_commit(self);
      },
      [self](drain_atom) -> caf::result<caf::ok_atom> {
        auto& st = self->state;
        st.draining = true;
        st.drain_waiter = self->make_response_promise<caf::ok_atom>();
        if (!st.in_flight && !st.retrying) {
          finish_drain_if_done(self);
        }
        return st.drain_waiter;
      },
  };
}

}  // namespace

caf::actor spawn_writer(caf::actor_system& sys, std::unique_ptr<store> st, writer_config config,
                        std::shared_ptr<writer_metrics> metrics, trace::tracer* trace) {
  std::shared_ptr<store> shared(std::move(st));  // spawn() arguments must be copyable
  if (trace != nullptr) {
    auto committer = trace::spawn_traced<committer_actor, caf::detached>(
        sys, trace, committer_behavior, std::move(shared), config.nice);
    return trace::spawn_traced<writer_actor, caf::no_spawn_options>(
        sys, trace, writer_behavior, committer, config, std::move(metrics));
  }
  auto committer = sys.spawn<caf::detached>(committer_behavior, std::move(shared), config.nice);
  return sys.spawn(writer_behavior, committer, config, std::move(metrics));
}

}  // namespace troupe
