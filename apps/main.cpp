#include <csignal>

#include "apps/cli.hpp"
#include "apps/signals.hpp"

int main(int argc, char** argv) {
  // Before anything can start a thread: the engine's threads inherit this mask, so Ctrl-C is
  // only ever seen by the CLI's own sigwait thread.
  troupe::cli::block_termination_signals();
  // A closed stdout (`troupe run ... | head`) must end in a write error, not a silent death.
  // Children of `shell` tasks get their default dispositions back before exec.
  std::signal(SIGPIPE, SIG_IGN);
  return troupe::cli::run_cli(argc, argv);
}
