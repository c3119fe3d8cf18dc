#include "actors/writer_actor.hpp"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <unordered_map>
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

// Runs on the writer's own thread. Pending rows are kept newest-first per key, so a "running"
// row followed by a "succeeded" one for the same attempt costs one row in the batch.
struct writer_state {
  std::shared_ptr<store> db;
  writer_config config;
  std::shared_ptr<writer_metrics> metrics;

  std::unordered_map<std::string, node_row> nodes;
  std::unordered_map<std::string, run_row> runs;
  std::vector<workflow_row> workflows;
  std::unordered_map<std::string, cache_row> cache;
  std::vector<caf::response_promise> waiters;  // durable: answered after the commit

  std::uint64_t generation = 0;  // bumping it makes an armed flush timer stale
  // While rows are pending (and no retry is due), exactly one of these holds a flush message
  // of the current generation: a timer for the batch's age, or a message queued behind what is
  // already in the mailbox. Without one, rows would wait for traffic that may never come.
  bool timer_armed = false;
  std::int64_t timer_due_us = 0;  // when the armed timer fires
  bool flush_queued = false;
  std::int64_t first_waiter_us = 0;  // when the oldest durable waiter's rows were sent
  bool retrying = false;  // a failed commit waits for its backoff timer
  std::int64_t backoff_ms = 0;
  std::int64_t first_pending_us = 0;

  caf::response_promise drain_waiter;
  bool draining = false;

  static inline const char* name = "writer";
  std::uint64_t trace_rows() const { return metrics ? metrics->rows.load() : 0; }
  std::uint64_t trace_batches() const { return metrics ? metrics->batches.load() : 0; }

  std::size_t pending() const {
    return nodes.size() + runs.size() + workflows.size() + cache.size();
  }
};
using writer_actor = caf::stateful_actor<writer_state>;

std::string node_key(const node_row& r) {
  std::string k;
  k.reserve(r.run_id.size() + r.node_id.size() + 24);
  k.append(r.run_id).push_back('\x1f');
  k.append(r.node_id).push_back('\x1f');
  k.append(std::to_string(r.item)).push_back('\x1f');
  k.append(std::to_string(r.attempt));
  return k;
}

