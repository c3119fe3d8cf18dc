#define BOOST_TEST_MODULE workflow_run_state
#include <boost/test/unit_test.hpp>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "test/support/status_io.hpp"
#include "workflow/cache_key.hpp"
#include "workflow/plan.hpp"
#include "workflow/run_state.hpp"
#include "workflow/task.hpp"

using namespace troupe;
namespace utf = boost::unit_test;

namespace {

plan_ptr compile(std::string_view text) {
  auto p = compile_workflow(text);
  if (!p) {
    std::string all;
    for (auto& e : p.error()) {
      all += e.pointer + ": " + e.message + "\n";
    }
    BOOST_FAIL("workflow did not compile:\n" << all);
  }
  return *p;
}

// Drives a run_state the way the run actor will, with a virtual clock and scripted task
// outcomes, and keeps every command so tests can check what was asked and in which order.
struct driver {
  struct timer {
    std::int64_t due_us;
    std::uint64_t id;
  };

  plan_ptr p;
  run_state rs;
  std::vector<command> log;            // every command ever emitted
  std::vector<cmd::dispatch> pending;  // dispatched, not yet completed by the test
  std::vector<timer> timers;
  std::vector<std::uint64_t> cancelled;
  std::int64_t now_us = 0;
  std::size_t max_pending = 0;

  explicit driver(std::string_view text, run_options o = {})
      : p(compile(text)), rs(p, with_id(std::move(o))) {}

  static run_options with_id(run_options o) {
    if (o.run_id.empty()) {
      o.run_id = "run-1";
    }
    return o;
  }

  void absorb(std::vector<command>& out) {
    for (auto& c : out) {
      if (auto* d = std::get_if<cmd::dispatch>(&c)) {
        pending.push_back(*d);
      } else if (auto* t = std::get_if<cmd::start_timer>(&c)) {
        timers.push_back({now_us + t->delay_ms * 1000, t->timer});
      } else if (auto* x = std::get_if<cmd::cancel_task>(&c)) {
        cancelled.push_back(x->exec);
        std::erase_if(pending, [&](const cmd::dispatch& d) { return d.exec == x->exec; });
      }
      log.push_back(std::move(c));
    }
    out.clear();
    max_pending = std::max(max_pending, pending.size());
  }

  void start(std::string_view inputs = "{}") {
    std::vector<command> out;
    rs.start(boost::json::parse(inputs).as_object(), now_us, out);
    absorb(out);
  }

  std::string node_id(const cmd::dispatch& d) const { return p->nodes[d.node].id; }

  // The pending dispatch of node `id` (first item in flight when several).
  cmd::dispatch take(std::string_view id) {
    auto it = std::find_if(pending.begin(), pending.end(),
                           [&](const cmd::dispatch& d) { return node_id(d) == id; });
    BOOST_REQUIRE_MESSAGE(it != pending.end(), "no pending dispatch for node " << id);
    cmd::dispatch d = *it;
    pending.erase(it);
    return d;
  }

  void finish(const cmd::dispatch& d, task_result r) {
    std::vector<command> out;
    rs.task_finished(d.exec, std::move(r), now_us, out);
    absorb(out);
  }
  void succeed(std::string_view id, std::string_view output = "null") {
    finish(take(id), task_result::success(boost::json::parse(output)));
  }
  void fail(std::string_view id, std::string msg = "boom") {
    finish(take(id), task_result::failure(std::move(msg)));
  }

  // Runs every pending dispatch with the model's quick tasks (echo/noop/fail) until none is left.
  void run_quick_tasks() {
    static const task_registry reg = task_registry::with_builtins();
    while (!pending.empty() && !rs.finished()) {
      cmd::dispatch d = pending.front();
      pending.erase(pending.begin());
      const task_def* t = reg.find(p->nodes[d.node].task);
      BOOST_REQUIRE(t && t->run);
      task_call call{"run-1", p->nodes[d.node].id, d.item, d.attempt};
      finish(d, t->run(*d.input, call));
    }
  }

  // Moves the virtual clock, firing due timers in due order.
  void advance_ms(std::int64_t ms) {
    std::int64_t until = now_us + ms * 1000;
    for (;;) {
      auto it = std::min_element(timers.begin(), timers.end(), [](auto& a, auto& b) {
        return a.due_us < b.due_us || (a.due_us == b.due_us && a.id < b.id);
      });
      if (it == timers.end() || it->due_us > until) {
        break;
      }
      timer t = *it;
      timers.erase(it);
      now_us = t.due_us;
      std::vector<command> out;
      rs.timer_fired(t.id, now_us, out);
      absorb(out);
    }
    now_us = until;
  }

  void cancel() {
    std::vector<command> out;
    rs.cancel(now_us, out);
    absorb(out);
  }

  std::vector<std::string> dispatch_order() const {
    std::vector<std::string> ids;
    for (auto& c : log) {
      if (auto* d = std::get_if<cmd::dispatch>(&c)) {
        ids.push_back(p->nodes[d->node].id);
      }
    }
    return ids;
  }

  const cmd::finish* finish_cmd() const {
    const cmd::finish* f = nullptr;
    std::size_t count = 0;
    for (auto& c : log) {
      if (auto* x = std::get_if<cmd::finish>(&c)) {
        f = x;
        ++count;
      }
    }
    BOOST_REQUIRE_LE(count, 1u);
    return f;
  }

  std::string outputs() const {
    auto* f = finish_cmd();
    BOOST_REQUIRE(f);
    return boost::json::serialize(*f->outputs);
  }

  node_status status(std::string_view id) const {
    return rs.summary(p->find_node(id)->index).status;
  }

