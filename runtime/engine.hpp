#pragma once

// The embedding API. This header includes no CAF or Asio headers on purpose: programs that
// embed troupe (and the CLI) compile fast and do not depend on the actor framework's headers.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "actors/cluster_link_event.hpp"
#include "actors/writer_config.hpp"
#include "persistence/store.hpp"
#include "workflow/expected.hpp"
#include "workflow/json.hpp"
#include "workflow/plan.hpp"
#include "workflow/run_report.hpp"
#include "workflow/run_state.hpp"
#include "workflow/task.hpp"

namespace troupe {

struct resume_point;  // actors/run_actor.hpp

/// The node cluster (docs/cluster.md): coordinators place the attempts of tasks that workers
/// offer on those workers, over CAF's middleman. Both roles need it enabled before the engine
/// exists (it loads the middleman); then a coordinator calls engine::serve_cluster() and a worker
/// engine::join_cluster().
struct cluster_config {
  bool enabled = false;
  /// The middleman's heartbeat and connection timeout, the same on every node: a peer silent
  /// for `connection_timeout` (frozen, cut off) is dropped, and its attempts go elsewhere.
  std::chrono::milliseconds heartbeat{500};
  std::chrono::milliseconds connection_timeout{2000};
  /// The identifier nodes compare at the handshake; empty: this build's ("troupe/<version>/p<protocol>").
  /// Tests set another to play a node of another version.
  std::string app_identifier;
  /// Coordinators: when no connected worker offers a task, run it here (true) or wait for one.
  bool run_here_without_workers = true;
  /// Coordinators: tasks only workers implement. Registered here under these names so that
  /// workflows naming them validate; an attempt with no worker to run it fails with a clear error.
  std::vector<std::string> remote_tasks;
  /// Coordinators: one line per worker that joins, is refused or is lost (called on an engine
  /// thread; must not block). Empty: silent.
  std::function<void(const std::string&)> log;
};

/// A worker's part: which coordinators it joins and what it runs for them.
struct worker_options {
  std::vector<std::pair<std::string, std::uint16_t>> join;
  /// How coordinators name this worker (in their logs and node_row::worker); empty: the
  /// engine's owner_id().
  std::string name;
  /// The tasks it offers; empty: every registered task except `workflow` and quick tasks.
  std::vector<std::string> offer;
  /// Attempts it runs at once over all coordinators; 0: the blocking pool's size.
  int capacity = 0;
  std::chrono::milliseconds connect_timeout{5000};
};

/// A coordinator's dispatcher, counted.
struct cluster_stats {
  std::int64_t workers = 0;
  std::int64_t remote_in_flight = 0;
  std::int64_t waiting = 0;
  std::uint64_t dispatched = 0;
  std::uint64_t lost = 0;
  std::uint64_t ran_here = 0;
};

struct engine_config {
  /// Actor scheduler threads; 0: one per core.
  int threads = 0;
  /// Threads of the pool that runs tasks registered as blocking.
  int blocking_threads = 2;
  /// Threads running Asio I/O (shell pipes, HTTP sockets).
  int io_threads = 1;
  /// Tasks in flight over all runs of this engine; 0: no limit. Further dispatches wait.
  int max_in_flight = 0;
  /// How deep `workflow` tasks may nest runs inside runs.
  int max_workflow_depth = 8;
  /// Limits applied to every registered workflow.
  workflow_limits limits;
  /// Where the execution log goes: `memory://`, `sqlite://PATH`, `postgres://...`. Unused in
  /// memory mode.
  std::string store = "sqlite://troupe.db";
  /// What the caller pays for the log (DESIGN.md): memory (no database, a bounded log of recent
  /// runs in memory), async, durable (a run's end is reported after its commit), sync.
  persistence_mode mode = persistence_mode::memory;
  writer_config writer;
  /// At shutdown, how long the writer may keep retrying a failing database to commit what it
  /// still holds (at least shutdown's own deadline); past it every run still waiting for a
  /// commit is told its log is incomplete (run_result::persistence_error), and the rows are
  /// counted in metrics().lost_rows and dropped.
  std::chrono::milliseconds drain_deadline{std::chrono::seconds(30)};
  /// Ownership (not in memory mode): every run this engine starts or resumes is leased to it
  /// for this long and renewed every third of it; another engine may claim a run whose lease
  /// has run out (or, on the same host, whose engine process is gone) and resume it.
  std::chrono::milliseconds lease{std::chrono::seconds(15)};
  /// Adopt at once (at the end of the constructor), and keep adopting until shutdown, the runs
  /// of the store whose engines died: see adopt_expired_runs(). Only for engines whose
  /// workflows need no task registered after construction; otherwise call
  /// adopt_expired_runs() once they are registered.
  bool adopt_expired_runs = false;
  /// Tests and embedders may hand in a store object instead of a URL (it must be safe to call
  /// from two threads: the writer writes while queries read). Overrides `store`.
  std::shared_ptr<troupe::store> store_object;
  /// Memory mode keeps this many finished runs for queries.
  std::size_t memory_log_runs = 1000;
  /// Node outputs (`cache` on a node) kept in memory, least recently used dropped first; the
  /// store keeps them all (not in memory mode). 0: memory keeps none, every lookup asks the store.
  std::size_t cache_entries = 10000;
  /// Actor traces: when set, every message sent to and handled by the engine's actors is
  /// written to this file as Chrome trace event JSON (Perfetto, chrome://tracing; `troupe trace`
  /// summarises it). Empty: off, and the actors carry no tracing code. The file is complete
  /// after shutdown(). A file that cannot be opened is an engine_error.
  std::string trace_file;
  /// Compiled plans of generated (`dynamic`) workflows kept in memory, by content hash and by
  /// spec cache key each; least recently used dropped first.
  std::size_t dynamic_plans = 1000;
  cluster_config cluster;
};

/// The engine could not start (for example its database cannot be opened).
struct engine_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// What an engine holds in memory for plans (engine::plans_in_memory; for tests and metrics).
/// Registered plans live as long as the engine; what generated workflows leave behind is bounded
/// by engine_config::dynamic_plans.
struct plan_memory {
  /// Registered plans: one per distinct document.
  std::size_t registered_plans = 0;
  /// Compiled generated plans kept by content hash: at most dynamic_plans.
  std::size_t generated_plans = 0;
  /// Generated plans kept by spec cache key: at most dynamic_plans.
  std::size_t spec_plans = 0;
  /// Plans' nodes resolved to task definitions: at most one per registered plan, plus at most
  /// dynamic_plans for all other plans (generated, or compiled by the embedder).
  std::size_t task_tables = 0;
};

/// One started run. Copyable; all copies refer to the same run. Thread-safe.
class run_handle {
 public:
  struct shared;  // implementation detail, shared with the run actor
  explicit run_handle(std::shared_ptr<shared> s);

