#pragma once

// `troupe trace summary|sequence FILE`: reads an actor trace written with `--trace FILE`
// (engine_config::trace_file; Chrome trace event JSON) and summarises it. See apps/README.md.

#include <CLI/CLI.hpp>

#include <cstddef>
#include <string>

namespace troupe::cli {

struct trace_options {
  std::string file;
  std::string run;
  std::size_t top = 10;
  bool json = false;
  CLI::App* summary = nullptr;
  CLI::App* sequence = nullptr;
};

/// Registers `trace` with its `summary` and `sequence` subcommands, filling `o` when parsed.
CLI::App* add_trace_command(CLI::App& app, trace_options& o);

/// Runs the parsed subcommand; 0, or 2 for a file that is missing, not a trace, or lacks the run.
int trace_command(const trace_options& o);

}  // namespace troupe::cli
