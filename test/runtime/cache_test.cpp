#define BOOST_TEST_MODULE runtime_cache
#include <boost/test/unit_test.hpp>

#include <boost/json/serialize.hpp>

#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "persistence/forwarding_store.hpp"
#include "runtime/engine.hpp"
#include "test/support/engine.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;
namespace utf = boost::unit_test;

namespace {

// A C++ task that counts how often it really ran. Blocking tasks run in node actors, quick ones
// inline in the run actor: the cache must work on both paths.
task_def counting_task(std::string name, task_kind kind, std::shared_ptr<std::atomic<int>> runs,
                       bool fails = false) {
  task_def t;
  t.name = std::move(name);
  t.kind = kind;
  t.run = [runs, fails](const json::value& in, const task_call&) {
    ++*runs;
    if (fails) {
      return task_result::failure("always fails");
    }
    return task_result::success(json::object{{"seen", in}, {"n", 42}});
  };
  return t;
}

std::string workflow(const std::string& name, const std::string& task, const std::string& version) {
  return R"({"name":")" + name + R"(","inputs":{"x":{"type":"integer"}},
    "nodes":[{"id":"n","task":")" +
         task + R"(","with":{"x":"{{ inputs.x }}","k":[1,2]},
              "cache":{"version":")" +
         version + R"("}}],
    "outputs":{"n":"{{ nodes.n.output }}"}})";
}

// Two engines one after the other on one database: the second finds what the first stored.
void the_cache_survives_a_restart(const std::string& url, const std::string& wf, std::int64_t x) {
  auto runs = std::make_shared<std::atomic<int>>(0);
  json::value first_output;
  {
    engine e(config(persistence_mode::async, url));
    BOOST_REQUIRE(e.register_task(counting_task("count", task_kind::blocking, runs)));
    BOOST_REQUIRE(e.register_workflow(workflow(wf, "count", "v1")).has_value());
    auto r = run_once(e, wf, {{"x", x}});
    BOOST_TEST(r.status == run_status::succeeded);
    BOOST_TEST(node(r, "n").cache == cache_status::miss);
    first_output = r.outputs;
    e.shutdown();  // drains the writer: the entry is committed
  }
  BOOST_TEST(runs->load() == 1);
  engine e(config(persistence_mode::async, url));
  BOOST_REQUIRE(e.register_task(counting_task("count", task_kind::blocking, runs)));
  BOOST_REQUIRE(e.register_workflow(workflow(wf, "count", "v1")).has_value());
  auto r = run_once(e, wf, {{"x", x}});
  BOOST_TEST(r.status == run_status::succeeded);
  BOOST_TEST(node(r, "n").cache == cache_status::hit);
  BOOST_TEST(runs->load() == 1);
  BOOST_TEST(json::serialize(r.outputs) == json::serialize(first_output));
  // The hit is in the execution log too.
  BOOST_REQUIRE(e.flush());
  auto rows = e.node_rows(r.run_id);
  BOOST_REQUIRE(rows.has_value());
  BOOST_REQUIRE(!rows->empty());
  BOOST_TEST(rows->back().cache == cache_status::hit);
}

// Counts the cache reads that reach the store; everything else passes through.
class counting_store final : public forwarding_store {
 public:
  using forwarding_store::forwarding_store;
  std::atomic<int> cache_reads{0};