  const std::string& id() const;
  /// Blocks the calling thread until the run ends; nullopt if `timeout` passes first.
  std::optional<run_result> wait_for(std::chrono::milliseconds timeout) const;
  run_result wait() const;
  /// Non-blocking: the result if the run has ended.
  std::optional<run_result> try_result() const;
  /// Called once when the run ends (at once if it already has), on an engine thread.
  void on_finished(std::function<void(const run_result&)> callback) const;
  /// Asks the run to stop: tasks in flight are cancelled and nothing new starts.
  void cancel() const;

 private:
  std::shared_ptr<shared> s_;
};

struct start_options {
  /// Receives every event of the run, on an engine thread; must not block.
  std::function<void(const run_event&)> on_event;
  /// Overrides the generated run id.
  std::string run_id;
  /// Limits on what the run may do (task_policy: tasks its child runs may name, addresses its
  /// http tasks may reach); inherited by its child runs. Null: none. troupe serve sets one for
  /// the runs of workflows registered through its API.
  policy_ptr policy;
  /// Never block the calling thread while the writer is behind (pending_max): queue the run
  /// and start it once the writer has caught up, as on the engine's own threads. For callers
  /// whose thread serves others (an HTTP server's I/O thread).
  bool never_wait = false;
};

/// An engine: an actor system running workflows. Thread-safe; create one per process.
class engine {
 public:
  /// Throws engine_error when the store cannot be opened.
  explicit engine(engine_config config = {});
  ~engine();  // shutdown(5 s) if not done already
  engine(const engine&) = delete;
  engine& operator=(const engine&) = delete;

