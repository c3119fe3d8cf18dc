// The runtime's load scenarios (issue 3), each printed beside the state-machine-only floor
// measured in the same process:
//   W1  chain of 1000 noop nodes (inline quick tasks), and again with an instant C++ async task
//       so every node goes through a node actor
//   W2  1 -> 10,000 -> 1 fan-out of noop nodes
//   W3  10-node workflow (A -> B1..B8 -> C), many runs with 64 in flight: runs/s, p50, p99
//   W4  for_each over 1000 items with 100 results of 10 KB in the context
//   MEM resident memory with 1 and with N concurrent W3 runs held open by a sleep
// Usage: bench_runtime [--repeat N] [--w3-runs N] [--mem-runs N] [--threads N] [--only W1,W3,...]
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/stats.hpp"
#include "runtime/engine.hpp"
#include "workflow/plan.hpp"
#include "workflow/run_state.hpp"
#include "workflow/scenarios.hpp"

using namespace troupe;
using clk = std::chrono::steady_clock;

namespace {

struct options {
  int repeat = 15;
  int w3_runs = 20000;
  int mem_runs = 100000;
  int threads = 2;
  std::string only;
  std::string store = "memory://";
  persistence_mode mode = persistence_mode::memory;
  bool wants(const char* w) const { return only.empty() || only.find(w) != std::string::npos; }
};

using bench::median;
double percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) {
    return 0;
  }
  auto i = static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1));
  return sorted[i];
}

double seconds_since(clk::time_point t) {
  return std::chrono::duration<double>(clk::now() - t).count();
}

plan_ptr must(expected<plan_ptr, validation_errors> p) {
  if (!p) {
    std::fprintf(stderr, "workflow invalid: %s %s\n", p.error()[0].pointer.c_str(),
                 p.error()[0].message.c_str());
    std::exit(2);
  }
  return *p;
}

// The floor: the state machine alone, each dispatch answered at once.
double floor_run_seconds(const plan_ptr& p, json::object inputs) {
  run_options o;
  o.run_id = "floor";
  o.emit_records = false;  // as the engine runs when nobody subscribes
  run_state rs(p, o);
  std::vector<command> out, next;
  auto t = clk::now();
  rs.start(std::move(inputs), 0, out);
  while (!out.empty()) {
    for (auto& c : out) {
      if (auto* d = std::get_if<cmd::dispatch>(&c)) {
        json::value v = p->nodes[d->node].task == "echo" ? *d->input : json::value(nullptr);
        rs.task_finished(d->exec, task_result::success(std::move(v)), 0, next);
      }
    }
    out.clear();
    std::swap(out, next);
  }
  double s = seconds_since(t);
  if (rs.status() != run_status::succeeded) {
    std::fprintf(stderr, "floor run failed: %s\n", rs.error().c_str());
    std::exit(1);
  }
  return s;
}

double engine_run_seconds(engine& e, const plan_ptr& p, json::object inputs,
                          double* node_ms = nullptr, const char* node_id = nullptr) {
  auto t = clk::now();
  auto h = e.start(p, std::move(inputs));
  if (!h) {
    std::fprintf(stderr, "start failed\n");
    std::exit(1);
  }
  run_result r = h->wait();
  double s = seconds_since(t);
  if (r.status != run_status::succeeded) {
    std::fprintf(stderr, "run failed: %s\n", r.error.c_str());
    std::exit(1);
  }
  if (node_ms) {
    for (auto& n : r.nodes) {
      if (n.id == node_id) {
        *node_ms = n.duration_ms;
      }
    }
  }
  return s;
}

void row(const char* name, const char* unit, double value, double floor) {
  if (floor > 0) {
    std::printf("%-44s %12.3f %-8s floor %10.3f  ratio %6.2fx\n", name, value, unit, floor,
                value / floor);
  } else {
    std::printf("%-44s %12.3f %-8s\n", name, value, unit);
  }
}

