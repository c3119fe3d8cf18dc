// The cluster inside one process: a coordinator engine and worker engines, each with its own
// actor system and middleman, talking over loopback TCP (BASP) exactly as separate processes do.
// The multi-process cases (SIGKILL, SIGSTOP, PostgreSQL failover) are in test/apps.
#define BOOST_TEST_MODULE runtime_cluster
#include <boost/test/unit_test.hpp>

#include <boost/json.hpp>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "runtime/engine.hpp"
#include "test/support/engine.hpp"

namespace utf = boost::unit_test;
using namespace std::chrono_literals;

namespace troupe::test {
namespace {

engine_config coordinator_config(std::vector<std::string> remote_tasks, bool run_here = true,
                                 persistence_mode mode = persistence_mode::memory,
                                 std::string url = "memory://") {
  engine_config c = config(mode, std::move(url));
  c.cluster.enabled = true;
  c.cluster.remote_tasks = std::move(remote_tasks);
  c.cluster.run_here_without_workers = run_here;
  return c;
}

engine_config worker_config(std::string app_id = {}) {
  engine_config c = config(persistence_mode::memory, "memory://");
  c.blocking_threads = 2;
  c.cluster.enabled = true;
  c.cluster.app_identifier = std::move(app_id);
  return c;
}

// A worker's link events, waited on (condition variable), never polled.
struct link_events {
  std::mutex m;
  std::condition_variable cv;
  std::vector<cluster_link_event> seen;

  std::function<void(const cluster_link_event&)> sink() {
    return [this](const cluster_link_event& e) {
      {
        std::lock_guard lock(m);
        seen.push_back(e);
      }
      cv.notify_all();
    };
  }
  bool wait_for(cluster_link_event::kind what, std::size_t count = 1) {
    std::unique_lock lock(m);
    return cv.wait_for(lock, 30s, [&] {
      std::size_t n = 0;
      for (const auto& e : seen) {
        n += e.what == what ? 1 : 0;
      }
      return n >= count;
    });
  }
  std::string last_text() {
    std::lock_guard lock(m);
    return seen.empty() ? std::string() : seen.back().text;
  }
};

// A blocking task held until the test lets it go; counts who entered.
struct gate_task {
  std::mutex m;
  std::condition_variable cv;
  int entered = 0;
  bool open = false;

  task_def def(std::string name, std::string answer) {
    task_def d;
    d.name = std::move(name);
    d.kind = task_kind::blocking;
    d.run = [this, answer](const json::value&, const task_call&) {
      std::unique_lock lock(m);
      ++entered;
      cv.notify_all();
      cv.wait_for(lock, 60s, [&] { return open; });
      return task_result::success(json::value(answer));
    };
    return d;
  }
  bool wait_entered(int n) {
    std::unique_lock lock(m);
    return cv.wait_for(lock, 30s, [&] { return entered >= n; });
  }
  void release() {
    {
      std::lock_guard lock(m);
      open = true;
    }
    cv.notify_all();
  }
};

task_def whoami_task(const std::string& name, const std::string& me) {
  task_def d;
  d.name = name;
  d.kind = task_kind::blocking;
  d.run = [me](const json::value& input, const task_call& call) {
    json::object o;
    o["worker"] = me;
    o["input"] = input;
    o["key"] = call.execution_key();
    o["attempt"] = call.attempt;
    return task_result::success(std::move(o));
  };
  return d;
}

std::uint16_t serve(engine& e) {
  auto port = e.serve_cluster("127.0.0.1", 0);
  BOOST_REQUIRE_MESSAGE(port.has_value(), (port ? "" : port.error()));
  return *port;
}

worker_options join(std::uint16_t port, int capacity = 0, std::string name = {}) {
  worker_options o;
  o.name = std::move(name);
  o.join.emplace_back("127.0.0.1", port);
  o.capacity = capacity;
  return o;
}

plan_ptr must_register(engine& e, std::string_view doc) {
  auto p = e.register_workflow(doc);
  BOOST_REQUIRE_MESSAGE(p.has_value(), (p ? "" : p.error().front().message));
  return *p;
}

run_result run_to_end(engine& e, const plan_ptr& p, json::object inputs = {}) {
  auto h = e.start(p, std::move(inputs));
  BOOST_REQUIRE(h.has_value());
  auto r = h->wait_for(60s);
  BOOST_REQUIRE(r.has_value());
  return *r;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cluster_in_one_process, *utf::timeout(120))

BOOST_AUTO_TEST_CASE(an_attempt_runs_on_the_worker_that_offers_its_task) {
  engine coordinator(coordinator_config({"whoami"}));
  const auto port = serve(coordinator);
  engine worker(worker_config());
  worker.register_task(whoami_task("whoami", "w1"));
  link_events events;
  worker.join_cluster(join(port), events.sink());
  BOOST_REQUIRE(events.wait_for(cluster_link_event::kind::joined));
  BOOST_TEST(events.last_text().find(coordinator.owner_id()) != std::string::npos,
             events.last_text());

  auto p = must_register(coordinator, R"({"name":"remote","nodes":[
      {"id":"a","task":"whoami","with":{"n":"{{ inputs.n }}","text":"caf\u00e9 \"q\"","f":1.5}},
      {"id":"b","task":"echo","needs":["a"],"with":"{{ nodes.a.output.worker }}"}],
    "inputs":{"n":{"type":"integer"}},
    "outputs":{"a":"{{ nodes.a.output }}","b":"{{ nodes.b.output }}"}})");
  auto r = run_to_end(coordinator, p, json::object{{"n", 7}});
  BOOST_TEST(r.status == run_status::succeeded, r.error);
  const auto& a = r.outputs.at("a").as_object();
  BOOST_TEST(a.at("worker").as_string() == "w1");
  // The input crossed as JSON text and came back with its kinds intact.
  BOOST_TEST(boost::json::serialize(a.at("input")) ==
             R"({"n":7,"text":"café \"q\"","f":1.5E0})");
  BOOST_TEST(a.at("key").as_string() == r.run_id + "/a");
  BOOST_TEST(a.at("attempt").as_int64() == 1);
  BOOST_TEST(r.outputs.at("b").as_string() == "w1");
  const auto stats = coordinator.cluster();
  BOOST_TEST(stats.workers == 1);
  BOOST_TEST(stats.dispatched == 1u);
  BOOST_TEST(stats.ran_here == 0u);
  BOOST_TEST(stats.remote_in_flight == 0);
}

