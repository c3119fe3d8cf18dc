#include "actors/run_actor.hpp"

#include "actors/lease_keeper.hpp"

#include <chrono>
#include <deque>
#include <exception>
#include <unordered_map>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/response_handle.hpp>
#include <caf/stateful_actor.hpp>

#include "actors/inflight_gate.hpp"
#include "actors/traced_actor.hpp"
#include "messages/messages.hpp"

namespace troupe {

namespace {

std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Runs on the run actor's thread only. The state machine decides; this moves its commands in
// and out: quick tasks are answered inline (no hop), everything else gets a node actor.
struct run_actor_state {
  std::unique_ptr<run_state> machine;
  shared_text run_id;  // the machine's, shared by every row this run writes
  services_ptr services;
  policy_ptr policy;  // the run's limits (null: none), handed to its tasks and child runs
  task_table tasks;  // node index -> task, shared by the runs of this plan
  std::shared_ptr<run_sink> sink;
  bool events = false;
  caf::actor parent;
  // Child runs only (a pointer: most runs have no parent, and every open run holds its state).
  struct parent_ids {
    std::string run_id;
    std::string node_id;
  };
  std::unique_ptr<const parent_ids> parent_of;
  int depth = 0;
  std::unordered_map<std::uint64_t, caf::actor> node_of_exec;
  std::unordered_map<caf::actor_addr, std::uint64_t> exec_of_node;
  std::vector<command> out;
  std::vector<command> batch;
  std::vector<caf::actor> idle_nodes;  // answered their last attempt; reused for the next
  // Waiting for a slot of the engine-wide limit. A vector: an empty std::deque allocates ~600
  // bytes, and every open run has one of these.
  std::vector<cmd::dispatch> gated;
  bool waiting_gate = false;          // queued in the gate, a permit may be on its way
  std::vector<node_row> rows;         // records of this turn, sent to the writer in one message
  std::vector<cache_row> cache_rows;  // outputs cached this turn, sent along with `rows`
  // The run's "running" row goes with the first turn's rows: one message to the writer for a
  // run whose tasks all finish in its first turn, not two.
  bool run_row_due = false;
  // Cache keys of attempts running in node actors, to store their output when it succeeds.
  struct cached_exec {
    std::uint32_t node;
    std::string key;
  };
  std::unordered_map<std::uint64_t, cached_exec> key_of_exec;
  // Events of this turn, delivered after the turn's rows went to the writer: whoever reacts to
  // an event (say, by asking the writer to flush) is behind those rows in the writer's mailbox.
  std::vector<run_event> events_due;
  bool done = false;
  // Ownership: the epoch this run's rows are written under; `lost` once another engine owns the
  // run (nothing more is written); what went wrong with the log, for the result.
  std::int64_t epoch = 0;
  bool lost = false;
  std::string persistence_error;
  // Durable runs: a commit request is out for the successes of items that hold their slots.
  bool confirming = false;