  std::vector<node_record> records_of(std::string_view id) const {
    std::vector<node_record> rs_;
    auto n = p->find_node(id)->index;
    for (auto& c : log) {
      if (auto* r = std::get_if<cmd::record>(&c); r && r->rec.node == n) {
        rs_.push_back(r->rec);
      }
    }
    return rs_;
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(run_state_scenarios, *utf::timeout(30))

BOOST_AUTO_TEST_CASE(chain_runs_nodes_in_order_and_renders_outputs) {
  driver d(R"({"name":"chain","nodes":[
      {"id":"a","task":"echo","with":{"v":1}},
      {"id":"b","task":"echo","needs":["a"],"with":{"v":"{{ nodes.a.output.v + 1 }}"}},
      {"id":"c","task":"echo","needs":["b"],"with":"{{ nodes.b.output.v * 10 }}"}],
    "outputs":{"result":"{{ nodes.c.output }}","text":"c={{ nodes.c.output }}"}})");
  d.start();
  BOOST_TEST(d.pending.size() == 1u);
  BOOST_TEST(d.node_id(d.pending[0]) == "a");
  d.run_quick_tasks();
  BOOST_TEST((d.dispatch_order() == std::vector<std::string>{"a", "b", "c"}));
  BOOST_TEST(d.rs.status() == run_status::succeeded);
  BOOST_TEST(d.outputs() == R"({"result":20,"text":"c=20"})");
}

BOOST_AUTO_TEST_CASE(diamond_join_waits_for_both_branches) {
  driver d(R"({"name":"diamond","nodes":[
      {"id":"a","task":"noop"},
      {"id":"b","task":"echo","needs":["a"],"with":"b"},
      {"id":"c","task":"echo","needs":["a"],"with":"c"},
      {"id":"d","task":"echo","needs":["b","c"],"with":"{{ nodes.b.output + nodes.c.output }}"}],
    "outputs":{"d":"{{ nodes.d.output }}"}})");
  d.start();
  d.succeed("a");
  BOOST_TEST(d.pending.size() == 2u);  // b and c together
  d.succeed("c", R"("c")");
  BOOST_TEST(d.pending.size() == 1u);  // d must still wait for b
  BOOST_TEST(d.node_id(d.pending[0]) == "b");
  d.succeed("b", R"("b")");
  BOOST_TEST(d.node_id(d.pending[0]) == "d");
  BOOST_TEST(boost::json::serialize(*d.pending[0].input) == R"("bc")");
  d.succeed("d", R"("bc")");
  BOOST_TEST(d.outputs() == R"({"d":"bc"})");
}

BOOST_AUTO_TEST_CASE(when_false_skips_a_branch_and_the_join_still_runs) {
  driver d(R"({"name":"branch","inputs":{"big":{"type":"boolean","required":true}},
    "nodes":[
      {"id":"check","task":"echo","with":"{{ inputs.big }}"},
      {"id":"large","task":"echo","needs":["check"],"when":"{{ nodes.check.output }}","with":"L"},
      {"id":"small","task":"echo","needs":["check"],"when":"{{ !nodes.check.output }}","with":"S"},
      {"id":"join","task":"echo","needs":["large","small"],
       "with":"{{ nodes.large.status }}/{{ nodes.small.status }}"}],
    "outputs":{"join":"{{ nodes.join.output }}"}})");
  d.start(R"({"big":false})");
  d.run_quick_tasks();
  BOOST_TEST(d.rs.status() == run_status::succeeded);
  BOOST_TEST(d.status("large") == node_status::skipped);
  BOOST_TEST(d.status("small") == node_status::succeeded);
  BOOST_TEST(d.outputs() == R"({"join":"skipped/succeeded"})");
  auto dispatched = d.dispatch_order();
  BOOST_TEST(std::count(dispatched.begin(), dispatched.end(), "large") == 0);
}

BOOST_AUTO_TEST_CASE(for_each_never_exceeds_its_concurrency_and_keeps_item_order) {
  driver d(R"({"name":"fe","nodes":[
      {"id":"sq","task":"echo","for_each":"{{ [1,2,3,4,5] }}","concurrency":2,
       "with":{"i":"{{ index }}","v":"{{ item * item }}"}}],
    "outputs":{"all":"{{ nodes.sq.output }}"}})");
  d.start();
  BOOST_TEST(d.pending.size() == 2u);
  // Complete in reverse order of dispatch to show outputs are in item order, not finish order.
  while (!d.pending.empty()) {
    BOOST_TEST(d.pending.size() <= 2u);
    cmd::dispatch last = d.pending.back();
    d.pending.pop_back();
    d.finish(last, task_result::success(*last.input));
  }
  BOOST_TEST(d.max_pending == 2u);
  BOOST_TEST(d.rs.max_in_flight_seen() == 2u);
  BOOST_TEST(
      d.outputs() ==
      R"({"all":[{"i":0,"v":1},{"i":1,"v":4},{"i":2,"v":9},{"i":3,"v":16},{"i":4,"v":25}]})");
  BOOST_TEST(d.rs.summary(0).items == 5);
}

BOOST_AUTO_TEST_CASE(run_max_concurrency_limits_tasks_across_nodes) {
  driver d(R"({"name":"mc","max_concurrency":3,"nodes":[
      {"id":"a","task":"noop"},{"id":"b","task":"noop"},{"id":"c","task":"noop"},
      {"id":"d","task":"noop"},{"id":"e","task":"noop"}]})");
  d.start();
  BOOST_TEST(d.pending.size() == 3u);
  d.succeed("a");
  BOOST_TEST(d.pending.size() == 3u);
  d.run_quick_tasks();
  BOOST_TEST(d.max_pending == 3u);
  BOOST_TEST(d.rs.status() == run_status::succeeded);
}

