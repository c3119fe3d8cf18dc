#include "apps/signals.hpp"

#include <pthread.h>
#include <signal.h>

#include <utility>

namespace troupe::cli {
namespace {

sigset_t waited_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  // SIGUSR1 is the private wake-up of the waiting thread, so it must be blocked as well: a
  // stray SIGUSR1 from outside then stays pending instead of killing the process.
  sigaddset(&set, SIGUSR1);
  return set;
}

}  // namespace

void block_termination_signals() {
  sigset_t set = waited_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

signal_waiter::signal_waiter(std::function<void(int, int)> on_signal)
    : on_signal_(std::move(on_signal)) {
  thread_ = std::thread([this] {
    const sigset_t set = waited_signals();
    int count = 0;
    for (;;) {
      int signal = 0;
      if (sigwait(&set, &signal) != 0) {
        return;
      }
      if (signal == SIGUSR1) {
        if (stopping_.load()) {
          return;
        }
        continue;  // not ours: someone else's SIGUSR1 means nothing to the CLI
      }
      on_signal_(signal, ++count);
    }
  });
}

signal_waiter::~signal_waiter() {
  stop();
}

void signal_waiter::stop() {
  if (!thread_.joinable()) {
    return;
  }
  stopping_.store(true);
  pthread_kill(thread_.native_handle(), SIGUSR1);
  thread_.join();
}

}  // namespace troupe::cli
