#include "actors/writer_actor.hpp"

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <functional>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/response_promise.hpp>
#include <caf/stateful_actor.hpp>

#include "actors/traced_actor.hpp"
#include "actors/write_policy.hpp"
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
  c.dead_letters = dead_letters.load();
  c.fenced_runs = fenced_runs.load();
  c.lost_rows = lost_rows.load();
  return c;
}

void writer_metrics::wait_below(std::size_t bound) {
  if (pending.load(std::memory_order_relaxed) < bound) {
    return;
  }
  std::unique_lock<std::mutex> lock(mutex);
  drained.wait(lock, [&] { return pending.load() < bound || closed.load(); });
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

std::int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// ---- the committer: coalescing, writing, isolating refused rows ---------------------------

// Builds one batch from changes in the order they were sent: the newest state per key wins, so
// a "running" row followed by a "succeeded" one for the same attempt costs one row. The rows
// are moved once, and duplicates are found with one table of indices (keep_newest_rows): no
// allocation per row. The store is told the keys are unique, so it does not look again.
write_batch coalesce(std::vector<persist>& parts) {
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
  auto take = [](auto& from, auto& to) {
    std::move(from.begin(), from.end(), std::back_inserter(to));
  };
  for (auto& p : parts) {
    take(p.runs, b.runs);
    take(p.nodes, b.nodes);
    take(p.workflows, b.workflows);
    take(p.cache, b.cache);
  }
  parts.clear();
  keep_newest_rows(b);
  b.unique_keys = true;
  return b;
}

// Rows [from, to) of a batch, counted over its tables in the order runs, nodes, workflows,
// cache. Copies: only a batch that a database refused is split.
write_batch rows_between(const write_batch& b, std::size_t from, std::size_t to) {
  write_batch out;
  out.unique_keys = b.unique_keys;
  std::size_t base = 0;
  auto take = [&](const auto& rows, auto& into) {
    const std::size_t lo = std::clamp(from, base, base + rows.size()) - base;
    const std::size_t hi = std::clamp(to, base, base + rows.size()) - base;
    into.assign(rows.begin() + static_cast<std::ptrdiff_t>(lo),
                rows.begin() + static_cast<std::ptrdiff_t>(hi));
    base += rows.size();
  };
  take(b.runs, out.runs);
  take(b.nodes, out.nodes);
  take(b.workflows, out.workflows);
  take(b.cache, out.cache);
  return out;
}

void append(write_batch& to, write_batch&& from) {
  auto move_into = [](auto& src, auto& dst) {
    std::move(src.begin(), src.end(), std::back_inserter(dst));
  };
  move_into(from.runs, to.runs);
  move_into(from.nodes, to.nodes);
  move_into(from.workflows, to.workflows);
  move_into(from.cache, to.cache);
  to.unique_keys = to.unique_keys && from.unique_keys;
}

constexpr std::size_t dead_letter_text_max = 64 * 1024;

std::string cut(std::string text) {
  if (text.size() > dead_letter_text_max) {
    text.resize(dead_letter_text_max);
  }
  return text;
}

json::value json_or_null(const json_ptr& v) {
  return v ? *v : json::value(nullptr);
}

// The single row of `b` (a batch of one), as a dead letter.
dead_letter_row dead_letter_of(const write_batch& b, const store_error& e) {
  dead_letter_row d;
  d.error = e.message;
  d.at = wall_us();
  json::object o;
  if (!b.runs.empty()) {
    const auto& r = b.runs.front();
    d.run_id = r.run_id;
    d.table = "runs";
    d.key = r.run_id;
    o = {{"run_id", r.run_id},
         {"workflow", r.workflow},
         {"version", r.version},
         {"status", to_string(r.status)},
         {"inputs", json_or_null(r.inputs)},
         {"outputs", json_or_null(r.outputs)},
         {"error", r.error},
         {"started_at", r.started_at},
         {"finished_at", r.finished_at},
         {"owner", r.owner},
         {"epoch", r.epoch}};
  } else if (!b.nodes.empty()) {
    const auto& n = b.nodes.front();
    d.run_id = n.run_id;
    d.table = "node_executions";
    d.key =
        n.run_id + "/" + n.node_id + "/" + std::to_string(n.item) + "/" + std::to_string(n.attempt);
    o = {{"run_id", n.run_id},
         {"node_id", n.node_id},
         {"item", n.item},
         {"attempt", n.attempt},
         {"status", to_string(n.status)},
         {"input", json_or_null(n.input)},
         {"output", json_or_null(n.output)},
         {"error", n.error},
         {"started_at", n.started_at},
         {"finished_at", n.finished_at},
         {"child_run_id", n.child_run_id}};
  } else if (!b.workflows.empty()) {
    const auto& w = b.workflows.front();
    d.table = "workflows";
    d.key = w.name + "@" + w.version;
    o = {{"name", w.name}, {"version", w.version}, {"hash", w.hash}, {"document", w.document}};
  } else if (!b.cache.empty()) {
    const auto& c = b.cache.front();
    d.table = "cache_entries";
    d.key = c.key;
    o = {{"key", c.key},
         {"workflow", c.workflow},
         {"node_id", c.node_id},
         {"kind", c.kind},
         {"value", json_or_null(c.value)}};
  }
  d.row = cut(to_json_text(o));
  return d;
}

struct job_writer {
  store& db;
  commit_outcome& out;
  std::vector<dead_letter_row> dead;

  // Writes `b` as one transaction. A permanent error splits it in halves, each written on its
  // own, until a row the database refuses is alone: that row becomes a dead letter and the rest
  // is committed. A transient error stops everything: `b` (or what of it was not written yet)
  // goes to out.retry, and false is returned.
  bool write(const write_batch& b) {
    const auto t0 = steady_us();
    auto res = db.write(b);
    out.commit_us += steady_us() - t0;
    if (res) {
      out.commits += 1;
      out.rows += b.size();
      out.largest = std::max<std::uint64_t>(out.largest, b.size());
      for (auto& run : res->fenced_runs) {
        out.fenced_runs.push_back(std::move(run));
      }
      return true;
    }
    if (res.error().transient) {
      out.error = res.error();
      append(out.retry, write_batch(b));
      return false;
    }
    if (b.size() <= 1) {
      if (b.size() == 1) {
        dead.push_back(dead_letter_of(b, res.error()));
      }
      return true;
    }
    const std::size_t mid = b.size() / 2;
    if (!write(rows_between(b, 0, mid))) {
      append(out.retry, rows_between(b, mid, b.size()));
      return false;
    }
    return write(rows_between(b, mid, b.size()));
  }
};

commit_outcome run_job(store& db, commit_job& job) {
  commit_outcome out;
  write_batch batch = coalesce(job.parts);
  job_writer w{db, out, {}};
  if (!job.each) {
    w.write(batch);
  } else {
    // sync mode: the slow baseline, a commit for every single change.
    const std::size_t n = batch.size();
    for (std::size_t i = 0; i < n; ++i) {
      if (!w.write(rows_between(batch, i, i + 1))) {
        append(out.retry, rows_between(batch, i + 1, n));
        break;
      }
    }
  }
  if (!w.dead.empty()) {
    out.dead_letters = w.dead.size();
    out.refused_error = w.dead.front().error;
    for (const auto& d : w.dead) {
      if (!d.run_id.empty() && std::find(out.refused_runs.begin(), out.refused_runs.end(),
                                         d.run_id) == out.refused_runs.end()) {
        out.refused_runs.push_back(d.run_id);
      }
      std::fprintf(stderr,
                   "troupe: writer: the database refused a row for good (%s %s): %s; it is kept "
                   "as a dead letter\n",
                   d.table.c_str(), d.key.c_str(), d.error.c_str());
    }
    if (auto kept = db.write_dead_letters(w.dead); !kept) {
      std::fprintf(stderr, "troupe: writer: %zu dead letters could not be stored either: %s\n",
                   w.dead.size(), kept.error().message.c_str());
    }
  }
  return out;
}

}  // namespace
}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::commit_job)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::commit_outcome)