  /// Registers a C++ task (quick, blocking or async). False when the definition is unusable.
  bool register_task(task_def def);
  /// The tasks runs started now would see.
  std::shared_ptr<const task_registry> tasks() const;

  /// Registers a workflow under (name, version); invalid ones are rejected with every error.
  /// Registering the same document twice returns the same shared plan.
  expected<plan_ptr, validation_errors> register_workflow(std::string_view json_text);
  expected<plan_ptr, validation_errors> register_workflow(const json::value& document);
  expected<plan_ptr, validation_errors> register_workflow(const char* json_text) {
    return register_workflow(std::string_view(json_text));
  }
  expected<plan_ptr, validation_errors> register_workflow_file(const std::string& path);
  /// A registered plan; empty version: the most recently registered version of that name.
  plan_ptr find_workflow(std::string_view name, std::string_view version = {}) const;
  /// Every registered workflow version, by name then version; `latest` marks the version
  /// find_workflow(name) returns.
  struct registered_workflow {
    plan_ptr plan;
    bool latest = false;
  };
  std::vector<registered_workflow> workflows() const;
  /// A fresh run id, as start() would make one (for callers that must know the id before the
  /// run starts: pass it in start_options::run_id).
  std::string new_run_id();

  /// Starts a run. Inputs are checked first: bad ones are rejected (pointer "/inputs/<name>")
  /// before anything runs. When the writer is more than writer_config::pending_max rows behind,
  /// a call from a thread of the caller's blocks until it has caught up (producers slow down
  /// instead of memory growing); a call from one of the engine's own threads (an on_finished
  /// callback, an event subscriber, a task) never blocks: the run is queued and starts when the
  /// writer has caught up (and so does any caller that sets start_options::never_wait).
  expected<run_handle, validation_errors> start(const plan_ptr& p, json::object inputs,
                                                start_options options = {});
  expected<run_handle, validation_errors> start(std::string_view workflow_name, json::object inputs,
                                                start_options options = {});

  /// Resumes a run recorded in the store (not in memory mode). First it claims the run: only a
  /// run whose lease has expired, or whose engine was a process of this host that is gone, can
  /// be claimed; a run another engine holds is refused, naming that engine and when its lease
  /// ends. Then nodes, for_each items and child runs that succeeded are not executed again
  /// (their outputs come from the store); attempts the dead engine left running are closed as
  /// `interrupted`; everything else runs, with attempt numbers continuing after the recorded
  /// ones. For a failed, cancelled or timed-out run this re-runs only what did not succeed. The
  /// workflow is the registered one of that name and version, else the document stored with
  /// it. Errors: unknown run, a run that succeeded, is running here or is held elsewhere, a
  /// workflow that no longer compiles. Blocks on store calls.
  expected<run_handle, validation_errors> resume(std::string_view run_id,
                                                 start_options options = {});
  /// Resumes every top-level run the store records as pending or running that can be claimed
  /// now (see resume()); runs other live engines hold are left to them. Call it after
  /// registering the tasks those workflows use. `options` applies to each (its run_id is
  /// ignored).
  std::vector<expected<run_handle, validation_errors>> resume_unfinished(
      start_options options = {});
  /// Like resume_unfinished() now, and again, until shutdown, whenever a lease seen in the store
  /// runs out (and at least once per lease length, for runs started since): the runs of engines
  /// that die are resumed here. `on_adopted` is called with each run adopted, on an engine
  /// thread; it must not block. Call it after registering tasks. Calling it again replaces the
  /// callback.
  void adopt_expired_runs(std::function<void(const run_handle&)> on_adopted = {});
  /// How a caller takes part in each adoption, for callers that keep their own view of the runs
  /// alive here (troupe serve: its event streams, cancel). Both on an engine thread; neither may
  /// block.
  struct adoption_hooks {
    /// Before a run is resumed here: the options to resume it with (on_event, policy, ...; its
    /// run_id is ignored). Empty: default options.
    std::function<start_options(const run_row& run)> prepare;
    /// After: the run adopted, or nullptr when the resume prepare() was called for failed.
    std::function<void(const std::string& run_id, const run_handle* adopted)> done;
  };
  /// adopt_expired_runs() with hooks; calling either form again replaces them.
  void adopt_expired_runs(adoption_hooks hooks);
  /// This engine's identity as stored in the runs it owns ("host/pid/start_us").
  const std::string& owner_id() const;

