// Issue 16: the node cluster on loopback. A coordinator engine in this process (memory mode: the
// database is left out, this measures dispatch), workers as child processes of this program
// (`cluster_bench worker ...`: an engine that registers the C++ tasks and joins), and a baseline
// measured in the same run: the same tasks on a local engine.
//
//   scaling    a CPU-bound C++ task (busy for --spin-ms), closed loop, 1..3 workers of
//              capacity 1, no local fallback: attempts/s, the ratio against one worker, and the
//              CPU each process used (so the figure can be projected per core).
//   sequential one attempt at a time of a task that returns at once: run latency remote against
//              local (p50, p99).
//   pipelined  many attempts in flight of the same task on one worker: attempts/s remote against
//              local.
//
// Usage: bench_cluster [--scenarios scaling,sequential,pipelined] [--repeat 3] [--spin-ms 1]
//                      [--scaling-runs 3000] [--sequential-runs 3000] [--pipelined-runs 40000]
//                      [--in-flight 512]
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <thread>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "benchmarks/stats.hpp"
#include "runtime/engine.hpp"

using namespace troupe;
using clk = std::chrono::steady_clock;

namespace {

void register_tasks(engine& e) {
  task_def spin;
  spin.name = "spin";
  spin.kind = task_kind::blocking;
  spin.run = [](const json::value& input, const task_call&) {
    const auto ms = input.as_object().at("ms").to_number<double>();
    const auto until = clk::now() + std::chrono::microseconds(static_cast<long>(ms * 1000));
    volatile std::uint64_t x = 0;
    while (clk::now() < until) {
      for (int i = 0; i < 1000; ++i) {
        x = x + static_cast<std::uint64_t>(i);
      }
    }
    return task_result::success(nullptr);
  };
  e.register_task(spin);
  task_def now;
  now.name = "now";
  now.kind = task_kind::async;
  now.start = [](const json::value&, const task_call&, completion done) {
    done(task_result::success(nullptr));
  };
  e.register_task(now);
}

// ---- worker process --------------------------------------------------------------------------

int worker_main(int argc, char** argv) {
  // worker PORT CAPACITY
  const auto port = static_cast<std::uint16_t>(std::atoi(argv[2]));
  const int capacity = std::atoi(argv[3]);
  (void)argc;
  engine_config c;
  c.mode = persistence_mode::memory;
  c.threads = 1;
  c.blocking_threads = std::max(1, std::min(capacity, 4));
  c.cluster.enabled = true;
  engine e(c);
  register_tasks(e);
  std::mutex m;
  std::condition_variable cv;
  bool joined = false;
  worker_options o;
  o.join.emplace_back("127.0.0.1", port);
  o.capacity = capacity;
  o.offer = {"spin", "now"};
  e.join_cluster(o, [&](const cluster_link_event& ev) {
    if (ev.what == cluster_link_event::kind::joined) {
      std::lock_guard lock(m);
      joined = true;
      cv.notify_all();
    }
  });
  {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return joined; });
  }
  std::printf("ready\n");
  std::fflush(stdout);
  char buf[16];
  while (::read(STDIN_FILENO, buf, sizeof buf) > 0) {
  }
  e.shutdown(std::chrono::milliseconds(0));
  return 0;
}

// ---- the coordinator side --------------------------------------------------------------------

struct child_worker {
  pid_t pid = -1;
  int to_child = -1;
  double cpu_s() const {  // utime + stime from /proc
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), {});
    auto close = text.rfind(')');
    std::istringstream rest(text.substr(close + 2));
    std::string field;
    std::vector<std::string> f;
    while (rest >> field) {
      f.push_back(field);
    }
    // fields after ')': state(0) ... utime(11) stime(12)
    const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
    return (std::stod(f.at(11)) + std::stod(f.at(12))) / tick;
  }
};

