// Issue 14: how long from an engine's death to its runs resumed by another engine, against the
// lease length. Durable mode on SQLite (a fresh file per trial).
//
// One trial: an owner process starts `runs` runs of before -> gate -> after, whose `gate` is an
// async task that never completes; it flushes, says "ready" through a pipe, and waits. The
// trial kills it with SIGKILL at T0 (steady clock) and reaps it at once (a zombie still counts
// as a live process), and an adopting engine (engine::adopt_expired_runs, `gate` done at once)
// takes the runs over. Times after T0: the first and the last run adopted (the on_adopted
// callback), the last run finished (its result delivered: durable, so after its commit).
//
// Cases:
//   running  the adopter runs before the kill: it scanned the store while the owner lived, so it
//            scans again when the earliest lease it saw ends (engine.hpp).
//   after    the adopter is made after the kill (its engine's construction is counted).
// In both, the kill comes at a random moment of the owner's lease cycle: 200 ms + uniform
// [0, lease) after "ready" (after the adopter was made, in `running`).
// Hosts:
//   same     the owner shares the adopter's host name: a dead owner process is found by pid
//            and start time, so a claim needs no lease expiry, only a scan.
//   other    the owner runs in its own UTS namespace under another host name (unshare, needs
//            CAP_SYS_ADMIN): only the lease can tell, as for an engine on another machine.
//
// Every trial is a fresh process forked from this one (which never makes an engine), and forks
// the owner before making any engine itself: an engine's identity (pid, start time) is taken
// once per process.
//
// Usage: bench_takeover [--leases 1000,3000,10000] [--repeat 5] [--runs 20]
//                       [--cases running,after] [--hosts same,other] [--seed N] [--dir /tmp]
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/stats.hpp"
#include "persistence/store.hpp"
#include "runtime/engine.hpp"

using namespace troupe;
using clk = std::chrono::steady_clock;

namespace {

struct options {
  std::vector<int> leases_ms{1000, 3000, 10000};
  int repeat = 5;
  int runs = 20;
  std::vector<std::string> cases{"running", "after"};
  std::vector<std::string> hosts{"same", "other"};
  unsigned seed = 14;
  std::string dir = "/tmp";
};

// What one trial measured, in ms after T0 (negative: not reached).
struct trial_result {
  double first_adopted = -1;
  double all_adopted = -1;
  double all_finished = -1;
  double engine_up = -1;   // case `after`: the adopter's constructor returned
  double lease_left = -1;  // the owner's earliest lease end, read just before the kill
  int adopted = 0;
  int succeeded = 0;
  std::string error;
};

const char* gated_workflow = R"({"name":"gated","nodes":[
    {"id":"before","task":"echo","with":"before"},
    {"id":"gate","task":"gate","needs":["before"]},
    {"id":"after","task":"echo","needs":["gate"],"with":"after"}],
  "outputs":{"after":"{{ nodes.after.output }}"}})";

engine_config durable_config(const std::string& url, int lease_ms) {
  engine_config c;
  c.threads = 2;
  c.mode = persistence_mode::durable;
  c.store = url;
  c.lease = std::chrono::milliseconds(lease_ms);
  return c;
}

double ms_between(clk::time_point from, clk::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

void write_all(int fd, const std::string& text) {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n <= 0) {
      return;
    }
    done += static_cast<std::size_t>(n);
  }
}

std::string read_all(int fd) {
  std::string text;
  char buf[512];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) {
    text.append(buf, static_cast<std::size_t>(n));
  }
  return text;
}

// The owner process: never returns. Writes "ready\n" (or "error ...\n") to `out`.
[[noreturn]] void owner(const std::string& url, int lease_ms, int runs, bool other_host, int out) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (other_host) {
    const char name[] = "takeover-owner";
    if (::unshare(CLONE_NEWUTS) != 0 || ::sethostname(name, sizeof name - 1) != 0) {
      write_all(out, std::string("error another host name: ") + std::strerror(errno) + "\n");
      ::_exit(2);
    }
  }
  engine e(durable_config(url, lease_ms));
  std::mutex m;
  std::condition_variable cv;
  std::vector<completion> held;  // never called: the runs wait at `gate` until the kill
  task_def gate;
  gate.name = "gate";
  gate.kind = task_kind::async;
  gate.start = [&](const json::value&, const task_call&, completion done) {
    std::lock_guard<std::mutex> lock(m);
    held.push_back(std::move(done));
    cv.notify_all();
  };
  e.register_task(gate);
  auto p = e.register_workflow(gated_workflow);
  if (!p) {
    write_all(out, "error workflow\n");
    ::_exit(2);
  }
  for (int i = 0; i < runs; ++i) {
    if (!e.start(*p, json::object{})) {
      write_all(out, "error start\n");
      ::_exit(2);
    }
  }
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return held.size() == static_cast<std::size_t>(runs); });
  }
  if (!e.flush()) {
    write_all(out, "error flush\n");
    ::_exit(2);
  }
  write_all(out, "ready\n");
  for (;;) {
    ::pause();
  }
}