  /// Cluster coordinator: publishes this engine's dispatcher on host:port (0: any free port)
  /// and returns the port. Blocks while it binds; call it from a thread of yours. Needs
  /// config.cluster.enabled.
  expected<std::uint16_t, std::string> serve_cluster(const std::string& host, std::uint16_t port);
  /// Cluster worker: joins every coordinator of `options.join` and keeps joining them (with
  /// backoff) until shutdown; runs the attempts they send. `on_event` reports each link's
  /// changes, on an engine thread; it must not block. Needs config.cluster.enabled.
  void join_cluster(worker_options options, std::function<void(const cluster_link_event&)> on_event);
  /// The tasks a worker offers with worker_options::offer empty.
  std::vector<std::string> offerable_tasks() const;
  /// The dispatcher's counters (zero when this engine coordinates nothing).
  cluster_stats cluster() const;

  /// Blocks until every state change recorded before this call (and handed to the writer) is
  /// committed; false after `timeout`. Events a subscriber has seen were handed to the writer
  /// before they were delivered. Returns true at once in memory mode.
  bool flush(std::chrono::milliseconds timeout = std::chrono::seconds(30));

  /// Runs in progress right now.
  std::size_t active_runs() const;
  /// Generated (`dynamic`) workflows compiled so far: equal documents and spec cache hits
  /// reuse a compiled plan, so this counts only the real compiles.
  std::size_t dynamic_compiles() const;
  /// What the engine holds in memory for plans, for tests and metrics (see plan_memory).
  plan_memory plans_in_memory() const;

  /// The execution log. In memory mode: the recent runs kept in memory; otherwise the store
  /// (what the writer has committed so far).
  expected<std::vector<run_row>, store_error> list_runs(const run_query& q) const;
  expected<std::optional<run_row>, store_error> get_run(std::string_view run_id) const;
  expected<std::vector<node_row>, store_error> node_rows(std::string_view run_id) const;

  /// Idempotency keys (troupe serve's Idempotency-Key): store::remember_request and
  /// forget_requests on the query connection; in memory mode an in-memory table. Block on the
  /// store: call them off the engine's threads.
  expected<request_key_row, store_error> remember_request(const request_key_row& row,
                                                          std::int64_t expired_before_us);
  expected<std::size_t, store_error> forget_requests(std::int64_t before_us);

  /// The writer's counters (all zero in memory mode).
  writer_metrics& metrics() const;
  persistence_mode mode() const;

  /// Stops accepting runs, lets running ones finish until `deadline`, cancels the rest, then
  /// stops every thread. Idempotent.
  void shutdown(std::chrono::milliseconds deadline = std::chrono::seconds(5));

  struct impl;

 private:
  expected<run_handle, validation_errors> start_run(const plan_ptr& p, json::object inputs,
                                                    start_options options, resume_point* from);

 public:
  // Internal (resume_unfinished and the adoption rounds): resumes each run that can be claimed
  // now with the options `prepare` gives, and reports each result to `done`.
  static void resume_claimable(
      engine& e,
      const std::function<start_options(const run_row&)>& prepare,
      const std::function<void(const std::string&, expected<run_handle, validation_errors>)>&
          done);

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace troupe