namespace troupe {
namespace {

// The committer: the writer's blocking half, on a thread of its own. Keeping store calls here
// leaves the writer itself an ordinary scheduled actor: run actors hand it rows without waking
// a thread, the writer wakes this thread once per batch, and rows keep coalescing while a batch
// is written. It owns the store; nothing else calls it.
struct committer_state {
  std::shared_ptr<store> db;
  // Whether the store has sched_yield installed between write slices (commit_job::yield). Set
  // only when it changes: wrappers pass it down, and may wrap it, on every call.
  bool yield_installed = false;
  static inline const char* name = "committer";
};
using committer_actor = caf::stateful_actor<committer_state>;

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
        auto& st = self->state;
        auto& db = *st.db;
        auto rp = self->make_response_promise<commit_outcome>();
        // A job that must not yield is written unsliced too: fewer, larger statements.
        if (job.yield != st.yield_installed) {
          db.set_write_yield(job.yield ? std::function<void()>([] { ::sched_yield(); })
                                       : std::function<void()>());
          st.yield_installed = job.yield;
        }
        commit_outcome out = run_job(db, job);
        const bool ok = !out.error;
        rp.deliver(std::move(out));
        if (ok) {
          // After the answer: housekeeping (a WAL checkpoint) must not sit in anyone's latency.
          db.maintain();
        }
        return rp;
      },
      [self](renew_atom, const lease_renewal& r) -> caf::result<std::vector<std::string>> {
        auto lost = self->state.db->renew_leases(r.owner, r.runs, r.lease_until_us);
        if (!lost) {
          return caf::make_error(caf::sec::runtime_error, lost.error().message);
        }
        return std::move(*lost);
      },
  };
}

