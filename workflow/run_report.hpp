#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "workflow/json.hpp"
#include "workflow/run_state.hpp"

namespace troupe {

/// Something that happened in a run, delivered to subscribers in order for that run.
/// Every event of a run has a number, `seq`: 1 is run_started, each node event takes the next,
/// run_finished is the last. The numbers are stored with the rows (node_row::started_seq,
/// finished_seq), so a run's events can be replayed from its log with the numbers they had live.
/// A resumed run continues its numbering (and has no second run_started).
struct run_event {
  enum class kind { run_started, node_started, node_finished, run_finished };
  kind what = kind::node_started;
  std::int64_t seq = 0;
  std::string run_id;
  std::string workflow;  // run_started only
  std::string node_id;   // empty for run events
  std::int64_t item = -1;
  int attempt = 0;
  std::string status;  // a node_status or run_status name
  std::string error;
  json_ptr output;  // node_finished of a node that succeeded: its output
  std::int64_t duration_us = -1;  // node_finished of an attempt that started: how long it took
};

/// The event's kind as the service names it ("run_started", ...).
std::string_view to_string(run_event::kind k);

/// What a node did, as the CLI table and `--json` show it.
struct node_report {
  std::string id;
  node_status status = node_status::pending;
  int attempts = 0;
  double duration_ms = 0;
  std::string error;
  cache_status cache = cache_status::off;
  std::int64_t items = -1;  // for_each nodes only
  bool dynamic = false;     // the fields below are shown for `dynamic` nodes only
  cache_status spec_cache = cache_status::off;
  std::string child_run;
};

/// The answer to a run, built from the run's memory (never read back from a store).
struct run_result {
  std::string run_id;
  std::string workflow;
  run_status status = run_status::pending;
  json::value outputs;             // an object when succeeded, else null
  std::string error;               // empty when succeeded
  std::vector<node_report> nodes;  // document order
  double duration_ms = 0;
  /// Not empty when the run's execution log is incomplete: in durable and sync modes, rows the
  /// database refused or that could not be committed before shutdown, or the run's ownership
  /// was lost to another engine. The status above is still what the run did; the CLI exits 1.
  std::string persistence_error;
};

/// The report of a finished (or running) run state machine.
run_result make_report(const run_state& rs);

/// The event a record stands for: a "running" record is a node start, a terminal one a node end.
run_event event_of(const run_state& rs, const node_record& r);

/// `--json` form: { run_id, workflow, status, outputs, error, duration_ms, nodes: [...] }.
json::value to_json(const run_result& r);

}  // namespace troupe
