#pragma once

// `troupe load`: drives the embedded engine with many runs of one workflow (a file or a built-in
// scenario) and reports throughput, latency percentiles, peak memory and the writer's figures,
// for one persistence mode or several compared in one process. See apps/README.md.

#include <CLI/CLI.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace troupe::cli {

/// The flags as given; load_command() checks their combinations (CLI11 only checks types).
struct load_options {
  std::string file;
  std::string scenario;
  std::vector<std::string> inputs;  // NAME=VALUE
  std::optional<std::int64_t> runs;
  std::optional<double> duration_s;
  std::optional<std::int64_t> in_flight;
  std::optional<double> rate;
  std::int64_t warmup = 0;
  int threads = 0;
  std::optional<std::string> db;
  std::optional<std::string> mode;
  std::optional<std::string> compare;
  std::optional<std::size_t> batch_max;
  std::optional<std::int64_t> flush_ms;
  std::string trace;  // actor trace file; with several modes, FILE-MODE.EXT each
  bool json = false;
  /// Drive `troupe serve` at this URL (http://HOST:PORT) instead of an embedded engine.
  std::string target;
  std::string api_key;  // --api-key, else TROUPE_API_KEY
};

/// Registers the `load` subcommand and its flags on `app`, filling `o` when parsed.
CLI::App* add_load_command(CLI::App& app, load_options& o);

/// Runs the load test; returns the exit code (0: every run succeeded, 1: some failed or the
/// load was interrupted, 2: bad usage or an invalid workflow).
int load_command(const load_options& o);

}  // namespace troupe::cli