  static inline const char* name = "run";
  std::string_view trace_run() const {
    return machine ? std::string_view(machine->run_id()) : std::string_view();
  }
};

using run_actor = caf::stateful_actor<run_actor_state>;

// Command buffers are only needed while a run actor handles a message. An idle run (100,000 of
// them may wait on a sleep) keeps none: it lends its buffers to the thread when it goes idle and
// borrows them back when a message arrives, so a thread owns one warm pair at most.
thread_local std::vector<command> spare_out;
thread_local std::vector<command> spare_batch;

void borrow_buffers(run_actor_state& st) {
  if (st.out.capacity() == 0) {
    st.out.swap(spare_out);
  }
  if (st.batch.capacity() == 0) {
    st.batch.swap(spare_batch);
  }
}

void return_buffers(run_actor_state& st) {
  if (!st.out.empty() || !st.batch.empty()) {
    return;
  }
  if (spare_out.capacity() < st.out.capacity()) {
    spare_out.swap(st.out);
  }
  if (spare_batch.capacity() < st.batch.capacity()) {
    spare_batch.swap(st.batch);
  }
  std::vector<command>().swap(st.out);
  std::vector<command>().swap(st.batch);
}

void drive(run_actor* self);
void confirm_held_slots(run_actor* self);
std::string error_text(run_actor* self, const caf::error& e);

void deliver_events(run_actor_state& st) {
  if (st.events_due.empty()) {
    return;
  }
  for (const auto& e : st.events_due) {
    st.sink->event(e);
  }
  st.events_due.clear();
}

node_row to_row(const run_actor_state& st, const node_record& rec) {
  const auto& m = *st.machine;
  node_row r;
  r.run_id = st.run_id;
  r.node_id = m.workflow().nodes[rec.node].id;
  r.item = rec.item;
  r.attempt = rec.attempt;
  r.status = rec.status;
  r.input = rec.input;
  r.output = rec.output;
  r.error = rec.error;
  r.cache = rec.cache;
  r.spec_cache = rec.spec_cache;
  r.child_run_id = rec.child_run;
  r.started_seq = rec.started_seq;
  r.finished_seq = rec.finished_seq;
  r.worker = rec.worker;
  r.lost = rec.lost;
  r.epoch = st.epoch;
  std::int64_t off = st.services->wall_offset_us;
  r.started_at = rec.started_us ? rec.started_us + off : 0;
  r.finished_at = rec.finished_us ? rec.finished_us + off : 0;
  return r;
}

// Rows of this turn by node (row index + 1; 0: none), for nodes outside for_each. An inline
// quick task's "running" record and its final one land in the same turn: the final one takes the
// first one's place, so the writer never receives (nor coalesces) a row that is already stale.
// Thread-local scratch: a turn runs on one thread, and every entry a turn sets is cleared when
// its rows leave (clear_turn_rows).
thread_local std::vector<std::uint32_t> turn_row;
thread_local std::vector<std::uint32_t> turn_touched;

void add_row(run_actor_state& st, const node_record& rec) {
  if (rec.item < 0 && rec.attempt > 0) {
    if (turn_row.size() <= rec.node) {
      turn_row.resize(rec.node + 1, 0);
    }
    std::uint32_t& slot = turn_row[rec.node];
    if (slot != 0 && st.rows[slot - 1].attempt == rec.attempt) {
      st.rows[slot - 1] = to_row(st, rec);
      return;
    }
    if (slot == 0) {
      turn_touched.push_back(rec.node);
    }
    slot = static_cast<std::uint32_t>(st.rows.size() + 1);
  }
  st.rows.push_back(to_row(st, rec));
}

void clear_turn_rows() {
  for (auto n : turn_touched) {
    turn_row[n] = 0;
  }
  turn_touched.clear();
}

run_row run_row_of(const run_actor_state& st) {
  const auto& m = *st.machine;
  const plan& p = m.workflow();
  run_row r;
  r.run_id = st.run_id;
  r.workflow = p.name;
  r.version = p.version;
  r.plan_hash = p.hash;
  r.status = m.finished() ? m.status() : run_status::running;
  r.inputs = m.ctx().inputs();
  if (m.status() == run_status::succeeded) {
    r.outputs = m.outputs();
  }
  r.error = m.error();
  if (st.parent_of) {
    r.parent_run_id = st.parent_of->run_id;
    r.parent_node_id = st.parent_of->node_id;
  }
  std::int64_t off = st.services->wall_offset_us;
  r.started_at = m.started_us() + off;
  r.finished_at = m.finished() ? m.finished_us() + off : 0;
  r.owner = st.services->owner;
  r.epoch = st.epoch;
  if (st.services->lease_ms > 0) {
    r.lease_until = now_us() + off + st.services->lease_ms * 1000;
  }
  return r;
}

// The writer's errors carry their text as the context's string.
std::string error_text(run_actor* self, const caf::error& e) {
  if (e.context().match_elements<std::string>()) {
    return e.context().get_as<std::string>(0);
  }
  return self->system().render(e);
}

// In sync mode every turn waits for its commit: `await` holds back all other messages (task
// results, timers) until the writer has answered, which is exactly the per-change commit cost
// this mode exists to show.
void send_rows(run_actor* self) {
  auto& st = self->state;
  if (st.lost) {
    st.rows.clear();
    clear_turn_rows();
    st.cache_rows.clear();
    st.run_row_due = false;
    return;  // another engine owns the run now: its rows are not ours to write
  }
  persist m;
  m.sent_us = now_us();
  m.nodes = std::move(st.rows);
  st.rows.clear();
  clear_turn_rows();
  m.cache = std::move(st.cache_rows);
  st.cache_rows.clear();
  if (st.run_row_due) {
    st.run_row_due = false;
    m.runs.push_back(run_row_of(st));
  }
  if (st.services->mode == persistence_mode::sync) {
    self->request(st.services->writer, caf::infinite, commit_atom::value, std::move(m))
        .await([](caf::ok_atom) {},
               [self](caf::error& e) {
                 // Rows refused, the run lost, or the engine gave up at shutdown: the run goes
                 // on, and its result says its log is incomplete.
                 auto& st = self->state;
                 if (st.persistence_error.empty()) {
                   st.persistence_error = error_text(self, e);
                 }
               });
  } else {
    self->send(st.services->writer, std::move(m));
  }
}

void spawn_attempt(run_actor* self, cmd::dispatch& d);

// A successful output of a cached node: into the engine's memory cache now, and to the store
// with this turn's records (the writer upserts it; other engines on the database see it after
// that commit). Failures are never cached.
void remember(run_actor_state& st, const std::string& key, std::uint32_t node, json_ptr output) {
  if (key.empty() || !st.services->cache_remember) {
    return;
  }
  st.services->cache_remember(key, output);
  if (st.services->writer) {
    const auto& m = *st.machine;
    cache_row row;
    row.key = key;
    row.workflow = m.workflow().name;
    row.node_id = m.workflow().nodes[node].id;
    row.value = std::move(output);
    row.kind = "output";
    row.created_at = now_us() + st.services->wall_offset_us;
    st.cache_rows.push_back(std::move(row));
  }
}

void dispatch(run_actor* self, cmd::dispatch& d) {
  auto& st = self->state;
  auto& machine = *st.machine;
  const auto& def = (*st.tasks)[d.node];
  const auto& np = machine.workflow().nodes[d.node];
  if (!def) {
    machine.task_finished(d.exec, task_result::failure("unknown task '" + np.task + "'"), now_us(),
                          st.out);
    return;
  }
  // A dynamic node always gets a node actor: it generates, compiles and waits for a child
  // run, and its cache key names the generated workflow (the node actor looks that up).
  if (!d.dynamic_inputs && !d.cache_key.empty() && st.services->cache_lookup) {
    // A hit never starts the task: no call, no node actor, no slot of the engine-wide limit.
    if (auto hit = st.services->cache_lookup(d.cache_key)) {
      machine.task_finished_cached(d.exec, std::move(hit), now_us(), st.out);
      return;
    }
  }
  // Not in memory but maybe in the store: a node actor reads it on the blocking pool, so even
  // a quick task's attempt leaves this thread.
  if (def->kind == task_kind::quick && !d.dynamic_inputs &&
      (d.cache_key.empty() || !st.services->cache_load)) {
    task_call call{machine.run_id(), np.id, d.item, d.attempt, st.policy.get()};
    task_result r;
    try {
      r = def->run(*d.input, call);
    } catch (const std::exception& e) {
      r = task_result::failure(std::string("task threw: ") + e.what());
    } catch (...) {
      r = task_result::failure("task threw an unknown exception");
    }
    if (r.ok && !d.cache_key.empty()) {
      remember(st, d.cache_key, d.node, make_json(r.output));
    }
    machine.task_finished(d.exec, std::move(r), now_us(), st.out);
    return;
  }
  if (st.services->gate && !st.services->gate->try_acquire()) {
    st.gated.push_back(std::move(d));
    if (!st.waiting_gate) {
      st.waiting_gate = true;
      st.services->gate->wait(caf::actor_cast<caf::actor>(self));
    }
    return;
  }
  spawn_attempt(self, d);
}

void spawn_attempt(run_actor* self, cmd::dispatch& d) {
  auto& st = self->state;
  const auto& machine = *st.machine;
  const auto& def = (*st.tasks)[d.node];
  const auto& np = machine.workflow().nodes[d.node];
  node_spawn_args a;
  a.exec = d.exec;
  a.task = def;
  a.input = std::move(d.input);
  a.run_id = machine.run_id();
  a.node_id = np.id;
  a.item = d.item;
  a.attempt = d.attempt;
  a.depth = st.depth;
  a.policy = st.policy;
  const bool dynamic = static_cast<bool>(d.dynamic_inputs);
  if (!dynamic && !d.cache_key.empty() && st.services->cache_load) {
    a.stored_key = d.cache_key;
  }
  if (dynamic) {
    a.dynamic = std::make_shared<const dynamic_attempt>(dynamic_attempt{
        std::move(d.dynamic_inputs), std::move(d.cache_key), machine.workflow().name});
  }
  caf::actor node = start_node(st.services, self, st.idle_nodes, std::move(a));
  st.exec_of_node.emplace(node.address(), d.exec);
  st.node_of_exec.emplace(d.exec, std::move(node));
  if (!dynamic && !d.cache_key.empty()) {
    st.key_of_exec.emplace(d.exec, run_actor_state::cached_exec{d.node, std::move(d.cache_key)});
  }
}

void forget_node(run_actor_state& st, std::uint64_t exec) {
  st.key_of_exec.erase(exec);
  auto it = st.node_of_exec.find(exec);
  if (it == st.node_of_exec.end()) {
    return;
  }
  st.exec_of_node.erase(it->second.address());
  st.node_of_exec.erase(it);
  if (st.services->gate) {
    st.services->gate->release();  // every node actor held one slot
  }
}

void deliver(run_actor* self, std::shared_ptr<const run_result> report);

std::shared_ptr<const run_result> report_of(run_actor_state& st, std::string persistence_error) {
  auto r = std::make_shared<run_result>(make_report(*st.machine));
  r->persistence_error = std::move(persistence_error);
  return r;
}

void finish(run_actor* self, const cmd::finish&) {
  auto& st = self->state;
  st.done = true;
  auto report = report_of(st, st.persistence_error);
  if (st.services->writer && !st.lost) {
    persist m;
    m.sent_us = now_us();
    m.nodes = std::move(st.rows);
    st.rows.clear();
    clear_turn_rows();
    m.cache = std::move(st.cache_rows);
    st.cache_rows.clear();
    st.run_row_due = false;  // the final row says it all
    m.runs.push_back(run_row_of(st));
    if (st.services->mode == persistence_mode::durable ||
        st.services->mode == persistence_mode::sync) {
      // The caller hears of the end only once its final record is committed (group commit
      // with other runs: the writer batches these acknowledgements).
      self->request(st.services->writer, caf::infinite, commit_atom::value, std::move(m))
          .then([self, report](caf::ok_atom) { deliver(self, report); },
                [self](caf::error& e) {
                  // Never report a log as durable when it is not: the result says what failed.
                  auto& st = self->state;
                  std::string why = st.persistence_error;
                  if (why.empty()) {
                    why = error_text(self, e);
                  }
                  deliver(self, report_of(st, std::move(why)));
                });
      return;
    }
    self->send(st.services->writer, std::move(m));
  }
  deliver(self, std::move(report));
}

void deliver(run_actor* self, std::shared_ptr<const run_result> report) {
  auto& st = self->state;
  deliver_events(st);
  for (auto& node : st.idle_nodes) {
    self->send(node, cancel_atom::value);  // idle node actors end with their run
  }
  st.idle_nodes.clear();
  st.gated.clear();
  if (st.waiting_gate) {
    st.waiting_gate = false;
    st.services->gate->leave(caf::actor_cast<caf::actor>(self));
  }
  if (st.services->leases) {
    // Before anyone hears of the end: a resume of this run started from a callback registers
    // after this, under its new epoch.
    st.services->leases->release(st.run_id, st.epoch);
  }
  if (st.sink) {
    if (st.events) {
      run_event e;
      e.what = run_event::kind::run_finished;
      e.seq = st.machine->take_event_seq();
      e.run_id = report->run_id;
      e.status = std::string(to_string(report->status));
      e.error = report->error;
      st.sink->event(e);
    }
    st.sink->finished(*report);
  }
  if (st.parent) {
    self->send(st.parent, run_done{report});
  }
  self->quit();
}

void drive(run_actor* self) {
  auto& st = self->state;
  while (!st.out.empty() && !st.done) {
    std::swap(st.out, st.batch);
    for (auto& c : st.batch) {
      if (st.done) {
        break;
      }
      switch (c.index()) {
        case 0:
          dispatch(self, std::get<cmd::dispatch>(c));
          break;
        case 1: {
          auto exec = std::get<cmd::cancel_task>(c).exec;
          std::erase_if(st.gated, [exec](const cmd::dispatch& g) { return g.exec == exec; });
          if (auto it = st.node_of_exec.find(exec); it != st.node_of_exec.end()) {
            self->send(it->second, cancel_atom::value);
            forget_node(st, exec);
          }
          break;
        }
        case 2: {
          const auto& t = std::get<cmd::start_timer>(c);
          // Plans bound every delay (max_delay_ms); the clamp keeps a timer from wrapping anyway.
          self->delayed_send(self,
                             std::chrono::milliseconds(std::min(t.delay_ms, max_delay_ms)),
                             timer_atom::value, t.timer);
          break;
        }
        case 3: {
          const auto& rec = std::get<cmd::record>(c).rec;
          if (st.events && !std::get<cmd::record>(c).silent) {
            st.events_due.push_back(event_of(*st.machine, rec));
          }
          if (st.services->writer) {
            add_row(st, rec);
          }
          break;
        }
        case 4:
          finish(self, std::get<cmd::finish>(c));
          break;
      }
    }
    st.batch.clear();
  }
  if ((!st.rows.empty() || !st.cache_rows.empty() || st.run_row_due) && !st.done) {
    send_rows(self);
  }
  confirm_held_slots(self);
  deliver_events(st);
  return_buffers(st);
}

// Durable runs: items that succeeded hold their slots until their records are committed (the
// rows went to the writer above; this request is answered after a commit that holds them).
void confirm_held_slots(run_actor* self) {
  auto& st = self->state;
  if (st.done || st.confirming || st.lost || st.machine->held_slot_count() == 0 ||
      !st.services->writer) {
    return;
  }
  st.confirming = true;
  auto slots = st.machine->held_slots();
  auto release = [self, slots] {
    auto& st = self->state;
    st.confirming = false;
    if (st.done) {
      return;
    }
    borrow_buffers(st);
    st.machine->release_held_slots(slots, now_us(), st.out);
    drive(self);
  };
  self->request(st.services->writer, caf::infinite, commit_atom::value, persist{})
      .then([release](caf::ok_atom) { release(); },
            [self, release](caf::error& e) {
              auto& st = self->state;
              if (st.persistence_error.empty()) {
                st.persistence_error = error_text(self, e);
              }
              release();
            });
}

caf::behavior run_behavior(run_actor* self, services_ptr services, run_spawn_args args,
                           caf::actor parent) {
  auto& st = self->state;
  st.services = std::move(services);
  st.sink = std::move(args.sink);
  st.events = st.sink && st.sink->wants_events();
  st.parent = std::move(parent);
  st.depth = args.depth;
  st.policy = std::move(args.policy);
  if (!args.parent_run_id.empty()) {
    st.parent_of = std::make_unique<const run_actor_state::parent_ids>(
        run_actor_state::parent_ids{std::move(args.parent_run_id), std::move(args.parent_node_id)});
  }
  st.tasks = st.services->tasks_for(args.plan);
  // Records feed subscribers (and the writer); nobody listening means nothing to build.
  args.options.emit_records = st.events || static_cast<bool>(st.services->writer);
  args.options.hold_item_slots =
      st.services->writer && st.services->mode == persistence_mode::durable;
  const bool new_run = args.options.events_after == 0;
  st.machine = std::make_unique<run_state>(std::move(args.plan), std::move(args.options));
  for (auto& [node, output] : args.restored) {
    st.machine->restore(node, std::move(output));
  }
  for (auto& [node, n] : args.prior_attempts) {
    st.machine->continue_attempts(node, n);
  }
  for (auto& [node, item, output] : args.restored_items) {
    st.machine->restore_item(node, item, std::move(output));
  }
  st.epoch = args.epoch;
  if (st.services->writer) {
    // Attempts the dead process left running are closed first, under this run's epoch.
    for (auto& r : args.interrupted) {
      r.epoch = st.epoch;
      r.finished_seq = st.machine->take_event_seq();
      st.rows.push_back(std::move(r));
    }
  }
  if (st.events && new_run) {
    run_event e;  // delivered with the first turn's events, after its rows went to the writer
    e.what = run_event::kind::run_started;
    e.seq = 1;
    e.run_id = st.machine->run_id();
    e.workflow = st.machine->workflow().name;
    e.status = "running";
    st.events_due.push_back(std::move(e));
  }
  st.run_id = st.machine->run_id();
  if (st.services->leases &&
      st.services->leases->own(st.run_id, st.epoch, caf::actor_cast<caf::actor>(self),
                               now_us() + st.services->wall_offset_us +
                                   st.services->lease_ms * 1000)) {
    self->send(st.services->lease_keeper, own_atom::value);
  }
  // A node actor that dies without answering (an exception escaped it) fails its attempt
  // instead of leaving the run waiting forever.
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    std::erase_if(st.idle_nodes, [&](const caf::actor& a) { return a.address() == dm.source; });
    auto it = st.exec_of_node.find(dm.source);
    if (it == st.exec_of_node.end() || st.done) {
      return;
    }
    auto exec = it->second;
    forget_node(st, exec);
    borrow_buffers(st);
    st.machine->task_finished(exec,
                              task_result::failure("node actor ended without a result: " +
                                                   self->system().render(dm.reason)),
                              now_us(), st.out);
    drive(self);
  });
  borrow_buffers(st);
  st.machine->start(std::move(args.inputs), now_us(), st.out);
  st.run_row_due = static_cast<bool>(st.services->writer);
  drive(self);
  return {
      [self](attempt_done& m) {
        auto& st = self->state;
        borrow_buffers(st);
        if (auto it = st.node_of_exec.find(m.exec); it != st.node_of_exec.end()) {
          st.idle_nodes.push_back(it->second);  // it answered and waits for more work
        }
        if (auto k = st.key_of_exec.find(m.exec);
            k != st.key_of_exec.end() && m.result.ok && !m.cached) {
          // A copy: the state machine takes the result by value. Only cached nodes pay it,
          // once per execution of their task.
          remember(st, k->second.key, k->second.node, make_json(m.result.output));
        }
        forget_node(st, m.exec);
        if (!m.persistence_error.empty() && st.persistence_error.empty()) {
          st.persistence_error = std::move(m.persistence_error);  // a child run's log
        }
        if (!m.worker.empty() || m.lost > 0) {
          st.machine->placed(m.exec, std::move(m.worker), m.lost, false, now_us(), st.out);
        }
        if (m.has_outcome) {
          st.machine->task_finished_dynamic(m.exec, std::move(m.result), std::move(m.outcome),
                                            now_us(), st.out);
        } else if (m.cached) {
          st.machine->task_finished_cached(m.exec, make_json(std::move(m.result.output)), now_us(),
                                           st.out);
        } else {
          st.machine->task_finished(m.exec, std::move(m.result), now_us(), st.out);
        }
        drive(self);
      },
      [self](attempt_placed& p) {
        // A worker was lost under the attempt and it went elsewhere: the log says so now.
        auto& st = self->state;
        borrow_buffers(st);
        st.machine->placed(p.exec, std::move(p.worker), p.lost, true, now_us(), st.out);
        drive(self);
      },
      [self](timer_atom, std::uint64_t timer) {
        auto& st = self->state;
        borrow_buffers(st);
        st.machine->timer_fired(timer, now_us(), st.out);
        drive(self);
      },
      [self](cancel_atom) {
        auto& st = self->state;
        borrow_buffers(st);
        st.machine->cancel(now_us(), st.out);
        drive(self);
      },
      [self](lost_atom, const std::string& why) {
        // Another engine owns the run now: stop at once, writing nothing more.
        auto& st = self->state;
        if (st.done || st.lost) {
          return;
        }
        st.lost = true;
        st.persistence_error = why;
        borrow_buffers(st);
        st.machine->cancel(now_us(), st.out);
        drive(self);
      },
      [self](permit_atom) {
        auto& st = self->state;
        st.waiting_gate = false;
        if (st.done) {
          st.services->gate->pass();
          return;
        }
        auto& gate = *st.services->gate;
        while (!st.gated.empty() && gate.try_acquire()) {
          cmd::dispatch d = std::move(st.gated.front());
          st.gated.erase(st.gated.begin());
          spawn_attempt(self, d);
        }
        if (!st.gated.empty()) {
          st.waiting_gate = true;
          gate.wait(caf::actor_cast<caf::actor>(self));
        } else {
          gate.pass();  // this wake found nothing to do: it may be someone else's slot
        }
      },
  };
}

}  // namespace

caf::actor spawn_run(const services_ptr& services, run_spawn_args args, const caf::actor& parent) {
  if (services->trace) {
    return trace::spawn_traced<run_actor>(*services->system, services->trace.get(), run_behavior,
                                          services, std::move(args), parent);
  }
  return services->system->spawn(run_behavior, services, std::move(args), parent);
}

}  // namespace troupe
