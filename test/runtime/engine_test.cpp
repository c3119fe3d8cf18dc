#define BOOST_TEST_MODULE runtime_engine
#include <boost/test/unit_test.hpp>

#include <boost/json/serialize.hpp>

#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/engine.hpp"
#include "test/support/engine.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;
namespace utf = boost::unit_test;

namespace {

engine_config cfg(int threads, int max_workflow_depth = 8) {
  engine_config c;
  c.threads = threads;
  c.blocking_threads = 2;
  c.max_workflow_depth = max_workflow_depth;
  return c;
}

plan_ptr must_register(engine& e, std::string_view text) {
  auto p = e.register_workflow(text);
  if (!p) {
    std::string all;
    for (auto& err : p.error()) {
      all += err.pointer + ": " + err.message + "\n";
    }
    BOOST_FAIL("register failed:\n" << all);
  }
  return *p;
}

run_result run_to_end(engine& e, const plan_ptr& p, std::string_view inputs = "{}") {
  auto in = parse_json(inputs);
  BOOST_REQUIRE(in.has_value());
  auto h = e.start(p, in->as_object());
  if (!h.has_value()) {
    BOOST_FAIL("start failed: " << h.error().at(0).message);
  }
  auto r = h->wait_for(60s);
  BOOST_REQUIRE_MESSAGE(r.has_value(), "run did not finish within 60 s");
  return *r;
}

// An async task whose attempts the test completes by hand: every start is queued and signalled,
// so the test can observe how many are in flight at once, without sleeping.
struct held_task {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::pair<json::value, completion>> started;
  int in_flight = 0;
  int max_in_flight = 0;
  int starts = 0;

  task_def def(std::string name) {
    task_def d;
    d.name = std::move(name);
    d.kind = task_kind::async;
    d.start = [this](const json::value& input, const task_call&, completion done) {
      {
        std::lock_guard<std::mutex> lock(m);
        ++starts;
        ++in_flight;
        max_in_flight = std::max(max_in_flight, in_flight);
        started.emplace_back(input, std::move(done));
      }
      cv.notify_all();
    };
    return d;
  }

  // Waits for the next started attempt (an event, not a poll); false on the safety deadline.
  bool complete_next(std::function<task_result(const json::value&)> f) {
    std::unique_lock<std::mutex> lock(m);
    if (!cv.wait_for(lock, 30s, [&] { return !started.empty(); })) {
      return false;
    }
    auto [input, done] = std::move(started.front());
    started.pop_front();
    --in_flight;
    lock.unlock();
    done(f(input));
    return true;
  }

