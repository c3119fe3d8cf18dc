#pragma once

// The actor protocol: plain immutable structs that actors exchange, and the atoms that tag them.
// Large payloads (inputs, outputs, plans) travel as shared pointers to const inside one process:
// sending one copies a pointer, never the JSON. These types are local-only
// (CAF_ALLOW_UNSAFE_MESSAGE_TYPE); what crosses between processes is in messages/cluster.hpp.

#include <cstdint>
#include <memory>
#include <string>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>

#include "messages/cluster.hpp"
#include "persistence/store.hpp"
#include "workflow/json.hpp"
#include "workflow/run_report.hpp"
#include "workflow/run_state.hpp"
#include "workflow/task.hpp"

namespace troupe {

/// A run's timer is due (retry backoff, attempt timeout, run timeout): run_state::timer_fired.
using timer_atom = caf::atom_constant<caf::atom("tr_timer")>;
/// Stop: sent to a run (cancel the run) or to a node actor (cancel its attempt).
using cancel_atom = caf::atom_constant<caf::atom("tr_cancel")>;
/// A slot of the engine-wide in-flight limit is free: try again (see actors/inflight_gate.hpp).
using permit_atom = caf::atom_constant<caf::atom("tr_permit")>;
/// A `sleep` task's delay has passed.
using wake_atom = caf::atom_constant<caf::atom("tr_wake")>;

/// The outcome of one attempt, from a node actor (or an I/O or pool thread) to its run actor.
struct attempt_done {
  std::uint64_t exec = 0;
  task_result result;
  /// Attempts that ran a child (`dynamic` nodes, `workflow` tasks): where the child plan came
  /// from and the child run started.
  bool has_outcome = false;
  run_state::dynamic_outcome outcome;
  /// The output came from the store's cache: the task did not run.
  bool cached = false;
  /// A child run's log is incomplete (run_result::persistence_error): the parent's is too.
  std::string persistence_error;
  /// Cluster: the worker that ran the attempt (empty: this process) and how many workers were
  /// lost under it before (run_state::placed()).
  std::string worker;
  std::int32_t lost = 0;
};

// ---- the cluster, inside a coordinator ---------------------------------------------------------
// A non-quick attempt of a task some worker offers is run by a node actor that stands in for the
// remote attempt: it holds its run's in-flight slot and cancels like any attempt, and its
// dispatcher (actors/dispatcher.hpp) places the attempt on a worker.

/// Node actor -> dispatcher: place this attempt (`order.id` is the dispatcher's to set).
/// `cancel_atom, std::uint64_t exec` from the same node actor withdraws it.
struct remote_attempt {
  std::uint64_t exec = 0;
  wire::attempt_order order;
};
/// Dispatcher -> node actor, when the attempt does not simply run on a worker: `run_here`, no
/// worker offers the task (and the coordinator may run it), so the node actor runs it itself;
/// `again`, its worker was lost (`lost` counts the losses so far) and the node actor dispatches
/// it again (after checking its lease). With lost > 0 the node actor passes it on to its run
/// actor, which records the loss at once (run_state::placed()).
struct attempt_placed {
  std::uint64_t exec = 0;
  std::string worker;
  std::int32_t lost = 0;
  bool run_here = false;
  bool again = false;
};
/// Dispatcher -> node actor: the worker's report, still as text (the node actor parses it on its
/// own thread, not the dispatcher's).
struct remote_result {
  std::uint64_t exec = 0;
  wire::attempt_report report;
  std::string worker;
  std::int32_t lost = 0;
};

/// `drain_atom, std::int64_t deadline_ms`: ask the writer to commit everything pending, then
/// quit. It answers `ok_atom, std::uint64_t rows_dropped`: 0 once all is committed; past the
/// deadline (a database that stays down) it answers every waiting caller with an error, drops
/// what it still holds, and reports how many rows that was. Sent at engine shutdown.
using drain_atom = caf::atom_constant<caf::atom("tr_drain")>;
/// The writer's drain deadline has passed.
using give_up_atom = caf::atom_constant<caf::atom("tr_giveup")>;
/// The writer's own timers: flush a batch by age, retry a failed commit.
using flush_due_atom = caf::atom_constant<caf::atom("tr_flush")>;
using retry_due_atom = caf::atom_constant<caf::atom("tr_retry")>;

/// Marks a `persist` sent as a request, `request(writer, infinite, commit_atom, persist)`: the
/// answer (`ok_atom`) comes only after a commit that includes these rows has succeeded. A plain
/// `persist` gets no answer at all (a reply to a plain send would be an unexpected message).
using commit_atom = caf::atom_constant<caf::atom("tr_commit")>;

/// State changes for the writer.
struct persist {
  std::vector<node_row> nodes;
  std::vector<run_row> runs;
  std::vector<workflow_row> workflows;
  std::vector<cache_row> cache;
  /// When the sender handed these rows over (steady clock, µs; 0: unknown). The writer's
  /// flush_ms counts from here, not from when it got round to reading them.
  std::int64_t sent_us = 0;

  std::size_t size() const { return nodes.size() + runs.size() + workflows.size() + cache.size(); }
};

/// `renew_atom, lease_renewal` to the writer: extends the leases of an engine's runs on the
/// writer's connection, between commits. Answers `std::vector<std::string>`: the runs the engine
/// no longer holds (another engine claimed them), or an error when the store could not answer.
using renew_atom = caf::atom_constant<caf::atom("tr_renew")>;
struct lease_renewal {
  std::string owner;
  std::vector<lease_ref> runs;
  std::int64_t lease_until_us = 0;
};

/// Sent to a run actor whose ownership was lost (its rows were fenced, or its lease could not
/// be renewed because another engine claimed the run): it stops at once, without writing.
using lost_atom = caf::atom_constant<caf::atom("tr_lost")>;
/// To the lease keeper: `own_atom` (runs registered in its lease_registry while it was idle:
/// start renewing), `lost_atom, std::vector<std::string>` (runs fenced by the store: tell them).
using own_atom = caf::atom_constant<caf::atom("tr_own")>;
/// The lease keeper's renewal timer.
using renew_due_atom = caf::atom_constant<caf::atom("tr_renewd")>;
/// To the lease keeper, as a request: renew every lease now. Answers `std::vector<std::string>`,
/// the runs this engine no longer holds (each already told `lost_atom`), or an error when the
/// store could not answer.
using renew_now_atom = caf::atom_constant<caf::atom("tr_renewn")>;

/// A run ended; sent to the parent (a `workflow` node actor) of a child run.
struct run_done {
  std::shared_ptr<const run_result> result;
};

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::attempt_done)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::run_done)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::remote_attempt)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::attempt_placed)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::remote_result)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::persist)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::lease_renewal)