BOOST_AUTO_TEST_CASE(retry_after_backoff_then_success) {
  driver d(R"({"name":"retry","nodes":[
      {"id":"flaky","task":"echo","with":"{{ 1 }}",
       "retry":{"max_attempts":3,"backoff_ms":100,"factor":2.0}}],
    "outputs":{"v":"{{ nodes.flaky.output }}"}})");
  d.start();
  d.fail("flaky");
  BOOST_TEST(d.pending.empty());  // waiting out the backoff on a timer, nothing dispatched
  d.advance_ms(99);
  BOOST_TEST(d.pending.empty());
  d.advance_ms(1);
  BOOST_REQUIRE(d.pending.size() == 1u);
  BOOST_TEST(d.pending[0].attempt == 2);
  d.fail("flaky");
  d.advance_ms(199);  // second backoff doubles
  BOOST_TEST(d.pending.empty());
  d.advance_ms(1);
  BOOST_REQUIRE(d.pending.size() == 1u);
  BOOST_TEST(d.pending[0].attempt == 3);
  d.succeed("flaky", "7");
  BOOST_TEST(d.rs.status() == run_status::succeeded);
  BOOST_TEST(d.rs.summary(0).attempts == 3);
  BOOST_TEST(d.outputs() == R"({"v":7})");
}

BOOST_AUTO_TEST_CASE(retry_backoff_is_capped_by_max_backoff) {
  retry_policy r{10, 100, 10.0, 2500};
  BOOST_TEST(r.delay_before(2) == 100);
  BOOST_TEST(r.delay_before(3) == 1000);
  BOOST_TEST(r.delay_before(4) == 2500);
  BOOST_TEST(r.delay_before(9) == 2500);
}

BOOST_AUTO_TEST_CASE(retry_exhausted_fails_the_run_with_the_last_error) {
  driver d(R"({"name":"retry","nodes":[
      {"id":"bad","task":"fail","retry":{"max_attempts":2}},
      {"id":"after","task":"noop","needs":["bad"]}]})");
  d.start();
  d.fail("bad", "first");
  BOOST_REQUIRE(d.pending.size() == 1u);  // no backoff: retried at once
  d.fail("bad", "second");
  BOOST_TEST(d.rs.status() == run_status::failed);
  BOOST_TEST(d.rs.error().find("second") != std::string::npos);
  BOOST_TEST(d.rs.error().find("'bad'") != std::string::npos);
  BOOST_TEST(d.status("after") == node_status::cancelled);
  auto order = d.dispatch_order();
  BOOST_TEST(std::count(order.begin(), order.end(), "after") == 0);
}

BOOST_AUTO_TEST_CASE(attempt_timeout_cancels_the_task_and_retries) {
  driver d(R"({"name":"to","nodes":[
      {"id":"slow","task":"noop","timeout_ms":50,"retry":{"max_attempts":2}}]})");
  d.start();
  auto first = d.pending.at(0);
  d.advance_ms(50);
  BOOST_TEST((d.cancelled == std::vector<std::uint64_t>{first.exec}));
  BOOST_REQUIRE(d.pending.size() == 1u);
  BOOST_TEST(d.pending[0].attempt == 2);
  // The first attempt's late answer changes nothing.
  d.finish(first, task_result::success(1));
  BOOST_TEST(d.rs.status() == run_status::running);
  d.advance_ms(50);
  BOOST_TEST(d.rs.status() == run_status::failed);
  BOOST_TEST(d.status("slow") == node_status::timed_out);
  auto recs = d.records_of("slow");
  BOOST_TEST(std::count_if(recs.begin(), recs.end(),
                           [](auto& r) { return r.status == node_status::timed_out; }) == 2);
}

BOOST_AUTO_TEST_CASE(a_timed_out_node_with_on_error_continue_ends_failed) {
  driver d(R"({"name":"to","nodes":[
      {"id":"slow","task":"noop","timeout_ms":50,"on_error":"continue"},
      {"id":"next","task":"echo","needs":["slow"],"with":"{{ nodes.slow.status }}"}],
    "outputs":{"seen":"{{ nodes.next.output }}"}})");
  d.start();
  d.advance_ms(50);
  d.run_quick_tasks();
  BOOST_TEST(d.status("slow") == node_status::failed);
  BOOST_TEST(d.outputs() == R"({"seen":"failed"})");
  auto recs = d.records_of("slow");
  BOOST_TEST((recs.back().status == node_status::timed_out));
}

BOOST_AUTO_TEST_CASE(finishing_before_the_timeout_makes_the_timer_harmless) {
  driver d(R"({"name":"to","nodes":[{"id":"quick","task":"noop","timeout_ms":50}]})");
  d.start();
  d.succeed("quick");
  d.advance_ms(100);
  BOOST_TEST(d.rs.status() == run_status::succeeded);
  BOOST_TEST(d.cancelled.empty());
}

BOOST_AUTO_TEST_CASE(on_error_continue_lets_dependents_see_the_failure) {
  driver d(R"({"name":"cont","nodes":[
      {"id":"risky","task":"fail","with":{"message":"nope"},"on_error":"continue"},
      {"id":"report","task":"echo","needs":["risky"],
       "with":{"status":"{{ nodes.risky.status }}","error":"{{ nodes.risky.error }}"}}],
    "outputs":{"report":"{{ nodes.report.output }}"}})");
  d.start();
  d.run_quick_tasks();
  BOOST_TEST(d.rs.status() == run_status::succeeded);
  BOOST_TEST(d.status("risky") == node_status::failed);
  BOOST_TEST(d.outputs() == R"({"report":{"status":"failed","error":"nope"}})");
}

