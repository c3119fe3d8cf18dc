// Cost of validating and compiling a large workflow: the parse, every check, every template
// compile, cycle detection and the topological sort. Results: docs/benchmarks.md.
#include <benchmark/benchmark.h>

#include <boost/json.hpp>

#include <cstdlib>
#include <iostream>
#include <string>

#include "workflow/plan.hpp"

namespace {

using namespace troupe;

std::string node_id(std::size_t i) {
  return "n" + std::to_string(i);
}

// n nodes, each needing the one before it: the longest path the graph code can meet.
json::value chain(std::size_t n) {
  json::array nodes;
  for (std::size_t i = 0; i < n; ++i) {
    json::object node{{"id", node_id(i)}, {"task", "echo"}, {"with", i}};
    if (i > 0) {
      node["needs"] = json::array{json::value(node_id(i - 1))};
    }
    nodes.emplace_back(std::move(node));
  }
  return json::object{{"name", "chain"}, {"nodes", std::move(nodes)}};
}

// Layers of `width` nodes, each needing three nodes of the layer before, with templates in
// `with`, `when` and `publish`: what a real fan-out/fan-in workflow looks like.
json::value layered(std::size_t n, std::size_t width) {
  json::array nodes;
  for (std::size_t i = 0; i < n; ++i) {
    json::object node{{"id", node_id(i)}, {"task", "echo"}};
    json::object with{{"k", "static text"}, {"at", i}};
    if (i >= width) {
      const std::size_t base = (i / width - 1) * width;
      json::array needs;
      for (std::size_t k = 0; k < 3; ++k) {
        needs.emplace_back(node_id(base + (i + k) % width));
      }
      const std::string first = node_id(base + i % width);
      with["value"] = "{{ nodes." + first + ".output.at + 1 }}";
      with["label"] = "from {{ nodes." + first + ".status }} at {{ run.id }}";
      with["list"] = json::array{"{{ inputs.x }}", "{{ len(nodes." + first + ".output) }}", 3};
      node["needs"] = std::move(needs);
      node["when"] = "{{ nodes." + first + ".status == 'succeeded' }}";
    }
    node["with"] = std::move(with);
    if (i % width == 0) {
      node["publish"] = json::object{{"last_" + std::to_string(i / width), "{{ output.at }}"}};
    }
    nodes.emplace_back(std::move(node));
  }
  return json::object{{"name", "layered"},
                      {"inputs", {{"x", {{"type", "integer"}, {"default", 1}}}}},
                      {"nodes", std::move(nodes)},
                      {"outputs", {{"done", "{{ vars.last_0 }}"}}}};
}

void require_compiles(const json::value& doc, benchmark::State& state) {
  auto r = compile_workflow(doc);
  if (!r) {
    for (const auto& e : r.error()) {
      std::cerr << e.pointer << ": " << e.message << "\n";
    }
    state.SkipWithError("the generated workflow does not compile");
  }
}

void run_value(benchmark::State& state, const json::value& doc) {
  require_compiles(doc, state);
  for (auto _ : state) {
    auto r = compile_workflow(doc);
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(state.range(0)));
}

void run_text(benchmark::State& state, const json::value& doc) {
  require_compiles(doc, state);
  const std::string text = json::serialize(doc);
  for (auto _ : state) {
    auto r = compile_workflow(std::string_view(text));
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(state.range(0)));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(text.size()));
}

void bm_compile_chain(benchmark::State& state) {
  run_value(state, chain(static_cast<std::size_t>(state.range(0))));
}
void bm_compile_layered(benchmark::State& state) {
  run_value(state, layered(static_cast<std::size_t>(state.range(0)), 100));
}
void bm_parse_and_compile_layered(benchmark::State& state) {
  run_text(state, layered(static_cast<std::size_t>(state.range(0)), 100));
}

}  // namespace

BENCHMARK(bm_compile_chain)->Arg(1000)->Unit(benchmark::kMicrosecond);
BENCHMARK(bm_compile_layered)->Arg(1000)->Unit(benchmark::kMicrosecond);
BENCHMARK(bm_parse_and_compile_layered)->Arg(1000)->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