// ---- the writer: a scheduled actor over write_policy --------------------------------------

struct writer_state {
  caf::actor committer;
  std::shared_ptr<writer_metrics> metrics;
  writer_hooks hooks;
  std::unique_ptr<write_policy> policy;
  std::unordered_map<write_policy::waiter_id, caf::response_promise> promises;
  caf::response_promise drain_waiter;
  bool drain_answered = false;
  bool full = false;     // pending was at or above pending_max when last published
  bool failing = false;  // commits fail since the last success
  std::uint64_t failed_commits = 0;

  static inline const char* name = "writer";
  std::uint64_t trace_rows() const { return metrics ? metrics->rows.load() : 0; }
  std::uint64_t trace_batches() const { return metrics ? metrics->batches.load() : 0; }
};
using writer_actor = caf::stateful_actor<writer_state>;

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
  const std::size_t p = st.policy->uncommitted();
  st.metrics->pending.store(p);
  const bool was_full = st.full;
  st.full = p >= st.hooks.pending_max;
  if (!st.full) {
    {
      // Producers blocked in wait_below() re-check under the mutex.
      std::lock_guard<std::mutex> lock(st.metrics->mutex);
    }
    st.metrics->drained.notify_all();
    if (was_full && st.hooks.room) {
      st.hooks.room();
    }
  }
}

// Rows came in: producers see the backlog grow; once it reaches pending_max the writer owes
// them a room() call when it falls below again (publish_pending).
void note_absorbed(writer_state& st) {
  const std::size_t p = st.policy->uncommitted();
  st.metrics->pending.store(p);
  st.full = st.full || p >= st.hooks.pending_max;
}

void answer_all(writer_actor* self, std::vector<write_policy::answer> answers) {
  auto& st = self->state;
  for (auto& a : answers) {
    auto it = st.promises.find(a.id);
    if (it == st.promises.end()) {
      continue;
    }
    if (a.error.empty()) {
      it->second.deliver(caf::ok_atom::value);
    } else {
      it->second.deliver(caf::make_error(caf::sec::runtime_error, std::move(a.error)));
    }
    st.promises.erase(it);
  }
}

void act(writer_actor* self);
void finish_drain(writer_actor* self, std::uint64_t dropped);