BOOST_AUTO_TEST_CASE(a_failure_cancels_running_nodes_and_starts_no_more) {
  driver d(R"({"name":"failfast","nodes":[
      {"id":"a","task":"noop"},{"id":"b","task":"noop"},
      {"id":"c","task":"noop","needs":["a"]}]})");
  d.start();
  auto b = d.pending.at(1);
  BOOST_TEST(d.node_id(b) == "b");
  d.fail("a", "a broke");
  BOOST_TEST(d.rs.status() == run_status::failed);
  BOOST_TEST((d.cancelled == std::vector<std::uint64_t>{b.exec}));
  BOOST_TEST(d.status("b") == node_status::cancelled);
  BOOST_TEST(d.status("c") == node_status::cancelled);
  BOOST_TEST(d.pending.empty());
  auto* f = d.finish_cmd();
  BOOST_REQUIRE(f);
  BOOST_TEST(f->error.find("a broke") != std::string::npos);
  // Results arriving after the end are ignored, and no second finish is emitted.
  d.finish(b, task_result::success(nullptr));
  BOOST_TEST(d.finish_cmd() == f);
}

BOOST_AUTO_TEST_CASE(failing_for_each_item_cancels_its_siblings) {
  driver d(R"({"name":"fe","nodes":[
      {"id":"each","task":"noop","for_each":"{{ range(4) }}"}]})");
  d.start();
  BOOST_REQUIRE(d.pending.size() == 4u);
  auto second = d.pending[1];
  d.pending.erase(d.pending.begin() + 1);
  d.finish(second, task_result::failure("item broke"));
  BOOST_TEST(d.rs.status() == run_status::failed);
  BOOST_TEST(d.cancelled.size() == 3u);
  BOOST_TEST(d.rs.error().find("item 1: item broke") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(publish_sets_a_variable_seen_downstream) {
  driver d(R"({"name":"pub","vars":{"greeting":"hello {{ inputs.who }}"},
    "inputs":{"who":{"type":"string","default":"world"}},
    "nodes":[
      {"id":"count","task":"echo","with":{"n":3},"publish":{"total":"{{ output.n * 2 }}"}},
      {"id":"use","task":"echo","needs":["count"],"with":"{{ vars.greeting }}: {{ vars.total }}"}],
    "outputs":{"msg":"{{ nodes.use.output }}","total":"{{ vars.total }}"}})");
  d.start(R"({"who":"world"})");
  d.run_quick_tasks();
  BOOST_TEST(d.outputs() == R"({"msg":"hello world: 6","total":6})");
}

BOOST_AUTO_TEST_CASE(run_timeout_ends_the_run_timed_out_and_cancels_tasks) {
  driver d(R"({"name":"rt","timeout_ms":1000,"nodes":[
      {"id":"a","task":"noop"},{"id":"b","task":"noop","needs":["a"]}]})");
  d.start();
  auto a = d.pending.at(0);
  d.advance_ms(999);
  BOOST_TEST(d.rs.status() == run_status::running);
  d.advance_ms(1);
  BOOST_TEST(d.rs.status() == run_status::timed_out);
  BOOST_TEST((d.cancelled == std::vector<std::uint64_t>{a.exec}));
  BOOST_TEST(d.status("b") == node_status::cancelled);
  BOOST_TEST(d.finish_cmd()->status == run_status::timed_out);
}

BOOST_AUTO_TEST_CASE(cancel_stops_in_flight_tasks_and_dispatches_nothing_more) {
  driver d(R"({"name":"c","nodes":[
      {"id":"a","task":"noop"},{"id":"b","task":"noop","needs":["a"]}]})");
  d.start();
  auto a = d.pending.at(0);
  d.cancel();
  BOOST_TEST(d.rs.status() == run_status::cancelled);
  BOOST_TEST((d.cancelled == std::vector<std::uint64_t>{a.exec}));
  d.finish(a, task_result::success(nullptr));
  BOOST_TEST((d.dispatch_order() == std::vector<std::string>{"a"}));
  d.cancel();  // a second cancel is harmless
  BOOST_TEST(d.finish_cmd()->status == run_status::cancelled);
}

BOOST_AUTO_TEST_CASE(a_template_error_fails_the_node_naming_node_field_and_column) {
  driver d(R"({"name":"e","nodes":[
      {"id":"bad","task":"echo","with":{"x":"{{ vars.missing }}"}}]})");
  d.start();
  BOOST_TEST(d.rs.status() == run_status::failed);
  const auto& err = d.rs.error();
  BOOST_TEST(err.find("'bad'") != std::string::npos, err);
  BOOST_TEST(err.find("with/x") != std::string::npos, err);
  BOOST_TEST(err.find("column 9") != std::string::npos, err);
}

BOOST_AUTO_TEST_CASE(for_each_that_is_not_an_array_fails_the_node) {
  driver d(R"({"name":"e","nodes":[{"id":"fe","task":"noop","for_each":"{{ 3 }}"}]})");
  d.start();
  BOOST_TEST(d.rs.status() == run_status::failed);
  BOOST_TEST(d.rs.error().find("array") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(empty_for_each_succeeds_with_an_empty_array) {
  driver d(R"({"name":"e","nodes":[{"id":"fe","task":"noop","for_each":"{{ [] }}"}],
    "outputs":{"o":"{{ nodes.fe.output }}"}})");
  d.start();
  BOOST_TEST(d.pending.empty());
  BOOST_TEST(d.outputs() == R"({"o":[]})");
}

BOOST_AUTO_TEST_CASE(records_cover_every_execution_start_and_end) {
  driver d(R"({"name":"r","nodes":[
      {"id":"a","task":"echo","with":{"k":1},"retry":{"max_attempts":2}},
      {"id":"s","task":"noop","needs":["a"],"when":"{{ false }}"}]})");
  d.start();
  d.fail("a");
  d.succeed("a", R"({"k":1})");
  auto recs = d.records_of("a");
  BOOST_REQUIRE(recs.size() == 4u);  // running, failed, running, succeeded
  BOOST_TEST(recs[0].attempt == 1);
  BOOST_TEST((recs[0].status == node_status::running));
  BOOST_TEST((recs[1].status == node_status::failed));
  BOOST_TEST((recs[3].status == node_status::succeeded));
  BOOST_TEST(recs[3].attempt == 2);
  BOOST_TEST(boost::json::serialize(*recs[3].input) == R"({"k":1})");
  auto skipped = d.records_of("s");
  BOOST_REQUIRE(skipped.size() == 1u);
  BOOST_TEST((skipped[0].status == node_status::skipped));
  BOOST_TEST(skipped[0].attempt == 0);
}