  bool wait_started(int n) {
    std::unique_lock<std::mutex> lock(m);
    return cv.wait_for(lock, 30s, [&] { return starts >= n; });
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(engine_runs, *utf::timeout(120))

BOOST_AUTO_TEST_CASE(a_quick_workflow_runs_and_reports_outputs_from_memory) {
  engine e(cfg(2));
  auto p = must_register(e, R"({"name":"hello","inputs":{"who":{"type":"string","default":"world"}},
    "nodes":[{"id":"greet","task":"echo","with":"hello {{ inputs.who }}"},
             {"id":"shout","task":"echo","needs":["greet"],"with":"{{ upper(nodes.greet.output) }}"}],
    "outputs":{"text":"{{ nodes.shout.output }}"}})");
  auto r = run_to_end(e, p, R"({"who":"troupe"})");
  BOOST_TEST(r.status == run_status::succeeded);
  BOOST_TEST(boost::json::serialize(r.outputs) == R"({"text":"HELLO TROUPE"})");
  BOOST_TEST(r.nodes.size() == 2u);
  BOOST_TEST(node(r, "shout").attempts == 1);
  BOOST_TEST(r.workflow == "hello");
}

BOOST_AUTO_TEST_CASE(bad_inputs_are_rejected_before_the_run_starts) {
  engine e(cfg(1));
  auto p = must_register(e, R"({"name":"typed","inputs":{"n":{"type":"integer","required":true}},
    "nodes":[{"id":"a","task":"noop"}]})");
  auto h = e.start(p, json::object{{"n", "three"}});
  BOOST_REQUIRE(!h.has_value());
  BOOST_TEST(h.error().at(0).pointer == "/inputs/n");
  auto missing = e.start(p, json::object{});
  BOOST_REQUIRE(!missing.has_value());
  BOOST_TEST(missing.error().at(0).pointer == "/inputs/n");
  BOOST_TEST(e.active_runs() == 0u);
}

BOOST_AUTO_TEST_CASE(invalid_workflows_are_rejected_with_the_validator_errors) {
  engine e(cfg(1));
  auto p = e.register_workflow(R"({"name":"bad","nodes":[{"id":"a","task":"nope"}]})");
  BOOST_REQUIRE(!p.has_value());
  BOOST_TEST(p.error().at(0).pointer == "/nodes/0/task");
  auto missing = e.register_workflow_file("/nonexistent/troupe.json");
  BOOST_REQUIRE(!missing.has_value());
  BOOST_TEST(missing.error().at(0).message.find("/nonexistent/troupe.json") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(registering_the_same_document_twice_shares_one_plan) {
  engine e(cfg(1));
  auto a = must_register(e, R"({"name":"same","nodes":[{"id":"a","task":"noop"}]})");
  auto b = must_register(e, R"({"nodes":[{"task":"noop","id":"a"}],"name":"same"})");
  BOOST_TEST(a.get() == b.get());
  BOOST_TEST(e.find_workflow("same").get() == a.get());
}

BOOST_AUTO_TEST_CASE(ten_thousand_concurrent_runs_complete_with_the_right_outputs) {
  engine e(cfg(2));
  auto p = must_register(e, R"({"name":"small","inputs":{"i":{"type":"integer","required":true}},
    "nodes":[{"id":"a","task":"echo","with":"{{ inputs.i }}"},
             {"id":"b","task":"echo","needs":["a"],"with":"{{ nodes.a.output * 2 }}"},
             {"id":"c","task":"echo","needs":["a"],"with":"{{ nodes.a.output + 1 }}"},
             {"id":"d","task":"echo","needs":["b","c"],"with":"{{ nodes.b.output + nodes.c.output }}"}],
    "outputs":{"v":"{{ nodes.d.output }}"}})");
  constexpr int runs = 10000;
  std::vector<run_handle> handles;
  handles.reserve(runs);
  for (int i = 0; i < runs; ++i) {
    auto h = e.start(p, json::object{{"i", i}});
    BOOST_REQUIRE(h.has_value());
    handles.push_back(*h);
  }
  int wrong = 0;
  for (int i = 0; i < runs; ++i) {
    auto r = handles[i].wait_for(60s);
    BOOST_REQUIRE(r.has_value());
    if (r->status != run_status::succeeded || r->outputs.at("v").to_number<int>() != 3 * i + 1) {
      ++wrong;
    }
  }
  BOOST_TEST(wrong == 0);
}

BOOST_AUTO_TEST_CASE(for_each_concurrency_is_observed_at_the_workers) {
  engine e(cfg(2));
  held_task held;
  BOOST_REQUIRE(e.register_task(held.def("held")));
  auto p = must_register(e, R"({"name":"fe","nodes":[
      {"id":"each","task":"held","for_each":"{{ range(12) }}","concurrency":3,"with":"{{ item }}"}],
    "outputs":{"all":"{{ nodes.each.output }}"}})");
  auto h = e.start(p, {});
  BOOST_REQUIRE(h.has_value());
  // Three start at once (the limit), and only a completion lets a fourth start.
  BOOST_REQUIRE(held.wait_started(3));
  for (int i = 0; i < 12; ++i) {
    BOOST_REQUIRE(held.complete_next(
        [](const json::value& in) { return task_result::success(in.to_number<int>() * 10); }));
  }
  auto r = h->wait_for(30s);
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(r->status == run_status::succeeded);
  BOOST_TEST(held.max_in_flight == 3);
  BOOST_TEST(boost::json::serialize(r->outputs) ==
             R"({"all":[0,10,20,30,40,50,60,70,80,90,100,110]})");
}

