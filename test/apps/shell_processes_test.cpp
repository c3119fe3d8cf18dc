#define BOOST_TEST_MODULE apps_shell_processes
#include <boost/test/unit_test.hpp>

// What becomes of a shell task's processes when the `troupe` running it ends: killed with
// SIGKILL (nothing in troupe runs any more: the parent-death signal and the process guardian
// must do it), or cancelled by SIGTERM. Everything is learned through events: the shell writes
// its pids into a FIFO the test reads, pidfds become readable when a process ends, and this
// process is a child subreaper, so every orphaned descendant (the guardian included) becomes
// its child and is waited for. The bound on each wait is the test case's timeout.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "test/apps/process.hpp"
#include "workflow/json.hpp"

namespace json = boost::json;
namespace utf = boost::unit_test;
using troupe::test::child;
using troupe::test::process_result;
using troupe::test::temp_dir;

namespace {

// The direct child (sh) starts a background grandchild (in sh's process group), reports both
// pids, and waits for it: two processes that only troupe's cleanup can end before the test's
// timeout.
constexpr const char* background_grandchild = R"({
  "name": "background_grandchild",
  "inputs": { "fifo": { "type": "string", "required": true } },
  "nodes": [
    { "id": "work", "task": "shell",
      "with": { "command": "sleep 600 & echo \"$$ $!\" > \"$FIFO\"; wait",
                "env": { "FIFO": "{{ inputs.fifo }}" } } }
  ]
})";

// Each shell task prints the variables that identify its attempt; `flaky` fails its first
// attempt, and every attempt of it leaves a line in attempts.txt (in troupe's directory).
constexpr const char* execution_keys = R"({
  "name": "execution_keys",
  "nodes": [
    { "id": "single", "task": "shell",
      "with": { "command": "printf %s \"$TROUPE_EXECUTION_KEY|${TROUPE_ITEM--}|$TROUPE_ATTEMPT\"" } },
    { "id": "each", "task": "shell", "for_each": "{{ ['a', 'b'] }}",
      "with": { "command": "printf %s \"$TROUPE_EXECUTION_KEY|$TROUPE_ITEM|$TROUPE_ATTEMPT\"" } },
    { "id": "flaky", "task": "shell", "retry": { "max_attempts": 2 },
      "with": { "command": "echo \"$TROUPE_EXECUTION_KEY $TROUPE_ATTEMPT\" >> attempts.txt; [ \"$TROUPE_ATTEMPT\" != 1 ]" } }
  ],
  "outputs": { "single": "{{ nodes.single.output.stdout }}",
               "each": "{{ [nodes.each.output[0].stdout, nodes.each.output[1].stdout] }}" }
})";

/// Orphaned descendants (troupe's children once troupe is gone) are reparented to this process
/// instead of init, so that the test can wait for every one of them.
void become_subreaper() {
  BOOST_TEST_REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0);
}

/// A FIFO in `dir`, opened for reading without waiting for a writer.
class fifo_reader {
 public:
  explicit fifo_reader(const temp_dir& dir) : path_((dir.path() / "pids").string()) {
    BOOST_TEST_REQUIRE(::mkfifo(path_.c_str(), 0600) == 0);
    fd_ = ::open(path_.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    BOOST_TEST_REQUIRE(fd_ >= 0);
  }
  ~fifo_reader() { ::close(fd_); }
  fifo_reader(const fifo_reader&) = delete;
  fifo_reader& operator=(const fifo_reader&) = delete;

  const std::string& path() const { return path_; }

  /// The first line a writer sends, waiting for it (no writer yet is not end of file).
  std::string read_line() {
    std::string line;
    while (line.find('\n') == std::string::npos) {
      pollfd p{fd_, POLLIN, 0};
      const int ready = ::poll(&p, 1, -1);
      if (ready < 0 && errno == EINTR) {
        continue;
      }
      BOOST_TEST_REQUIRE(ready == 1);
      char buffer[256];
      const ssize_t n = ::read(fd_, buffer, sizeof buffer);
      BOOST_TEST_REQUIRE(n > 0, "the FIFO ended before a whole line: " << line);
      line.append(buffer, static_cast<std::size_t>(n));
    }
    return line.substr(0, line.find('\n'));
  }

 private:
  std::string path_;
  int fd_ = -1;
};

/// A process, watched through a pidfd opened while it is known to run (so a recycled pid cannot
/// fool the check).
class watched_process {
 public:
  explicit watched_process(pid_t pid)
      : pid_(pid), fd_(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))) {
    BOOST_TEST_REQUIRE(fd_ >= 0, "process " << pid << " is already gone: errno " << errno);
  }
  ~watched_process() { ::close(fd_); }
  watched_process(const watched_process&) = delete;
  watched_process& operator=(const watched_process&) = delete;

  pid_t pid() const { return pid_; }
  bool running() const {
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, 0) == 0;
  }
  /// Blocks until the process has terminated (a zombie counts: it runs no more).
  void wait_until_gone() const {
    pollfd p{fd_, POLLIN, 0};
    while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
  }

 private:
  pid_t pid_;
  int fd_;
};