BOOST_AUTO_TEST_CASE(same_events_give_the_same_commands) {
  auto script = [](driver& d) {
    d.start();
    d.fail("a");
    d.advance_ms(10);
    d.run_quick_tasks();
  };
  const char* wf = R"({"name":"det","nodes":[
      {"id":"a","task":"echo","with":1,"retry":{"max_attempts":2,"backoff_ms":10}},
      {"id":"b","task":"echo","needs":["a"],"for_each":"{{ range(6) }}","concurrency":3,
       "with":"{{ item }}"},
      {"id":"c","task":"echo","needs":["a"],"with":"{{ nodes.a.output }}"},
      {"id":"d","task":"noop","needs":["b","c"]}]})";
  driver x(wf), y(wf);
  script(x);
  script(y);
  BOOST_REQUIRE(x.log.size() == y.log.size());
  BOOST_TEST(x.log.size() > 20u);
  for (std::size_t i = 0; i < x.log.size(); ++i) {
    BOOST_TEST_CONTEXT("command " << i) {
      BOOST_TEST(x.log[i].index() == y.log[i].index());
      if (auto* a = std::get_if<cmd::dispatch>(&x.log[i])) {
        auto& b = std::get<cmd::dispatch>(y.log[i]);
        BOOST_TEST(a->exec == b.exec);
        BOOST_TEST(a->node == b.node);
        BOOST_TEST(a->item == b.item);
        BOOST_TEST(boost::json::serialize(*a->input) == boost::json::serialize(*b.input));
      }
    }
  }
}

// The cluster: an attempt whose worker was lost goes out again under the same attempt number
// (not a retry); the log learns of the loss at once, without an event number of its own, and
// every later record names where it ran and how often it was lost.
BOOST_AUTO_TEST_CASE(a_lost_worker_is_recorded_without_costing_a_retry_or_an_event_number) {
  driver d(R"({"name":"moved","nodes":[{"id":"a","task":"noop","retry":{"max_attempts":1}}]})");
  d.start();
  cmd::dispatch a = d.take("a");
  const auto before = d.rs.last_event_seq();
  std::vector<command> out;
  d.rs.placed(a.exec, "", 1, true, d.now_us, out);
  d.absorb(out);
  BOOST_TEST(d.rs.last_event_seq() == before);  // no event number taken
  auto recs = d.records_of("a");
  BOOST_REQUIRE(recs.size() == 2u);
  BOOST_TEST(recs[1].status == node_status::running);
  BOOST_TEST(recs[1].attempt == 1);
  BOOST_TEST(recs[1].lost == 1);
  BOOST_TEST(recs[1].started_seq == recs[0].started_seq);
  const auto* silent = std::get_if<cmd::record>(&d.log.back());
  BOOST_REQUIRE(silent != nullptr);
  BOOST_TEST(silent->silent);
  // Reported by the second worker: succeeded at attempt 1, with its name and the loss.
  d.rs.placed(a.exec, "w2", 1, false, d.now_us, out);
  d.absorb(out);
  BOOST_TEST(d.records_of("a").size() == 2u);  // a quiet placement writes nothing
  d.finish(a, task_result::success(nullptr));
  recs = d.records_of("a");
  BOOST_TEST(recs.back().status == node_status::succeeded);
  BOOST_TEST(recs.back().attempt == 1);
  BOOST_TEST(recs.back().worker == "w2");
  BOOST_TEST(recs.back().lost == 1);
  BOOST_TEST(d.rs.summary(0).attempts == 1);
  BOOST_TEST(d.rs.status() == run_status::succeeded);
  // Stale: the attempt is over.
  d.rs.placed(a.exec, "w3", 2, true, d.now_us, out);
  BOOST_TEST(out.empty());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(run_state_resume, *utf::timeout(30))

BOOST_AUTO_TEST_CASE(restored_nodes_are_not_dispatched_and_their_outputs_are_seen) {
  driver d(R"({"name":"resume","nodes":[
      {"id":"a","task":"echo","with":1,"publish":{"seen":"{{ output + 100 }}"}},
      {"id":"b","task":"echo","needs":["a"],"with":"{{ nodes.a.output + vars.seen }}"},
      {"id":"c","task":"echo","needs":["b"],"with":"{{ nodes.b.output * 2 }}"}],
    "outputs":{"c":"{{ nodes.c.output }}"}})");
  d.rs.restore(0, make_json(5));
  d.rs.continue_attempts(1, 2);  // b failed twice before the restart
  d.start();
  d.run_quick_tasks();
  BOOST_TEST((d.dispatch_order() == std::vector<std::string>{"b", "c"}));
  BOOST_TEST(d.outputs() == R"({"c":220})");
  auto b = d.records_of("b");
  BOOST_REQUIRE(!b.empty());
  BOOST_TEST(b.front().attempt == 3);
  BOOST_TEST(d.records_of("a").empty());
}