BOOST_AUTO_TEST_CASE(the_engine_wide_in_flight_limit_holds_across_runs) {
  engine_config c = cfg(2);
  c.max_in_flight = 3;
  engine e(c);
  held_task held;
  BOOST_REQUIRE(e.register_task(held.def("held")));
  auto p = must_register(e, R"({"name":"wide","nodes":[
      {"id":"each","task":"held","for_each":"{{ range(5) }}","with":"{{ item }}"}],
    "outputs":{"sum":"{{ sum(nodes.each.output) }}"}})");
  std::vector<run_handle> hs;
  for (int i = 0; i < 4; ++i) {
    auto h = e.start(p, {});
    BOOST_REQUIRE(h.has_value());
    hs.push_back(*h);
  }
  BOOST_REQUIRE(held.wait_started(3));
  for (int i = 0; i < 20; ++i) {
    BOOST_REQUIRE(
        held.complete_next([](const json::value& in) { return task_result::success(in); }));
  }
  for (auto& h : hs) {
    auto r = h.wait_for(30s);
    BOOST_REQUIRE(r.has_value());
    BOOST_TEST(r->status == run_status::succeeded);
    BOOST_TEST(boost::json::serialize(r->outputs) == R"({"sum":10})");
  }
  BOOST_TEST(held.max_in_flight == 3);  // 20 attempts over 4 runs, never more than 3 at once
}

BOOST_AUTO_TEST_CASE(cancel_mid_run_starts_no_task_after_the_cancel) {
  engine e(cfg(2));
  held_task held;
  BOOST_REQUIRE(e.register_task(held.def("held")));
  auto p = must_register(e, R"({"name":"c","nodes":[
      {"id":"a","task":"held"},{"id":"b","task":"held","needs":["a"]},
      {"id":"c","task":"held","needs":["b"]}]})");
  auto h = e.start(p, {});
  BOOST_REQUIRE(h.has_value());
  BOOST_REQUIRE(held.wait_started(1));
  h->cancel();
  auto r = h->wait_for(30s);
  BOOST_REQUIRE(r.has_value());
  // The cancelled attempt reports late; nothing may start because of it.
  BOOST_REQUIRE(held.complete_next([](const json::value&) { return task_result::success(1); }));
  BOOST_TEST(r->status == run_status::cancelled);
  BOOST_TEST(node(*r, "a").status == node_status::cancelled);
  BOOST_TEST(node(*r, "b").status == node_status::cancelled);
  BOOST_TEST(held.starts == 1);
}

BOOST_AUTO_TEST_CASE(attempt_timeouts_and_retries_run_on_real_timers) {
  engine e(cfg(2));
  auto p = must_register(e, R"({"name":"t","nodes":[
      {"id":"slow","task":"sleep","with":{"ms":20000},"timeout_ms":30,
       "retry":{"max_attempts":3,"backoff_ms":10}, "on_error":"continue"},
      {"id":"after","task":"echo","needs":["slow"],"with":"{{ nodes.slow.status }}"}],
    "outputs":{"seen":"{{ nodes.after.output }}"}})");
  auto r = run_to_end(e, p);
  BOOST_TEST(r.status == run_status::succeeded);
  BOOST_TEST(node(r, "slow").status == node_status::failed);
  BOOST_TEST(node(r, "slow").attempts == 3);
  BOOST_TEST(boost::json::serialize(r.outputs) == R"({"seen":"failed"})");
}

BOOST_AUTO_TEST_CASE(a_failing_quick_task_is_retried_until_it_succeeds) {
  engine e(cfg(2));
  std::atomic<int> calls{0};
  task_def flaky;
  flaky.name = "flaky";
  flaky.run = [&](const json::value&, const task_call& c) {
    ++calls;
    return c.attempt < 3 ? task_result::failure("not yet") : task_result::success(c.attempt);
  };
  BOOST_REQUIRE(e.register_task(flaky));
  auto p = must_register(e, R"({"name":"r","nodes":[
      {"id":"f","task":"flaky","retry":{"max_attempts":5,"backoff_ms":5}}],
    "outputs":{"attempt":"{{ nodes.f.output }}"}})");
  auto r = run_to_end(e, p);
  BOOST_TEST(r.status == run_status::succeeded);
  BOOST_TEST(calls.load() == 3);
  BOOST_TEST(boost::json::serialize(r.outputs) == R"({"attempt":3})");
}