BOOST_AUTO_TEST_CASE(a_failure_on_the_worker_fails_the_attempt_and_retries_go_out_again) {
  engine coordinator(coordinator_config({"flaky"}));
  const auto port = serve(coordinator);
  engine worker(worker_config());
  auto calls = std::make_shared<std::atomic<int>>(0);
  task_def flaky;
  flaky.name = "flaky";
  flaky.kind = task_kind::blocking;
  flaky.run = [calls](const json::value&, const task_call& call) {
    ++*calls;
    if (call.attempt < 3) {
      return task_result::failure("attempt " + std::to_string(call.attempt) + " broke");
    }
    return task_result::success(json::value(call.attempt));
  };
  worker.register_task(flaky);
  link_events events;
  worker.join_cluster(join(port), events.sink());
  BOOST_REQUIRE(events.wait_for(cluster_link_event::kind::joined));
  auto p = must_register(coordinator, R"({"name":"retry","nodes":[
      {"id":"a","task":"flaky","retry":{"max_attempts":3,"backoff_ms":1}}],
    "outputs":{"a":"{{ nodes.a.output }}"}})");
  auto r = run_to_end(coordinator, p);
  BOOST_TEST(r.status == run_status::succeeded, r.error);
  BOOST_TEST(r.outputs.at("a").as_int64() == 3);
  BOOST_TEST(calls->load() == 3);

  auto fails =
      must_register(coordinator, R"({"name":"fails","nodes":[{"id":"a","task":"flaky"}]})");
  auto f = run_to_end(coordinator, fails);
  BOOST_TEST(f.status == run_status::failed);
  BOOST_TEST(f.error.find("attempt 1 broke") != std::string::npos, f.error);
}

BOOST_AUTO_TEST_CASE(without_workers_a_remote_only_task_fails_clearly_and_others_run_here) {
  engine coordinator(coordinator_config({"gpu"}));
  serve(coordinator);
  auto p = must_register(coordinator, R"({"name":"nobody","nodes":[{"id":"a","task":"gpu"}]})");
  auto r = run_to_end(coordinator, p);
  BOOST_TEST(r.status == run_status::failed);
  BOOST_TEST(r.error.find("runs on cluster workers only") != std::string::npos, r.error);
  auto s = must_register(coordinator, R"({"name":"local","nodes":[
      {"id":"a","task":"sleep","with":{"ms":1}}]})");
  BOOST_TEST(run_to_end(coordinator, s).status == run_status::succeeded);
  BOOST_TEST(coordinator.cluster().dispatched == 0u);
}

