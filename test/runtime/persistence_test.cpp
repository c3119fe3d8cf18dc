#define BOOST_TEST_MODULE runtime_persistence
#include <boost/test/unit_test.hpp>

#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "persistence/failing_store.hpp"
#include "runtime/engine.hpp"
#include "test/support/engine.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;
namespace utf = boost::unit_test;

namespace {

// Three nodes, one of which fails once and is retried: 4 executions, 6 state changes.
constexpr const char* workflow_text = R"({"name":"logged","inputs":{"i":{"type":"integer"}},
  "nodes":[{"id":"a","task":"echo","with":"{{ inputs.i }}"},
           {"id":"flaky","task":"flaky","needs":["a"],"retry":{"max_attempts":2}},
           {"id":"c","task":"echo","needs":["flaky"],"with":"{{ nodes.a.output + 1 }}"}],
  "outputs":{"c":"{{ nodes.c.output }}"}})";

task_def flaky_task() {
  task_def t;
  t.name = "flaky";
  // Blocking, so it runs in a node actor: its "running" and final records reach the writer in
  // different messages, and the writer is the one that coalesces them.
  t.kind = task_kind::blocking;
  t.run = [](const json::value&, const task_call& c) {
    return c.attempt == 1 ? task_result::failure("first attempt fails")
                          : task_result::success("ok");
  };
  return t;
}

// Starts `runs` runs, waits for each, and returns their ids.
std::vector<std::string> run_many(engine& e, int runs) {
  BOOST_REQUIRE(e.register_task(flaky_task()));
  auto p = e.register_workflow(workflow_text);
  BOOST_REQUIRE(p.has_value());
  std::vector<run_handle> hs;
  for (int i = 0; i < runs; ++i) {
    auto h = e.start(*p, json::object{{"i", i}});
    BOOST_REQUIRE(h.has_value());
    hs.push_back(*h);
  }
  std::vector<std::string> ids;
  for (auto& h : hs) {
    auto r = h.wait_for(60s);
    BOOST_REQUIRE(r.has_value());
    BOOST_TEST(r->status == run_status::succeeded);
    ids.push_back(r->run_id);
  }
  return ids;
}

// Every run is in the log exactly once with its final status, and every execution of it.
void check_log(store& db, const std::vector<std::string>& ids) {
  for (auto& id : ids) {
    auto run = db.get_run(id);
    BOOST_REQUIRE(run.has_value());
    BOOST_REQUIRE_MESSAGE(run->has_value(), "run " << id << " missing from the log");
    BOOST_TEST((*run)->status == run_status::succeeded);
    BOOST_TEST((*run)->workflow == "logged");
    auto rows = db.node_rows(id);
    BOOST_REQUIRE(rows.has_value());
    std::map<std::string, node_status> last;
    for (auto& r : *rows) {
      last[r.node_id + "#" + std::to_string(r.attempt)] = r.status;
    }
    BOOST_TEST(rows->size() == 4u);  // a#1, flaky#1 (failed), flaky#2, c#1
    BOOST_TEST(last["flaky#1"] == node_status::failed);
    BOOST_TEST(last["flaky#2"] == node_status::succeeded);
    BOOST_TEST(last["c#1"] == node_status::succeeded);
  }
  run_query logged;
  logged.workflow = "logged";
  logged.limit = 0;
  auto all = db.list_runs(logged);
  BOOST_REQUIRE(all.has_value());
  BOOST_TEST(all->size() == ids.size());
}

