// Micro benchmarks of the expression and template engine: parse once, evaluate many times.
#include <benchmark/benchmark.h>

#include <boost/json/parse.hpp>

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>

#include "workflow/expr.hpp"

namespace {

namespace json = boost::json;

class bench_scope final : public troupe::scope {
 public:
  bench_scope() {
    inputs_ = json::parse(R"({"list": [1, 2, 3, 4], "a": 12, "b": 5, "c": 8, "name": "report",
                             "threshold": 50, "urls": ["http://a", "http://b"]})");
    vars_["tax_rate"] = 0.2;
    vars_["count"] = 17;
    node_output_ = json::parse(R"({"items": [{"name": "a", "price": 10}, {"name": "b", "price": 20},
                                            {"name": "c", "price": 30}, {"name": "x", "price": 40}],
                                  "total": 100})");
    node_status_ = "succeeded";
    index_ = 3;
    run_id_ = "run-42";
  }
  const json::value* inputs() const override { return &inputs_; }
  const json::value* var(std::string_view name) const override {
    auto it = vars_.find(name);
    return it == vars_.end() ? nullptr : &it->second;
  }
  const json::value* node(std::string_view id, troupe::node_field field) const override {
    if (id != "a")
      return nullptr;
    return field == troupe::node_field::output   ? &node_output_
           : field == troupe::node_field::status ? &node_status_
                                                 : &null_;
  }
  const json::value* item() const override { return nullptr; }
  const json::value* index() const override { return &index_; }
  const json::value* output() const override { return nullptr; }
  const json::value* run(std::string_view field) const override {
    return field == "id" ? &run_id_ : nullptr;
  }

 private:
  json::value inputs_, node_output_, node_status_, index_, run_id_, null_;
  std::map<std::string, json::value, std::less<>> vars_;
};

troupe::expression must_parse(std::string_view src) {
  auto e = troupe::expression::parse(src);
  if (!e)
    throw std::runtime_error(e.error().message);
  return *e;
}

troupe::template_value must_compile(std::string_view json_text) {
  auto t = troupe::template_value::compile(json::parse(json_text));
  if (!t)
    throw std::runtime_error(t.error().front().error.message);
  return *t;
}

void BM_parse_mid_size(benchmark::State& state) {
  const std::string_view src =
      "nodes.a.output.items[index].price * (1 + vars.tax_rate) > default(inputs.threshold, 100)"
      " ? upper(inputs.name) + '!' : join(split('x,y,z', ','), '-')";
  for (auto _ : state) {
    auto e = troupe::expression::parse(src);
    benchmark::DoNotOptimize(e);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * src.size()));
}
BENCHMARK(BM_parse_mid_size);

void BM_eval_path_comparison(benchmark::State& state) {
  const bench_scope s;
  const auto e = must_parse("nodes.a.output.items[3].name == 'x' && len(inputs.list) > 2");
  for (auto _ : state) {
    auto r = e.evaluate(s);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_eval_path_comparison);

void BM_eval_arithmetic(benchmark::State& state) {
  const bench_scope s;
  const auto e = must_parse("(inputs.a * 3 + inputs.b) % 7 - inputs.c / 2 + vars.count * 1.5");
  for (auto _ : state) {
    auto r = e.evaluate(s);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_eval_arithmetic);

void BM_render_template_object(benchmark::State& state) {
  const bench_scope s;
  const auto t = must_compile(R"({
    "count": "{{ len(nodes.a.output.items) }}",
    "first": "{{ nodes.a.output.items[0] }}",
    "url": "https://example.com/{{ inputs.name }}/{{ index }}",
    "label": "run {{ run.id }}: {{ vars.count }} items",
    "total": "{{ nodes.a.output.total * 2 }}"
  })");
  for (auto _ : state) {
    auto r = t.render(s);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_render_template_object);

void BM_render_constant_template(benchmark::State& state) {
  const bench_scope s;
  const auto t = must_compile(R"({"method": "GET", "url": "https://example.com/static",
                                 "headers": {"accept": "application/json"}, "retries": 3})");
  for (auto _ : state) {
    auto r = t.render(s);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_render_constant_template);

}  // namespace

BENCHMARK_MAIN();
