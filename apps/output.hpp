#pragma once

// What the CLI prints: the node table, pretty JSON, and the errors document. Kept apart from the
// command logic so that the formats have one definition each.

#include <iosfwd>
#include <string>

#include "persistence/store.hpp"
#include "workflow/json.hpp"
#include "workflow/plan.hpp"
#include "workflow/run_report.hpp"

namespace troupe::cli {

/// An error tied to a file given on the command line (empty: the main workflow or the
/// arguments), so that errors of `--register`ed workflows say which file they are about.
struct located_error {
  std::string file;
  validation_error error;
};
using located_errors = std::vector<located_error>;

located_errors locate(const validation_errors& errors, const std::string& file = {});
located_errors one_error(std::string message, std::string pointer = {}, std::string file = {});

/// Errors in the mode the user asked for: the errors document on stdout (`--json`), or one line
/// each on stderr.
void print_errors(const located_errors& errors, bool json_mode);

/// `0.05 ms`, `1.2 ms`, `345.6 ms`, `12.3 s`.
std::string format_duration(double ms);
/// A time measured in microseconds, to 3 significant digits or so: "85.3 us", "362 us",
/// "1.25 ms", "2.50 s"; "-" for a negative (unknown) value. For traces and latencies.
std::string format_micros(double us);

/// One line of JSON, with doubles written as people read them (`0.074`, not `7.4E-2`).
std::string compact_json(const json::value& v);

/// JSON indented by two spaces, one member or element per line; empty containers stay `[]`/`{}`.
std::string pretty_json(const json::value& v);

/// The node table, aligned in fixed columns, one line per node in document order.
void print_node_table(std::ostream& out, const run_result& r);

/// The text-mode report: summary line, node table and (when the run succeeded) its outputs. The
/// run's error goes to stderr, with the other diagnostics.
void print_run_text(std::ostream& out, const run_result& r);

/// A store URL fit to print: a password (user info or `password=` parameter) becomes `***`.
std::string display_url(std::string_view url);

/// Wall-clock microseconds since the epoch as local time, `2024-05-01T14:03:07`; "-" for 0.
std::string local_time(std::int64_t epoch_us);

/// The same instant in UTC for JSON, `2024-05-01T12:03:07.123456Z`; null for 0.
json::value utc_time_json(std::int64_t epoch_us);

/// `troupe runs list --json`: one object per run, as the store returned them.
json::value runs_document(const std::vector<run_row>& runs);

/// `troupe runs show --json`: `{ "run": {...}, "nodes": [...] }`.
json::value run_detail_document(const run_row& run, const std::vector<node_row>& nodes);

/// The runs table, one line per run in the order given.
void print_runs_table(std::ostream& out, const std::vector<run_row>& runs);

/// A run's header (status, times, inputs, outputs, error) and its node execution table.
void print_run_detail(std::ostream& out, const run_row& run, const std::vector<node_row>& nodes);

/// `{ "errors": [ { "pointer": ..., "message": ... } ] }` (plus `file` where one is known).
json::value errors_document(const located_errors& errors);

/// One line per error: `error: FILE: /pointer: message`.
void print_errors_text(std::ostream& err, const located_errors& errors);

}  // namespace troupe::cli