BOOST_AUTO_TEST_CASE(restored_for_each_items_are_not_dispatched_again) {
  driver d(R"({"name":"fe","nodes":[
      {"id":"sq","task":"echo","for_each":"{{ [1,2,3,4,5] }}","concurrency":2,
       "with":"{{ item * item }}"}],
    "outputs":{"all":"{{ nodes.sq.output }}"}})");
  d.rs.restore_item(0, 0, make_json(1));
  d.rs.restore_item(0, 2, make_json(9));
  d.rs.restore_item(0, 4, make_json(25));
  d.rs.restore_item(0, 7, make_json(0));  // past the items: ignored
  d.rs.continue_attempts(0, 1);
  d.start();
  std::vector<std::int64_t> items;
  while (!d.pending.empty()) {
    cmd::dispatch next = d.pending.front();
    d.pending.erase(d.pending.begin());
    items.push_back(next.item);
    d.finish(next, task_result::success(*next.input));
  }
  BOOST_TEST((items == std::vector<std::int64_t>{1, 3}));
  BOOST_TEST(d.outputs() == R"({"all":[1,4,9,16,25]})");
  for (const auto& r : d.records_of("sq")) {
    if (r.item >= 0) {
      BOOST_TEST((r.item == 1 || r.item == 3));
      BOOST_TEST(r.attempt == 2);  // numbered after what the store recorded
    }
  }
}

BOOST_AUTO_TEST_CASE(a_for_each_whose_items_all_succeeded_before_succeeds_without_dispatch) {
  driver d(R"({"name":"fe","nodes":[
      {"id":"sq","task":"echo","for_each":"{{ [1,2] }}","with":"{{ item }}"},
      {"id":"after","task":"echo","needs":["sq"],"with":"{{ nodes.sq.output }}"}],
    "outputs":{"after":"{{ nodes.after.output }}"}})");
  d.rs.restore_item(0, 1, make_json("b"));
  d.rs.restore_item(0, 0, make_json("a"));
  d.start();
  d.run_quick_tasks();
  BOOST_TEST((d.dispatch_order() == std::vector<std::string>{"after"}));
  BOOST_TEST(d.outputs() == R"({"after":["a","b"]})");
}

BOOST_AUTO_TEST_CASE(held_item_slots_wait_for_their_commit_before_more_items_start) {
  run_options o;
  o.hold_item_slots = true;
  driver d(R"({"name":"fe","nodes":[
      {"id":"sq","task":"echo","for_each":"{{ [1,2,3,4,5] }}","concurrency":2,
       "with":"{{ item }}"}],
    "outputs":{"all":"{{ nodes.sq.output }}"}})", o);
  d.start();
  BOOST_REQUIRE_EQUAL(d.pending.size(), 2u);
  cmd::dispatch first = d.pending.front();
  d.pending.erase(d.pending.begin());
  d.finish(first, task_result::success(*first.input));
  // Its success is recorded, but its slot stays taken until the driver confirms the commit.
  BOOST_TEST(d.pending.size() == 1u);
  BOOST_TEST(d.rs.held_slot_count() == 1u);
  auto held = d.rs.held_slots();
  std::vector<command> out;
  d.rs.release_held_slots(held, d.now_us, out);
  d.absorb(out);
  BOOST_TEST(d.pending.size() == 2u);  // the next item starts only now
  BOOST_TEST(d.rs.held_slot_count() == 0u);
  while (!d.pending.empty() || d.rs.held_slot_count() > 0) {
    if (!d.pending.empty()) {
      cmd::dispatch next = d.pending.front();
      d.pending.erase(d.pending.begin());
      d.finish(next, task_result::success(*next.input));
    }
    BOOST_TEST(d.pending.size() + d.rs.held_slot_count() <= 2u);
    std::vector<command> more;
    d.rs.release_held_slots(d.rs.held_slots(), d.now_us, more);
    d.absorb(more);
  }
  BOOST_TEST(d.outputs() == R"({"all":[1,2,3,4,5]})");
}

BOOST_AUTO_TEST_CASE(a_run_whose_nodes_all_succeeded_before_finishes_at_once) {
  driver d(R"({"name":"done","nodes":[{"id":"a","task":"echo","with":1}],
    "outputs":{"a":"{{ nodes.a.output }}"}})");
  d.rs.restore(0, make_json("kept"));
  d.start();
  BOOST_TEST(d.pending.empty());
  BOOST_TEST(d.outputs() == R"({"a":"kept"})");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(run_state_cache, *utf::timeout(30))

namespace {

const char* cached_echo = R"({"name":"c","nodes":[
    {"id":"a","task":"echo","with":"{{ inputs }}","cache":{"version":"v1"}},
    {"id":"b","task":"echo","needs":["a"],"with":"{{ nodes.a.output }}"}],
  "outputs":{"a":"{{ nodes.a.output }}","b":"{{ nodes.b.output }}"}})";

std::string key_of(const plan_ptr& p, std::string_view input, const json::value* item = nullptr) {
  return cache_key(p->nodes[0], boost::json::parse(input), item);
}

plan_ptr with_version(const char* version) {
  return compile(
      std::string(R"({"name":"c","nodes":[{"id":"a","task":"echo","cache":{"version":")") +
      version + R"("}}]})");
}