/// Waits for every child of this process to end and reaps it: once troupe has been reaped, those
/// are the orphans reparented here (the guardian, what the shell task started). Returns when
/// none is left, which is what the tests assert.
std::vector<pid_t> reap_every_descendant() {
  std::vector<pid_t> reaped;
  for (;;) {
    siginfo_t info{};
    if (::waitid(P_ALL, 0, &info, WEXITED) != 0) {
      if (errno == EINTR) {
        continue;
      }
      BOOST_TEST(errno == ECHILD);
      return reaped;
    }
    reaped.push_back(info.si_pid);
    BOOST_TEST_MESSAGE("reaped orphan " << info.si_pid);
  }
}

struct shell_pids {
  pid_t shell = -1;
  pid_t grandchild = -1;
};

shell_pids parse_pids(const std::string& line) {
  shell_pids out;
  std::istringstream in(line);
  in >> out.shell >> out.grandchild;
  BOOST_TEST_REQUIRE((out.shell > 0 && out.grandchild > 0), "bad pid line: " << line);
  return out;
}

/// Runs the workflow, learns the shell's pids, ends troupe with `signal`, and checks that both
/// processes and every other descendant of troupe are gone.
process_result end_troupe_during_a_shell_task(int signal) {
  become_subreaper();
  temp_dir dir;
  fifo_reader fifo(dir);
  const auto file = dir.write_file("background_grandchild.json", background_grandchild);
  child troupe({"run", file, "--input", "fifo=" + fifo.path()}, dir.path());
  const shell_pids pids = parse_pids(fifo.read_line());
  const watched_process shell(pids.shell);
  const watched_process grandchild(pids.grandchild);
  BOOST_TEST_REQUIRE(shell.running());
  BOOST_TEST_REQUIRE(grandchild.running());

  troupe.send(signal);
  const process_result r = troupe.finish();
  shell.wait_until_gone();
  grandchild.wait_until_gone();
  BOOST_TEST(!shell.running());
  BOOST_TEST(!grandchild.running());
  const auto orphans = reap_every_descendant();
  BOOST_TEST_MESSAGE(orphans.size() << " orphans reaped");
  return r;
}

}  // namespace

BOOST_AUTO_TEST_CASE(sigkill_of_troupe_kills_the_shell_child_and_its_background_grandchild,
                     *utf::timeout(60)) {
  const process_result r = end_troupe_during_a_shell_task(SIGKILL);
  BOOST_TEST(r.signal == SIGKILL);
}

BOOST_AUTO_TEST_CASE(sigterm_cancels_the_run_kills_the_whole_group_and_the_guardian_ends_too,
                     *utf::timeout(60)) {
  const process_result r = end_troupe_during_a_shell_task(SIGTERM);
  BOOST_TEST(r.signal == 0, "killed by signal " << r.signal);
  BOOST_TEST(r.exit_code == 1, r.err);
  BOOST_TEST(troupe::test::contains(r.out, "cancelled"));
}

BOOST_AUTO_TEST_CASE(shell_tasks_get_the_execution_key_of_their_node_or_item_on_every_attempt,
                     *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("execution_keys.json", execution_keys);
  const process_result r = troupe::test::run_troupe({"run", file, "--json"}, dir.path());
  BOOST_TEST_REQUIRE(r.exit_code == 0, r.err);
  const auto doc = troupe::parse_json(r.out);
  BOOST_TEST_REQUIRE(doc.has_value(), r.out);
  const std::string run(doc->at("run_id").as_string());
  BOOST_TEST_REQUIRE(!run.empty());
  BOOST_TEST(doc->at("outputs").at("single") == json::value(run + "/single|-|1"));
  BOOST_TEST(
      doc->at("outputs").at("each") ==
      json::value(json::array{json::value(run + "/each/0|0|1"), json::value(run + "/each/1|1|1")}));
  std::ifstream attempts(dir.path() / "attempts.txt");
  std::stringstream lines;
  lines << attempts.rdbuf();
  BOOST_TEST(lines.str() == run + "/flaky 1\n" + run + "/flaky 2\n");
}
