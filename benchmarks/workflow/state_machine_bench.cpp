// The run state machine alone, no actors: the floor the actor runtime is compared against.
// Every dispatch is answered at once with the task's result, as an inline quick task would be.
#include <benchmark/benchmark.h>

#include <boost/json/serialize.hpp>

#include <string>
#include <vector>

#include "workflow/plan.hpp"
#include "workflow/run_state.hpp"
#include "workflow/task.hpp"

using namespace troupe;

namespace {

plan_ptr compile_or_die(const json::value& doc) {
  auto p = compile_workflow(doc);
  if (!p) {
    std::fprintf(stderr, "compile failed: %s %s\n", p.error()[0].pointer.c_str(),
                 p.error()[0].message.c_str());
    std::abort();
  }
  return *p;
}

json::value chain(int n) {
  json::array nodes;
  for (int i = 0; i < n; ++i) {
    json::object node{{"id", "n" + std::to_string(i)}, {"task", "noop"}};
    if (i > 0) {
      node["needs"] = json::array{json::value("n" + std::to_string(i - 1))};
    }
    nodes.push_back(std::move(node));
  }
  return json::object{{"name", "chain"}, {"nodes", std::move(nodes)}};
}

// 1 -> width -> 1
json::value fan_out(int width) {
  json::array nodes;
  nodes.push_back(json::object{{"id", "src"}, {"task", "noop"}});
  json::array all;
  for (int i = 0; i < width; ++i) {
    std::string id = "w" + std::to_string(i);
    nodes.push_back(json::object{{"id", id}, {"task", "noop"}, {"needs", json::array{"src"}}});
    all.push_back(json::value(id));
  }
  nodes.push_back(json::object{{"id", "sink"}, {"task", "noop"}, {"needs", std::move(all)}});
  return json::object{{"name", "fan"}, {"nodes", std::move(nodes)}};
}

// Runs the plan to completion answering each dispatch with null; returns nodes executed.
std::size_t run_once(const plan_ptr& p, bool records) {
  run_options o;
  o.run_id = "bench";
  o.record_starts = records;
  run_state rs(p, o);
  std::vector<command> out, next;
  out.reserve(64);
  next.reserve(64);
  rs.start({}, 0, out);
  std::size_t executed = 0;
  while (!out.empty()) {
    for (auto& c : out) {
      if (auto* d = std::get_if<cmd::dispatch>(&c)) {
        ++executed;
        rs.task_finished(d->exec, task_result::success(nullptr), 0, next);
      }
    }
    out.clear();
    std::swap(out, next);
  }
  if (rs.status() != run_status::succeeded) {
    std::abort();
  }
  return executed;
}

void bm_chain_noop(benchmark::State& state) {
  auto p = compile_or_die(chain(static_cast<int>(state.range(0))));
  std::size_t nodes = 0;
  for (auto _ : state) {
    nodes += run_once(p, true);
  }
  // Reported as seconds per node (kInvert of a rate); the table prints it in the bench's unit.
  state.counters["per_node"] = benchmark::Counter(
      static_cast<double>(nodes), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(bm_chain_noop)->Arg(1000)->Unit(benchmark::kMicrosecond);

void bm_fan_out_noop(benchmark::State& state) {
  auto p = compile_or_die(fan_out(static_cast<int>(state.range(0))));
  std::size_t nodes = 0;
  for (auto _ : state) {
    nodes += run_once(p, true);
  }
  // Reported as seconds per node (kInvert of a rate); the table prints it in the bench's unit.
  state.counters["per_node"] = benchmark::Counter(
      static_cast<double>(nodes), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(bm_fan_out_noop)->Arg(10000)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
