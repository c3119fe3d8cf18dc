#pragma once

// The `troupe` program's subcommands. main() only prepares the process (signal mask) and calls
// run_cli(), so that the commands stay free of process-wide setup.

namespace troupe::cli {

/// Exit codes (DESIGN.md): the run succeeded / the run failed, was cancelled or timed out /
/// bad usage, unreadable or invalid workflow, or bad inputs.
inline constexpr int exit_ok = 0;
inline constexpr int exit_run_failed = 1;
inline constexpr int exit_usage = 2;

/// Parses the command line and runs the subcommand. Expects SIGINT, SIGTERM and SIGUSR1 to be
/// blocked in every thread already (block_termination_signals()).
int run_cli(int argc, char** argv);

}  // namespace troupe::cli
