#define BOOST_TEST_MODULE runtime_crash
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "persistence/store.hpp"

namespace utf = boost::unit_test;

namespace {

struct child {
  pid_t pid = -1;
  FILE* out = nullptr;  // the worker's stdout
};

child spawn_worker(const std::vector<std::string>& args) {
  int fds[2];
  BOOST_REQUIRE(::pipe(fds) == 0);
  pid_t pid = ::fork();
  BOOST_REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::close(fds[0]);
    ::close(fds[1]);
    std::vector<char*> argv;
    std::string bin = TROUPE_DURABLE_WORKER;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  return {pid, ::fdopen(fds[0], "r")};
}

// Blocks reading the worker's stdout (an event wait) until a line starting with `prefix`.
std::string read_until(child& c, const std::string& prefix) {
  char buf[256];
  while (std::fgets(buf, sizeof buf, c.out)) {
    std::string line(buf);
    if (line.rfind(prefix, 0) == 0) {
      return line;
    }
  }
  return {};
}

int wait_exit(child& c) {
  int status = 0;
  ::waitpid(c.pid, &status, 0);
  std::fclose(c.out);
  return status;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_killed_durable_process_resumes_every_run_and_reruns_no_success,
                     *utf::timeout(120)) {
  auto dir =
      std::filesystem::temp_directory_path() / ("troupe-crash-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::string db = "sqlite://" + (dir / "log.db").string();
  std::string effects = (dir / "effects.txt").string();
  constexpr int runs = 12;

  // First life: every run has done `first` and sits in `hold` when it is killed.
  child a = spawn_worker({db, effects, std::to_string(runs), "block"});
  BOOST_REQUIRE(read_until(a, "ready") == "ready\n");
  ::kill(a.pid, SIGKILL);
  int status = wait_exit(a);
  BOOST_REQUIRE(WIFSIGNALED(status));

  {
    auto log = troupe::open_store(db);
    BOOST_REQUIRE(log.has_value());
    auto unfinished = (*log)->unfinished_runs();
    BOOST_REQUIRE(unfinished.has_value());
    BOOST_TEST(unfinished->size() == static_cast<std::size_t>(runs));
  }

  // Second life: resumes all of them; `hold` now passes, so each run finishes.
  child b = spawn_worker({db, effects, "0", "pass"});
  std::string done = read_until(b, "done");
  BOOST_TEST(done == "done 12 12\n");
  BOOST_TEST(WEXITSTATUS(wait_exit(b)) == 0);

  std::map<std::string, int> count;
  std::ifstream in(effects);
  std::string line;
  while (std::getline(in, line)) {
    ++count[line];
  }
  for (int i = 0; i < runs; ++i) {
    BOOST_TEST_CONTEXT("run " << i) {
      BOOST_TEST(count["first " + std::to_string(i)] == 1);   // succeeded before: not rerun
      BOOST_TEST(count["second " + std::to_string(i)] == 1);  // never ran before: ran once
    }
  }
  auto log = troupe::open_store(db);
  BOOST_REQUIRE(log.has_value());
  auto unfinished = (*log)->unfinished_runs();
  BOOST_REQUIRE(unfinished.has_value());
  BOOST_TEST(unfinished->empty());
  std::filesystem::remove_all(dir);
}
