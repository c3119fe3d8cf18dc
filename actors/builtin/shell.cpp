// The `shell` builtin: a child process driven entirely by Asio.
//
// The child is forked into its own process group so that cancel() can kill everything it started
// (`sh -c 'a | b &'`). Its exit is observed through a pidfd (readable once the process has exited),
// its output through non-blocking pipes, and a failed exec through a close-on-exec status pipe:
// nothing polls, no thread waits, and no SIGCHLD handler is installed (the process may not own
// that signal).
//
// The child and its group do not outlive troupe, even when troupe is killed with SIGKILL: the
// child has a parent-death signal (SIGKILL), and registers its group with the process guardian
// (process_guardian.hpp) before exec, which kills the group when troupe is gone.

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/strand.hpp>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "actors/builtin/detail_operation.hpp"
#include "actors/builtin/operation.hpp"
#include "actors/builtin/process_guardian.hpp"

extern char** environ;

namespace troupe {
namespace detail {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;

constexpr std::array<std::string_view, 6> shell_fields = {"argv", "command", "env",
                                                          "cwd",  "stdin",   "output"};
constexpr std::size_t read_chunk = 64 * 1024;

/// What to run, decoded and checked before anything is spawned.
struct shell_spec {
  std::vector<std::string> argv;
  std::vector<std::string> env;  // the child's whole environment, "NAME=value"
  std::string cwd;               // empty: the parent's
  std::string stdin_data;
  bool json_output = false;
};

std::string errno_text(int err) {
  return std::strerror(err);
}

expected<shell_spec, std::string> parse_shell_input(const json::value& input) {
  const json::object* object = input.if_object();
  if (object == nullptr) {
    return make_unexpected("shell input must be an object, got " +
                           std::string(json_kind_name(input)));
  }
  if (auto field = unknown_field(*object, shell_fields); !field.empty()) {
    return make_unexpected("shell: unknown field '" + std::string(field) +
                           "' (known fields: " + field_list(shell_fields) + ")");
  }
  shell_spec spec;
  const json::value* argv = object->if_contains("argv");
  const json::value* command = object->if_contains("command");
  if (argv != nullptr && command != nullptr) {
    return make_unexpected(std::string("shell: give either 'argv' or 'command', not both"));
  }
  if (argv == nullptr && command == nullptr) {
    return make_unexpected(
        std::string("shell: needs 'argv' (an array of strings) or 'command' (a string)"));
  }
  if (argv != nullptr) {
    const json::array* items = argv->if_array();
    if (items == nullptr || items->empty()) {
      return make_unexpected(std::string("shell: 'argv' must be a non-empty array of strings"));
    }
    for (std::size_t i = 0; i < items->size(); ++i) {
      const json::string* s = (*items)[i].if_string();
      if (s == nullptr) {
        return make_unexpected("shell: 'argv[" + std::to_string(i) + "]' must be a string, got " +
                               std::string(json_kind_name((*items)[i])));
      }
      if (contains_nul(*s)) {
        return make_unexpected("shell: 'argv[" + std::to_string(i) + "]' contains a NUL byte");
      }
      spec.argv.emplace_back(*s);
    }
    if (spec.argv.front().empty()) {
      return make_unexpected(std::string("shell: 'argv[0]' (the program) is empty"));
    }
  } else {
    const json::string* s = command->if_string();
    if (s == nullptr) {
      return make_unexpected("shell: 'command' must be a string, got " +
                             std::string(json_kind_name(*command)));
    }
    if (contains_nul(*s)) {
      return make_unexpected(std::string("shell: 'command' contains a NUL byte"));
    }
    spec.argv = {"/bin/sh", "-c", std::string(*s)};
  }

  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    spec.env.emplace_back(*e);
  }
  if (const json::value* env = object->if_contains("env")) {
    const json::object* vars = env->if_object();
    if (vars == nullptr) {
      return make_unexpected("shell: 'env' must be an object of strings, got " +
                             std::string(json_kind_name(*env)));
    }
    for (const auto& var : *vars) {
      const std::string_view name = var.key();
      const json::string* value = var.value().if_string();
      if (name.empty() || name.find('=') != std::string_view::npos || contains_nul(name)) {
        return make_unexpected("shell: 'env' has an invalid variable name '" + std::string(name) +
                               "'");
      }
      if (value == nullptr) {
        return make_unexpected("shell: 'env." + std::string(name) + "' must be a string, got " +
                               std::string(json_kind_name(var.value())));
      }
      if (contains_nul(*value)) {
        return make_unexpected("shell: 'env." + std::string(name) + "' contains a NUL byte");
      }
      std::string entry = std::string(name) + "=" + std::string(*value);
      bool replaced = false;
      for (auto& existing : spec.env) {
        if (existing.size() > name.size() && existing.compare(0, name.size(), name) == 0 &&
            existing[name.size()] == '=') {
          existing = entry;
          replaced = true;
        }
      }
      if (!replaced) {
        spec.env.push_back(std::move(entry));
      }
    }
  }
  if (const json::value* cwd = object->if_contains("cwd")) {
    const json::string* s = cwd->if_string();
    if (s == nullptr || s->empty() || contains_nul(*s)) {
      return make_unexpected(std::string("shell: 'cwd' must be a non-empty string"));
    }
    spec.cwd = *s;
  }
  if (const json::value* in = object->if_contains("stdin")) {
    const json::string* s = in->if_string();
    if (s == nullptr) {
      return make_unexpected("shell: 'stdin' must be a string, got " +
                             std::string(json_kind_name(*in)));
    }
    spec.stdin_data = *s;
  }
  if (const json::value* output = object->if_contains("output")) {
    const json::string* s = output->if_string();
    if (s == nullptr || (*s != "text" && *s != "json")) {
      return make_unexpected(std::string("shell: 'output' must be \"text\" or \"json\""));
    }
    spec.json_output = *s == "json";
  }
  return spec;
}

/// The variables that tell a task attempt who it is (see start_shell), replacing any of the same
/// names that the environment or `env` gave.
void set_call_environment(shell_spec& spec, const task_call& call) {
  constexpr std::array<std::string_view, 5> names = {
      "TROUPE_EXECUTION_KEY", "TROUPE_RUN_ID", "TROUPE_NODE_ID", "TROUPE_ITEM", "TROUPE_ATTEMPT"};
  std::erase_if(spec.env, [&](const std::string& entry) {
    const std::string_view name = std::string_view(entry).substr(0, entry.find('='));
    return std::find(names.begin(), names.end(), name) != names.end();
  });
  spec.env.push_back("TROUPE_EXECUTION_KEY=" + call.execution_key());
  spec.env.push_back("TROUPE_RUN_ID=" + std::string(call.run_id));
  spec.env.push_back("TROUPE_NODE_ID=" + std::string(call.node_id));
  if (call.item_index >= 0) {
    spec.env.push_back("TROUPE_ITEM=" + std::to_string(call.item_index));
  }
  spec.env.push_back("TROUPE_ATTEMPT=" + std::to_string(call.attempt));
}

/// Where to look for the program, in execvp's order, computed before fork because the child may
/// not allocate. PATH comes from the child's environment so that `env.PATH` is honoured.
std::vector<std::string> exec_candidates(const shell_spec& spec) {
  const std::string& program = spec.argv.front();
  if (program.find('/') != std::string::npos) {
    return {program};
  }
  std::string_view path = "/usr/local/bin:/usr/bin:/bin";
  for (const auto& entry : spec.env) {
    if (entry.rfind("PATH=", 0) == 0) {
      path = std::string_view(entry).substr(5);
    }
  }
  std::vector<std::string> out;
  while (true) {
    const auto colon = path.find(':');
    std::string_view dir = path.substr(0, colon);
    out.push_back((dir.empty() ? std::string(".") : std::string(dir)) + "/" + program);
    if (colon == std::string_view::npos) {
      break;
    }
    path.remove_prefix(colon + 1);
  }
  return out;
}

/// What a child that could not exec writes to the status pipe before _exit(127).
struct exec_status {
  enum stage_t : int { chdir_failed = 1, exec_failed = 2, setup_failed = 3 };
  int stage = 0;
  int error = 0;
};

/// Everything the child needs, as plain pointers: between fork and exec only async-signal-safe
/// calls are allowed (other threads may have held the malloc lock at fork time).
struct child_plan {
  std::vector<char*> argv;
  std::vector<char*> envp;
  std::vector<const char*> candidates;
  const char* cwd = nullptr;
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
  int status_fd = -1;
  pid_t parent_pid = -1;  // getpid() before fork: the child's parent, unless that died
  int guardian_fd = -1;   // the process guardian's pipe, or -1 without a guardian
};

[[noreturn]] void report_and_exit(int status_fd, int stage, int error) {
  const exec_status status{stage, error};
  [[maybe_unused]] const auto n = ::write(status_fd, &status, sizeof status);
  ::_exit(127);
}

/// Runs in the forked child. Never returns.
[[noreturn]] void run_child(const child_plan& plan) {
  // Signal mask and ignored signals survive exec: give the program a clean slate (the parent may
  // block signals for its own signal thread, or ignore SIGPIPE).
  sigset_t none;
  sigemptyset(&none);
  pthread_sigmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    sigaction(sig, &dfl, nullptr);  // fails harmlessly for SIGKILL, SIGSTOP and libc's own
  }
  ::setpgid(0, 0);
  // Die with troupe. The signal is sent when the thread that forked exits: the I/O threads that
  // run spawn() live as long as the engine, which kills its children when it stops anyway. If
  // troupe died before prctl, nobody will send it: the child has been reparented, so leave now.
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
    report_and_exit(plan.status_fd, exec_status::setup_failed, errno);
  }
  if (::getppid() != plan.parent_pid) {
    ::_exit(127);
  }
  // The group is registered before anything runs in it, so no grandchild escapes the guardian.
  guardian_register_self(plan.guardian_fd);
  // Move the pipe ends above 2 first, so that dup2 onto 0..2 cannot clobber one of them when the
  // parent ran with a standard descriptor closed.
  const int fds[3] = {plan.stdin_fd, plan.stdout_fd, plan.stderr_fd};
  int high[3];
  for (int i = 0; i < 3; ++i) {
    high[i] = ::fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
    if (high[i] < 0) {
      report_and_exit(plan.status_fd, exec_status::setup_failed, errno);
    }
  }
  for (int i = 0; i < 3; ++i) {
    if (::dup2(high[i], i) < 0) {  // dup2 clears close-on-exec on the target
      report_and_exit(plan.status_fd, exec_status::setup_failed, errno);
    }
  }
  if (plan.cwd != nullptr && ::chdir(plan.cwd) != 0) {
    report_and_exit(plan.status_fd, exec_status::chdir_failed, errno);
  }
  // execvp's rules: skip directories where the file is missing, remember EACCES, stop at anything
  // else.
  int error = ENOENT;
  bool saw_eacces = false;
  for (const char* candidate : plan.candidates) {
    ::execve(candidate, plan.argv.data(), plan.envp.data());
    const int e = errno;
    if (e == EACCES) {
      saw_eacces = true;
    } else if (e != ENOENT && e != ENOTDIR) {
      error = e;
      break;
    }
  }
  if (saw_eacces && error == ENOENT) {
    error = EACCES;
  }
  report_and_exit(plan.status_fd, exec_status::exec_failed, error);
}