BOOST_AUTO_TEST_CASE(blocking_tasks_run_on_the_pool_and_exceptions_fail_the_attempt) {
  engine e(cfg(1));
  std::atomic<bool> on_pool{false};
  auto actor_threads = std::this_thread::get_id();
  task_def b;
  b.name = "blocking_double";
  b.kind = task_kind::blocking;
  b.run = [&](const json::value& in, const task_call&) {
    on_pool = std::this_thread::get_id() != actor_threads;
    return task_result::success(in.to_number<int>() * 2);
  };
  task_def thrower;
  thrower.name = "thrower";
  thrower.kind = task_kind::blocking;
  thrower.run = [](const json::value&, const task_call&) -> task_result {
    throw std::runtime_error("kaboom");
  };
  BOOST_REQUIRE(e.register_task(b));
  BOOST_REQUIRE(e.register_task(thrower));
  auto p = must_register(e, R"({"name":"b","nodes":[
      {"id":"d","task":"blocking_double","with":21},
      {"id":"t","task":"thrower","needs":["d"],"on_error":"continue"}],
    "outputs":{"d":"{{ nodes.d.output }}","err":"{{ nodes.t.error }}"}})");
  auto r = run_to_end(e, p);
  BOOST_TEST(r.status == run_status::succeeded);
  BOOST_TEST(on_pool.load());
  BOOST_TEST(r.outputs.at("d").to_number<int>() == 42);
  BOOST_TEST(std::string(r.outputs.at("err").as_string()).find("kaboom") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_hanging_shell_task_is_killed_at_its_timeout) {
  engine e(cfg(2));
  auto dir = std::filesystem::temp_directory_path() / ("troupe-hang-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto pidfile = (dir / "pid").string();
  auto p = must_register(e, R"({"name":"hang","inputs":{"pidfile":{"type":"string"}},"nodes":[
      {"id":"h","task":"shell","timeout_ms":300,
       "with":{"command":"echo $$ > {{ inputs.pidfile }}; exec sleep 60"}}]})");
  auto r = run_to_end(e, p, R"({"pidfile":")" + pidfile + R"("})");
  BOOST_TEST(r.status == run_status::failed);
  BOOST_TEST(node(r, "h").status == node_status::timed_out);
  std::ifstream in(pidfile);
  int pid = 0;
  in >> pid;
  BOOST_REQUIRE(pid > 0);
  // Wait for the process to be gone: a pidfd becomes readable when it exits (an event).
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd >= 0) {
    pollfd pfd{fd, POLLIN, 0};
    BOOST_TEST(::poll(&pfd, 1, 10000) == 1);
    ::close(fd);
  }  // else: already gone and reaped
  std::filesystem::remove_all(dir);
}

BOOST_AUTO_TEST_CASE(a_workflow_nesting_itself_is_stopped_by_the_depth_limit) {
  engine e(cfg(2, 4));
  auto p = must_register(e, R"({"name":"rec","nodes":[
      {"id":"again","task":"workflow","with":{"name":"rec"}}]})");
  auto r = run_to_end(e, p);
  BOOST_TEST(r.status == run_status::failed);
  BOOST_TEST(r.error.find("max_workflow_depth") != std::string::npos, r.error);
}

BOOST_AUTO_TEST_CASE(a_workflow_task_runs_a_registered_child_and_returns_its_outputs) {
  engine e(cfg(2));
  must_register(e, R"({"name":"child","inputs":{"x":{"type":"integer"}},
    "nodes":[{"id":"sq","task":"echo","with":"{{ inputs.x * inputs.x }}"}],
    "outputs":{"sq":"{{ nodes.sq.output }}"}})");
  auto p = must_register(e, R"({"name":"parent","nodes":[
      {"id":"call","task":"workflow","with":{"name":"child","inputs":{"x":7}}}],
    "outputs":{"r":"{{ nodes.call.output.sq }}"}})");
  auto r = run_to_end(e, p);
  BOOST_TEST(r.status == run_status::succeeded);
  BOOST_TEST(boost::json::serialize(r.outputs) == R"({"r":49})");
}