// The owner's earliest lease end over the unfinished runs, in ms from now (-1: none seen).
double lease_left_ms(const std::string& url) {
  auto s = open_store(url);
  if (!s) {
    return -1;
  }
  run_query all;
  all.limit = 0;
  auto rows = (*s)->list_runs(all);
  if (!rows) {
    return -1;
  }
  std::int64_t earliest = 0;
  for (const auto& r : *rows) {
    if (r.lease_until > 0 && (earliest == 0 || r.lease_until < earliest)) {
      earliest = r.lease_until;
    }
  }
  if (earliest == 0) {
    return -1;
  }
  const std::int64_t now = std::chrono::duration_cast<std::chrono::microseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  return static_cast<double>(earliest - now) / 1000.0;
}

// The adopter's side of a trial (in the trial process, after the owner was forked).
struct adopter {
  std::mutex m;
  std::condition_variable cv;
  clk::time_point first_adopted{}, last_adopted{}, last_finished{};
  int adopted = 0, finished = 0, succeeded = 0;
  std::unique_ptr<engine> e;

  void make(const std::string& url, int lease_ms) {
    e = std::make_unique<engine>(durable_config(url, lease_ms));
    task_def gate;
    gate.name = "gate";
    gate.kind = task_kind::quick;
    gate.run = [](const json::value&, const task_call&) { return task_result::success(nullptr); };
    e->register_task(gate);
    e->register_workflow(gated_workflow);
    e->adopt_expired_runs([this](const run_handle& h) {
      {
        std::lock_guard<std::mutex> lock(m);
        last_adopted = clk::now();
        if (adopted++ == 0) {
          first_adopted = last_adopted;
        }
      }
      h.on_finished([this](const run_result& r) {
        std::lock_guard<std::mutex> lock(m);
        last_finished = clk::now();
        ++finished;
        succeeded += r.status == run_status::succeeded && r.persistence_error.empty();
        cv.notify_all();
      });
    });
  }
};

trial_result trial(const std::string& url, int lease_ms, int runs, bool after, bool other_host,
                   unsigned seed) {
  trial_result out;
  int ready[2];
  if (::pipe(ready) != 0) {
    out.error = "pipe";
    return out;
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    out.error = "fork";
    return out;
  }
  if (pid == 0) {
    ::close(ready[0]);
    owner(url, lease_ms, runs, other_host, ready[1]);
  }
  ::close(ready[1]);
  std::string line;
  char c;
  while (::read(ready[0], &c, 1) == 1 && c != '\n') {
    line += c;
  }
  ::close(ready[0]);
  auto kill_owner = [&] {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  };
  if (line != "ready") {
    kill_owner();
    out.error = line.empty() ? "owner died" : line;
    return out;
  }

  // The owner dies at a random moment of its lease cycle (renewals every lease / 3).
  adopter a;
  if (!after) {
    a.make(url, lease_ms);
  }
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> phase(0, lease_ms - 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(200 + phase(rng)));
  out.lease_left = lease_left_ms(url);
  const clk::time_point t0 = clk::now();
  kill_owner();
  if (after) {
    a.make(url, lease_ms);
    out.engine_up = ms_between(t0, clk::now());
  }
  {
    std::unique_lock<std::mutex> lock(a.m);
    const bool done = a.cv.wait_for(lock, std::chrono::milliseconds(3 * lease_ms + 30000),
                                    [&] { return a.finished >= runs; });
    if (!done) {
      out.error = "timed out: " + std::to_string(a.adopted) + " adopted, " +
                  std::to_string(a.finished) + " finished";
    }
    if (a.adopted > 0) {
      out.first_adopted = ms_between(t0, a.first_adopted);
      out.all_adopted = a.adopted >= runs ? ms_between(t0, a.last_adopted) : -1;
    }
    if (a.finished >= runs) {
      out.all_finished = ms_between(t0, a.last_finished);
    }
    out.adopted = a.adopted;
    out.succeeded = a.succeeded;
  }
  a.e->shutdown();
  return out;
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    if (!part.empty()) {
      parts.push_back(part);
    }
  }
  return parts;
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (!v) {
      std::fprintf(stderr, "missing value for %s\n", a.c_str());
      std::exit(2);
    }
    ++i;
    if (a == "--leases") {
      o.leases_ms.clear();
      for (auto& s : split(v)) {
        o.leases_ms.push_back(std::stoi(s));
      }
    } else if (a == "--repeat") {
      o.repeat = std::atoi(v);
    } else if (a == "--runs") {
      o.runs = std::atoi(v);
    } else if (a == "--cases") {
      o.cases = split(v);
    } else if (a == "--hosts") {
      o.hosts = split(v);
    } else if (a == "--seed") {
      o.seed = static_cast<unsigned>(std::strtoul(v, nullptr, 10));
    } else if (a == "--dir") {
      o.dir = v;
    } else {
      std::fprintf(stderr,
                   "usage: see the comment at the top of benchmarks/runtime/takeover.cpp\n");
      std::exit(2);
    }
  }
  return o;
}