child_worker spawn_worker(const char* self, std::uint16_t port, int capacity) {
  int in_pipe[2];
  int out_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0 || ::pipe2(out_pipe, O_CLOEXEC) != 0) {
    std::perror("pipe");
    std::exit(1);
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(in_pipe[0], STDIN_FILENO);
    ::dup2(out_pipe[1], STDOUT_FILENO);
    ::close(in_pipe[1]);
    ::close(out_pipe[0]);
    const std::string p = std::to_string(port);
    const std::string cap = std::to_string(capacity);
    ::execl(self, self, "worker", p.c_str(), cap.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  char line[64] = {};
  std::size_t got = 0;
  while (got < sizeof line - 1) {  // blocks until the worker says "ready\n"
    const ssize_t n = ::read(out_pipe[0], line + got, 1);
    if (n <= 0 || line[got] == '\n') {
      break;
    }
    ++got;
  }
  ::close(out_pipe[0]);
  if (std::strncmp(line, "ready", 5) != 0) {
    std::fprintf(stderr, "worker did not start\n");
    std::exit(1);
  }
  return {pid, in_pipe[1]};
}

void stop_worker(child_worker& w) {
  ::close(w.to_child);
  int status = 0;
  ::waitpid(w.pid, &status, 0);
}

double self_cpu_s() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// Closed loop: `in_flight` runs at a time, `total` runs; returns the wall seconds, and each run's
// latency (µs) in `lat`.
double closed_loop(engine& e, const plan_ptr& p, const json::object& inputs, int total,
                   int in_flight, std::vector<double>* lat) {
  std::mutex m;
  std::condition_variable cv;
  int started = 0;
  int finished = 0;
  int failed = 0;
  std::vector<double> latencies;
  latencies.reserve(static_cast<std::size_t>(total));
  std::function<void()> start_one;
  start_one = [&] {
    const auto t0 = clk::now();
    auto h = e.start(p, inputs);
    if (!h) {
      std::fprintf(stderr, "start failed\n");
      std::exit(1);
    }
    h->on_finished([&, t0](const run_result& r) {
      const double us =
          std::chrono::duration<double, std::micro>(clk::now() - t0).count();
      bool more = false;
      {
        std::lock_guard lock(m);
        latencies.push_back(us);
        ++finished;
        failed += r.status == run_status::succeeded ? 0 : 1;
        if (started < total) {
          ++started;
          more = true;
        }
      }
      if (more) {
        start_one();
      } else {
        cv.notify_all();
      }
    });
  };
  const auto t0 = clk::now();
  {
    std::lock_guard lock(m);
    started = std::min(in_flight, total);
  }
  for (int i = 0; i < std::min(in_flight, total); ++i) {
    start_one();
  }
  std::unique_lock lock(m);
  cv.wait(lock, [&] { return finished == total; });
  const double secs = std::chrono::duration<double>(clk::now() - t0).count();
  if (failed > 0) {
    std::fprintf(stderr, "%d runs failed\n", failed);
    std::exit(1);
  }
  if (lat) {
    *lat = std::move(latencies);
  }
  return secs;
}

double pct(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

struct options {
  std::vector<std::string> scenarios{"scaling", "sequential", "pipelined"};
  int repeat = 3;
  double spin_ms = 1;
  int scaling_runs = 3000;
  int sequential_runs = 3000;
  int pipelined_runs = 40000;
  int in_flight = 512;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    out.push_back(item);
  }
  return out;
}

engine_config coordinator_config(bool cluster) {
  engine_config c;
  c.mode = persistence_mode::memory;
  c.threads = 2;
  c.blocking_threads = 2;
  c.cluster.enabled = cluster;
  if (cluster) {
    c.cluster.remote_tasks = {"spin", "now"};
    c.cluster.run_here_without_workers = false;
  }
  return c;
}

const char* spin_workflow = R"({"name":"spin","inputs":{"ms":{"type":"number"}},
  "nodes":[{"id":"a","task":"spin","with":{"ms":"{{ inputs.ms }}"}}]})";
