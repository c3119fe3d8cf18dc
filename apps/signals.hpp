#pragma once

// Ctrl-C handling without signal handlers: the signals are blocked in every thread (the mask is
// inherited by the threads the engine creates later), and one thread takes them with sigwait(),
// so the reaction runs as ordinary code that may lock, allocate and call into the engine.

#include <atomic>
#include <functional>
#include <thread>

namespace troupe::cli {

/// Blocks SIGINT, SIGTERM and SIGUSR1 in the calling thread. Call it in main() before any thread
/// exists, so that every thread inherits the mask and none of them is picked to run a default
/// action that would kill the process mid-run.
void block_termination_signals();

/// A thread that waits for SIGINT/SIGTERM and calls `on_signal` for each one (the count starts
/// at 1). Destroying it (or stop()) ends the thread; it wakes it with SIGUSR1 aimed at it alone.
class signal_waiter {
 public:
  explicit signal_waiter(std::function<void(int signal, int count)> on_signal);
  ~signal_waiter();
  signal_waiter(const signal_waiter&) = delete;
  signal_waiter& operator=(const signal_waiter&) = delete;

  void stop();

 private:
  std::function<void(int, int)> on_signal_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace troupe::cli
