// Embedding troupe in a C++ program: register a C++ task and a workflow, start a run, follow its
// events, and wait for the answer. Build target: troupe_embed_example.
#include <cstdio>
#include <iostream>

#include <boost/json/serialize.hpp>

#include "runtime/engine.hpp"

int main() {
  troupe::engine_config config;
  config.threads = 2;
  troupe::engine engine(config);

  // A blocking task runs on the engine's pool, so it may call slow libraries freely.
  troupe::task_def word_count;
  word_count.name = "word_count";
  word_count.kind = troupe::task_kind::blocking;
  word_count.run = [](const troupe::json::value& input, const troupe::task_call&) {
    const auto* text = input.if_string();
    if (!text) {
      return troupe::task_result::failure("word_count expects a string");
    }
    std::int64_t words = 0;
    bool in_word = false;
    for (char c : *text) {
      bool space = c == ' ' || c == '\n' || c == '\t';
      words += !space && !in_word;
      in_word = !space;
    }
    return troupe::task_result::success(words);
  };
  engine.register_task(word_count);

  auto plan = engine.register_workflow(R"({
    "name": "count-words",
    "inputs": { "text": { "type": "string", "required": true } },
    "nodes": [
      { "id": "count", "task": "word_count", "with": "{{ inputs.text }}" },
      { "id": "report", "task": "echo", "needs": ["count"],
        "with": "{{ nodes.count.output }} words" }
    ],
    "outputs": { "words": "{{ nodes.count.output }}", "report": "{{ nodes.report.output }}" }
  })");
  if (!plan) {
    for (const auto& e : plan.error()) {
      std::cerr << e.pointer << ": " << e.message << "\n";
    }
    return 2;
  }

  troupe::start_options options;
  options.on_event = [](const troupe::run_event& e) {
    if (!e.node_id.empty()) {
      std::printf("event: %s %s\n", e.node_id.c_str(), e.status.c_str());
    }
  };
  auto run = engine.start(*plan, {{"text", "actors all the way down"}}, options);
  if (!run) {
    std::cerr << run.error().at(0).pointer << ": " << run.error().at(0).message << "\n";
    return 2;
  }
  auto result = run->wait_for(std::chrono::seconds(10));
  if (!result) {
    std::cerr << "the run did not finish in time\n";
    return 1;
  }
  std::cout << "status: " << troupe::to_string(result->status) << "\n";
  std::cout << "outputs: " << boost::json::serialize(result->outputs) << "\n";
  return result->status == troupe::run_status::succeeded ? 0 : 1;
}
