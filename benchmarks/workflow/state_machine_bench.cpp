// The run state machine alone, no actors: the floor the actor runtime is compared against.
// Every dispatch is answered at once with the task's result, as an inline quick task would be.
#include <benchmark/benchmark.h>

#include <boost/json/serialize.hpp>

#include <string>
#include <vector>

#include "workflow/plan.hpp"
#include "workflow/run_state.hpp"
#include "workflow/scenarios.hpp"
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
  auto p = compile_or_die(scenarios::chain("chain", static_cast<int>(state.range(0)), "noop"));
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
  auto p = compile_or_die(scenarios::fan("fan", static_cast<int>(state.range(0))));
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
