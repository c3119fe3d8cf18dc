#define BOOST_TEST_MODULE runtime_dynamic
#include <boost/test/unit_test.hpp>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <unistd.h>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "runtime/engine.hpp"
#include "test/support/engine.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

// What the tasks of these tests did, shared with the engine's threads.
struct counters {
  std::atomic<int> generated{0};
  std::atomic<int> steps{0};
  std::atomic<bool> flaky_fails{true};
  std::atomic<int> flaky_runs{0};
};

// A generator: {"n": k, "flaky": bool} -> a workflow of k `step` nodes in a chain, then an
// optional `flaky` node, whose outputs sum what the child's inputs and nodes produced.
json::value generated_workflow(std::int64_t n, bool flaky) {
  json::array nodes;
  for (std::int64_t i = 0; i < n; ++i) {
    json::object node{{"id", "s" + std::to_string(i)},
                      {"task", "step"},
                      {"with", {{"i", i}, {"base", "{{ inputs.base }}"}}}};
    if (i > 0) {
      node["needs"] = json::array{json::value("s" + std::to_string(i - 1))};
    }
    nodes.push_back(std::move(node));
  }
  std::string last = "s" + std::to_string(n - 1);
  if (flaky) {
    nodes.push_back(json::object{{"id", "flaky"}, {"task", "flaky"}, {"needs", {last}}});
  }
  return json::object{
      {"name", "generated"},
      {"inputs", {{"base", {{"type", "integer"}}}}},
      {"nodes", std::move(nodes)},
      {"outputs", {{"last", "{{ nodes." + last + ".output }}"}, {"count", n}}}};
}

void register_tasks(engine& e, const std::shared_ptr<counters>& c) {
  task_def gen;
  gen.name = "generate";
  gen.kind = task_kind::blocking;
  gen.run = [c](const json::value& in, const task_call&) {
    ++c->generated;
    const auto& o = in.as_object();
    bool flaky = o.contains("flaky") && o.at("flaky").as_bool();
    if (o.contains("as_text") && o.at("as_text").as_bool()) {
      return task_result::success(
          json::value(json::serialize(generated_workflow(o.at("n").as_int64(), flaky))));
    }
    return task_result::success(generated_workflow(o.at("n").as_int64(), flaky));
  };
  BOOST_REQUIRE(e.register_task(std::move(gen)));
  task_def step;
  step.name = "step";
  step.kind = task_kind::quick;
  step.run = [c](const json::value& in, const task_call&) {
    ++c->steps;
    const auto& o = in.as_object();
    return task_result::success(o.at("i").as_int64() + o.at("base").as_int64());
  };
  BOOST_REQUIRE(e.register_task(std::move(step)));
  task_def flaky;
  flaky.name = "flaky";
  flaky.kind = task_kind::quick;
  flaky.run = [c](const json::value&, const task_call&) {
    ++c->flaky_runs;
    return c->flaky_fails ? task_result::failure("flaky: not yet")
                          : task_result::success("fine now");
  };
  BOOST_REQUIRE(e.register_task(std::move(flaky)));
  // Returns whatever its input says: a way to generate invalid or recursive workflows.
  task_def literal;
  literal.name = "literal";
  literal.kind = task_kind::quick;
  literal.run = [c](const json::value& in, const task_call&) {
    ++c->generated;
    return task_result::success(in.as_object().at("doc"));
  };
  BOOST_REQUIRE(e.register_task(std::move(literal)));
}

std::string parent_workflow(const std::string& name, bool cached, bool flaky = false) {
  return R"({"name":")" + name + R"(","inputs":{"n":{"type":"integer"},"base":{"type":"integer"}},
    "nodes":[{"id":"gen","task":"generate","with":{"n":"{{ inputs.n }}","flaky":)" +
         (flaky ? "true" : "false") + R"(},
              "dynamic":{"inputs":{"base":"{{ inputs.base }}"}})" +
         // The workflow's name as the cache version: a database kept between test runs
         // (PostgreSQL's) holds no entry for it yet.
         (cached ? R"(,"cache":{"version":")" + name + R"("})" : "") + R"(},
             {"id":"after","task":"echo","needs":["gen"],"with":"{{ nodes.gen.output.last }}"}],
    "outputs":{"child":"{{ nodes.gen.output }}","after":"{{ nodes.after.output }}"}})";
}