/// A pipe whose ends are both close-on-exec; -1 for an end that was handed off or closed.
struct pipe_fds {
  int read = -1;
  int write = -1;

  pipe_fds() = default;
  pipe_fds(const pipe_fds&) = delete;
  pipe_fds& operator=(const pipe_fds&) = delete;
  ~pipe_fds() {
    close_read();
    close_write();
  }
  bool open() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
      return false;
    }
    read = fds[0];
    write = fds[1];
    return true;
  }
  void close_read() {
    if (read >= 0) {
      ::close(read);
      read = -1;
    }
  }
  void close_write() {
    if (write >= 0) {
      ::close(write);
      write = -1;
    }
  }
  int release_read() { return std::exchange(read, -1); }
  int release_write() { return std::exchange(write, -1); }
};

bool set_non_blocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

/// One spawned process. Every member is touched only from strand_ (after construction), so
/// handlers on a multi-threaded io_context never race. Handlers hold shared_from_this(): the
/// operation outlives its last pending handler even when the caller drops its operation_ptr.
class shell_operation final : public operation,
                              public std::enable_shared_from_this<shell_operation> {
 public:
  shell_operation(asio::io_context& io, shell_spec spec, completion done)
      : strand_(asio::make_strand(io)),
        spec_(std::move(spec)),
        done_(std::move(done)),
        stdin_(strand_),
        stdout_{asio::posix::stream_descriptor(strand_), {}, "stdout"},
        stderr_{asio::posix::stream_descriptor(strand_), {}, "stderr"},
        status_pipe_(strand_),
        pidfd_(strand_) {}

  ~shell_operation() override {
    // Only reached without completion when the io_context was stopped or destroyed with our
    // handlers pending: do not leave the process group running.
    if (pid_ > 0 && !reaped_) {
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);
      forget_group();
    }
  }

  void start() {
    asio::post(strand_, [self = shared_from_this()] { self->spawn(); });
  }

  void cancel() override {
    asio::post(strand_, [self = shared_from_this()] { self->abort("cancelled"); });
  }

 private:
  struct output_stream {
    asio::posix::stream_descriptor pipe;
    std::string data;
    const char* name;
    bool finished = false;  // the last read handler has run
  };

  void spawn() {
    if (!abort_reason_.empty()) {  // cancelled before the process started
      finish(task_result::failure(abort_reason_));
      return;
    }
    pipe_fds in, out, err, status;
    if (!in.open() || !out.open() || !err.open() || !status.open()) {
      finish(task_result::failure("cannot create pipes: " + errno_text(errno)));
      return;
    }
    // Only the parent's ends are non-blocking; the child gets ordinary blocking pipes.
    if (!set_non_blocking(in.write) || !set_non_blocking(out.read) || !set_non_blocking(err.read) ||
        !set_non_blocking(status.read)) {
      finish(task_result::failure("cannot configure pipes: " + errno_text(errno)));
      return;
    }

    const std::vector<std::string> candidates = exec_candidates(spec_);
    child_plan plan;
    for (auto& arg : spec_.argv) {
      plan.argv.push_back(arg.data());
    }
    plan.argv.push_back(nullptr);
    for (auto& var : spec_.env) {
      plan.envp.push_back(var.data());
    }
    plan.envp.push_back(nullptr);
    for (const auto& candidate : candidates) {
      plan.candidates.push_back(candidate.c_str());
    }
    plan.cwd = spec_.cwd.empty() ? nullptr : spec_.cwd.c_str();
    plan.stdin_fd = in.read;
    plan.stdout_fd = out.write;
    plan.stderr_fd = err.write;
    plan.status_fd = status.write;
    plan.parent_pid = ::getpid();
    plan.guardian_fd = guardian_fd();  // starts the guardian with the first shell task

    const pid_t pid = ::fork();
    if (pid < 0) {
      finish(task_result::failure("cannot fork: " + errno_text(errno)));
      return;
    }
    if (pid == 0) {
      run_child(plan);
    }
    pid_ = pid;
    guarded_ = plan.guardian_fd >= 0;
    // Also set the group from the parent, so that kill(-pid) works even if cancel() arrives before
    // the child has run. EACCES (the child already exec'd, having done it itself) is fine.
    ::setpgid(pid, pid);
    in.close_read();
    out.close_write();
    err.close_write();
    status.close_write();

    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));  // always O_CLOEXEC
    if (pidfd < 0) {
      const int e = errno;
      // Without a pidfd there is no way to wait without blocking; the killed child is reaped at
      // once (SIGKILL cannot be caught), so this waitpid does not stall the thread.
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
      forget_group();
      ::waitpid(pid, nullptr, 0);
      reaped_ = true;
      finish(task_result::failure("pidfd_open failed (Linux 5.3 or later is required): " +
                                  errno_text(e)));
      return;
    }
    pidfd_.assign(pidfd);
    stdin_.assign(in.release_write());
    stdout_.pipe.assign(out.release_read());
    stderr_.pipe.assign(err.release_read());
    status_pipe_.assign(status.release_read());

    wait_for_exit();
    asio::async_read(
        status_pipe_, asio::buffer(&exec_status_, sizeof exec_status_),
        asio::bind_executor(strand_, [self = shared_from_this()](error_code ec, std::size_t n) {
          self->on_status(ec, n);
        }));
    read_more(stdout_);
    read_more(stderr_);
    write_stdin();
  }

  // Reads straight into the captured string: grow it by a chunk, read into the new tail, shrink
  // back to what arrived. One byte past the cap is read so that "exactly 16 MiB" still passes.
  void read_more(output_stream& stream) {
    const std::size_t old_size = stream.data.size();
    const std::size_t room = max_capture_bytes + 1 - old_size;
    const std::size_t chunk = room < read_chunk ? room : read_chunk;
    stream.data.resize(old_size + chunk);
    stream.pipe.async_read_some(
        asio::buffer(stream.data.data() + old_size, chunk),
        asio::bind_executor(
            strand_, [self = shared_from_this(), &stream, old_size](error_code ec, std::size_t n) {
              self->on_read(stream, old_size, ec, n);
            }));
  }

  void on_read(output_stream& stream, std::size_t old_size, error_code ec, std::size_t n) {
    stream.data.resize(old_size + n);
    if (ec) {  // EOF, or the pipe was closed by abort()
      close_quietly(stream.pipe);
      stream.finished = true;
      maybe_finish();
      return;
    }
    if (stream.data.size() > max_capture_bytes) {
      stream.data.resize(max_capture_bytes);
      close_quietly(stream.pipe);
      stream.finished = true;
      abort(std::string(stream.name) + " exceeded the 16 MiB limit; the process was killed");
      return;
    }
    read_more(stream);
  }

  void on_status(error_code ec, std::size_t n) {
    // EOF with nothing read: the status pipe closed on a successful exec.
    exec_failed_ = !ec || n == sizeof exec_status_;
    close_quietly(status_pipe_);
    status_finished_ = true;
    maybe_finish();
  }

  void wait_for_exit() {
    pidfd_.async_wait(asio::posix::stream_descriptor::wait_read,
                      asio::bind_executor(strand_, [self = shared_from_this()](error_code ec) {
                        self->on_exit(ec);
                      }));
    // Asio registers descriptors edge-triggered. If the child exits between assign() and the
    // wait being queued, an epoll_wait on another I/O thread can consume that one edge with no
    // operation waiting, and the wait would never complete. So look once now (after the wait is
    // queued, so no exit can slip between the two): a pidfd stays readable after exit.
    if (has_exited()) {
      asio::post(strand_, [self = shared_from_this()] { self->on_exit({}); });
    }
  }

  /// poll(2) on the pidfd is the kernel's own answer: readable once the whole process is gone.
  bool has_exited() {
    pollfd exited{pidfd_.native_handle(), POLLIN, 0};
    return ::poll(&exited, 1, 0) == 1;
  }

  void on_exit(error_code ec) {
    if (ec == asio::error::operation_aborted || exited_ || !pidfd_.is_open()) {
      return;  // finish() closed the pidfd, or the other of the two notifications came first
    }
    // Asio's readiness is only a hint. Its epoll reactor recycles the per-descriptor state of a
    // closed descriptor at once, so an event meant for the old descriptor (another operation's
    // pipe) can be performed on this pidfd: one already taken from epoll, or one from a
    // registration that outlives close() while a forked child still holds the file. The wait
    // then completes while the process still runs. Trusting it made waitid find nothing to
    // collect, failed the task with "not exited" and left the child an unreaped zombie.
    if (!has_exited()) {
      wait_for_exit();
      return;
    }
    exited_ = true;
    maybe_finish();
  }

  void write_stdin() {
    if (stdin_written_ == spec_.stdin_data.size()) {
      close_quietly(stdin_);  // EOF for the child
      return;
    }
    stdin_.async_wait(asio::posix::stream_descriptor::wait_write,
                      asio::bind_executor(strand_, [self = shared_from_this()](error_code ec) {
                        self->on_stdin_writable(ec);
                      }));
    // Edge-triggered registration (see the pidfd above): if the pipe is writable already, that
    // edge may have been consumed before the wait was queued. Writes run on the strand, so a
    // second call finds the work done or continues it.
    pollfd writable{stdin_.native_handle(), POLLOUT, 0};
    if (::poll(&writable, 1, 0) == 1) {
      asio::post(strand_, [self = shared_from_this()] { self->on_stdin_writable({}); });
    }
  }

  void on_stdin_writable(error_code ec) {
    if (ec || !stdin_.is_open()) {
      return;  // closed by abort() or finish()
    }
    const std::string& data = spec_.stdin_data;
    while (stdin_written_ < data.size()) {
      const ssize_t n = write_without_sigpipe(stdin_.native_handle(), data.data() + stdin_written_,
                                              data.size() - stdin_written_);
      if (n >= 0) {
        stdin_written_ += static_cast<std::size_t>(n);
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        write_stdin();
        return;
      } else {
        // EPIPE: the program stopped reading its input (`head -1`), which is its business.
        close_quietly(stdin_);
        return;
      }
    }
    close_quietly(stdin_);
  }

  /// Stops the process for good: the whole group gets SIGKILL (children of `sh -c` included) and
  /// our pipe ends close, so a grandchild holding them cannot delay completion. Completion still
  /// waits for the pidfd so the child is reaped before done runs.
  void abort(std::string reason) {
    if (completed_) {
      return;  // cancel() after completion is harmless
    }
    if (abort_reason_.empty()) {
      abort_reason_ = std::move(reason);
    }
    if (pid_ > 0 && !reaped_) {
      // The unreaped leader (alive or zombie) keeps the pid and group id ours: no reuse race.
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);
    }
    close_quietly(stdin_);
    close_quietly(stdout_.pipe);
    close_quietly(stderr_.pipe);
    close_quietly(status_pipe_);
    maybe_finish();
  }

  void maybe_finish() {
    if (completed_ || pid_ <= 0 || !exited_ || !stdout_.finished || !stderr_.finished ||
        !status_finished_) {
      return;
    }
    // The leader has exited and is not reaped yet, so its pid still names this group.
    forget_group();
    siginfo_t info{};
    const int rc = ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG);
    reaped_ = true;
    close_quietly(pidfd_);
    close_quietly(stdin_);
    if (!abort_reason_.empty()) {
      finish(task_result::failure(abort_reason_));
    } else if (rc != 0 || info.si_pid == 0) {
      finish(task_result::failure("cannot collect the exit status of process " +
                                  std::to_string(pid_) + ": " +
                                  (rc != 0 ? errno_text(errno) : std::string("not exited"))));
    } else if (exec_failed_) {
      finish(task_result::failure(exec_error()));
    } else {
      finish(result(info));
    }
  }

  std::string exec_error() const {
    const std::string reason = errno_text(exec_status_.error);
    switch (exec_status_.stage) {
      case exec_status::chdir_failed:
        return "cannot change directory to '" + spec_.cwd + "': " + reason;
      case exec_status::exec_failed:
        return "cannot execute '" + spec_.argv.front() + "': " + reason;
      default:
        return "cannot set up the child process: " + reason;
    }
  }

  task_result result(const siginfo_t& info) {
    const std::string_view err = trim(stderr_.data);
    if (info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED) {
      std::string message = "killed by signal " + std::to_string(info.si_status);
      if (!err.empty()) {
        message += ": " + tail(err);
      }
      return task_result::failure(std::move(message));
    }
    if (info.si_status != 0) {
      std::string message = "exit code " + std::to_string(info.si_status);
      if (!err.empty()) {
        message += ": " + tail(err);
      }
      return task_result::failure(std::move(message));
    }
    if (spec_.json_output) {
      auto parsed = parse_json(stdout_.data);
      if (!parsed) {
        return task_result::failure("stdout is not valid JSON: " + parsed.error().message);
      }
      return task_result::success(std::move(*parsed));
    }
    json::object out;
    out["exit_code"] = info.si_status;
    out["stdout"] = std::move(stdout_.data);
    out["stderr"] = std::move(stderr_.data);
    return task_result::success(std::move(out));
  }

  /// The only place done_ runs: on strand_, so on an io_context thread, exactly once.
  void finish(task_result r) {
    if (completed_) {
      return;
    }
    completed_ = true;
    completion done = std::move(done_);
    done_ = nullptr;
    done(std::move(r));
  }

  /// Tells the guardian that the group needs no killing any more: it was killed, or its leader
  /// exited (what the leader left running is its own). Before the leader is reaped, once.
  void forget_group() {
    if (guarded_) {
      guarded_ = false;
      guardian_forget(pid_);
    }
  }

  static void close_quietly(asio::posix::stream_descriptor& d) {
    if (d.is_open()) {
      error_code ignored;
      d.close(ignored);
    }
  }

  asio::strand<asio::io_context::executor_type> strand_;
  shell_spec spec_;
  completion done_;
  asio::posix::stream_descriptor stdin_;
  output_stream stdout_;
  output_stream stderr_;
  asio::posix::stream_descriptor status_pipe_;
  asio::posix::stream_descriptor pidfd_;
  exec_status exec_status_;
  std::size_t stdin_written_ = 0;
  pid_t pid_ = -1;
  std::string abort_reason_;  // set once: "cancelled" or an output limit
  bool exited_ = false;
  bool reaped_ = false;
  bool guarded_ = false;  // the child registered its group with the guardian, not forgotten yet
  bool exec_failed_ = false;
  bool status_finished_ = false;
  bool completed_ = false;
};

}  // namespace
}  // namespace detail

operation_ptr start_shell(boost::asio::io_context& io, const json::value& input,
                          const task_call& call, completion done) {
  auto spec = detail::parse_shell_input(input);
  if (spec) {
    detail::set_call_environment(*spec, call);
  }
  return detail::start_parsed<detail::shell_operation>(io, std::move(spec), std::move(done));
}

operation_ptr start_shell(boost::asio::io_context& io, const json::value& input, completion done) {
  return detail::start_parsed<detail::shell_operation>(io, detail::parse_shell_input(input),
                                                       std::move(done));
}

}  // namespace troupe