// Moves rows into the pending set: the newest state per key wins.
void take_rows(writer_state& st, std::vector<node_row>& nodes, std::vector<run_row>& runs,
               std::vector<workflow_row>& workflows, std::vector<cache_row>& cache) {
  for (auto& r : nodes) {
    auto key = node_key(r);
    st.nodes.insert_or_assign(std::move(key), std::move(r));
  }
  for (auto& r : runs) {
    auto key = r.run_id;
    st.runs.insert_or_assign(std::move(key), std::move(r));
  }
  for (auto& w : workflows) {
    st.workflows.push_back(std::move(w));
  }
  for (auto& c : cache) {
    auto key = c.key;
    st.cache.insert_or_assign(std::move(key), std::move(c));
  }
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
  std::size_t p = st.pending();
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

// One transaction for everything pending. On failure nothing is dropped: the rows stay pending
// (newer changes keep coalescing into them) and durable waiters keep waiting until a commit that
// includes their rows succeeds.
bool flush(writer_actor* self) {
  auto& st = self->state;
  ++st.generation;
  st.timer_armed = false;
  st.flush_queued = false;
  if (st.pending() == 0) {
    for (auto& w : st.waiters) {
      w.deliver(caf::ok_atom::value);
    }
    st.waiters.clear();
    return true;
  }
  // Rows move into the batch (no copies on the common path) and move back only if the commit
  // fails, so nothing pending is lost.
  write_batch b;
  b.nodes.reserve(st.nodes.size());
  for (auto& [k, r] : st.nodes) {
    b.nodes.push_back(std::move(r));
  }
  b.runs.reserve(st.runs.size());
  for (auto& [k, r] : st.runs) {
    b.runs.push_back(std::move(r));
  }
  b.workflows = std::move(st.workflows);
  for (auto& [k, r] : st.cache) {
    b.cache.push_back(std::move(r));
  }
  st.nodes.clear();
  st.runs.clear();
  st.workflows.clear();
  st.cache.clear();
  auto t0 = steady_us();
  auto res = st.db->write(b);
  auto t1 = steady_us();
  if (!res) {
    // Back into pending. Rows that arrived meanwhile cannot exist (one thread), so each key is
    // free and the newest state per key is still the one kept.
    take_rows(st, b.nodes, b.runs, b.workflows, b.cache);
    note_error(st, res.error());
    arm_retry(self);
    return false;
  }
  std::uint64_t n = b.size();
  st.metrics->batches.fetch_add(1);
  st.metrics->rows.fetch_add(n);
  st.metrics->last_batch.store(n);
  st.metrics->commit_us_total.fetch_add(t1 - t0);
  auto prev = st.metrics->max_batch.load();
  while (n > prev && !st.metrics->max_batch.compare_exchange_weak(prev, n)) {
  }
  st.metrics->lag_us.store(t1 - st.first_pending_us);
  st.retrying = false;
  st.backoff_ms = 0;
  publish_pending(st);
  for (auto& w : st.waiters) {
    w.deliver(caf::ok_atom::value);
  }
  st.waiters.clear();
  // After the answers: housekeeping (a WAL checkpoint) must not sit in anyone's latency.
  st.db->maintain();
  return true;
}

void absorb(writer_state& st, persist& m) {
  const std::int64_t arrived = m.sent_us > 0 ? m.sent_us : steady_us();
  if (st.pending() == 0 || arrived < st.first_pending_us) {
    st.first_pending_us = arrived;
  }
  st.metrics->rows_received.fetch_add(m.nodes.size() + m.runs.size() + m.workflows.size() +
                                      m.cache.size());
  take_rows(st, m.nodes, m.runs, m.workflows, m.cache);
  st.metrics->pending.store(st.pending());
}

// sync mode: the slow baseline, a commit for every single change, in order. Rows already
// committed when a later one fails are simply written again later: upserts are idempotent.
bool write_each(writer_actor* self, const persist& m) {
  auto& st = self->state;
  auto one = [&](write_batch b) {
    auto t0 = steady_us();
    auto res = st.db->write(b);
    if (!res) {
      note_error(st, res.error());
      return false;
    }
    st.metrics->batches.fetch_add(1);
    st.metrics->rows.fetch_add(b.size());
    st.metrics->last_batch.store(b.size());
    st.metrics->commit_us_total.fetch_add(steady_us() - t0);
    return true;
  };
  for (const auto& r : m.nodes) {
    write_batch b;
    b.nodes.push_back(r);
    if (!one(std::move(b))) {
      return false;
    }
  }
  for (const auto& r : m.runs) {
    write_batch b;
    b.runs.push_back(r);
    if (!one(std::move(b))) {
      return false;
    }
  }
  if (!m.workflows.empty() || !m.cache.empty()) {
    write_batch b;
    b.workflows = m.workflows;
    b.cache = m.cache;
    return one(std::move(b));
  }
  return true;
}

// Decides when what is pending gets committed.
void schedule_flush(writer_actor* self) {
  auto& st = self->state;
  if (st.pending() == 0 && st.waiters.empty()) {
    return;
  }
  const bool queue_empty = self->mailbox().empty();
  const std::int64_t now = steady_us();
  // The batch's age counts from when its oldest row was sent: rows that queued in the mailbox
  // during a long commit may already be due.
  std::int64_t due = st.first_pending_us + st.config.flush_ms * 1000 - now;
  if (!st.waiters.empty()) {
    // Group commit: durable callers wait, so the batch is due after the commit window.
    due = std::min(due, st.first_waiter_us + st.config.commit_delay_us - now);
  }
  if (st.pending() >= st.config.batch_max || st.draining || (due <= 0 && queue_empty)) {
    flush(self);
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
  if (st.config.mode == persistence_mode::sync && !st.retrying && st.pending() == 0) {
    st.metrics->rows_received.fetch_add(m.nodes.size() + m.runs.size());
    if (write_each(self, m)) {
      return caf::ok_atom::value;
    }
    arm_retry(self);  // what failed joins the pending set and is retried with backoff
  }
  absorb(st, m);
  caf::result<caf::ok_atom> answer = caf::ok_atom::value;
  if (ack) {
    auto rp = self->make_response_promise<caf::ok_atom>();
    if (st.waiters.empty()) {
      st.first_waiter_us = m.sent_us > 0 ? m.sent_us : steady_us();
    }
    st.waiters.push_back(rp);
    answer = rp;
  }
  if (st.retrying) {
    return answer;  // the backoff timer flushes
  }
  schedule_flush(self);
  return answer;
}

caf::behavior writer_behavior(writer_actor* self, std::shared_ptr<store> db, writer_config config,
                              std::shared_ptr<writer_metrics> metrics) {
  auto& st = self->state;
  st.db = std::move(db);
  st.config = config;
  st.metrics = std::move(metrics);
  if (config.nice != 0) {
    // A detached actor is initialized on its own thread: this renices only the writer.
    const auto tid = static_cast<id_t>(::syscall(SYS_gettid));
    errno = 0;
    int current = ::getpriority(PRIO_PROCESS, tid);
    if (errno == 0) {
      ::setpriority(PRIO_PROCESS, tid, current + config.nice);  // best effort
    }
  }
  return {
      [self](persist& m) { accept(self, m, false); },
      [self](commit_atom, persist& m) -> caf::result<caf::ok_atom> {
        return accept(self, m, true);
      },
      [self](flush_due_atom, std::uint64_t generation) {
        auto& st = self->state;
        if (generation == st.generation && !st.retrying) {
          flush(self);
        }
      },
      [self](retry_due_atom) {
        auto& st = self->state;
        st.metrics->retries.fetch_add(1);
        if (flush(self) && st.draining) {
          st.drain_waiter.deliver(caf::ok_atom::value);
          self->quit();
        }
      },
      [self](drain_atom) -> caf::result<caf::ok_atom> {
        auto& st = self->state;
        st.draining = true;
        if (st.retrying) {
          st.drain_waiter = self->make_response_promise<caf::ok_atom>();
          return st.drain_waiter;
        }
        if (flush(self)) {
          self->quit();
          return caf::ok_atom::value;
        }
        st.drain_waiter = self->make_response_promise<caf::ok_atom>();
        return st.drain_waiter;
      },
  };
}

}  // namespace

caf::actor spawn_writer(caf::actor_system& sys, std::unique_ptr<store> st, writer_config config,
                        std::shared_ptr<writer_metrics> metrics, trace::tracer* trace) {
  std::shared_ptr<store> shared(std::move(st));  // spawn() arguments must be copyable
  if (trace != nullptr) {
    return trace::spawn_traced<writer_actor, caf::detached>(sys, trace, writer_behavior,
                                                            std::move(shared), config,
                                                            std::move(metrics));
  }
  return sys.spawn<caf::detached>(writer_behavior, std::move(shared), config, std::move(metrics));
}

}  // namespace troupe