const char* now_workflow = R"({"name":"now","nodes":[{"id":"a","task":"now"}]})";

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 4 && std::strcmp(argv[1], "worker") == 0) {
    return worker_main(argc, argv);
  }
  ::signal(SIGPIPE, SIG_IGN);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const std::string v = argv[i + 1];
    if (k == "--scenarios") o.scenarios = split(v);
    else if (k == "--repeat") o.repeat = std::stoi(v);
    else if (k == "--spin-ms") o.spin_ms = std::stod(v);
    else if (k == "--scaling-runs") o.scaling_runs = std::stoi(v);
    else if (k == "--sequential-runs") o.sequential_runs = std::stoi(v);
    else if (k == "--pipelined-runs") o.pipelined_runs = std::stoi(v);
    else if (k == "--in-flight") o.in_flight = std::stoi(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  const auto has = [&](const char* s) {
    return std::find(o.scenarios.begin(), o.scenarios.end(), s) != o.scenarios.end();
  };
  std::printf("cluster bench: %u cores, repeat %d\n", std::thread::hardware_concurrency(), o.repeat);

  if (has("scaling")) {
    std::printf("\nscaling: task busy %.1f ms, closed loop (2 runs in flight per worker), %d runs, "
                "workers of capacity 1\n", o.spin_ms, o.scaling_runs);
    std::printf("%-8s %-6s %12s %8s %10s %10s %14s\n", "workers", "round", "attempts/s", "ratio",
                "coord cpu", "work cpu", "attempts/cpu-s");
    std::vector<std::vector<double>> rates(3);
    for (int round = 0; round < o.repeat; ++round) {
      for (int workers = 1; workers <= 3; ++workers) {
        engine e(coordinator_config(true));
        auto port = e.serve_cluster("127.0.0.1", 0);
        if (!port) {
          std::fprintf(stderr, "%s\n", port.error().c_str());
          return 1;
        }
        std::vector<child_worker> ws;
        for (int w = 0; w < workers; ++w) {
          ws.push_back(spawn_worker(argv[0], *port, 1));
        }
        auto p = *e.register_workflow(spin_workflow);
        json::object in{{"ms", o.spin_ms}};
        closed_loop(e, p, in, 2 * workers * 20, 2 * workers, nullptr);  // warm up
        const double c0 = self_cpu_s();
        std::vector<double> w0;
        for (auto& w : ws) {
          w0.push_back(w.cpu_s());
        }
        const double secs = closed_loop(e, p, in, o.scaling_runs, 2 * workers, nullptr);
        const double coord_cpu = self_cpu_s() - c0;
        double work_cpu = 0;
        for (std::size_t i = 0; i < ws.size(); ++i) {
          work_cpu += ws[i].cpu_s() - w0[i];
        }
        const double rate = o.scaling_runs / secs;
        rates[static_cast<std::size_t>(workers - 1)].push_back(rate);
        const double base = rates[0].back();
        std::printf("%-8d %-6d %12.0f %7.2fx %9.2fs %9.2fs %14.0f\n", workers, round, rate,
                    rate / base, coord_cpu, work_cpu, o.scaling_runs / (coord_cpu + work_cpu));
        for (auto& w : ws) {
          stop_worker(w);
        }
      }
    }
    std::printf("medians: 1 worker %.0f/s; 2: %.0f/s (%.2fx); 3: %.0f/s (%.2fx)\n",
                bench::median(rates[0]), bench::median(rates[1]),
                bench::median(rates[1]) / bench::median(rates[0]), bench::median(rates[2]),
                bench::median(rates[2]) / bench::median(rates[0]));
  }

  if (has("sequential") || has("pipelined")) {
    std::vector<double> seq_remote_p50, seq_remote_p99, seq_local_p50, seq_local_p99;
    std::vector<double> pipe_remote, pipe_local;
    for (int round = 0; round < o.repeat; ++round) {
      // Local baseline: the same task on an engine without a cluster.
      {
        engine local(coordinator_config(false));
        register_tasks(local);
        auto p = *local.register_workflow(now_workflow);
        closed_loop(local, p, {}, 500, 1, nullptr);
        if (has("sequential")) {
          std::vector<double> lat;
          closed_loop(local, p, {}, o.sequential_runs, 1, &lat);
          seq_local_p50.push_back(pct(lat, 0.5));
          seq_local_p99.push_back(pct(lat, 0.99));
        }
        if (has("pipelined")) {
          const double secs = closed_loop(local, p, {}, o.pipelined_runs, o.in_flight, nullptr);
          pipe_local.push_back(o.pipelined_runs / secs);
        }
      }
      {
        engine e(coordinator_config(true));
        auto port = e.serve_cluster("127.0.0.1", 0);
        if (!port) {
          std::fprintf(stderr, "%s\n", port.error().c_str());
          return 1;
        }
        auto w = spawn_worker(argv[0], *port, o.in_flight);
        auto p = *e.register_workflow(now_workflow);
        closed_loop(e, p, {}, 500, 1, nullptr);
        if (has("sequential")) {
          std::vector<double> lat;
          closed_loop(e, p, {}, o.sequential_runs, 1, &lat);
          seq_remote_p50.push_back(pct(lat, 0.5));
          seq_remote_p99.push_back(pct(lat, 0.99));
        }
        if (has("pipelined")) {
          const double secs = closed_loop(e, p, {}, o.pipelined_runs, o.in_flight, nullptr);
          pipe_remote.push_back(o.pipelined_runs / secs);
        }
        stop_worker(w);
      }
      if (has("sequential")) {
        std::printf("round %d sequential: remote p50 %.0f us p99 %.0f us; local p50 %.0f us p99 "
                    "%.0f us; added p50 %.0f us\n",
                    round, seq_remote_p50.back(), seq_remote_p99.back(), seq_local_p50.back(),
                    seq_local_p99.back(), seq_remote_p50.back() - seq_local_p50.back());
      }
      if (has("pipelined")) {
        std::printf("round %d pipelined (%d in flight): remote %.0f attempts/s; local %.0f/s; "
                    "ratio %.2fx\n",
                    round, o.in_flight, pipe_remote.back(), pipe_local.back(),
                    pipe_remote.back() / pipe_local.back());
      }
    }
    if (has("sequential")) {
      std::printf("medians sequential: remote p50 %.0f us (p99 %.0f), local p50 %.0f us (p99 "
                  "%.0f): added %.0f us\n",
                  bench::median(seq_remote_p50), bench::median(seq_remote_p99),
                  bench::median(seq_local_p50), bench::median(seq_local_p99),
                  bench::median(seq_remote_p50) - bench::median(seq_local_p50));
    }
    if (has("pipelined")) {
      std::printf("medians pipelined: remote %.0f attempts/s, local %.0f/s\n",
                  bench::median(pipe_remote), bench::median(pipe_local));
    }
  }
  return 0;
}
