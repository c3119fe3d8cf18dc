#pragma once

// The `troupe` program's subcommands. main() only prepares the process (signal mask) and calls
// run_cli(), so that the commands stay free of process-wide setup.

#include <cstdint>
#include <string>
#include <vector>

namespace troupe::cli {

/// Exit codes (DESIGN.md): the run succeeded / the run failed, was cancelled or timed out /
/// bad usage, unreadable or invalid workflow, or bad inputs.
inline constexpr int exit_ok = 0;
inline constexpr int exit_run_failed = 1;
inline constexpr int exit_usage = 2;

/// Parses the command line and runs the subcommand. Expects SIGINT, SIGTERM and SIGUSR1 to be
/// blocked in every thread already (block_termination_signals()).
int run_cli(int argc, char** argv);

/// `text` cut at each `sep` ("a,,b" gives "a", "", "b"; "" gives nothing): the comma lists of
/// options and environment variables.
std::vector<std::string> split(const std::string& text, char sep);

/// "HOST:PORT" or "[v6]:PORT" into its parts (brackets removed; the host may be empty, the port
/// 0). False when there is no colon or the port is not a number from 0 to 65535.
bool split_host_port(const std::string& text, std::string& host, std::uint16_t& port);

}  // namespace troupe::cli