// Completes every pending dispatch of a cached node from `cache` when the key is there (the
// run actor's job), otherwise with the echo task, storing its output as the run actor does.
void run_with_cache(driver& d, std::map<std::string, json_ptr>& cache, int& task_runs) {
  while (!d.pending.empty() && !d.rs.finished()) {
    cmd::dispatch x = d.pending.front();
    d.pending.erase(d.pending.begin());
    std::vector<command> out;
    if (auto it = cache.find(x.cache_key); !x.cache_key.empty() && it != cache.end()) {
      d.rs.task_finished_cached(x.exec, it->second, d.now_us, out);
    } else {
      ++task_runs;
      if (!x.cache_key.empty()) {
        cache[x.cache_key] = x.input;
      }
      d.rs.task_finished(x.exec, task_result::success(*x.input), d.now_us, out);
    }
    d.absorb(out);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(cache_keys_ignore_key_order_and_number_spelling) {
  auto p = with_version("v1");
  auto k = key_of(p, R"({"a":1,"b":{"x":2.0,"y":[1,"s"]}})");
  BOOST_TEST(k.size() == 32u);
  BOOST_TEST(k == key_of(p, R"({"b":{"y":[1.0,"s"],"x":2},"a":1.0})"));
  BOOST_TEST(k != key_of(p, R"({"a":1,"b":{"x":2.5,"y":[1,"s"]}})"));
}

BOOST_AUTO_TEST_CASE(a_different_version_or_item_gives_a_different_cache_key) {
  auto v1 = with_version("v1");
  auto v2 = with_version("v2");
  BOOST_TEST(key_of(v1, "{}") != key_of(v2, "{}"));
  json::value one = 1, two = 2, null = nullptr;
  BOOST_TEST(key_of(v1, "{}", &one) != key_of(v1, "{}", &two));
  BOOST_TEST(key_of(v1, "{}", &one) != key_of(v1, "{}"));
  // A null item is the same as no item: the key holds "item": null either way.
  BOOST_TEST(key_of(v1, "{}", &null) == key_of(v1, "{}"));
}

BOOST_AUTO_TEST_CASE(a_node_without_cache_has_no_key_and_records_off) {
  driver d(R"({"name":"n","nodes":[{"id":"a","task":"echo","with":1}]})");
  BOOST_TEST(cache_key(d.p->nodes[0], json::value(1), nullptr).empty());
  d.start();
  BOOST_REQUIRE(d.pending.size() == 1u);
  BOOST_TEST(d.pending[0].cache_key.empty());
  d.succeed("a", "1");
  for (const auto& r : d.records_of("a")) {
    BOOST_TEST(r.cache == cache_status::off);
  }
  BOOST_TEST(d.rs.summary(0).cache == cache_status::off);
}

BOOST_AUTO_TEST_CASE(a_cached_node_misses_first_and_hits_on_the_same_inputs) {
  std::map<std::string, json_ptr> cache;
  int runs = 0;
  driver first(cached_echo);
  first.start(R"({"x":1})");
  BOOST_REQUIRE(!first.pending.empty());
  BOOST_TEST(first.pending[0].cache_key ==
             cache_key(first.p->nodes[0], boost::json::parse(R"({"x":1})"), nullptr));
  run_with_cache(first, cache, runs);
  BOOST_TEST(runs == 2);  // a and b
  BOOST_TEST(first.rs.summary(0).cache == cache_status::miss);
  BOOST_TEST(first.rs.summary(1).cache == cache_status::off);
  BOOST_TEST(first.records_of("a").back().cache == cache_status::miss);

  driver second(cached_echo);
  second.start(R"({"x":1.0})");  // same value, other spelling
  run_with_cache(second, cache, runs);
  BOOST_TEST(runs == 3);  // only b ran again
  BOOST_TEST(second.rs.summary(0).cache == cache_status::hit);
  auto recs = second.records_of("a");
  BOOST_REQUIRE(!recs.empty());
  BOOST_TEST(recs.back().cache == cache_status::hit);
  BOOST_TEST((recs.back().status == node_status::succeeded));
  BOOST_TEST(second.outputs() == R"({"a":{"x":1},"b":{"x":1}})");
}

BOOST_AUTO_TEST_CASE(for_each_items_have_their_own_keys_and_the_node_hits_only_if_all_did) {
  const char* wf = R"({"name":"fe","nodes":[
      {"id":"a","task":"echo","for_each":"{{ inputs.xs }}","with":"{{ item }}",
       "cache":{}}],
    "outputs":{"a":"{{ nodes.a.output }}"}})";
  std::map<std::string, json_ptr> cache;
  int runs = 0;
  driver first(wf);
  first.start(R"({"xs":[1,2]})");
  BOOST_REQUIRE(first.pending.size() == 2u);
  BOOST_TEST(first.pending[0].cache_key != first.pending[1].cache_key);
  run_with_cache(first, cache, runs);
  BOOST_TEST(runs == 2);

  driver second(wf);
  second.start(R"({"xs":[2,3]})");
  run_with_cache(second, cache, runs);
  BOOST_TEST(runs == 3);  // item 3 only
  BOOST_TEST(second.rs.summary(0).cache == cache_status::miss);
  BOOST_TEST(second.outputs() == R"({"a":[2,3]})");
  auto recs = second.records_of("a");
  auto item0 = std::find_if(recs.begin(), recs.end(), [](const node_record& r) {
    return r.item == 0 && r.status == node_status::succeeded;
  });
  BOOST_REQUIRE(item0 != recs.end());
  BOOST_TEST(item0->cache == cache_status::hit);
  BOOST_TEST(recs.back().attempt == 0);  // the node-level record carries the node's status
  BOOST_TEST(recs.back().cache == cache_status::miss);

  driver third(wf);
  third.start(R"({"xs":[3,1]})");
  run_with_cache(third, cache, runs);
  BOOST_TEST(runs == 3);
  BOOST_TEST(third.rs.summary(0).cache == cache_status::hit);
}

BOOST_AUTO_TEST_CASE(a_failed_attempt_of_a_cached_node_records_a_miss) {
  driver d(R"({"name":"f","nodes":[{"id":"a","task":"echo","with":1,"cache":{}}]})");
  d.start();
  d.fail("a");
  BOOST_TEST(d.rs.status() == run_status::failed);
  BOOST_TEST(d.records_of("a").back().cache == cache_status::miss);
  BOOST_TEST(d.rs.summary(0).cache == cache_status::miss);
}

const char* dynamic_wf = R"({"name":"d","inputs":{"n":{"type":"integer"}},"nodes":[
    {"id":"gen","task":"echo","with":{"n":"{{ inputs.n }}"},
     "dynamic":{"inputs":{"base":"{{ inputs.n * 10 }}"}},"cache":{"version":"v1"},
     "retry":{"max_attempts":2}},
    {"id":"after","task":"echo","needs":["gen"],"with":"{{ nodes.gen.output.sum }}"}],
    "outputs":{"sum":"{{ nodes.after.output }}"}})";