BOOST_AUTO_TEST_CASE(subscribers_see_node_events_in_order_then_the_end) {
  engine e(cfg(2));
  auto p = must_register(e, R"({"name":"ev","nodes":[
      {"id":"a","task":"noop"},{"id":"b","task":"noop","needs":["a"]}]})");
  std::mutex m;
  std::vector<std::string> seen;
  std::vector<std::int64_t> seqs;
  start_options o;
  o.on_event = [&](const run_event& ev) {
    std::lock_guard<std::mutex> lock(m);
    seen.push_back(std::string(to_string(ev.what)) + ":" + ev.node_id + ":" + ev.status);
    seqs.push_back(ev.seq);
  };
  auto h = e.start(p, {}, o);
  BOOST_REQUIRE(h.has_value());
  auto r = h->wait_for(30s);
  BOOST_REQUIRE(r.has_value());
  std::lock_guard<std::mutex> lock(m);
  BOOST_TEST((seen == std::vector<std::string>{"run_started::running", "node_started:a:running",
                                               "node_finished:a:succeeded",
                                               "node_started:b:running",
                                               "node_finished:b:succeeded",
                                               "run_finished::succeeded"}));
  // Numbered 1, 2, ... in delivery order: the ids of the service's event stream.
  BOOST_TEST((seqs == std::vector<std::int64_t>{1, 2, 3, 4, 5, 6}));
}

BOOST_AUTO_TEST_CASE(generated_plans_and_their_task_tables_stay_within_dynamic_plans) {
  engine_config c = cfg(2);
  c.dynamic_plans = 4;
  engine e(c);
  // Generates a one-node workflow echoing its input: every input is a distinct document.
  task_def gen;
  gen.name = "gen";
  gen.run = [](const json::value& in, const task_call&) {
    json::array nodes{json::object{{"id", "e"}, {"task", "echo"}, {"with", in}}};
    return task_result::success(json::object{{"name", "generated"},
                                             {"nodes", std::move(nodes)},
                                             {"outputs", {{"v", "{{ nodes.e.output }}"}}}});
  };
  BOOST_REQUIRE(e.register_task(gen));
  auto p = must_register(e, R"({"name":"parent","inputs":{"i":{"type":"integer"}},
    "nodes":[{"id":"g","task":"gen","with":"{{ inputs.i }}","dynamic":{}}],
    "outputs":{"v":"{{ nodes.g.output.v }}"}})");
  constexpr int documents = 3 * 4;
  for (int i = 0; i < documents; ++i) {
    auto r = run_to_end(e, p, R"({"i":)" + std::to_string(i) + "}");
    BOOST_REQUIRE_MESSAGE(r.status == run_status::succeeded, r.error);
    BOOST_TEST(r.outputs.at("v").to_number<int>() == i);
    auto held = e.plans_in_memory();
    BOOST_TEST(held.generated_plans <= 4u);
    BOOST_TEST(held.task_tables <= 1u + 4u);  // the parent's, and the generated ones' bound
  }
  BOOST_TEST(e.dynamic_compiles() == static_cast<std::size_t>(documents));
  auto held = e.plans_in_memory();
  BOOST_TEST(held.registered_plans == 1u);
  BOOST_TEST(held.generated_plans == 4u);
  BOOST_TEST(held.task_tables == 1u + 4u);
  // A document still kept runs again on its kept plan and table: nothing more is held.
  auto again = run_to_end(e, p, R"({"i":)" + std::to_string(documents - 1) + "}");
  BOOST_TEST(again.status == run_status::succeeded);
  BOOST_TEST(e.dynamic_compiles() == static_cast<std::size_t>(documents));
  BOOST_TEST(e.plans_in_memory().task_tables == 1u + 4u);
}