// Gives up: every waiter is answered with `why`, what is not committed is counted as lost,
// producers waiting for room are released, and the writer quits.
void stop_writing(writer_actor* self, const std::string& why) {
  auto& st = self->state;
  std::size_t dropped = 0;
  answer_all(self, st.policy->give_up(why, dropped));
  st.metrics->lost_rows.fetch_add(dropped);
  st.metrics->pending.store(0);
  {
    std::lock_guard<std::mutex> lock(st.metrics->mutex);
    st.metrics->closed.store(true);
  }
  st.metrics->drained.notify_all();
  if (dropped > 0) {
    std::fprintf(stderr, "troupe: writer: %zu log rows were not committed: %s\n", dropped,
                 why.c_str());
  }
  finish_drain(self, dropped);
}

void finish_drain(writer_actor* self, std::uint64_t dropped) {
  auto& st = self->state;
  {
    std::lock_guard<std::mutex> lock(st.metrics->mutex);
    st.metrics->closed.store(true);
  }
  st.metrics->drained.notify_all();
  if (!st.drain_answered && st.drain_waiter.pending()) {
    st.drain_answered = true;
    st.drain_waiter.deliver(caf::ok_atom::value, dropped);
  }
  self->quit();
}

void on_outcome(writer_actor* self, commit_outcome& o) {
  auto& st = self->state;
  auto& m = *st.metrics;
  m.commit_us_total.fetch_add(o.commit_us);
  if (o.commits > 0) {
    m.batches.fetch_add(o.commits);
    m.rows.fetch_add(o.rows);
    m.last_batch.store(o.largest);
    auto prev = m.max_batch.load();
    while (o.largest > prev && !m.max_batch.compare_exchange_weak(prev, o.largest)) {
    }
  }
  m.dead_letters.fetch_add(o.dead_letters);
  if (!o.fenced_runs.empty()) {
    m.fenced_runs.fetch_add(o.fenced_runs.size());
    if (st.hooks.lost_runs) {
      st.hooks.lost_runs(o.fenced_runs);
    }
  }
  auto error = o.error;
  auto answers = st.policy->settle(o, steady_us());
  if (error && st.policy->retrying()) {
    if (!st.failing) {
      // Said once per streak, so that a database that is down or full is never silent.
      st.failing = true;
      std::fprintf(stderr,
                   "troupe: writer: cannot commit (%s); retrying with backoff, nothing is "
                   "dropped\n",
                   error->message.c_str());
    }
    ++st.failed_commits;
    note_error(st, *error);
    publish_pending(st);
    answer_all(self, std::move(answers));
    self->delayed_send(self, std::chrono::milliseconds(st.policy->retry_after_ms()),
                       retry_due_atom::value);
    return;
  }
  if (st.failing) {
    std::fprintf(stderr, "troupe: writer: commits resumed after %llu failed attempts\n",
                 static_cast<unsigned long long>(st.failed_commits));
    st.failing = false;
    st.failed_commits = 0;
  }
  m.lag_us.store(st.policy->last_lag_us());
  // The counters first: a caller told its rows are committed may read them at once.
  publish_pending(st);
  answer_all(self, std::move(answers));
  act(self);
}

void start_commit(writer_actor* self) {
  auto& st = self->state;
  if (st.policy->nothing_to_write()) {
    answer_all(self, st.policy->answer_idle());
    if (st.policy->drained()) {
      finish_drain(self, 0);
    }
    return;
  }
  self->request(st.committer, caf::infinite, st.policy->take_job())
      .then([self](commit_outcome& o) { on_outcome(self, o); },
            [self](caf::error& e) {
              // The committer is gone (it died, or the engine is stopping): nothing can be
              // written. Everyone waiting is told, never left without an answer.
              stop_writing(self, "not committed: the writer's committer stopped (" +
                                     self->system().render(e) + ")");
            });
}

// Carries out what the policy decides after an event.
void act(writer_actor* self) {
  auto& st = self->state;
  if (st.policy->drained()) {
    finish_drain(self, 0);
    return;
  }
  const auto s = st.policy->next(steady_us(), self->mailbox().empty());
  switch (s.what) {
    case write_policy::step::kind::idle:
      break;
    case write_policy::step::kind::commit:
      start_commit(self);
      break;
    case write_policy::step::kind::flush_behind_queue:
      self->send(self, flush_due_atom::value, s.generation);
      break;
    case write_policy::step::kind::arm_timer:
      self->delayed_send(
          self, std::chrono::microseconds(std::max<std::int64_t>(0, s.at_us - steady_us())),
          flush_due_atom::value, s.generation);
      break;
  }
}

