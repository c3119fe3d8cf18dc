#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/allowed_unsafe_message_type.hpp>

#include "actors/writer_actor.hpp"

#include "workflow/json.hpp"
#include "workflow/plan.hpp"
#include "workflow/run_report.hpp"
#include "workflow/run_state.hpp"
#include "workflow/shared_text.hpp"
#include "workflow/task.hpp"

namespace boost::asio {
class io_context;
class thread_pool;
}  // namespace boost::asio

namespace troupe {

class inflight_gate;
class lease_registry;
class offer_table;
namespace trace {
class tracer;
}

/// Where a child run picks up: its id and what it had done (succeeded nodes with their
/// outputs, attempts already recorded). Built from the store's rows.
struct resume_point {
  std::string run_id;
  std::vector<std::pair<std::size_t, json_ptr>> restored;
  std::vector<std::pair<std::size_t, int>> prior_attempts;
  /// for_each items that succeeded: (node, item, output).
  std::vector<std::tuple<std::size_t, std::int64_t, json_ptr>> restored_items;
  /// Attempts recorded as running by the process that died: rewritten as `interrupted`.
  std::vector<node_row> interrupted;
  /// The epoch the run was claimed under (0: not claimed, e.g. a store without ownership).
  std::int64_t epoch = 0;
  /// The largest event number its rows hold (run_options::events_after).
  std::int64_t events_after = 0;
};

/// Node index -> its task definition (null: unknown task), resolved once per plan and registry.
using task_table = std::shared_ptr<const std::vector<std::shared_ptr<const task_def>>>;

/// What every run and node actor of one engine shares. Owned by the engine, which outlives all
/// of its actors; immutable after the engine starts except through the functions' own locking.
struct run_services {
  caf::actor_system* system = nullptr;
  boost::asio::io_context* io = nullptr;
  boost::asio::thread_pool* blocking = nullptr;
  /// The task registry as of now (a snapshot: registrations after a run started do not change
  /// the tasks that run sees).
  std::function<std::shared_ptr<const task_registry>()> tasks;
  /// The plan's nodes resolved against the current registry; every run of a plan shares one
  /// table (until a task is registered again).
  std::function<task_table(const plan_ptr&)> tasks_for;
  /// A registered workflow by name and version (empty: the latest), for `workflow` tasks.
  std::function<plan_ptr(std::string_view name, std::string_view version)> find_workflow;
  /// A fresh run id.
  std::function<std::string()> new_run_id;
  int max_workflow_depth = 8;
  int max_in_flight = 0;  // engine-wide limit on tasks in flight (0: none)
  /// Enforces max_in_flight over all runs; null when there is no limit.
  std::shared_ptr<inflight_gate> gate;
  /// The writer, or an invalid handle in memory mode (no database).
  caf::actor writer;
  persistence_mode mode = persistence_mode::memory;
  /// Memoized node outputs by cache key (nodes with `cache`): the engine's bounded memory cache
  /// over the store. Thread-safe; called on run actors' threads. `cache_lookup` (memory only)
  /// returns null on a miss; `cache_remember` fills memory only (the run actor sends the store row
  /// to the writer with its records). Either may be empty: caching is then off.
  std::function<json_ptr(const std::string& key)> cache_lookup;
  std::function<void(const std::string& key, const json_ptr& output)> cache_remember;
  /// The store behind the memory cache (blocking: called on the blocking pool, never on an
  /// actor's thread); a hit is kept in memory. Empty without a store.
  std::function<json_ptr(const std::string& key)> cache_load;
  /// `dynamic` nodes. Compiles a generated workflow against the current task registry; equal
  /// documents (by content hash) share one plan. Called on node actors' threads.
  std::function<expected<plan_ptr, validation_errors>(const json::value& document)> compile_dynamic;
  /// The spec cache: a compiled child plan by the node's cache key (memory first, then the
  /// store's "spec" entry, compiled once), null on a miss; `spec_remember` fills memory only
  /// (the node actor sends the store row to the writer). Either may be empty: no spec cache.
  /// `compile_dynamic`, `spec_lookup` and `prior_child` may block (a compile, a store read):
  /// node actors call them on the blocking pool.
  std::function<plan_ptr(const std::string& key)> spec_lookup;
  std::function<void(const std::string& key, const plan_ptr& plan)> spec_remember;
  /// The child run an attempt of a dynamic node continues: the newest child of (parent run,
  /// parent node label) with this plan hash, as the store has it. nullopt: start a fresh one.
  /// Empty without a store.
  std::function<std::optional<resume_point>(const std::string& parent_run,
                                            const std::string& parent_node, const plan& child)>
      prior_child;
  /// Added to steady-clock microseconds to get wall-clock microseconds for stored rows.
  std::int64_t wall_offset_us = 0;
  /// Ownership (not in memory mode): this engine's instance id, the lease a new run starts with
  /// (ms), the runs alive here whose leases are renewed (every run actor registers itself at
  /// start and removes itself at its end: actors/lease_keeper.hpp) and the actor that renews them
  /// (woken with `own_atom` when lease_registry::own says so; it sends `lost_atom` to a run whose
  /// ownership is gone). Null registry: no ownership.
  shared_text owner;
  std::int64_t lease_ms = 0;
  std::shared_ptr<lease_registry> leases;
  caf::actor lease_keeper;
  /// Actor traces (actors/trace.hpp): null when tracing is off, and then actors are spawned
  /// without any tracing code.
  std::shared_ptr<trace::tracer> trace;
  /// Cluster coordinators: the dispatcher that places attempts on workers, and the tasks it
  /// takes (actors/dispatcher.hpp). Invalid and null otherwise: every attempt runs here.
  caf::actor dispatcher;
  std::shared_ptr<const offer_table> offers;
};
using services_ptr = std::shared_ptr<const run_services>;

/// Receives what a run reports. Called on the run actor's thread, in order; must not block.
class run_sink {
 public:
  virtual ~run_sink() = default;
  /// Whether event() should be called at all (building events costs a little).
  virtual bool wants_events() const { return false; }
  virtual void event(const run_event&) {}
  /// Exactly once, when the run ends.
  virtual void finished(const run_result& result) = 0;
};

struct run_spawn_args {
  plan_ptr plan;
  json::object inputs;  // already checked by bind_inputs
  run_options options;
  std::shared_ptr<run_sink> sink;  // may be null
  int depth = 0;                   // nesting level of `workflow` and `dynamic` tasks
  /// Child runs: who started them (stored with the run; the node label has `[item]` inside a
  /// for_each).
  std::string parent_run_id;
  std::string parent_node_id;
  /// The run's limits (task_policy), inherited by its child runs; null: none.
  policy_ptr policy;
  /// Resuming: nodes that succeeded before (index, output) and attempts already recorded.
  std::vector<std::pair<std::size_t, json_ptr>> restored;
  std::vector<std::pair<std::size_t, int>> prior_attempts;
  /// Resuming: for_each items that succeeded before, and the rows of attempts that were
  /// running when their process died (written as `interrupted` with the first rows).
  std::vector<std::tuple<std::size_t, std::int64_t, json_ptr>> restored_items;
  std::vector<node_row> interrupted;
  /// The run's ownership epoch: 1 for a new run, the claimed one for a resumed run (0: the
  /// rows are not fenced).
  std::int64_t epoch = 1;
};

/// Fills the resume fields of `args` from a resume point.
inline void resume_from(run_spawn_args& args, resume_point&& from) {
  args.options.run_id = std::move(from.run_id);
  args.restored = std::move(from.restored);
  args.prior_attempts = std::move(from.prior_attempts);
  args.restored_items = std::move(from.restored_items);
  args.interrupted = std::move(from.interrupted);
  args.epoch = from.epoch;
  // A resumed run numbers its events after its log's (at least past run_started's 1).
  args.options.events_after = std::max<std::int64_t>(from.events_after, 1);
}

/// Spawns the actor that runs one workflow run. `parent`, when valid, receives a `run_done`
/// message when the run ends (used by `workflow` tasks for child runs). The run starts at once.
caf::actor spawn_run(const services_ptr& services, run_spawn_args args, const caf::actor& parent);

/// Spawns the actor that runs one attempt of a task that takes time (anything not quick). It
/// sends `attempt_done{exec, result}` to `run` exactly once unless it is cancelled first
/// (`cancel_atom`), then quits.
/// What an attempt of a `dynamic` node needs beyond a task's: shared, since most attempts have
/// none and the spawn arguments are copied per attempt.
struct dynamic_attempt {
  json_ptr inputs;       // the child run's inputs (`dynamic.inputs` rendered)
  std::string spec_key;  // the spec cache key; empty without `cache`
  std::string workflow;  // the parent's workflow name, for the stored cache entry
};

struct node_spawn_args {
  std::uint64_t exec = 0;
  std::shared_ptr<const task_def> task;
  json_ptr input;
  std::string run_id;
  std::string node_id;
  std::int64_t item = -1;
  int attempt = 1;
  int depth = 0;
  std::shared_ptr<const dynamic_attempt> dynamic;  // null unless the node is `dynamic`
  /// A cached node whose output was not in memory: look it up in the store before running the
  /// task (off the run actor's thread). Empty otherwise.
  std::string stored_key;
  policy_ptr policy;  // the run's (null: none)
  /// Cluster: run the task in this process even when workers offer it (a worker's own attempts).
  bool here = false;
};
/// Spawned from the run actor's own thread (`run` is its self pointer): the new actor goes on
/// that worker's local queue instead of through the scheduler's shared one, and it is
/// monitored from birth.
caf::actor spawn_node(const services_ptr& services, caf::event_based_actor* run,
                      node_spawn_args args);
/// Hands the next attempt to an idle node actor of the same run (one that answered its last
/// attempt). Node actors are reused within a run; a cancelled one quits instead.
void reuse_node(const caf::actor& node, caf::event_based_actor* run, node_spawn_args args);
/// The attempt on an idle node actor of `owner`'s (taken from `idle`), else on a new one
/// (spawn_node); returns the actor that runs it. `owner` is a run actor or a worker's agent.
caf::actor start_node(const services_ptr& services, caf::event_based_actor* owner,
                      std::vector<caf::actor>& idle, node_spawn_args args);

}  // namespace troupe

// Sent from a run actor to its own idle node actors: local-only.
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::node_spawn_args)