BOOST_AUTO_TEST_CASE(re_registering_a_task_keeps_one_task_table_per_registered_plan) {
  engine e(cfg(2));
  auto versioned = [](int v) {
    task_def t;
    t.name = "versioned";
    t.run = [v](const json::value&, const task_call&) { return task_result::success(v); };
    return t;
  };
  BOOST_REQUIRE(e.register_task(versioned(0)));
  auto p = must_register(e, R"({"name":"v","nodes":[{"id":"t","task":"versioned"}],
    "outputs":{"v":"{{ nodes.t.output }}"}})");
  for (int v = 1; v <= 10; ++v) {
    BOOST_REQUIRE(e.register_task(versioned(v)));
    auto r = run_to_end(e, p);
    BOOST_TEST(r.outputs.at("v").to_number<int>() == v);  // runs see the newest definition
    BOOST_TEST(e.plans_in_memory().task_tables == 1u);
  }
  BOOST_TEST(e.plans_in_memory().registered_plans == 1u);
}

BOOST_AUTO_TEST_CASE(shutdown_lets_running_work_finish_then_refuses_new_runs) {
  engine e(cfg(2));
  auto p = must_register(e, R"({"name":"s","nodes":[{"id":"z","task":"sleep","with":{"ms":50}}]})");
  auto h = e.start(p, {});
  BOOST_REQUIRE(h.has_value());
  e.shutdown(10s);
  auto r = h->try_result();
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(r->status == run_status::succeeded);
  auto late = e.start(p, {});
  BOOST_TEST(!late.has_value());
}

// A rendered `ms` past what a timer can hold would wrap and return at once: it fails instead.
BOOST_AUTO_TEST_CASE(a_sleep_longer_than_a_timer_can_hold_fails_instead_of_returning_at_once) {
  engine e(cfg(2));
  auto p = must_register(e, R"({"name":"s","inputs":{"ms":{"type":"number"}},
    "nodes":[{"id":"z","task":"sleep","with":{"ms":"{{ inputs.ms }}"}}]})");
  for (const char* ms : {"1e300", "9e15", "1000000000001"}) {
    auto r = run_to_end(e, p, std::string(R"({"ms":)") + ms + "}");
    BOOST_TEST(r.status == run_status::failed, ms);
    BOOST_TEST(r.error.find("'ms' must be at most 1000000000000") != std::string::npos, r.error);
  }
}

BOOST_AUTO_TEST_CASE(shutdown_past_its_deadline_cancels_what_is_still_running) {
  engine e(cfg(2));
  auto p =
      must_register(e, R"({"name":"s","nodes":[{"id":"z","task":"sleep","with":{"ms":60000}}]})");
  auto h = e.start(p, {});
  BOOST_REQUIRE(h.has_value());
  e.shutdown(50ms);
  auto r = h->try_result();
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(r->status == run_status::cancelled);
}

BOOST_AUTO_TEST_SUITE_END()

// CAF 0.17 pins its logger in a thread-local of every thread that spawns an actor, and the
// actor system's destructor waits for the logger: shutdown must not wait for an embedder's
// thread that started a run (a server's I/O thread) to exit first.
BOOST_AUTO_TEST_CASE(shutdown_does_not_wait_for_live_threads_that_started_runs,
                     *boost::unit_test::timeout(60)) {
  auto e = std::make_unique<engine>(cfg(2));
  auto p = must_register(*e, R"({"name":"t","nodes":[{"id":"a","task":"noop"}]})");
  std::mutex m;
  std::condition_variable cv;
  bool ran = false;
  bool release = false;
  std::thread caller([&] {
    auto h = e->start(p, {});
    BOOST_REQUIRE(h.has_value());
    h->wait();
    e->flush();
    std::unique_lock lock(m);
    ran = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });  // stays alive through the shutdown
  });
  {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return ran; });
  }
  e->shutdown();  // hung before: the caller thread held the logger
  e.reset();
  {
    std::lock_guard lock(m);
    release = true;
  }
  cv.notify_all();
  caller.join();
}
