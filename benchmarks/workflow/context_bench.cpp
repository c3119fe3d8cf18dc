// The persistent context against the naive design it replaces (a per-item deep copy of the node
// outputs, as the Rust executor in DESIGN.md did). Results: docs/benchmarks.md.
//
// BM_context_copy / BM_deep_copy:             copy a context holding N results of ~10 KB each.
// BM_item_view / BM_item_deep_copy:           per for_each item, bind item+index and write one
//                                             node result, in a context of 100 x ~10 KB results.
// BM_with_node / BM_with_node_deep_copy:      one node update in a context of N results (~1 KB
//                                             each, so the 10000-node baseline stays ~10 MB).

#include <benchmark/benchmark.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "workflow/context.hpp"

namespace {

using namespace troupe;

// An object of short string fields, about `bytes` of JSON text: what a typical API response
// looks like, and what a deep copy must walk field by field.
json::value make_output(std::size_t bytes, std::size_t seed) {
  json::object o;
  const std::size_t fields = bytes / 128 > 0 ? bytes / 128 : 1;
  for (std::size_t f = 0; f < fields; ++f) {
    o["field_" + std::to_string(f)] = std::string(110, static_cast<char>('a' + (seed + f) % 26));
  }
  return o;
}

std::string node_id(std::size_t i) {
  return "node_" + std::to_string(i);
}

context make_context(std::size_t nodes, std::size_t bytes) {
  context c(nodes, 4, make_json(json::object{{"size", 100}}));
  for (std::size_t i = 0; i < nodes; ++i) {
    c = c.with_node(i, {node_status::succeeded, make_json(make_output(bytes, i)), nullptr});
  }
  return c;
}

using naive_context = std::map<std::string, json::value>;

naive_context make_naive(std::size_t nodes, std::size_t bytes) {
  naive_context m;
  for (std::size_t i = 0; i < nodes; ++i) {
    m.emplace(node_id(i), make_output(bytes, i));
  }
  return m;
}

constexpr std::size_t output_bytes = 10 * 1024;
constexpr std::size_t small_output_bytes = 1024;

// (1) Copy.
void BM_context_copy(benchmark::State& state) {
  const context base = make_context(static_cast<std::size_t>(state.range(0)), output_bytes);
  for (auto _ : state) {
    context copy = base;
    benchmark::DoNotOptimize(copy);
  }
}
BENCHMARK(BM_context_copy)->Arg(0)->Arg(10)->Arg(50)->Arg(100)->Arg(500);

void BM_deep_copy(benchmark::State& state) {
  const naive_context base = make_naive(static_cast<std::size_t>(state.range(0)), output_bytes);
  for (auto _ : state) {
    naive_context copy = base;
    benchmark::DoNotOptimize(copy);
  }
}
BENCHMARK(BM_deep_copy)
    ->Arg(0)
    ->Arg(10)
    ->Arg(50)
    ->Arg(100)
    ->Arg(500)
    ->Unit(benchmark::kMicrosecond);

// (2) One for_each over 1000 items: per item, a view bound to the element (aliasing pointer into
// the array, no element copy) plus the node-result write an item makes.
constexpr std::size_t item_count = 1000;

json_ptr make_items() {
  json::array a;
  for (std::size_t i = 0; i < item_count; ++i) {
    a.emplace_back(json::object{{"url", "https://example.com/" + std::to_string(i)}});
  }
  return make_json(std::move(a));
}

void BM_item_view(benchmark::State& state) {
  const context base = make_context(100, output_bytes);
  const json_ptr items = make_items();
  const auto& elements = items->as_array();
  const json_ptr result = make_json("done");
  for (auto _ : state) {
    for (std::size_t i = 0; i < item_count; ++i) {
      context view = base.with_item(json_ptr(items, &elements[i]), static_cast<std::int64_t>(i))
                         .with_node(42, {node_status::succeeded, result, nullptr});
      benchmark::DoNotOptimize(view);
    }
  }
  state.counters["per_item"] = benchmark::Counter(
      item_count, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_item_view)->Unit(benchmark::kMicrosecond);

void BM_item_deep_copy(benchmark::State& state) {
  const naive_context base = make_naive(100, output_bytes);
  const json_ptr items = make_items();
  const auto& elements = items->as_array();
  for (auto _ : state) {
    for (std::size_t i = 0; i < item_count; ++i) {
      naive_context view = base;
      view["item"] = elements[i];
      view[node_id(42)] = "done";
      benchmark::DoNotOptimize(view);
    }
  }
  state.counters["per_item"] = benchmark::Counter(
      item_count, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_item_deep_copy)->Unit(benchmark::kMillisecond);

// (3) One update.
void BM_with_node(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const context base = make_context(n, small_output_bytes);
  const node_result r{node_status::succeeded, make_json("new"), nullptr};
  std::size_t i = 0;
  for (auto _ : state) {
    context next = base.with_node(i, r);
    benchmark::DoNotOptimize(next);
    i = i + 1 == n ? 0 : i + 1;
  }
}
BENCHMARK(BM_with_node)->Arg(10)->Arg(100)->Arg(1000)->Arg(10000);

void BM_with_node_deep_copy(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const naive_context base = make_naive(n, small_output_bytes);
  std::size_t i = 0;
  for (auto _ : state) {
    naive_context next = base;
    next[node_id(i)] = "new";
    benchmark::DoNotOptimize(next);
    i = i + 1 == n ? 0 : i + 1;
  }
}
BENCHMARK(BM_with_node_deep_copy)
    ->Arg(10)
    ->Arg(100)
    ->Arg(1000)
    ->Arg(10000)
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
