#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "workflow/context.hpp"
#include "workflow/json.hpp"
#include "workflow/plan.hpp"
#include "workflow/task.hpp"

namespace troupe {

enum class run_status : std::uint8_t { pending, running, succeeded, failed, cancelled, timed_out };
std::string_view to_string(run_status s);

/// Whether a node execution's output came from the cache.
enum class cache_status : std::uint8_t { off, hit, miss };
std::string_view to_string(cache_status s);

/// One state change of one execution: (node, item, attempt). `item` is -1 outside for_each.
/// Attempts count from 1; attempt 0 is the node-level record, emitted for a for_each node's
/// aggregate and for nodes that never executed (skipped, cancelled before start, failed before
/// dispatch). The writer keeps the
/// newest record per key, so a "running" record followed by a "succeeded" one becomes one row.
struct node_record {
  std::uint32_t node = 0;
  std::int64_t item = -1;
  int attempt = 0;
  node_status status = node_status::pending;
  json_ptr input;
  json_ptr output;
  std::string error;
  cache_status cache = cache_status::off;
  cache_status spec_cache = cache_status::off;  // `dynamic` nodes: the generated plan's
  std::string child_run;                        // `dynamic` nodes: the child run, once started
  std::int64_t started_us = 0;
  std::int64_t finished_us = 0;  // 0 while running
  /// The run's event sequence numbers of this attempt's start and end (run_event::seq): set by
  /// the state machine as it emits the record; 0: no such event (not started, or still running).
  std::int64_t started_seq = 0;
  std::int64_t finished_seq = 0;
  /// Cluster: the worker that runs (ran) the attempt, empty when it ran in this process, and how
  /// many times its worker was lost and it was dispatched again (placed()).
  std::string worker;
  std::int32_t lost = 0;
};

/// Commands the state machine asks its driver (the run actor, or a test) to carry out.
namespace cmd {
/// Start one attempt of a task. `exec` names this attempt in task_finished() and cancel_task.
struct dispatch {
  std::uint64_t exec = 0;
  std::uint32_t node = 0;
  std::int64_t item = -1;
  int attempt = 1;  // as recorded: after a resume, continues after the log's attempts
  json_ptr input;
  /// The node's cache key (workflow/cache_key.hpp) when it has a `cache` field, else empty.
  /// With a key the driver looks the output up first and reports a hit with
  /// task_finished_cached() instead of running the task. For a `dynamic` node the key names
  /// the generated workflow instead (the spec cache), and the driver reports with
  /// task_finished_dynamic().
  std::string cache_key;
  /// `dynamic` nodes: `dynamic.inputs` rendered in the node's scope, the child run's inputs.
  /// Null for every other node.
  json_ptr dynamic_inputs;
};
/// Stop an attempt that is in flight; any result it still reports is ignored.
struct cancel_task {
  std::uint64_t exec = 0;
};
/// Call timer_fired(timer) after delay_ms. Timers cannot be cancelled: stale ones are ignored.
struct start_timer {
  std::uint64_t timer = 0;
  std::int64_t delay_ms = 0;
};
/// Persist a state change (for the writer; the run's answer never depends on it).
struct record {
  node_record rec;
  /// A row update only (the attempt's placement changed): it takes no event number and makes
  /// no event, so a run's events stay numbered without gaps in its log.
  bool silent = false;
};
/// The run is over; no command follows this one.
struct finish {
  run_status status = run_status::succeeded;
  json_ptr outputs;   // an object when succeeded, else null
  std::string error;  // empty when succeeded
};
}  // namespace cmd
using command =
    std::variant<cmd::dispatch, cmd::cancel_task, cmd::start_timer, cmd::record, cmd::finish>;

struct run_options {
  std::string run_id;
  /// The engine's limit on this run's tasks in flight; 0: none. The plan's max_concurrency
  /// applies as well (the smaller wins).
  int max_concurrency = 0;
  /// Emit a record when an attempt starts, not only when it ends.
  bool record_starts = true;
  /// Emit records at all: off when nobody stores or watches them (memory mode without
  /// subscribers), which saves building one per state change.
  bool emit_records = true;
  /// Durable runs: a for_each item that succeeded keeps its slot of the node's concurrency
  /// until the driver says its success is committed (release_held_slots()). So at most
  /// `concurrency` items of a node can have run without their success in the log: after a
  /// crash, at most that many run again.
  bool hold_item_slots = false;
  /// The run's events are numbered 1, 2, ... (run_event::seq): 1 is run_started, every record
  /// takes the next number, and the run's end the last one. A resumed run continues after the
  /// largest number its log holds.
  std::int64_t events_after = 0;
};

/// What a node did, for answers built from memory (CLI tables, handles): never read back from
/// the store.
struct node_summary {
  node_status status = node_status::pending;
  cache_status cache = cache_status::off;
  cache_status spec_cache = cache_status::off;  // `dynamic` nodes with `cache`
  int attempts = 0;                             // attempts started, over all items
  std::int64_t started_us = -1;
  std::int64_t finished_us = -1;
  std::int64_t items = -1;  // for_each: number of items; -1 otherwise
  // Most nodes never fail: a pointer keeps the summary small (held per node of every open run).
  std::shared_ptr<const std::string> error_text;