long rss_kb() {
  std::ifstream in("/proc/self/statm");
  long pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

void per_node(engine& e, const options& o, const char* label, const plan_ptr& p,
              std::size_t nodes) {
  std::vector<double> eng, flo;
  engine_run_seconds(e, p, {});  // warm-up
  for (int i = 0; i < o.repeat; ++i) {
    eng.push_back(engine_run_seconds(e, p, {}) * 1e6 / static_cast<double>(nodes));
    flo.push_back(floor_run_seconds(p, {}) * 1e6 / static_cast<double>(nodes));
  }
  row(label, "us/node", median(eng), median(flo));
}

void bench_w3(engine& e, const options& o, bool memo = false) {
  auto p = must(
      e.register_workflow(scenarios::w3(memo ? "w3memo-noop" : "w3-noop", "noop", nullptr, memo)));
  if (memo) {
    e.start(p, {})->wait();  // fills the cache: every later node execution is a hit
  }
  std::mutex m;
  std::condition_variable cv;
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(o.w3_runs));
  std::atomic<int> started{0};
  int finished = 0;
  std::function<void()> launch;
  launch = [&] {
    if (started.fetch_add(1) >= o.w3_runs) {
      return;
    }
    auto t0 = clk::now();
    auto h = e.start(p, {});
    h->on_finished([&, t0](const run_result&) {
      double us = std::chrono::duration<double, std::micro>(clk::now() - t0).count();
      bool last;
      {
        std::lock_guard<std::mutex> lock(m);
        lat.push_back(us);
        last = ++finished >= o.w3_runs;
      }
      if (last) {  // waking the main thread per run would measure futex wake-ups, not troupe
        cv.notify_one();
      }
      launch();
    });
  };
  auto t = clk::now();
  for (int i = 0; i < 64; ++i) {
    launch();
  }
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return finished >= o.w3_runs; });
  }
  double s = seconds_since(t);
  std::sort(lat.begin(), lat.end());
  std::vector<double> fl;
  for (int i = 0; i < 2000; ++i) {
    fl.push_back(floor_run_seconds(p, {}) * 1e6);
  }
  std::sort(fl.begin(), fl.end());
  char label[96];
  const char* w = memo ? "W3 memoized" : "W3";
  std::snprintf(label, sizeof label, "%s %d runs, 64 in flight: runs/s", w, o.w3_runs);
  row(label, "runs/s", o.w3_runs / s, 1e6 / percentile(fl, 0.5));
  std::snprintf(label, sizeof label, "%s latency p50", w);
  row(label, "us", percentile(lat, 0.5), percentile(fl, 0.5));
  std::snprintf(label, sizeof label, "%s latency p99", w);
  row(label, "us", percentile(lat, 0.99), percentile(fl, 0.99));
  double mean = 0;
  for (double v : lat) {
    mean += v / static_cast<double>(lat.size());
  }
  // With 64 in flight the mean must equal 64 / throughput (Little's law): a cross-check that
  // the percentiles above are not hiding where the time goes.
  std::snprintf(label, sizeof label, "%s latency mean (64 / throughput)", w);
  row(label, "us", mean, 0);
}

void bench_w4(engine& e, const options& o) {
  auto p = must(e.register_workflow(scenarios::w4("w4")));
  json::object in{{"blob", std::string(10 * 1024, 'x')}};
  std::vector<double> eng, flo;
  for (int i = 0; i < std::max(3, o.repeat / 3); ++i) {
    double ms = 0;
    engine_run_seconds(e, p, in, &ms, "each");
    eng.push_back(ms * 1000 / 1000.0);
    // The floor's per-item share: the whole run minus the 100 producers, per item.
    flo.push_back(floor_run_seconds(p, in) * 1e6 / 1100.0);
  }
  row("W4 for_each 1000 items, 100x10KB context", "us/item", median(eng), median(flo));
}