const node_row* find_row(const std::vector<node_row>& rows, std::string_view node,
                         node_status status) {
  const node_row* found = nullptr;
  for (const auto& r : rows) {
    if (r.node_id == node && r.status == status) {
      found = &r;  // the latest attempt with that status
    }
  }
  return found;
}

// A child fails inside; the parent is resumed: the generator and the compile are skipped (spec
// cache), the child continues under its own id, and its succeeded nodes do not run again.
void resume_continues_the_child(const std::string& url, const std::string& wf) {
  auto c = std::make_shared<counters>();
  engine e(config(persistence_mode::durable, url));
  register_tasks(e, c);
  BOOST_REQUIRE(e.register_workflow(parent_workflow(wf, true, true)).has_value());
  auto first = run_once(e, wf, {{"n", 4}, {"base", 10}});
  BOOST_TEST(first.status == run_status::failed);
  BOOST_TEST(first.error.find("flaky: not yet") != std::string::npos, first.error);
  BOOST_TEST(node(first, "gen").spec_cache == cache_status::miss);
  const std::string child = node(first, "gen").child_run;
  BOOST_REQUIRE(!child.empty());
  BOOST_TEST(c->generated.load() == 1);
  BOOST_TEST(c->steps.load() == 4);
  BOOST_TEST(e.dynamic_compiles() == 1u);

  c->flaky_fails = false;
  auto h = e.resume(first.run_id);
  BOOST_REQUIRE_MESSAGE(h.has_value(), (h ? "" : h.error().front().message));
  auto second = h->wait_for(60s);
  BOOST_REQUIRE(second.has_value());
  BOOST_TEST(second->status == run_status::succeeded, second->error);
  BOOST_TEST(node(*second, "gen").spec_cache == cache_status::hit);
  BOOST_TEST(node(*second, "gen").cache == cache_status::hit);
  BOOST_TEST(node(*second, "gen").child_run == child);  // continued, not started afresh
  BOOST_TEST(c->generated.load() == 1);                 // the generator did not run again
  BOOST_TEST(e.dynamic_compiles() == 1u);               // nor did the compiler
  BOOST_TEST(c->steps.load() == 4);                     // succeeded child nodes kept
  BOOST_TEST(c->flaky_runs.load() == 2);
  BOOST_TEST(json::serialize(second->outputs.at("child")) ==
             json::serialize(json::parse(R"({"last":13,"count":4})")));

  // The log links parent and child both ways.
  auto run = e.get_run(child);
  BOOST_REQUIRE(run.has_value());
  BOOST_REQUIRE(run->has_value());
  BOOST_TEST((*run)->parent_run_id == first.run_id);
  BOOST_TEST((*run)->parent_node_id == "gen");
  BOOST_TEST((*run)->status == run_status::succeeded);
  auto rows = e.node_rows(first.run_id);
  BOOST_REQUIRE(rows.has_value());
  const node_row* gen = find_row(*rows, "gen", node_status::succeeded);
  BOOST_REQUIRE(gen != nullptr);
  BOOST_TEST(gen->child_run_id == child);
  BOOST_TEST(gen->spec_cache == cache_status::hit);
  BOOST_TEST(gen->attempt == 2);
  const node_row* failed = find_row(*rows, "gen", node_status::failed);
  BOOST_REQUIRE(failed != nullptr);
  BOOST_TEST(failed->spec_cache == cache_status::miss);
  BOOST_TEST(failed->child_run_id == child);
  run_query q;
  q.parent_run_id = first.run_id;
  auto children = e.list_runs(q);
  BOOST_REQUIRE(children.has_value());
  BOOST_TEST(children->size() == 1u);
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_generated_workflow_runs_as_a_child_and_its_outputs_are_the_nodes) {
  auto c = std::make_shared<counters>();
  engine e(config(persistence_mode::memory, "memory://"));
  register_tasks(e, c);
  BOOST_REQUIRE(e.register_workflow(parent_workflow("plain", false)).has_value());
  auto r = run_once(e, "plain", {{"n", 3}, {"base", 100}});
  BOOST_TEST(r.status == run_status::succeeded, r.error);
  BOOST_TEST(json::serialize(r.outputs) ==
             json::serialize(json::parse(R"({"child":{"last":102,"count":3},"after":102})")));
  BOOST_TEST(node(r, "gen").spec_cache == cache_status::off);
  BOOST_TEST(node(r, "gen").cache == cache_status::off);
  BOOST_TEST(!node(r, "gen").child_run.empty());
  BOOST_TEST(c->generated.load() == 1);
  BOOST_TEST(c->steps.load() == 3);
  auto j = to_json(r);
  const auto& gen = j.at("nodes").as_array().at(0).as_object();
  BOOST_TEST(gen.at("spec_cache").as_string() == "off");
  BOOST_TEST(gen.at("child_run").as_string() == node(r, "gen").child_run);
}