  const std::string& error() const {
    static const std::string none;
    return error_text ? *error_text : none;
  }
};

/// The run state machine: a plain class that takes events (start, task_finished, timer_fired,
/// cancel) and appends the commands they cause to `out`. It owns no threads, clocks or I/O: the
/// caller passes the time with every event, so the same events give the same commands.
///
/// Readiness is a join counter per node (the number of needs not yet done). Tasks are
/// dispatched in readiness order, round-robin between nodes with items left, within the run's
/// and each node's concurrency limits. Not thread-safe: one owner (the run actor) drives it.
class run_state {
 public:
  run_state(plan_ptr p, run_options options);

  /// Resuming a run: before start(), marks a node as already succeeded with this output (read
  /// back from the store). It is not executed again; its publish templates are applied again.
  void restore(std::size_t node, json_ptr output);
  /// Resuming a run: before start(), marks one item of a for_each node as already succeeded
  /// with this output (read back from the store). When the node's items are rendered again, that
  /// item is not executed again; the others run. Items past the rendered array are ignored.
  void restore_item(std::size_t node, std::int64_t item, json_ptr output);
  /// Resuming a run: attempts of this node are numbered after the `prior_attempts` already
  /// recorded, so new records do not overwrite the history.
  void continue_attempts(std::size_t node, int prior_attempts);

  /// Starts the run with inputs already checked by bind_inputs().
  void start(json::object inputs, std::int64_t now_us, std::vector<command>& out);
  /// The outcome of an attempt. Unknown or stale execs (cancelled, timed out) are ignored.
  void task_finished(std::uint64_t exec, task_result result, std::int64_t now_us,
                     std::vector<command>& out);
  /// The outcome of an attempt whose output came from the cache (the task did not run): like a
  /// successful task_finished(), but its records and the node summary say `cache: hit`. A
  /// cached node that ran its task says `miss`; nodes without `cache` say `off`.
  void task_finished_cached(std::uint64_t exec, json_ptr output, std::int64_t now_us,
                            std::vector<command>& out);
  /// What the driver did for an attempt of a `dynamic` node: where the child plan came from
  /// (`hit` also means the generating task did not run) and which child run it started.
  struct dynamic_outcome {
    cache_status spec_cache = cache_status::off;
    std::string child_run;
  };
  /// The outcome of an attempt of a `dynamic` node: `result` is the child run's outcome (its
  /// outputs on success), or the generator's or the compiler's failure.
  void task_finished_dynamic(std::uint64_t exec, task_result result, dynamic_outcome how,
                             std::int64_t now_us, std::vector<command>& out);
  void timer_fired(std::uint64_t timer, std::int64_t now_us, std::vector<command>& out);
  /// Cluster: where an attempt in flight runs. `worker` names the worker process (empty: this
  /// one), `lost` counts the workers lost under it so far; the attempt keeps its number (a loss
  /// is not a retry). Every later record of the attempt carries both. With `announce` (a loss
  /// moved the attempt) a silent running record says so at once, so the log shows the loss even
  /// if this process dies next. Unknown or stale execs are ignored.
  void placed(std::uint64_t exec, std::string worker, std::int32_t lost, bool announce,
              std::int64_t now_us, std::vector<command>& out);
  /// hold_item_slots: the slots held now, per node (node, count). The driver asks for a commit
  /// of the records emitted so far, then gives these counts back to release_held_slots().
  std::vector<std::pair<std::uint32_t, std::uint32_t>> held_slots() const;
  void release_held_slots(const std::vector<std::pair<std::uint32_t, std::uint32_t>>& slots,
                          std::int64_t now_us, std::vector<command>& out);
  std::size_t held_slot_count() const { return held_total_; }
  void cancel(std::int64_t now_us, std::vector<command>& out);