std::string run_of(const persist& m) {
  return m.runs.empty() ? std::string() : m.runs.front().run_id.str();
}

caf::behavior writer_behavior(writer_actor* self, caf::actor committer, writer_config config,
                              std::shared_ptr<writer_metrics> metrics, writer_hooks hooks) {
  auto& st = self->state;
  st.committer = committer;
  st.metrics = std::move(metrics);
  hooks.pending_max = config.pending_max;
  st.hooks = std::move(hooks);
  st.policy = std::make_unique<write_policy>(config);
  // The committer lives as long as the writer: whichever way the writer ends (drained, or
  // given up at the deadline), the store is closed after the job in hand.
  self->attach_functor([committer](const caf::error&) {
    caf::anon_send_exit(committer, caf::exit_reason::user_shutdown);
  });
  return {
      [self](persist& m) {
        auto& st = self->state;
        st.metrics->rows_received.fetch_add(m.size());
        st.policy->absorb(std::move(m), steady_us());
        note_absorbed(st);
        act(self);
      },
      [self](commit_atom, persist& m) -> caf::result<caf::ok_atom> {
        auto& st = self->state;
        const auto now = steady_us();
        const auto since = m.sent_us > 0 ? m.sent_us : now;
        std::string run = run_of(m);
        st.metrics->rows_received.fetch_add(m.size());
        st.policy->absorb(std::move(m), now);
        note_absorbed(st);
        auto rp = self->make_response_promise<caf::ok_atom>();
        st.promises.emplace(st.policy->add_waiter(std::move(run), since), rp);
        act(self);
        return rp;
      },
      [self](flush_due_atom, std::uint64_t generation) {
        if (self->state.policy->flush(generation)) {
          start_commit(self);
        }
      },
      [self](retry_due_atom) {
        auto& st = self->state;
        st.metrics->retries.fetch_add(1);
        st.policy->retry_due();
        start_commit(self);
      },
      [self](renew_atom a, const lease_renewal& r) {
        return self->delegate(self->state.committer, a, r);
      },
      [self](drain_atom, std::int64_t deadline_ms) -> caf::result<caf::ok_atom, std::uint64_t> {
        auto& st = self->state;
        st.policy->drain();
        st.drain_waiter = self->make_response_promise<caf::ok_atom, std::uint64_t>();
        self->delayed_send(self, std::chrono::milliseconds(std::max<std::int64_t>(0, deadline_ms)),
                           give_up_atom::value);
        if (!st.policy->in_flight() && !st.policy->retrying()) {
          act(self);
        }
        return st.drain_waiter;
      },
      [self](give_up_atom) {
        auto& st = self->state;
        std::string last;
        {
          std::lock_guard<std::mutex> lock(st.metrics->mutex);
          last = st.metrics->last_error;
        }
        std::string why = "not committed: the engine shut down and its drain deadline passed";
        if (!last.empty()) {
          why += " (the database said: " + last + ")";
        }
        stop_writing(self, why);
      },
  };
}

}  // namespace

caf::actor spawn_writer(caf::actor_system& sys, std::unique_ptr<store> st, writer_config config,
                        std::shared_ptr<writer_metrics> metrics, trace::tracer* trace,
                        writer_hooks hooks) {
  std::shared_ptr<store> shared(std::move(st));  // spawn() arguments must be copyable
  if (trace != nullptr) {
    auto committer = trace::spawn_traced<committer_actor, caf::detached>(
        sys, trace, committer_behavior, std::move(shared), config.nice);
    return trace::spawn_traced<writer_actor, caf::no_spawn_options>(
        sys, trace, writer_behavior, committer, config, std::move(metrics), std::move(hooks));
  }
  auto committer = sys.spawn<caf::detached>(committer_behavior, std::move(shared), config.nice);
  return sys.spawn(writer_behavior, committer, config, std::move(metrics), std::move(hooks));
}

}  // namespace troupe