BOOST_AUTO_TEST_CASE(equal_generated_documents_share_one_compiled_plan) {
  auto c = std::make_shared<counters>();
  engine e(config(persistence_mode::memory, "memory://"));
  register_tasks(e, c);
  BOOST_REQUIRE(e.register_workflow(parent_workflow("plain", false)).has_value());
  for (int i = 0; i < 3; ++i) {
    auto r = run_once(e, "plain", {{"n", 5}, {"base", i}});
    BOOST_TEST(r.status == run_status::succeeded, r.error);
    BOOST_TEST(r.outputs.at("after").as_int64() == 4 + i);
  }
  BOOST_TEST(c->generated.load() == 3);  // no `cache`: the generator runs every time...
  BOOST_TEST(e.dynamic_compiles() == 1u);  // ...but the same document compiles once
  auto r = run_once(e, "plain", {{"n", 6}, {"base", 0}});
  BOOST_TEST(r.status == run_status::succeeded);
  BOOST_TEST(e.dynamic_compiles() == 2u);
}

BOOST_AUTO_TEST_CASE(a_spec_hit_skips_the_generator_and_the_compile) {
  auto c = std::make_shared<counters>();
  engine e(config(persistence_mode::memory, "memory://"));
  register_tasks(e, c);
  BOOST_REQUIRE(e.register_workflow(parent_workflow("cached", true)).has_value());
  auto first = run_once(e, "cached", {{"n", 3}, {"base", 1}});
  BOOST_TEST(first.status == run_status::succeeded, first.error);
  BOOST_TEST(node(first, "gen").spec_cache == cache_status::miss);
  BOOST_TEST(node(first, "gen").cache == cache_status::miss);
  // dynamic.inputs are not part of the key: the cached spec runs with the new inputs.
  auto second = run_once(e, "cached", {{"n", 3}, {"base", 50}});
  BOOST_TEST(second.status == run_status::succeeded, second.error);
  BOOST_TEST(node(second, "gen").spec_cache == cache_status::hit);
  BOOST_TEST(node(second, "gen").cache == cache_status::hit);
  BOOST_TEST(second.outputs.at("after").as_int64() == 52);
  BOOST_TEST(c->generated.load() == 1);
  BOOST_TEST(e.dynamic_compiles() == 1u);
  BOOST_TEST(c->steps.load() == 6);  // the child itself always runs
  BOOST_TEST(node(second, "gen").child_run != node(first, "gen").child_run);
  // Another `with` is another key.
  auto third = run_once(e, "cached", {{"n", 2}, {"base", 0}});
  BOOST_TEST(node(third, "gen").spec_cache == cache_status::miss);
  BOOST_TEST(c->generated.load() == 2);
}