void every_mode_logs_every_execution(const std::string& url_base, bool pg) {
  for (auto mode : {persistence_mode::async, persistence_mode::durable, persistence_mode::sync}) {
    BOOST_TEST_CONTEXT("mode " << to_string(mode)) {
      std::string url = pg ? url_base : temp_db("persist", std::string(to_string(mode)) + ".db");
      std::vector<std::string> ids;
      {
        engine e(config(mode, url));
        ids = run_many(e, 20);
        if (mode != persistence_mode::async) {
          // durable and sync report the end only after its commit: readable right now.
          for (auto& id : ids) {
            auto run = e.get_run(id);
            BOOST_REQUIRE(run.has_value());
            BOOST_REQUIRE(run->has_value());
            BOOST_TEST((*run)->status == run_status::succeeded);
          }
        }
        e.shutdown();  // async: the writer drains before the engine stops
      }
      auto db = open_store(url);
      BOOST_REQUIRE(db.has_value());
      if (pg) {
        // The PostgreSQL database is shared by the modes: check only this mode's runs.
        for (auto& id : ids) {
          auto run = (*db)->get_run(id);
          BOOST_REQUIRE(run.has_value());
          BOOST_TEST(run->has_value());
        }
      } else {
        check_log(**db, ids);
      }
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(persistence_modes, *utf::timeout(180))

BOOST_AUTO_TEST_CASE(every_mode_logs_every_execution_on_sqlite) {
  every_mode_logs_every_execution("", false);
}

BOOST_AUTO_TEST_CASE(every_mode_logs_every_execution_on_postgresql) {
  std::string url = pg_url();
  if (url.empty()) {
    BOOST_TEST_MESSAGE("skipped: no PostgreSQL test server (server binaries absent)");
    return;
  }
  every_mode_logs_every_execution(url, true);
}

BOOST_AUTO_TEST_CASE(postgresql_stopped_mid_load_and_started_again_loses_nothing) {
  std::string url = pg_url();
  if (url.empty()) {
    BOOST_TEST_MESSAGE("skipped: no PostgreSQL test server (server binaries absent)");
    return;
  }
  const std::string dir = TROUPE_PG_DIR;
  const std::string script = TROUPE_PG_SCRIPT;
  engine_config c = config(persistence_mode::async, url);
  c.writer.retry_initial_ms = 5;
  c.writer.retry_max_ms = 200;
  std::vector<std::string> ids;
  {
    engine e(c);
    auto first = run_many(e, 50);
    BOOST_REQUIRE(e.flush());  // the first half is committed before the outage
    BOOST_REQUIRE(std::system((script + " stop " + dir + " >/dev/null").c_str()) == 0);
    auto during = run_many(e, 50);  // async: runs go on while the database is down
    BOOST_REQUIRE(e.metrics().wait_errors(1, 30s));
    BOOST_REQUIRE(std::system((script + " start " + dir + " >/dev/null").c_str()) == 0);
    e.shutdown();  // drains: the writer reconnects and retries until everything is in
    BOOST_TEST(e.metrics().pending.load() == 0u);
    BOOST_TEST(e.metrics().retries.load() >= 1u);
    ids = first;
    ids.insert(ids.end(), during.begin(), during.end());
  }
  auto db = open_store(url);
  BOOST_REQUIRE(db.has_value());
  for (auto& id : ids) {
    BOOST_TEST_CONTEXT("run " << id) {
      auto run = (*db)->get_run(id);
      BOOST_REQUIRE(run.has_value());
      BOOST_REQUIRE(run->has_value());
      BOOST_TEST((*run)->status == run_status::succeeded);
      auto rows = (*db)->node_rows(id);
      BOOST_REQUIRE(rows.has_value());
      BOOST_TEST(rows->size() == 4u);  // every execution exactly once (upserts by key)
    }
  }
}

BOOST_AUTO_TEST_CASE(memory_mode_keeps_a_bounded_log_and_writes_nothing) {
  engine_config c;
  c.threads = 2;
  c.mode = persistence_mode::memory;
  c.memory_log_runs = 5;
  c.store = temp_db("persist", "never.db");
  engine e(c);
  auto ids = run_many(e, 8);
  auto runs = e.list_runs(run_query{});
  BOOST_REQUIRE(runs.has_value());
  BOOST_TEST(runs->size() == 5u);
  BOOST_TEST(!std::filesystem::exists(c.store.substr(9)));
  BOOST_TEST(e.metrics().batches.load() == 0u);
}

BOOST_AUTO_TEST_CASE(the_writer_coalesces_states_of_one_attempt_into_one_row) {
  auto mem = open_store("memory://");
  BOOST_REQUIRE(mem.has_value());
  std::shared_ptr<store> db(std::move(*mem));
  engine_config c = config(persistence_mode::async, "");
  c.store_object = db;
  c.writer.flush_ms = 1000;  // only the batch size or the drain flushes
  c.writer.batch_max = 100000;
  std::vector<std::string> ids;
  {
    engine e(c);
    ids = run_many(e, 50);
    e.shutdown();
    // Each run sent the final states of its 4 executions, the "running" states of the two
    // flaky attempts (quick tasks' are replaced within the run actor's turn), and 2 run
    // states: the writer coalesces them into 5 rows.
    BOOST_TEST(e.metrics().rows_received.load() >= 50u * 6u);
    BOOST_TEST(e.metrics().rows.load() < e.metrics().rows_received.load());
    BOOST_TEST(e.metrics().batches.load() <= 3u);
  }
  check_log(*db, ids);
}

BOOST_AUTO_TEST_CASE(a_failing_database_loses_and_duplicates_nothing) {
  auto mem = open_store("memory://");
  BOOST_REQUIRE(mem.has_value());
  auto failing = std::make_shared<failing_store>(std::move(*mem));
  failing->set_failing(true, store_error{"disk full (injected)", true});
  engine_config c = config(persistence_mode::async, "");
  c.store_object = failing;
  c.writer.retry_initial_ms = 1;
  c.writer.retry_max_ms = 20;
  std::vector<std::string> ids;
  {
    engine e(c);
    ids = run_many(e, 30);  // async: runs finish while nothing can be written
    // Wait (on the writer's signal) until the database has refused at least two commits.
    BOOST_REQUIRE(e.metrics().wait_errors(2, 30s));
    BOOST_TEST(e.metrics().pending.load() > 0u);
    failing->heal();
    e.shutdown();  // the drain waits for the retries to get through
    BOOST_TEST(e.metrics().retries.load() >= 1u);
    BOOST_TEST(e.metrics().pending.load() == 0u);
  }
  BOOST_TEST(failing->injected_failures() >= 1u);
  check_log(*failing, ids);
}

BOOST_AUTO_TEST_CASE(durable_runs_wait_for_a_failing_database_then_complete) {
  auto mem = open_store("memory://");
  BOOST_REQUIRE(mem.has_value());
  auto failing = std::make_shared<failing_store>(std::move(*mem));
  failing->set_failing(true, store_error{"database is locked (injected)", true});
  engine_config c = config(persistence_mode::durable, "");
  c.store_object = failing;
  c.writer.retry_initial_ms = 1;
  c.writer.retry_max_ms = 10;
  engine e(c);
  BOOST_REQUIRE(e.register_task(flaky_task()));
  auto p = e.register_workflow(workflow_text);
  BOOST_REQUIRE(p.has_value());
  auto h = e.start(*p, json::object{{"i", 1}});
  BOOST_REQUIRE(h.has_value());
  // Its end cannot be committed, so the caller is not told it ended.
  BOOST_TEST(!h->wait_for(300ms).has_value());
  failing->heal();
  auto r = h->wait_for(30s);
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(r->status == run_status::succeeded);
  auto run = failing->get_run(r->run_id);
  BOOST_REQUIRE(run.has_value());
  BOOST_REQUIRE(run->has_value());
  BOOST_TEST((*run)->status == run_status::succeeded);
}

BOOST_AUTO_TEST_CASE(shutdown_gives_up_on_a_database_that_stays_down_and_reports_it) {
  auto mem = open_store("memory://");
  BOOST_REQUIRE(mem.has_value());
  auto failing = std::make_shared<failing_store>(std::move(*mem));
  failing->set_failing(true, store_error{"disk full (injected)", true});
  engine_config c = config(persistence_mode::async, "");
  c.store_object = failing;
  c.writer.retry_initial_ms = 5;
  c.writer.retry_max_ms = 20;
  c.drain_deadline = 200ms;
  engine e(c);
  run_many(e, 3);
  e.shutdown(0ms);                                // returns although nothing could be committed
  BOOST_TEST(e.metrics().lost_rows.load() > 0u);  // given up, counted, not silently dropped
  BOOST_TEST(e.metrics().pending.load() == 0u);
  BOOST_TEST(failing->successful_writes() == 0u);
}

BOOST_AUTO_TEST_CASE(an_unopenable_store_is_a_clear_engine_error) {
  engine_config c = config(persistence_mode::async, "sqlite:///nonexistent-dir/x/troupe.db");
  BOOST_CHECK_EXCEPTION(engine e(c), engine_error, [](const engine_error& err) {
    return std::string(err.what()).find("nonexistent-dir") != std::string::npos;
  });
  c.store = "mysql://nope";
  BOOST_CHECK_THROW(engine e(c), engine_error);
}

BOOST_AUTO_TEST_SUITE_END()

namespace {
// Runs `total` runs one after another, each started from the previous one's on_finished
// callback: on an engine thread.
struct callback_chain {
  callback_chain(engine& eng, plan_ptr plan, int n) : e(eng), p(std::move(plan)), total(n) {}
  engine& e;
  plan_ptr p;
  int total;
  std::mutex m;
  std::condition_variable cv;
  int finished = 0;
  int entered = 0;  // calls of start_next() so far (counted before engine::start)
  std::vector<std::string> errors;

  void start_next() {
    {
      std::lock_guard<std::mutex> lock(m);
      ++entered;
      cv.notify_all();
    }
    auto h = e.start(p, json::object{});
    if (!h) {
      std::lock_guard<std::mutex> lock(m);
      errors.push_back(h.error().front().message);
      cv.notify_all();
      return;
    }
    h->on_finished([this](const run_result&) {
      bool more = false;
      {
        std::lock_guard<std::mutex> lock(m);
        more = ++finished < total;
        cv.notify_all();
      }
      if (more) {
        start_next();  // on the engine's thread
      }
    });
  }
  void wait_entered(int n) {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return entered >= n; });
  }
  bool wait_all(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(m);
    return cv.wait_for(lock, timeout, [&] { return finished >= total || !errors.empty(); });
  }
};
}  // namespace

// engine::start called from callbacks (engine threads) while the writer is past pending_max
// queues the run instead of waiting on the very threads the writer needs. Before, two chains
// like these put both scheduler threads to sleep in the backlog wait and nothing ran again,
// even after the database came back.
BOOST_AUTO_TEST_CASE(runs_started_from_callbacks_while_the_writer_is_behind_never_block_it,
                     *utf::timeout(120)) {
  auto mem = open_store("memory://");
  BOOST_REQUIRE(mem.has_value());
  auto failing = std::make_shared<failing_store>(std::move(*mem));
  failing->set_failing(true, store_error{"database is locked (injected)", true});
  engine_config c = config(persistence_mode::async, "");
  c.store_object = failing;
  // The two workflow rows and two rows per gated run (its run row, the gate's running row): the
  // backlog is full once both gated runs are in, and never before the second one starts (the
  // test's own thread would wait for room that the failing database never makes).
  c.writer.pending_max = 6;
  c.writer.retry_initial_ms = 1;
  c.writer.retry_max_ms = 5;
  engine e(c);
  std::mutex gate_mutex;
  std::condition_variable gate_cv;
  std::vector<completion> held;
  task_def gate;
  gate.name = "gate";
  gate.kind = task_kind::async;
  gate.start = [&](const json::value&, const task_call&, completion done) {
    std::lock_guard<std::mutex> lock(gate_mutex);
    held.push_back(std::move(done));
    gate_cv.notify_all();
  };
  e.register_task(gate);
  auto gated = e.register_workflow(R"({"name":"gated","nodes":[{"id":"g","task":"gate"}]})");
  auto link = e.register_workflow(R"({"name":"link","nodes":[{"id":"a","task":"echo","with":1}]})");
  BOOST_REQUIRE(gated.has_value() && link.has_value());
  callback_chain one{e, *link, 20};
  callback_chain two{e, *link, 20};
  // Two gated runs; their rows (run row, the gate's running row) fill the backlog to
  // pending_max while the database refuses every commit.
  for (auto* chain : {&one, &two}) {
    auto h = e.start(*gated, json::object{});
    BOOST_REQUIRE(h.has_value());
    h->on_finished([chain](const run_result&) { chain->start_next(); });  // an engine thread
  }
  {
    std::unique_lock<std::mutex> lock(gate_mutex);
    gate_cv.wait(lock, [&] { return held.size() == 2; });
  }
  // Two more failed commits: the second began after every row sent so far was absorbed.
  const auto errors = e.metrics().errors.load();
  BOOST_REQUIRE(e.metrics().wait_errors(errors + 2, std::chrono::seconds(60)));
  BOOST_REQUIRE(e.metrics().pending.load() >= c.writer.pending_max);
  {
    std::lock_guard<std::mutex> lock(gate_mutex);
    for (auto& done : held) {
      done(task_result::success(nullptr));  // the gated runs end; their callbacks start chains
    }
  }
  // Both chains start from callbacks, with the backlog full; then the database heals.
  one.wait_entered(1);
  two.wait_entered(1);
  failing->heal();
  BOOST_TEST(one.wait_all(std::chrono::seconds(60)));
  BOOST_TEST(two.wait_all(std::chrono::seconds(60)));
  BOOST_TEST(one.errors.empty());
  BOOST_TEST(two.errors.empty());
  BOOST_TEST(one.finished == 20);
  BOOST_TEST(two.finished == 20);
  e.shutdown();
  BOOST_TEST(e.metrics().lost_rows.load() == 0u);
}
