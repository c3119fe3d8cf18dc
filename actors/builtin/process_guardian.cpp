#include "actors/builtin/process_guardian.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>

namespace troupe::detail {
namespace {

// ---- the guardian process: async-signal-safe calls only -------------------------------------

/// No pid (so no pgid) reaches PID_MAX_LIMIT, 2^22 on 64-bit Linux, whatever pid_max says.
constexpr std::int32_t pgid_limit = std::int32_t{1} << 22;

/// The registered groups, one bit per pgid (512 KiB). Only the guardian writes it: in troupe it
/// stays untouched zero pages, so it costs address space, not memory.
std::uint64_t live_groups[pgid_limit / 64];

void apply(std::int32_t record) {
  if (record > 0 && record < pgid_limit) {
    live_groups[record / 64] |= std::uint64_t{1} << (record % 64);
  } else if (record < 0 && record > -pgid_limit) {
    live_groups[-record / 64] &= ~(std::uint64_t{1} << (-record % 64));
  }
}

/// The guardian's whole life. `read_fd` is the pipe's read end; `open_max` bounds the descriptor
/// loop that replaces close_range on kernels older than 5.9. Never returns.
[[noreturn]] void guardian_main(int read_fd, long open_max) {
  // Its own group, so that a signal to troupe's job does not take the guardian with it, and
  // deaf to the signals that end a job (SIGKILL is the only way to stop it early).
  ::setpgid(0, 0);
  ::prctl(PR_SET_NAME, "troupe-guardian", 0, 0, 0);
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  for (const int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE}) {
    ::sigaction(sig, &ignore, nullptr);
  }
  [[maybe_unused]] const int cwd = ::chdir("/");  // hold no directory of troupe's busy
  // Keep only the read end, as stdin: every other descriptor, the pipe's write end above all
  // (end of file must mean that troupe is gone), and troupe's other pipes and files.
  if (read_fd != STDIN_FILENO && ::dup2(read_fd, STDIN_FILENO) != STDIN_FILENO) {
    ::_exit(1);
  }
  if (::close_range(STDIN_FILENO + 1, ~0U, 0) != 0) {
    for (long fd = STDIN_FILENO + 1; fd < open_max; ++fd) {
      ::close(static_cast<int>(fd));
    }
  }

  // Records are 4 bytes, each written atomically (less than PIPE_BUF), so reads return whole
  // records; a partial tail is carried over all the same.
  unsigned char buffer[4096];
  std::size_t held = 0;
  for (;;) {
    const ssize_t n = ::read(STDIN_FILENO, buffer + held, sizeof buffer - held);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;  // end of file: troupe is gone (or the pipe broke, which means the same)
    }
    held += static_cast<std::size_t>(n);
    std::size_t used = 0;
    for (; held - used >= sizeof(std::int32_t); used += sizeof(std::int32_t)) {
      std::int32_t record;
      std::memcpy(&record, buffer + used, sizeof record);
      apply(record);
    }
    std::memmove(buffer, buffer + used, held - used);
    held -= used;
  }
  for (std::int32_t word = 0; word < pgid_limit / 64; ++word) {
    for (std::uint64_t bits = live_groups[word]; bits != 0; bits &= bits - 1) {
      ::kill(-(word * 64 + __builtin_ctzll(bits)), SIGKILL);
    }
  }
  ::_exit(0);
}

// ---- troupe's side --------------------------------------------------------------------------

std::once_flag start_once;
std::atomic<int> write_end{-1};  // set once by start(), never closed
std::atomic<pid_t> guardian{-1};
std::atomic<bool> lost{false};  // the guardian died: stop writing to it

/// One line on stderr, the first time only: what failed and what it means.
void report_once(const char* what, int error) {
  static std::atomic<bool> reported{false};
  if (reported.exchange(true)) {
    return;
  }
  std::fprintf(stderr,
               "troupe: %s%s%s; processes started by shell tasks may outlive a killed troupe "
               "(their direct children still die with it)\n",
               what, error != 0 ? ": " : "", error != 0 ? std::strerror(error) : "");
}

void start() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    report_once("cannot create the shell process guardian's pipe", errno);
    return;
  }
  long open_max = ::sysconf(_SC_OPEN_MAX);
  if (open_max < 0 || open_max > (long{1} << 20)) {
    open_max = long{1} << 20;
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    report_once("cannot start the shell process guardian", e);
    return;
  }
  if (pid == 0) {
    guardian_main(fds[0], open_max);
  }
  // Only the guardian reads: a write after it died fails with EPIPE instead of filling the pipe.
  ::close(fds[0]);
  guardian.store(pid);
  write_end.store(fds[1]);
}

}  // namespace

int guardian_fd() {
  std::call_once(start_once, start);
  return lost.load() ? -1 : write_end.load();
}

void guardian_register_self(int fd) {
  if (fd < 0) {
    return;
  }
  // A dead guardian must not kill the child with SIGPIPE: ignore it for the one write (a
  // signal generated while ignored and unblocked is discarded), then give it back its default.
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGPIPE, &ignore, nullptr);
  const std::int32_t record = static_cast<std::int32_t>(::getpid());
  while (::write(fd, &record, sizeof record) < 0 && errno == EINTR) {
  }
  ::sigaction(SIGPIPE, &dfl, nullptr);
}

void guardian_forget(pid_t pgid) {
  const int fd = write_end.load();
  if (fd < 0 || lost.load()) {
    return;
  }
  const std::int32_t record = -static_cast<std::int32_t>(pgid);
  if (write_without_sigpipe(fd, reinterpret_cast<const char*>(&record), sizeof record) < 0 &&
      errno == EPIPE && !lost.exchange(true)) {
    report_once("the shell process guardian has exited", 0);
    ::waitpid(guardian.load(), nullptr, WNOHANG);  // it is our child: do not leave a zombie
  }
}

pid_t guardian_pid() {
  return lost.load() ? -1 : guardian.load();
}

ssize_t write_without_sigpipe(int fd, const char* data, std::size_t size) {
  sigset_t pipe_set;
  sigset_t old_mask;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);
  sigset_t pending;
  sigpending(&pending);
  const bool already_pending = sigismember(&pending, SIGPIPE) == 1;
  ssize_t n;
  do {
    n = ::write(fd, data, size);
  } while (n < 0 && errno == EINTR);
  const int saved = errno;
  if (n < 0 && saved == EPIPE && !already_pending) {
    const timespec zero{};
    while (sigtimedwait(&pipe_set, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  errno = saved;
  return n;
}

}  // namespace troupe::detail