BOOST_AUTO_TEST_CASE(a_generator_may_print_its_workflow_as_json_text) {
  auto c = std::make_shared<counters>();
  engine e(config(persistence_mode::memory, "memory://"));
  register_tasks(e, c);
  auto wf = R"({"name":"text","nodes":[{"id":"gen","task":"generate",
      "with":{"n":2,"as_text":true},"dynamic":{"inputs":{"base":7}}}],
      "outputs":{"child":"{{ nodes.gen.output }}"}})";
  BOOST_REQUIRE(e.register_workflow(wf).has_value());
  auto r = run_once(e, "text", {});
  BOOST_TEST(r.status == run_status::succeeded, r.error);
  BOOST_TEST(r.outputs.at("child").at("last").as_int64() == 8);
}

BOOST_AUTO_TEST_CASE(an_invalid_generated_workflow_fails_the_node_with_the_validators_errors) {
  auto c = std::make_shared<counters>();
  engine e(config(persistence_mode::memory, "memory://"));
  register_tasks(e, c);
  auto wf = R"({"name":"bad","nodes":[{"id":"gen","task":"literal","retry":{"max_attempts":2},
      "with":{"doc":{"name":"g","nodes":[
          {"id":"a","task":"no_such_task"},
          {"id":"b","task":"echo","needs":["c"]},
          {"id":"c","task":"echo","needs":["b"]}]}},
      "dynamic":{}}]})";
  BOOST_REQUIRE(e.register_workflow(wf).has_value());
  auto r = run_once(e, "bad", {});
  BOOST_TEST(r.status == run_status::failed);
  const std::string& err = node(r, "gen").error;
  BOOST_TEST(err.find("dynamic: the generated workflow is invalid") != std::string::npos, err);
  BOOST_TEST(err.find("/nodes/0/task") != std::string::npos, err);
  BOOST_TEST(err.find("no_such_task") != std::string::npos, err);
  BOOST_TEST(err.find("cycle") != std::string::npos, err);
  BOOST_TEST(node(r, "gen").child_run.empty());
  BOOST_TEST(node(r, "gen").attempts == 2);  // an invalid result is an attempt's failure

  // Not JSON at all, and not an object.
  auto text = R"({"name":"text","nodes":[{"id":"gen","task":"literal",
      "with":{"doc":"{not json"},"dynamic":{}}]})";
  BOOST_REQUIRE(e.register_workflow(text).has_value());
  auto t = run_once(e, "text", {});
  BOOST_TEST(t.status == run_status::failed);
  BOOST_TEST(node(t, "gen").error.find("not JSON") != std::string::npos, node(t, "gen").error);
  auto num = R"({"name":"num","nodes":[{"id":"gen","task":"literal",
      "with":{"doc":42},"dynamic":{}}]})";
  BOOST_REQUIRE(e.register_workflow(num).has_value());
  auto n = run_once(e, "num", {});
  BOOST_TEST(n.status == run_status::failed);
  BOOST_TEST(node(n, "gen").error.find("generated workflow is invalid") != std::string::npos,
             node(n, "gen").error);
}