  /// The run's event numbering (run_options::events_after): the number of its latest event so
  /// far, and the next number, taken by the driver for events it makes itself (run_started,
  /// run_finished, attempts a resume closes as interrupted).
  std::int64_t last_event_seq() const { return last_event_seq_; }
  std::int64_t take_event_seq() { return ++last_event_seq_; }

  run_status status() const { return status_; }
  bool finished() const { return status_ != run_status::pending && status_ != run_status::running; }
  const std::string& error() const { return error_; }
  const json_ptr& outputs() const { return outputs_; }
  const context& ctx() const { return ctx_; }
  const plan& workflow() const { return *plan_; }
  const plan_ptr& shared_plan() const { return plan_; }
  const node_summary& summary(std::size_t node) const { return nodes_[node].summary; }
  /// `dynamic` nodes: the child run of the latest attempt that started one; empty otherwise.
  const std::string& child_run(std::size_t node) const;
  std::size_t in_flight() const { return inflight_.size(); }
  std::size_t max_in_flight_seen() const { return max_inflight_seen_; }
  const std::string& run_id() const { return identity_.id; }
  std::int64_t started_us() const { return started_us_; }
  std::int64_t finished_us() const { return finished_us_; }

 private:
  struct unit {
    std::uint32_t node;
    std::int64_t item;
    int attempt;
  };
  struct inflight_exec {
    unit u;
    json_ptr input;
    std::int64_t started_us;
    std::uint64_t timeout_timer = 0;  // 0: none
    std::int64_t started_seq = 0;     // its node_started event's number (0: none emitted)
    std::string worker;               // placed(): where it runs (empty: here)
    std::int32_t lost = 0;            // placed(): workers lost under it
  };
  // In-flight attempts by exec id without a hash map: an exec id is (sequence << 32 | slot), so
  // a lookup is an index plus a check that the slot still holds that sequence. Freed slots are
  // reused, and ids still grow with every dispatch, so sorting ids gives dispatch order.
  class exec_table {
   public:
    std::uint64_t add(inflight_exec e, std::uint64_t sequence);
    inflight_exec* find(std::uint64_t exec);
    void erase(std::uint64_t exec);
    std::size_t size() const { return live_; }
    void clear();
    template <class F>
    void each(F&& f) const {
      for (std::size_t i = 0; i < slots_.size(); ++i) {
        if (ids_[i] != 0) {
          f(ids_[i], slots_[i]);
        }
      }
    }