  expected<std::optional<cache_row>, store_error> get_cache(std::string_view k) override {
    ++cache_reads;
    return forwarding_store::get_cache(k);
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(node_output_cache, *utf::timeout(120))

BOOST_AUTO_TEST_CASE(a_second_run_with_the_same_inputs_skips_the_task_and_says_hit) {
  auto runs = std::make_shared<std::atomic<int>>(0);
  engine e(config(persistence_mode::memory, ""));
  BOOST_REQUIRE(e.register_task(counting_task("count", task_kind::blocking, runs)));
  BOOST_REQUIRE(e.register_workflow(workflow("w", "count", "v1")).has_value());
  auto first = run_once(e, "w", {{"x", 1}});
  BOOST_TEST(first.status == run_status::succeeded);
  BOOST_TEST(node(first, "n").cache == cache_status::miss);
  auto second = run_once(e, "w", {{"x", 1}});
  BOOST_TEST(second.status == run_status::succeeded);
  BOOST_TEST(node(second, "n").cache == cache_status::hit);
  BOOST_TEST(runs->load() == 1);
  BOOST_TEST(json::serialize(second.outputs) == json::serialize(first.outputs));
  auto other = run_once(e, "w", {{"x", 2}});  // other inputs: another key
  BOOST_TEST(node(other, "n").cache == cache_status::miss);
  BOOST_TEST(runs->load() == 2);
}

BOOST_AUTO_TEST_CASE(a_version_bump_runs_the_task_again) {
  auto runs = std::make_shared<std::atomic<int>>(0);
  engine e(config(persistence_mode::memory, ""));
  BOOST_REQUIRE(e.register_task(counting_task("count", task_kind::quick, runs)));
  BOOST_REQUIRE(e.register_workflow(workflow("v1", "count", "v1")).has_value());
  BOOST_REQUIRE(e.register_workflow(workflow("v2", "count", "v2")).has_value());
  BOOST_TEST(node(run_once(e, "v1", {{"x", 1}}), "n").cache == cache_status::miss);
  BOOST_TEST(node(run_once(e, "v1", {{"x", 1}}), "n").cache == cache_status::hit);
  BOOST_TEST(node(run_once(e, "v2", {{"x", 1}}), "n").cache == cache_status::miss);
  BOOST_TEST(node(run_once(e, "v2", {{"x", 1}}), "n").cache == cache_status::hit);
  BOOST_TEST(runs->load() == 2);
}

BOOST_AUTO_TEST_CASE(a_failing_task_is_not_cached_and_runs_every_time) {
  for (auto kind : {task_kind::quick, task_kind::blocking}) {
    auto runs = std::make_shared<std::atomic<int>>(0);
    engine e(config(persistence_mode::memory, ""));
    BOOST_REQUIRE(e.register_task(counting_task("bad", kind, runs, true)));
    BOOST_REQUIRE(e.register_workflow(workflow("f", "bad", "v1")).has_value());
    for (int i = 0; i < 3; ++i) {
      auto r = run_once(e, "f", {{"x", 1}});
      BOOST_TEST(r.status == run_status::failed);
      BOOST_TEST(node(r, "n").cache == cache_status::miss);
    }
    BOOST_TEST(runs->load() == 3);
  }
}

BOOST_AUTO_TEST_CASE(for_each_items_are_cached_one_by_one) {
  auto runs = std::make_shared<std::atomic<int>>(0);
  engine e(config(persistence_mode::memory, ""));
  BOOST_REQUIRE(e.register_task(counting_task("count", task_kind::blocking, runs)));
  BOOST_REQUIRE(e.register_workflow(R"({"name":"fe","inputs":{"xs":{"type":"array"}},
    "nodes":[{"id":"n","task":"count","for_each":"{{ inputs.xs }}","with":"{{ item }}",
              "cache":{}}],
    "outputs":{"n":"{{ nodes.n.output }}"}})")
                    .has_value());
  auto first = run_once(e, "fe", {{"xs", json::array{1, 2}}});
  BOOST_TEST(first.status == run_status::succeeded);
  BOOST_TEST(runs->load() == 2);
  auto second = run_once(e, "fe", {{"xs", json::array{2, 3}}});
  BOOST_TEST(second.status == run_status::succeeded);
  BOOST_TEST(runs->load() == 3);  // only item 3 ran
  BOOST_TEST(node(second, "n").cache == cache_status::miss);
  auto third = run_once(e, "fe", {{"xs", json::array{3, 1}}});
  BOOST_TEST(runs->load() == 3);
  BOOST_TEST(node(third, "n").cache == cache_status::hit);
  BOOST_TEST(json::serialize(third.outputs) == R"({"n":[{"seen":3,"n":42},{"seen":1,"n":42}]})");
}

BOOST_AUTO_TEST_CASE(a_memory_hit_does_not_read_the_store_and_a_store_hit_needs_no_memory) {
  for (std::size_t entries : {std::size_t{10000}, std::size_t{0}}) {
    BOOST_TEST_CONTEXT("cache_entries " << entries) {
      auto mem = open_store("memory://");
      BOOST_REQUIRE(mem.has_value());
      auto db = std::make_shared<counting_store>(std::move(*mem));
      engine_config c = config(persistence_mode::async, "");
      c.store_object = db;
      c.cache_entries = entries;
      auto runs = std::make_shared<std::atomic<int>>(0);
      engine e(c);
      BOOST_REQUIRE(e.register_task(counting_task("count", task_kind::quick, runs)));
      BOOST_REQUIRE(e.register_workflow(workflow("w", "count", "v1")).has_value());
      BOOST_TEST(node(run_once(e, "w", {{"x", 1}}), "n").cache == cache_status::miss);
      BOOST_TEST(db->cache_reads.load() == 1);  // the miss asked the store
      BOOST_REQUIRE(e.flush());                 // the entry is committed
      BOOST_TEST(node(run_once(e, "w", {{"x", 1}}), "n").cache == cache_status::hit);
      BOOST_TEST(runs->load() == 1);
      // With memory the hit never reaches the store; without it, the store answers.
      BOOST_TEST(db->cache_reads.load() == (entries > 0 ? 1 : 2));
    }
  }
}

BOOST_AUTO_TEST_CASE(the_cache_survives_an_engine_restart_on_sqlite) {
  the_cache_survives_a_restart(temp_db("cache", "restart.db"), "restart", 7);
}

BOOST_AUTO_TEST_CASE(the_cache_survives_an_engine_restart_on_postgresql) {
  std::string url = pg_url();
  if (url.empty()) {
    BOOST_TEST_MESSAGE("skipped: no PostgreSQL test server (server binaries absent)");
    return;
  }
  // The database outlives test runs: an input of this process keeps the key new (the key is
  // the task, input and version, not the workflow).
  the_cache_survives_a_restart(url, "restart", static_cast<std::int64_t>(std::random_device{}()));
}

BOOST_AUTO_TEST_SUITE_END()