// Runs one trial in a fresh process; its result comes back as one line of numbers.
trial_result forked_trial(const std::string& url, int lease_ms, int runs, bool after,
                          bool other_host, unsigned seed) {
  int back[2];
  if (::pipe(back) != 0) {
    return trial_result{.error = "pipe"};
  }
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(back[0]);
    const trial_result r = trial(url, lease_ms, runs, after, other_host, seed);
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.3f %.3f %.3f %.3f %.3f %d %d %s\n", r.first_adopted,
                  r.all_adopted, r.all_finished, r.engine_up, r.lease_left, r.adopted, r.succeeded,
                  r.error.c_str());
    write_all(back[1], buf);
    ::_exit(0);
  }
  ::close(back[1]);
  const std::string text = read_all(back[0]);
  ::close(back[0]);
  ::waitpid(pid, nullptr, 0);
  trial_result r;
  std::istringstream in(text);
  if (!(in >> r.first_adopted >> r.all_adopted >> r.all_finished >> r.engine_up >> r.lease_left >>
        r.adopted >> r.succeeded)) {
    r.error = "trial process died";
    return r;
  }
  std::getline(in >> std::ws, r.error);
  return r;
}

std::string stats(const std::vector<double>& v) {
  if (v.empty()) {
    return "-";
  }
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.0f (%.0f..%.0f)", bench::median(v),
                *std::min_element(v.begin(), v.end()), *std::max_element(v.begin(), v.end()));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  std::filesystem::create_directories(o.dir);
  std::printf(
      "%d runs per trial, %d trials per row, durable, SQLite; ms after the SIGKILL, "
      "median (min-max)\n",
      o.runs, o.repeat);
  std::printf("%-7s %-6s %-8s %-18s %-18s %-18s %-18s %-18s %s\n", "LEASE", "HOST", "ADOPTER",
              "ALL ADOPTED", "ALL FINISHED", "LEASE LEFT", "ADOPTED - LEFT", "FIRST ADOPTED",
              "ENGINE UP");
  std::fflush(stdout);
  unsigned seed = o.seed;
  int n = 0;
  for (int lease : o.leases_ms) {
    for (const auto& host : o.hosts) {
      for (const auto& which : o.cases) {
        std::vector<double> first, adopted, finished, left, excess, up;
        for (int rep = 0; rep < o.repeat; ++rep) {
          const std::string file =
              o.dir + "/takeover-" + std::to_string(::getpid()) + "-" + std::to_string(n++) + ".db";
          std::filesystem::remove(file);
          const trial_result r = forked_trial("sqlite://" + file, lease, o.runs, which == "after",
                                              host == "other", seed++);
          for (const char* suffix : {"", "-wal", "-shm"}) {
            std::filesystem::remove(file + suffix);
          }
          std::fprintf(stderr,
                       "lease %d %s %s #%d: first %.0f all adopted %.0f finished %.0f engine up "
                       "%.0f lease left %.0f (%d adopted, %d succeeded)%s%s\n",
                       lease, host.c_str(), which.c_str(), rep, r.first_adopted, r.all_adopted,
                       r.all_finished, r.engine_up, r.lease_left, r.adopted, r.succeeded,
                       r.error.empty() ? "" : " ERROR: ", r.error.c_str());
          if (!r.error.empty() || r.succeeded != o.runs) {
            continue;
          }
          first.push_back(r.first_adopted);
          adopted.push_back(r.all_adopted);
          finished.push_back(r.all_finished);
          left.push_back(r.lease_left);
          excess.push_back(r.all_adopted - r.lease_left);
          if (r.engine_up >= 0) {
            up.push_back(r.engine_up);
          }
        }
        std::printf("%-7d %-6s %-8s %-18s %-18s %-18s %-18s %-18s %s\n", lease, host.c_str(),
                    which.c_str(), stats(adopted).c_str(), stats(finished).c_str(),
                    stats(left).c_str(), stats(excess).c_str(), stats(first).c_str(),
                    stats(up).c_str());
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