BOOST_AUTO_TEST_CASE(attempts_spread_over_workers_by_their_free_capacity) {
  engine coordinator(coordinator_config({"hold"}));
  const auto port = serve(coordinator);
  gate_task g1;
  gate_task g2;
  engine w1(worker_config());
  engine w2(worker_config());
  w1.register_task(g1.def("hold", "w1"));
  w2.register_task(g2.def("hold", "w2"));
  link_events e1;
  link_events e2;
  w1.join_cluster(join(port, 1), e1.sink());
  w2.join_cluster(join(port, 1), e2.sink());
  BOOST_REQUIRE(e1.wait_for(cluster_link_event::kind::joined));
  BOOST_REQUIRE(e2.wait_for(cluster_link_event::kind::joined));
  auto p = must_register(coordinator, R"({"name":"wide","nodes":[
      {"id":"a","task":"hold","for_each":"{{ range(4) }}"}],
    "outputs":{"a":"{{ nodes.a.output }}"}})");
  auto h = coordinator.start(p, {});
  BOOST_REQUIRE(h.has_value());
  // Capacity 1 each: one attempt on each worker, two waiting at the dispatcher.
  BOOST_REQUIRE(g1.wait_entered(1));
  BOOST_REQUIRE(g2.wait_entered(1));
  g1.release();
  g2.release();
  auto r = h->wait_for(60s);
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(r->status == run_status::succeeded, r->error);
  std::multiset<std::string> who;
  for (const auto& v : r->outputs.at("a").as_array()) {
    who.insert(std::string(v.as_string()));
  }
  BOOST_TEST(who.size() == 4u);
  BOOST_TEST(who.count("w1") >= 1u);
  BOOST_TEST(who.count("w2") >= 1u);
  BOOST_TEST(coordinator.cluster().waiting == 0);
}

BOOST_AUTO_TEST_CASE(
    a_lost_worker_s_attempt_goes_to_another_with_its_attempt_number_and_the_loss_recorded) {
  const std::string url = temp_db("cluster", "lost.db");
  engine coordinator(coordinator_config({"hold"}, true, persistence_mode::durable, url));
  const auto port = serve(coordinator);
  gate_task held;
  auto doomed = std::make_unique<engine>(worker_config());
  doomed->register_task(held.def("hold", "doomed"));
  link_events ed;
  doomed->join_cluster(join(port, 1, "doomed"), ed.sink());
  BOOST_REQUIRE(ed.wait_for(cluster_link_event::kind::joined));

  auto p = must_register(coordinator, R"({"name":"moves","nodes":[{"id":"a","task":"hold"}],
    "outputs":{"a":"{{ nodes.a.output }}"}})");
  auto h = coordinator.start(p, {});
  BOOST_REQUIRE(h.has_value());
  BOOST_REQUIRE(held.wait_entered(1));

  gate_task spare;
  spare.release();
  engine survivor(worker_config());
  survivor.register_task(spare.def("hold", "survivor"));
  link_events es;
  survivor.join_cluster(join(port, 1, "survivor"), es.sink());
  BOOST_REQUIRE(es.wait_for(cluster_link_event::kind::joined));

  // The doomed worker goes away with the attempt in flight: its agent ends first, which the
  // coordinator sees as the link's end. Its held task is let go only then, so its result can
  // never be what the run reports.
  std::thread stopping([&] { doomed->shutdown(5s); });
  auto r = h->wait_for(60s);
  held.release();
  stopping.join();
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(r->status == run_status::succeeded, r->error);
  BOOST_TEST(r->outputs.at("a").as_string() == "survivor");
  BOOST_TEST(coordinator.cluster().lost == 1u);
  BOOST_TEST(node(*r, "a").attempts == 1);

  BOOST_REQUIRE(coordinator.flush(30s));
  auto rows = coordinator.node_rows(r->run_id);
  BOOST_REQUIRE(rows.has_value());
  BOOST_REQUIRE(rows->size() == 1u);
  const node_row& row = rows->front();
  BOOST_TEST(row.attempt == 1);
  BOOST_TEST(row.lost == 1);
  BOOST_TEST(row.worker == "survivor");
  BOOST_TEST(to_string(row.status) == "succeeded");
}