BOOST_AUTO_TEST_CASE(bad_child_inputs_and_bad_dynamic_inputs_are_reported) {
  auto c = std::make_shared<counters>();
  engine e(config(persistence_mode::memory, "memory://"));
  register_tasks(e, c);
  // The generated workflow wants an integer `base`; the node gives a string.
  auto wf = R"({"name":"inputs","nodes":[{"id":"gen","task":"generate","with":{"n":1},
      "dynamic":{"inputs":{"base":"ten"}}}]})";
  BOOST_REQUIRE(e.register_workflow(wf).has_value());
  auto r = run_once(e, "inputs", {});
  BOOST_TEST(r.status == run_status::failed);
  BOOST_TEST(node(r, "gen").error.find("/inputs/base") != std::string::npos, node(r, "gen").error);
  BOOST_TEST(c->generated.load() == 1);  // the child's inputs are checked after generating
  // dynamic.inputs must render to an object.
  auto wf2 = R"({"name":"inputs2","nodes":[{"id":"gen","task":"generate","with":{"n":1},
      "dynamic":{"inputs":"{{ 5 }}"}}]})";
  BOOST_REQUIRE(e.register_workflow(wf2).has_value());
  auto r2 = run_once(e, "inputs2", {});
  BOOST_TEST(r2.status == run_status::failed);
  BOOST_TEST(node(r2, "gen").error.find("dynamic/inputs") != std::string::npos,
             node(r2, "gen").error);
  BOOST_TEST(c->generated.load() == 1);  // failed before the task was called
}

BOOST_AUTO_TEST_CASE(dynamic_nesting_stops_at_the_depth_limit) {
  auto c = std::make_shared<counters>();
  engine_config cfg = config(persistence_mode::memory, "memory://");
  cfg.max_workflow_depth = 3;
  engine e(cfg);
  register_tasks(e, c);
  // Six levels, each generated document holding the next: deeper than the limit allows.
  json::value level = json::object{{"name", "leaf"}, {"nodes", json::array{json::object{
                                                                  {"id", "x"}, {"task", "noop"}}}}};
  for (int i = 0; i < 5; ++i) {
    level = json::object{
        {"name", "level" + std::to_string(i)},
        {"nodes", json::array{json::object{{"id", "again"},
                                           {"task", "literal"},
                                           {"with", {{"doc", level}}},
                                           {"dynamic", json::object{}}}}}};
  }
  BOOST_REQUIRE(e.register_workflow(level).has_value());
  auto r = run_once(e, "level4", {});
  BOOST_TEST(r.status == run_status::failed);
  BOOST_TEST(r.error.find("nesting deeper than 3 levels") != std::string::npos, r.error);
  BOOST_TEST(c->generated.load() == 4);  // the top and three nested levels generated
}