BOOST_AUTO_TEST_CASE(a_dynamic_dispatch_carries_the_child_inputs_and_a_spec_key) {
  driver d(dynamic_wf);
  d.start(R"({"n":4})");
  cmd::dispatch gen = d.take("gen");
  BOOST_REQUIRE(gen.dynamic_inputs);
  BOOST_TEST(boost::json::serialize(*gen.dynamic_inputs) == R"({"base":40})");
  // The spec key differs from the key an ordinary node with the same task and input would get.
  driver plain(R"({"name":"p","nodes":[{"id":"gen","task":"echo","with":{"n":4},
      "cache":{"version":"v1"}}]})");
  plain.start();
  BOOST_TEST(!gen.cache_key.empty());
  BOOST_TEST(gen.cache_key != plain.take("gen").cache_key);
  // The child failed: the attempt records its spec status and child run, and is retried.
  std::vector<command> out;
  d.rs.task_finished_dynamic(gen.exec, task_result::failure("child run c1 failed"),
                             {cache_status::miss, "c1"}, d.now_us, out);
  d.absorb(out);
  auto records = d.records_of("gen");
  BOOST_REQUIRE(records.size() == 3u);  // running, failed, and the retry running
  auto failed = records[1];
  BOOST_TEST(failed.status == node_status::failed);
  BOOST_TEST(failed.spec_cache == cache_status::miss);
  BOOST_TEST(failed.child_run == "c1");
  // The retry found the spec in the cache: both statuses say hit.
  cmd::dispatch again = d.take("gen");
  BOOST_TEST(again.attempt == 2);
  d.rs.task_finished_dynamic(again.exec, task_result::success(boost::json::parse(R"({"sum":7})")),
                             {cache_status::hit, "c1"}, d.now_us, out);
  d.absorb(out);
  auto ok = d.records_of("gen").back();
  BOOST_TEST(ok.status == node_status::succeeded);
  BOOST_TEST(ok.cache == cache_status::hit);
  BOOST_TEST(ok.spec_cache == cache_status::hit);
  BOOST_TEST(d.rs.summary(0).spec_cache == cache_status::hit);
  BOOST_TEST(d.rs.child_run(0) == "c1");
  d.run_quick_tasks();
  BOOST_TEST(d.outputs() == R"({"sum":7})");
}

BOOST_AUTO_TEST_CASE(dynamic_inputs_that_fail_to_render_fail_the_node_before_dispatch) {
  driver d(R"({"name":"d","nodes":[{"id":"gen","task":"echo","with":1,
      "dynamic":{"inputs":"{{ [1] }}"},"retry":{"max_attempts":3}}]})");
  d.start();
  BOOST_TEST(d.pending.empty());
  BOOST_TEST(d.rs.status() == run_status::failed);
  BOOST_TEST(d.rs.summary(0).error().find("dynamic/inputs") != std::string::npos,
             d.rs.summary(0).error());
  BOOST_TEST(d.rs.summary(0).error().find("array") != std::string::npos);
  driver missing(R"({"name":"d","nodes":[{"id":"gen","task":"echo","with":1,
      "dynamic":{"inputs":{"x":"{{ vars.nope }}"}}}]})");
  missing.start();
  BOOST_TEST(missing.rs.status() == run_status::failed);
  BOOST_TEST(missing.rs.summary(0).error().find("dynamic/inputs/x") != std::string::npos,
             missing.rs.summary(0).error());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(event_numbers, *utf::timeout(30))

// Every record takes the next number after run_started's 1, in the order emitted; an
// attempt's final record carries its start's number too; the run's end takes the next one.
BOOST_AUTO_TEST_CASE(records_are_numbered_in_emission_order) {
  driver d(R"({"name":"seq","nodes":[
      {"id":"a","task":"echo","with":1},
      {"id":"b","task":"echo","needs":["a"],"with":2,"retry":{"max_attempts":2,"backoff_ms":1}},
      {"id":"s","task":"echo","needs":["a"],"when":"{{ false }}"}]})");
  d.start();
  d.succeed("a");
  d.fail("b");
  d.advance_ms(5);
  d.succeed("b");
  std::int64_t expected = 1;
  for (auto& c : d.log) {
    if (auto* r = std::get_if<cmd::record>(&c)) {
      std::int64_t seq = r->rec.status == node_status::running ? r->rec.started_seq
                                                                : r->rec.finished_seq;
      BOOST_TEST(seq == ++expected);
      if (r->rec.status == node_status::running) {
        BOOST_TEST(r->rec.finished_seq == 0);
      }
    }
  }
  BOOST_TEST(d.rs.last_event_seq() == expected);
  auto b = d.records_of("b");
  BOOST_REQUIRE(b.size() == 4u);  // running, failed, running, succeeded
  BOOST_TEST(b[1].started_seq == b[0].started_seq);
  BOOST_TEST(b[3].started_seq == b[2].started_seq);
  BOOST_TEST(b[3].finished_seq > b[2].started_seq);
  auto s = d.records_of("s");
  BOOST_REQUIRE(s.size() == 1u);  // skipped: an end without a start
  BOOST_TEST(s[0].started_seq == 0);
  BOOST_TEST(s[0].finished_seq > 0);
  BOOST_TEST(d.rs.take_event_seq() == expected + 1);  // the driver's run_finished
}

BOOST_AUTO_TEST_CASE(a_resumed_run_numbers_after_its_log) {
  run_options o;
  o.events_after = 41;
  driver d(R"({"name":"seq","nodes":[{"id":"a","task":"echo","with":1}]})", o);
  d.start();
  d.succeed("a");
  auto a = d.records_of("a");
  BOOST_REQUIRE(a.size() == 2u);
  BOOST_TEST(a[0].started_seq == 42);
  BOOST_TEST(a[1].started_seq == 42);
  BOOST_TEST(a[1].finished_seq == 43);
}

BOOST_AUTO_TEST_SUITE_END()
