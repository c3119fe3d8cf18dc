#pragma once

// What the CLI prints: the node table, pretty JSON, and the errors document. Kept apart from the
// command logic so that the formats have one definition each.

#include <iosfwd>
#include <string>

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

/// `0.05 ms`, `1.2 ms`, `345.6 ms`, `12.3 s`.
std::string format_duration(double ms);

/// One line of JSON, with doubles written as people read them (`0.074`, not `7.4E-2`).
std::string compact_json(const json::value& v);

/// JSON indented by two spaces, one member or element per line; empty containers stay `[]`/`{}`.
std::string pretty_json(const json::value& v);

/// The node table, aligned in fixed columns, one line per node in document order.
void print_node_table(std::ostream& out, const run_result& r);

/// The text-mode report: summary line, node table and (when the run succeeded) its outputs. The
/// run's error goes to stderr, with the other diagnostics.
void print_run_text(std::ostream& out, const run_result& r);

/// `{ "errors": [ { "pointer": ..., "message": ... } ] }` (plus `file` where one is known).
json::value errors_document(const located_errors& errors);

/// One line per error: `error: FILE: /pointer: message`.
void print_errors_text(std::ostream& err, const located_errors& errors);

}  // namespace troupe::cli
