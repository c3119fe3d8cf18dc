#pragma once

// Runs the real `troupe` binary as a child process for the end-to-end suites. Waiting is always
// an event wait: poll() on the child's pipes (blocking until there is output or end of file)
// and waitpid() for its exit. Nothing sleeps in a loop.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace troupe::test {

struct process_result {
  int exit_code = -1;  // -1 when the child was killed by a signal
  int signal = 0;
  std::string out;
  std::string err;
};

/// A fresh directory, removed with everything in it when this goes away: each child runs in
/// its own, so whatever a workflow writes (shell tasks, the default store) cannot leak between
/// tests or into the source tree.
class temp_dir {
 public:
  temp_dir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/troupe-apps-test-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed");
    }
    path_ = pattern;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::filesystem::path& path() const { return path_; }

  /// Writes `text` to the file `name` in this directory; returns its path.
  std::string write_file(const std::string& name, const std::string& text) const {
    const auto file = path_ / name;
    std::ofstream out(file, std::ios::binary);
    out << text;
    return file.string();
  }

 private:
  std::filesystem::path path_;
};

/// A running troupe process with its stdout and stderr on pipes.
class child {
 public:
  child(const std::vector<std::string>& args, const std::filesystem::path& cwd)
      : child(TROUPE_BINARY, args, cwd) {}

  /// Runs `program` (a path, or a name looked up in PATH) with `args`.
  child(const std::string& program, const std::vector<std::string>& args,
        const std::filesystem::path& cwd) {
    int out_pipe[2];
    int err_pipe[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0) {
      throw std::runtime_error("pipe2 failed");
    }
    std::vector<std::string> all;
    all.emplace_back(program);
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    const std::string dir = cwd.string();
    pid_ = ::fork();
    if (pid_ < 0) {
      throw std::runtime_error("fork failed");
    }
    if (pid_ == 0) {
      // Boost.Test may have installed handlers and masks of its own; the CLI must start as it
      // would from a shell.
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      // A test that times out (Boost.Test aborts it) runs no destructor: its children must not
      // outlive it (a SIGSTOPped coordinator would linger for ever).
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::dup2(out_pipe[1], STDOUT_FILENO);
      ::dup2(err_pipe[1], STDERR_FILENO);
      const int devnull = ::open("/dev/null", O_RDONLY);
      if (devnull >= 0) {
        ::dup2(devnull, STDIN_FILENO);
      }
      if (::chdir(dir.c_str()) != 0) {
        ::_exit(127);
      }
      ::execvp(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    out_fd_ = out_pipe[0];
    err_fd_ = err_pipe[0];
  }

  ~child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
    close_fd(out_fd_);
    close_fd(err_fd_);
  }
  child(const child&) = delete;
  child& operator=(const child&) = delete;

  pid_t pid() const { return pid_; }

  /// Blocks until stderr holds a line containing `needle` (true), or stderr ends (false). The
  /// stderr read so far is kept for the final result.
  bool wait_for_stderr(const std::string& needle) {
    std::size_t searched = 0;
    while (err_fd_ >= 0) {
      if (err_.find(needle, searched > needle.size() ? searched - needle.size() : 0) !=
          std::string::npos) {
        return true;
      }
      searched = err_.size();
      pump();
    }
    return err_.find(needle) != std::string::npos;
  }

  /// Like wait_for_stderr, on stdout.
  bool wait_for_stdout(const std::string& needle) {
    while (out_fd_ >= 0) {
      if (out_.find(needle) != std::string::npos) {
        return true;
      }
      pump();
    }
    return out_.find(needle) != std::string::npos;
  }
  /// Blocks until stdout holds `needle` at least `count` times (true), or stdout ends (false).
  bool wait_for_stdout_count(const std::string& needle, std::size_t count) {
    return wait_count(out_, out_fd_, needle, count);
  }
  /// Like wait_for_stdout_count, on stderr.
  bool wait_for_stderr_count(const std::string& needle, std::size_t count) {
    return wait_count(err_, err_fd_, needle, count);
  }
  static std::size_t occurrences(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
      ++n;
    }
    return n;
  }
  const std::string& out_so_far() const { return out_; }
  const std::string& err_so_far() const { return err_; }

  void send(int signal) { ::kill(pid_, signal); }

  /// Reads both pipes to their end, then reaps the child.
  process_result finish() {
    while (out_fd_ >= 0 || err_fd_ >= 0) {
      pump();
    }
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    process_result r;
    r.out = std::move(out_);
    r.err = std::move(err_);
    if (WIFEXITED(status)) {
      r.exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      r.signal = WTERMSIG(status);
    }
    return r;
  }

 private:
  // `text` is out_ or err_, `fd` its pipe (pump() reads into it and closes it at its end).
  bool wait_count(const std::string& text, const int& fd, const std::string& needle,
                  std::size_t count) {
    while (occurrences(text, needle) < count) {
      if (fd < 0) {
        return false;
      }
      pump();
    }
    return true;
  }

  static void close_fd(int& fd) {
    if (fd >= 0) {
      ::close(fd);
      fd = -1;
    }
  }

  // One blocking wait for output on whichever pipes are still open, then one read from each
  // that is ready. Both pipes are drained together so a child writing a lot to one of them never
  // blocks on a full pipe while we wait on the other.
  void pump() {
    pollfd fds[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) {
        return;
      }
      throw std::runtime_error("poll failed");
    }
    read_ready(fds[0], out_fd_, out_);
    read_ready(fds[1], err_fd_, err_);
  }

  static void read_ready(const pollfd& p, int& fd, std::string& into) {
    if (fd < 0 || (p.revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
      return;
    }
    char buffer[64 * 1024];
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n > 0) {
      into.append(buffer, static_cast<std::size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      close_fd(fd);
    }
  }

  pid_t pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  std::string out_;
  std::string err_;
};

/// Runs `troupe ARGS...` in `cwd` to completion.
inline process_result run_troupe(const std::vector<std::string>& args,
                                 const std::filesystem::path& cwd) {
  child c(args, cwd);
  return c.finish();
}

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace troupe::test