void bench_memory(const options& o) {
  engine_config c;
  c.threads = o.threads;
  engine e(c);
  auto p =
      must(e.register_workflow(scenarios::w3("w3-sleep", "sleep", json::object{{"ms", 600000}})));
  std::mutex m;
  std::condition_variable cv;
  std::atomic<int> sleeping{0};
  auto hold = [&](int n) {
    std::vector<run_handle> hs;
    hs.reserve(static_cast<std::size_t>(n));
    int base = sleeping.load();
    for (int i = 0; i < n; ++i) {
      start_options so;
      so.on_event = [&](const run_event& ev) {
        if (ev.what == run_event::kind::node_started) {
          if (sleeping.fetch_add(1) + 1 >= base + n) {
            cv.notify_one();
          }
        }
      };
      hs.push_back(*e.start(p, {}, std::move(so)));
    }
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return sleeping.load() >= base + n; });
    return hs;
  };
  long before = rss_kb();
  auto one = hold(1);
  long rss1 = rss_kb();
  auto many = hold(o.mem_runs);
  long rssn = rss_kb();
  double per_run = static_cast<double>(rssn - rss1) * 1024.0 / o.mem_runs;
  std::printf("%-44s %12ld KB\n", "MEM RSS engine idle", before);
  std::printf("%-44s %12ld KB\n", "MEM RSS with 1 W3 run held open", rss1);
  char label[96];
  std::snprintf(label, sizeof label, "MEM RSS with %d W3 runs held open", o.mem_runs + 1);
  std::printf("%-44s %12ld KB\n", label, rssn);
  std::printf("%-44s %12.0f bytes\n", "MEM per extra run", per_run);
  e.shutdown(std::chrono::milliseconds(0));
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// An idle engine must cost nothing: after some work, its threads block. The interval is
// measured with a plain sleep of the measuring thread (it waits for time, not for a state).
void bench_idle(const options& o) {
  const auto interval = std::chrono::seconds(3);
  double base0 = cpu_seconds();
  std::this_thread::sleep_for(interval);
  double base = cpu_seconds() - base0;
  engine_config c;
  c.threads = o.threads;
  engine e(c);
  auto p = must(e.register_workflow(scenarios::w3("w3-noop")));
  for (int i = 0; i < 1000; ++i) {
    e.start(p, {})->wait();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let workers reach their idle wait
  double t0 = cpu_seconds();
  std::this_thread::sleep_for(interval);
  double idle = cpu_seconds() - t0;
  std::printf("%-44s %12.3f ms CPU  (no engine: %.3f ms) over %lld s\n",
              "IDLE engine with 2 workers, after 1000 runs", idle * 1e3, base * 1e3,
              static_cast<long long>(interval.count()));
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--repeat") {
      o.repeat = std::stoi(next());
    } else if (a == "--w3-runs") {
      o.w3_runs = std::stoi(next());
    } else if (a == "--mem-runs") {
      o.mem_runs = std::stoi(next());
    } else if (a == "--threads") {
      o.threads = std::stoi(next());
    } else if (a == "--only") {
      o.only = next();
    } else if (a == "--store") {
      o.store = next();
    } else if (a == "--mode") {
      if (!parse_persistence_mode(next(), o.mode)) {
        std::fprintf(stderr, "--mode: memory, async, durable or sync\n");
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: bench_runtime [--repeat N] [--w3-runs N] [--mem-runs N] [--threads N] "
                   "[--only W1,W2,W3,W3M,W4,MEM,IDLE] [--mode M] [--store URL]\n");
      return 2;
    }
  }
  std::printf("troupe runtime scenarios: %d scheduler threads, medians of %d, mode %s, store %s\n",
              o.threads, o.repeat, std::string(to_string(o.mode)).c_str(), o.store.c_str());
  {
    engine_config c;
    c.threads = o.threads;
    c.mode = o.mode;
    c.store = o.store;
    engine e(c);
    task_def instant;
    instant.name = "instant";
    instant.kind = task_kind::async;
    instant.start = [](const json::value&, const task_call&, completion done) {
      done(task_result::success(nullptr));
    };
    e.register_task(instant);
    if (o.wants("W1")) {
      per_node(e, o, "W1 chain 1000 noop (inline)",
               must(e.register_workflow(scenarios::chain("chain-noop", 1000, "noop"))), 1000);
      per_node(e, o, "W1 chain 1000 C++ task (node actors)",
               must(e.register_workflow(scenarios::chain("chain-instant", 1000, "instant"))), 1000);
    }
    if (o.wants("W2")) {
      per_node(e, o, "W2 fan-out 1 -> 10000 -> 1 noop",
               must(e.register_workflow(scenarios::fan("fan", 10000))), 10002);
    }
    if (o.wants("W3")) {
      bench_w3(e, o);
    }
    if (o.wants("W3M")) {
      bench_w3(e, o, true);
    }
    if (o.wants("W4")) {
      bench_w4(e, o);
    }
    if (o.mode != persistence_mode::memory) {
      auto& m = e.metrics();
      double commits = static_cast<double>(m.batches.load());
      std::printf(
          "%-44s %12llu batches, %llu rows (%llu received), avg batch %.1f, avg commit %.0f us, "
          "errors %llu\n",
          "writer", static_cast<unsigned long long>(m.batches.load()),
          static_cast<unsigned long long>(m.rows.load()),
          static_cast<unsigned long long>(m.rows_received.load()),
          commits > 0 ? static_cast<double>(m.rows.load()) / commits : 0.0,
          commits > 0 ? static_cast<double>(m.commit_us_total.load()) / commits : 0.0,
          static_cast<unsigned long long>(m.errors.load()));
    }
  }
  if (o.wants("MEM")) {
    bench_memory(o);
  }
  if (o.wants("IDLE")) {
    bench_idle(o);
  }
  return 0;
}