   private:
    std::vector<inflight_exec> slots_;
    std::vector<std::uint64_t> ids_;  // 0: free
    std::vector<std::uint32_t> free_;
    std::size_t live_ = 0;
  };
  enum class timer_kind : std::uint8_t { retry, attempt_timeout, run_timeout };
  struct timer_entry {
    timer_kind kind;
    unit u;              // retry
    std::uint64_t exec;  // attempt_timeout
  };
  // What only some nodes need (for_each, retries, resume), allocated on first use: with
  // 100,000 runs held open, every byte of the per-node state counts ten times per W3 run.
  struct node_extra {
    json_ptr items;  // the for_each array
    std::vector<json_ptr> item_outputs;
    std::vector<unit> retries_due;  // FIFO; a vector because an empty deque allocates
    json_ptr restored;              // resumed runs: the output it had before
    // Resumed runs: for_each items that succeeded before, until the items are rendered; then
    // which items are done (restored) and must not be launched.
    std::vector<std::pair<std::int64_t, json_ptr>> restored_items;
    std::vector<bool> done_items;
    std::string child_run;  // dynamic nodes: the latest child run
  };
  struct node_state {
    node_summary summary;
    std::uint32_t join = 0;
    std::uint32_t in_flight = 0;
    std::uint32_t held = 0;        // hold_item_slots: succeeded items not yet confirmed committed
    std::uint32_t unit_count = 0;  // items, or 1 outside for_each
    std::uint32_t next_unit = 0;
    std::uint32_t units_done = 0;
    int attempt_offset = 0;  // resumed runs: attempts recorded before
    bool ready_seen = false;
    bool queued = false;
    std::unique_ptr<node_extra> extra;

    node_extra& x() {
      if (!extra) {
        extra = std::make_unique<node_extra>();
      }
      return *extra;
    }
    bool has_retries() const { return extra && !extra->retries_due.empty(); }
  };

  void node_ready(std::uint32_t n, std::int64_t now, std::vector<command>& out);
  void skip_done_items(node_state& ns);
  void items_succeeded(std::uint32_t n, std::int64_t now, std::vector<command>& out);
  void pump(std::int64_t now, std::vector<command>& out);
  bool launchable(const node_state& ns) const;
  void launch(unit u, std::int64_t now, std::vector<command>& out);
  void unit_failed(const inflight_exec& e, std::string error, node_status how, std::int64_t now,
                   std::vector<command>& out, dynamic_outcome* dynamic = nullptr);
  void exec_finished(std::uint64_t exec, task_result result, json_ptr cached,
                     dynamic_outcome* dynamic, std::int64_t now, std::vector<command>& out);
  void unit_succeeded(const inflight_exec& e, json_ptr output, cache_status cache,
                      dynamic_outcome* dynamic, std::int64_t now, std::vector<command>& out);
  void node_succeeded(std::uint32_t n, json_ptr output, std::int64_t now,
                      std::vector<command>& out);
  void node_failed(std::uint32_t n, std::string error, node_status how, std::int64_t now,
                   std::vector<command>& out);
  void node_done(std::uint32_t n, std::int64_t now, std::vector<command>& out);
  void finish_if_all_done(std::int64_t now, std::vector<command>& out);
  void finish_run(run_status s, std::string error, std::int64_t now, std::vector<command>& out);
  void cancel_everything(std::int64_t now, std::vector<command>& out);
  void record(node_record r, std::vector<command>& out);
  // A record of an attempt in flight: its unit, input, start and placement.
  node_record attempt_record(const inflight_exec& e, node_status status) const;
  void node_record_out(std::uint32_t n, std::int64_t now, json_ptr output,
                       std::vector<command>& out);
  context view_for(const unit& u) const;
  std::uint64_t add_timer(timer_entry t, std::int64_t delay_ms, std::vector<command>& out);

  plan_ptr plan_;
  run_options options_;
  run_identity identity_;
  context ctx_;
  std::vector<node_state> nodes_;
  exec_table inflight_;
  std::unordered_map<std::uint64_t, timer_entry> timers_;
  // FIFO of nodes with units to launch: a vector and a head index, since an empty std::deque
  // allocates and every run (100,000 held open at once) has one.
  std::vector<std::uint32_t> launch_queue_;
  std::size_t launch_head_ = 0;
  std::uint64_t next_exec_ = 1;
  std::int64_t last_event_seq_ = 0;  // the number of the run's latest event
  std::uint64_t next_timer_ = 1;
  std::size_t run_limit_ = 0;  // 0: unlimited
  std::size_t nodes_done_ = 0;
  std::size_t max_inflight_seen_ = 0;
  std::size_t held_total_ = 0;
  run_status status_ = run_status::pending;
  std::string error_;
  json_ptr outputs_;
  std::int64_t started_us_ = 0;
  std::int64_t finished_us_ = 0;
};

}  // namespace troupe