BOOST_AUTO_TEST_CASE(with_wait_for_workers_an_attempt_waits_for_a_worker_instead_of_running_here) {
  engine coordinator(coordinator_config({"whoami"}, /*run_here=*/false));
  const auto port = serve(coordinator);
  auto p = must_register(coordinator, R"({"name":"patient","nodes":[{"id":"a","task":"whoami"}],
    "outputs":{"w":"{{ nodes.a.output.worker }}"}})");
  auto h = coordinator.start(p, {});
  BOOST_REQUIRE(h.has_value());
  // Run here, the placeholder would fail the run at once; it waits for the worker instead.
  engine worker(worker_config());
  worker.register_task(whoami_task("whoami", "late"));
  link_events events;
  worker.join_cluster(join(port), events.sink());
  auto r = h->wait_for(60s);
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(r->status == run_status::succeeded, r->error);
  BOOST_TEST(r->outputs.at("w").as_string() == "late");
  BOOST_TEST(coordinator.cluster().ran_here == 0u);
}

BOOST_AUTO_TEST_CASE(a_timed_out_remote_attempt_is_cancelled_on_its_worker_and_frees_its_slot) {
  engine coordinator(coordinator_config({}));
  const auto port = serve(coordinator);
  engine worker(worker_config());
  link_events events;
  worker.join_cluster(join(port, 1), events.sink());  // one attempt at a time
  BOOST_REQUIRE(events.wait_for(cluster_link_event::kind::joined));
  auto slow = must_register(coordinator, R"({"name":"slow","nodes":[
      {"id":"a","task":"sleep","with":{"ms":600000},"timeout_ms":50}]})");
  auto r = run_to_end(coordinator, slow);
  BOOST_TEST(r.status == run_status::failed);
  BOOST_TEST(to_string(node(r, "a").status) == "timed_out");
  // Were the worker's only slot still taken, this would wait for ever.
  auto quick = must_register(coordinator, R"({"name":"quick","nodes":[
      {"id":"a","task":"sleep","with":{"ms":1}}]})");
  BOOST_TEST(run_to_end(coordinator, quick).status == run_status::succeeded);
  BOOST_TEST(coordinator.cluster().dispatched == 2u);
  BOOST_TEST(coordinator.cluster().ran_here == 0u);
}

BOOST_AUTO_TEST_CASE(a_worker_of_another_version_is_refused_at_the_handshake) {
  engine coordinator(coordinator_config({"whoami"}));
  const auto port = serve(coordinator);
  engine stranger(worker_config("troupe/9.9.9/p1"));
  stranger.register_task(whoami_task("whoami", "stranger"));
  link_events events;
  stranger.join_cluster(join(port), events.sink());
  BOOST_REQUIRE(events.wait_for(cluster_link_event::kind::version_refused));
  BOOST_TEST(events.last_text().find("another troupe version") != std::string::npos,
             events.last_text());
  BOOST_TEST(events.last_text().find("troupe/") != std::string::npos, events.last_text());
  BOOST_TEST(coordinator.cluster().workers == 0);
}

BOOST_AUTO_TEST_CASE(a_worker_started_before_its_coordinator_joins_once_it_listens) {
  // Pick a free port by publishing and shutting down a first coordinator.
  std::uint16_t port = 0;
  {
    engine probe(coordinator_config({}));
    port = serve(probe);
  }
  engine worker(worker_config());
  worker.register_task(whoami_task("whoami", "early"));
  link_events events;
  worker.join_cluster(join(port), events.sink());
  BOOST_REQUIRE(events.wait_for(cluster_link_event::kind::unreachable));
  engine coordinator(coordinator_config({"whoami"}));
  auto bound = coordinator.serve_cluster("127.0.0.1", port);
  BOOST_REQUIRE_MESSAGE(bound.has_value(), (bound ? "" : bound.error()));
  BOOST_REQUIRE(events.wait_for(cluster_link_event::kind::joined));
  auto p = must_register(coordinator, R"({"name":"late","nodes":[{"id":"a","task":"whoami"}],
    "outputs":{"w":"{{ nodes.a.output.worker }}"}})");
  auto r = run_to_end(coordinator, p);
  BOOST_TEST(r.status == run_status::succeeded, r.error);
  BOOST_TEST(r.outputs.at("w").as_string() == "early");
}

BOOST_AUTO_TEST_SUITE_END()

}  // namespace troupe::test
