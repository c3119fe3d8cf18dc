// Issue 5: a `dynamic` node that generates a 1000-node workflow, with the generator as a `shell`
// script and as a C++ task. For each generator, every repetition uses a fresh engine (so nothing
// is cached in memory) and measures, in this order:
//   generate  the generating node alone (no `dynamic`): its duration as the run reports it
//   compile   compile_workflow() on the generated document (validated against the registry)
//   execute   the generated workflow run directly as a registered workflow (its second run)
//   first     the dynamic node, spec cache miss: generate + compile + child run
//   rerun     the same run again: spec cache hit (no generator, no compile), child run only
// Medians over the repetitions, and rerun/first as a ratio. Usage: bench_dynamic [--repeat N]
// [--nodes N] [--threads N]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <boost/json/serialize.hpp>

#include "benchmarks/stats.hpp"
#include "runtime/engine.hpp"
#include "workflow/plan.hpp"

using namespace troupe;
using clk = std::chrono::steady_clock;

namespace {

struct options {
  int repeat = 9;
  int nodes = 1000;
  int threads = 2;
};

using bench::median;

double ms_since(clk::time_point t) {
  return std::chrono::duration<double, std::milli>(clk::now() - t).count();
}

// The generated workflow: `width` independent chains of echo nodes (node i needs node
// i - width), so the child has both parallelism and depth; outputs read the chains' ends.
constexpr int width = 10;

json::value generated_doc(int n) {
  json::array nodes;
  nodes.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    json::object node{{"id", "n" + std::to_string(i)},
                      {"task", "echo"},
                      {"with", {{"i", i}, {"base", "{{ inputs.base }}"}}}};
    if (i >= width) {
      node["needs"] = json::array{json::value("n" + std::to_string(i - width))};
    }
    nodes.push_back(std::move(node));
  }
  json::object outputs{{"count", n}};
  for (int i = std::max(0, n - width); i < n; ++i) {
    outputs["end" + std::to_string(i % width)] = "{{ nodes.n" + std::to_string(i) + ".output.i }}";
  }
  return json::object{{"name", "generated"},
                      {"inputs", {{"base", {{"type", "integer"}}}}},
                      {"nodes", std::move(nodes)},
                      {"outputs", std::move(outputs)}};
}

// The same document from /bin/sh: braces as octal escapes, since `{{` in the parent workflow
// would be a template.
std::string shell_generator() {
  return R"(n={{ inputs.n }}; w=10
o=$(printf '\173\173'); c=$(printf '\175\175')
printf '{"name": "generated", "inputs": {"base": {"type": "integer"} }, "nodes": ['
i=0
while [ "$i" -lt "$n" ]; do
  [ "$i" -gt 0 ] && printf ', '
  if [ "$i" -ge "$w" ]; then
    printf '{"id": "n%d", "task": "echo", "with": {"i": %d, "base": "%s inputs.base %s"}, "needs": ["n%d"]}' "$i" "$i" "$o" "$c" $((i - w))
  else
    printf '{"id": "n%d", "task": "echo", "with": {"i": %d, "base": "%s inputs.base %s"} }' "$i" "$i" "$o" "$c"
  fi
  i=$((i + 1))
done
printf '], "outputs": {"count": %d' "$n"
i=$((n - w)); [ "$i" -lt 0 ] && i=0
while [ "$i" -lt "$n" ]; do
  printf ', "end%d": "%s nodes.n%d.output.i %s"' $((i % w)) "$o" "$i" "$c"
  i=$((i + 1))
done
printf '} }'
)";
}

json::value parent_doc(const std::string& task, bool dynamic, bool cached) {
  json::object with{{"n", "{{ inputs.n }}"}};
  if (task == "shell") {
    with = json::object{{"command", shell_generator()}, {"output", "json"}};
  }
  json::object node{{"id", "gen"}, {"task", task}, {"with", std::move(with)}};
  if (dynamic) {
    node["dynamic"] = json::object{{"inputs", {{"base", 7}}}};
  }
  if (cached) {
    node["cache"] = json::object{{"version", "v1"}};
  }
  std::string name = task + (dynamic ? "_dynamic" : "_generate_only");
  return json::object{{"name", name},
                      {"inputs", {{"n", {{"type", "integer"}}}}},
                      {"nodes", json::array{std::move(node)}},
                      {"outputs", {{"out", "{{ nodes.gen.output }}"}}}};
}

task_def cpp_generator() {
  task_def t;
  t.name = "generate";
  t.kind = task_kind::blocking;
  t.run = [](const json::value& in, const task_call&) {
    return task_result::success(generated_doc(static_cast<int>(in.at("n").as_int64())));
  };
  return t;
}