BOOST_AUTO_TEST_CASE(each_item_of_a_for_each_has_its_own_child) {
  auto c = std::make_shared<counters>();
  engine e(config(persistence_mode::durable, temp_db("dynamic", "items.db")));
  register_tasks(e, c);
  auto wf = R"({"name":"items","nodes":[{"id":"gen","task":"generate","for_each":"{{ [1, 2, 3] }}",
      "with":{"n":"{{ item }}"},"dynamic":{"inputs":{"base":"{{ item * 10 }}"}}}],
      "outputs":{"all":"{{ nodes.gen.output }}"}})";
  BOOST_REQUIRE(e.register_workflow(wf).has_value());
  auto r = run_once(e, "items", {});
  BOOST_TEST(r.status == run_status::succeeded, r.error);
  BOOST_TEST(json::serialize(r.outputs.at("all")) ==
             json::serialize(json::parse(
                 R"([{"last":10,"count":1},{"last":21,"count":2},{"last":32,"count":3}])")));
  run_query q;
  q.parent_run_id = r.run_id;
  auto children = e.list_runs(q);
  BOOST_REQUIRE(children.has_value());
  std::vector<std::string> labels;
  for (const auto& ch : *children) {
    labels.push_back(ch.parent_node_id);
  }
  std::sort(labels.begin(), labels.end());
  BOOST_TEST(labels == (std::vector<std::string>{"gen[0]", "gen[1]", "gen[2]"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(resume_on_sqlite_continues_the_child_without_regenerating) {
  resume_continues_the_child(temp_db("dynamic", "resume.db"), "resume_sqlite");
}

BOOST_AUTO_TEST_CASE(resume_on_postgres_continues_the_child_without_regenerating) {
  std::string url = pg_url();
  if (url.empty()) {
    BOOST_TEST_MESSAGE("SKIPPED: no PostgreSQL server (pgtest/url missing)");
    return;
  }
  resume_continues_the_child(url, "resume_pg_" + std::to_string(::getpid()));
}

namespace {
// Two engines one after the other on one database: the second finds the stored spec.
void the_spec_cache_survives_a_restart(const std::string& url, const std::string& wf) {
  auto c = std::make_shared<counters>();
  {
    engine e(config(persistence_mode::async, url));
    register_tasks(e, c);
    BOOST_REQUIRE(e.register_workflow(parent_workflow(wf, true)).has_value());
    auto r = run_once(e, wf, {{"n", 3}, {"base", 0}});
    BOOST_TEST(r.status == run_status::succeeded, r.error);
    BOOST_TEST(node(r, "gen").spec_cache == cache_status::miss);
    e.shutdown();  // drains the writer: the spec is committed
  }
  engine e(config(persistence_mode::async, url));
  register_tasks(e, c);
  BOOST_REQUIRE(e.register_workflow(parent_workflow(wf, true)).has_value());
  for (int i = 0; i < 2; ++i) {
    auto r = run_once(e, wf, {{"n", 3}, {"base", 0}});
    BOOST_TEST(r.status == run_status::succeeded, r.error);
    BOOST_TEST(node(r, "gen").spec_cache == cache_status::hit);
  }
  BOOST_TEST(c->generated.load() == 1);
  BOOST_TEST(e.dynamic_compiles() == 1u);  // the stored document, compiled once in this engine
}
}  // namespace

BOOST_AUTO_TEST_CASE(the_spec_cache_survives_a_restart_on_sqlite) {
  the_spec_cache_survives_a_restart(temp_db("dynamic", "restart.db"), "restart");
}

BOOST_AUTO_TEST_CASE(the_spec_cache_survives_a_restart_on_postgres) {
  std::string url = pg_url();
  if (url.empty()) {
    BOOST_TEST_MESSAGE("SKIPPED: no PostgreSQL server (pgtest/url missing)");
    return;
  }
  the_spec_cache_survives_a_restart(url, "restart_pg_" + std::to_string(::getpid()));
}

// A `workflow` task's child is linked like a dynamic node's: in the child run's row and in the
// node's record (spec_cache stays `off`: there is no generated plan).
BOOST_AUTO_TEST_CASE(a_workflow_task_links_its_child_run_too) {
  engine e(config(persistence_mode::durable, temp_db("dynamic", "workflow_task.db")));
  BOOST_REQUIRE(e.register_workflow(R"({"name":"leaf","nodes":[{"id":"x","task":"echo","with":1}],
      "outputs":{"x":"{{ nodes.x.output }}"}})")
                    .has_value());
  BOOST_REQUIRE(e.register_workflow(R"({"name":"outer","nodes":[{"id":"call","task":"workflow",
      "with":{"name":"leaf"}}],"outputs":{"leaf":"{{ nodes.call.output }}"}})")
                    .has_value());
  auto r = run_once(e, "outer", {});
  BOOST_TEST(r.status == run_status::succeeded, r.error);
  auto rows = e.node_rows(r.run_id);
  BOOST_REQUIRE(rows.has_value());
  const node_row* call = find_row(*rows, "call", node_status::succeeded);
  BOOST_REQUIRE(call != nullptr);
  BOOST_TEST(!call->child_run_id.empty());
  BOOST_TEST(call->spec_cache == cache_status::off);
  auto child = e.get_run(call->child_run_id);
  BOOST_REQUIRE(child.has_value());
  BOOST_REQUIRE(child->has_value());
  BOOST_TEST((*child)->parent_run_id == r.run_id);
  BOOST_TEST((*child)->parent_node_id == "call");
  BOOST_TEST((*child)->workflow == "leaf");
}