run_result run(engine& e, const std::string& wf, json::object inputs) {
  auto h = e.start(wf, std::move(inputs));
  if (!h) {
    std::fprintf(stderr, "cannot start %s: %s\n", wf.c_str(), h.error().front().message.c_str());
    std::exit(1);
  }
  run_result r = h->wait();
  if (r.status != run_status::succeeded) {
    std::fprintf(stderr, "%s %s: %s\n", wf.c_str(), std::string(to_string(r.status)).c_str(),
                 r.error.c_str());
    std::exit(1);
  }
  return r;
}

struct figures {
  std::vector<double> generate, compile, execute, first, rerun;
};

void measure(const std::string& task, const options& o, figures& f) {
  engine_config c;
  c.threads = o.threads;
  c.mode = persistence_mode::memory;
  engine e(c);
  e.register_task(cpp_generator());
  for (bool dyn : {false, true}) {
    auto reg = e.register_workflow(parent_doc(task, dyn, dyn));
    if (!reg) {
      std::fprintf(stderr, "bad parent workflow: %s\n", reg.error().front().message.c_str());
      std::exit(1);
    }
  }
  json::object inputs{{"n", o.nodes}};
  const std::string base = task + "_";

  // The node's own duration: the run around it also copies the 1000-node document into the
  // run's outputs, which a dynamic node does not do.
  run_result gen = run(e, base + "generate_only", inputs);
  f.generate.push_back(gen.nodes[0].duration_ms);
  json::value doc = gen.outputs.at("out");

  compile_options co;
  auto registry = e.tasks();
  co.tasks = registry.get();
  auto t = clk::now();
  auto compiled = compile_workflow(doc, co);
  f.compile.push_back(ms_since(t));
  if (!compiled) {
    std::fprintf(stderr, "generated workflow invalid: %s: %s\n",
                 compiled.error().front().pointer.c_str(),
                 compiled.error().front().message.c_str());
    std::exit(1);
  }
  // Registered under its own name: running it is the child's work without the dynamic node.
  json::object renamed = doc.as_object();
  renamed["name"] = base + "direct";
  e.register_workflow(json::value(renamed));
  run(e, base + "direct", {{"base", 7}});  // warms the plan's task table, as a rerun finds it
  t = clk::now();
  run(e, base + "direct", {{"base", 7}});
  f.execute.push_back(ms_since(t));

  t = clk::now();
  run_result first = run(e, base + "dynamic", inputs);
  f.first.push_back(ms_since(t));
  t = clk::now();
  run_result again = run(e, base + "dynamic", inputs);
  f.rerun.push_back(ms_since(t));
  if (first.nodes[0].spec_cache != cache_status::miss ||
      again.nodes[0].spec_cache != cache_status::hit ||
      boost::json::serialize(first.outputs) != boost::json::serialize(again.outputs)) {
    std::fprintf(stderr, "unexpected spec cache states or outputs\n");
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    auto value = [&]() -> int {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", argv[i]);
        std::exit(2);
      }
      return std::atoi(argv[++i]);
    };
    if (!std::strcmp(argv[i], "--repeat")) {
      o.repeat = std::max(1, value());
    } else if (!std::strcmp(argv[i], "--nodes")) {
      o.nodes = std::max(1, value());
    } else if (!std::strcmp(argv[i], "--threads")) {
      o.threads = std::max(1, value());
    } else {
      std::fprintf(stderr, "usage: bench_dynamic [--repeat N] [--nodes N] [--threads N]\n");
      return 2;
    }
  }
  figures shell, cpp;
  for (int r = 0; r < o.repeat; ++r) {  // interleaved: drift hits both generators alike
    measure("shell", o, shell);
    measure("generate", o, cpp);
    if (isatty(2)) {
      std::fprintf(stderr, "\rrepetition %d/%d", r + 1, o.repeat);
    }
  }
  if (isatty(2)) {
    std::fprintf(stderr, "\n");
  }
  std::printf("dynamic node generating a %d-node workflow; medians of %d fresh engines (ms)\n",
              o.nodes, o.repeat);
  std::printf("%-10s %9s %9s %9s %9s %9s %12s\n", "generator", "generate", "compile", "execute",
              "first", "rerun", "rerun/first");
  const std::pair<const char*, figures*> rows[] = {{"shell", &shell}, {"C++ task", &cpp}};
  for (const auto& [name, f] : rows) {
    double first = median(f->first), rerun = median(f->rerun);
    std::printf("%-10s %9.2f %9.2f %9.2f %9.2f %9.2f %11.2fx\n", name, median(f->generate),
                median(f->compile), median(f->execute), first, rerun, rerun / first);
  }
  return 0;
}
