#define BOOST_TEST_MODULE persistence failing store
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <thread>

#include "persistence/failing_store.hpp"
#include "test/persistence/conformance.hpp"

namespace utf = boost::unit_test;

namespace troupe::test {

std::unique_ptr<store> make_test_store() {
  auto s = open_store("memory://");
  BOOST_REQUIRE(s.has_value());
  return std::make_unique<failing_store>(std::move(*s));
}

boost::test_tools::assertion_result backend_available(utf::test_unit_id) {
  return true;
}

namespace {

failing_store make_failing() {
  auto s = open_store("memory://");
  BOOST_REQUIRE(s.has_value());
  return failing_store(std::move(*s));
}

write_batch one_run(std::string id) {
  write_batch b;
  b.runs = {sample_run(std::move(id))};
  b.nodes = {sample_node(b.runs[0].run_id, "a")};
  return b;
}

bool stored(store& s, std::string_view id) {
  auto r = s.get_run(id);
  BOOST_REQUIRE(r.has_value());
  return r->has_value();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(a_failing_store)

BOOST_AUTO_TEST_CASE(fails_three_writes_then_succeeds_and_counts_them, *utf::timeout(30)) {
  auto s = make_failing();
  s.fail_next_writes(3);
  for (int i = 0; i < 3; ++i) {
    auto r = s.write(one_run("r1"));
    BOOST_REQUIRE(!r.has_value());
    BOOST_TEST(r.error().transient);
    BOOST_TEST(r.error().message == "injected failure");
    BOOST_TEST(!stored(s, "r1"));
  }
  auto r = s.write(one_run("r1"));
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(stored(s, "r1"));
  BOOST_TEST(s.write_attempts() == 4u);
  BOOST_TEST(s.injected_failures() == 3u);
  BOOST_TEST(s.successful_writes() == 1u);
  BOOST_TEST(s.rows_written() == 2u);
}

BOOST_AUTO_TEST_CASE(reports_the_chosen_error_and_classification, *utf::timeout(30)) {
  auto s = make_failing();
  s.fail_next_writes(1, {"schema too new", false});
  auto r = s.write(one_run("r1"));
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(!r.error().transient);
  BOOST_TEST(r.error().message == "schema too new");
}

BOOST_AUTO_TEST_CASE(fails_while_a_switch_set_from_another_thread_is_on, *utf::timeout(30)) {
  auto s = make_failing();
  std::thread([&] { s.set_failing(true, {"disk full", true}); }).join();
  for (int i = 0; i < 5; ++i) {
    auto r = s.write(one_run("r" + std::to_string(i)));
    BOOST_REQUIRE(!r.has_value());
    BOOST_TEST(r.error().message == "disk full");
  }
  std::thread([&] { s.set_failing(false); }).join();
  BOOST_TEST(s.write(one_run("ok")).has_value());
  BOOST_TEST(s.write_attempts() == 6u);
  BOOST_TEST(s.successful_writes() == 1u);
  BOOST_TEST(!stored(s, "r0"));
  BOOST_TEST(stored(s, "ok"));
}

BOOST_AUTO_TEST_CASE(counts_exactly_under_a_switch_toggled_during_writes, *utf::timeout(60)) {
  auto s = make_failing();
  std::atomic<bool> stop{false};
  std::thread toggler([&] {
    bool on = false;
    while (!stop) {
      on = !on;
      s.set_failing(on);
    }
    s.set_failing(false);
  });
  std::size_t ok = 0;
  std::size_t failed = 0;
  for (int i = 0; i < 2000; ++i) {
    if (s.write(one_run("r" + std::to_string(i)))) {
      ++ok;
    } else {
      ++failed;
    }
  }
  stop = true;
  toggler.join();
  BOOST_TEST(s.write_attempts() == 2000u);
  BOOST_TEST(s.successful_writes() == ok);
  BOOST_TEST(s.injected_failures() == failed);
  auto runs = s.list_runs(runs_query().limit(0));
  BOOST_REQUIRE(runs.has_value());
  BOOST_TEST(runs->size() == ok);
}

BOOST_AUTO_TEST_CASE(can_fail_after_writing_like_a_lost_acknowledgement, *utf::timeout(30)) {
  auto s = make_failing();
  s.fail_next_writes(1, {"connection lost after commit", true}, failing_store::fail_point::after);
  auto r = s.write(one_run("r1"));
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().transient);
  BOOST_TEST(stored(s, "r1"));  // written although reported failed: a retry must be harmless
  BOOST_TEST(s.write(one_run("r1")).has_value());
  auto nodes = s.node_rows("r1");
  BOOST_REQUIRE(nodes.has_value());
  BOOST_TEST(nodes->size() == 1u);
  BOOST_TEST(s.successful_writes() == 1u);
}

BOOST_AUTO_TEST_CASE(stops_failing_when_healed, *utf::timeout(30)) {
  auto s = make_failing();
  s.fail_next_writes(10);
  s.set_failing(true);
  s.heal();
  BOOST_TEST(s.write(one_run("r1")).has_value());
  BOOST_TEST(s.injected_failures() == 0u);
}

BOOST_AUTO_TEST_CASE(refuses_every_batch_with_rows_of_a_refused_run_until_healed,
                     *utf::timeout(30)) {
  auto s = make_failing();
  s.refuse_rows_of("bad");
  BOOST_TEST(s.write(one_run("good")).has_value());  // other runs pass

  write_batch nodes_only;
  nodes_only.runs = {sample_run("fine")};
  nodes_only.nodes = {sample_node("fine", "a"), sample_node("bad", "a")};
  auto r = s.write(nodes_only);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(!r.error().transient);
  BOOST_TEST(r.error().message == "row refused");
  BOOST_TEST(!stored(s, "fine"));  // before writing: nothing of the batch is stored

  write_batch run_only;
  run_only.runs = {sample_run("bad")};
  BOOST_TEST(!s.write(run_only).has_value());
  // Workflow and cache rows belong to no run.
  write_batch other;
  other.workflows = {{"bad", "1", "h", "{}", 1}};
  other.cache = {{"bad", "etl", "a", parse("1"), "output", 1}};
  BOOST_TEST(s.write(other).has_value());
  BOOST_TEST(s.injected_failures() == 2u);

  s.heal();
  BOOST_TEST(s.write(nodes_only).has_value());
  BOOST_TEST(stored(s, "fine"));
}

BOOST_AUTO_TEST_CASE(refuses_several_runs_each_with_its_error_before_other_injections,
                     *utf::timeout(30)) {
  auto s = make_failing();
  s.refuse_rows_of("a", {"value too long", false});
  s.refuse_rows_of("b", {"trigger says no", false});
  s.fail_next_writes(1, {"transient", true});
  auto ra = s.write(one_run("a"));
  BOOST_REQUIRE(!ra.has_value());
  BOOST_TEST(ra.error().message == "value too long");
  auto rb = s.write(one_run("b"));
  BOOST_REQUIRE(!rb.has_value());
  BOOST_TEST(rb.error().message == "trigger says no");
  // The refusals consumed none of the count: the next write of another run still fails once.
  auto rc = s.write(one_run("c"));
  BOOST_REQUIRE(!rc.has_value());
  BOOST_TEST(rc.error().message == "transient");
  BOOST_TEST(s.write(one_run("c")).has_value());
  BOOST_TEST(s.injected_failures() == 3u);
}

BOOST_AUTO_TEST_CASE(refusals_set_from_another_thread_apply_to_the_next_write, *utf::timeout(30)) {
  auto s = make_failing();
  std::thread([&] { s.refuse_rows_of("r1"); }).join();
  BOOST_TEST(!s.write(one_run("r1")).has_value());
  std::thread([&] { s.heal(); }).join();
  BOOST_TEST(s.write(one_run("r1")).has_value());
}

BOOST_AUTO_TEST_CASE(passes_real_errors_through_uncounted_as_success, *utf::timeout(30)) {
  auto s = make_failing();
  write_batch b = one_run("r1");
  b.nodes[0].attempt = -5;
  auto r = s.write(b);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(!r.error().transient);
  BOOST_TEST(s.successful_writes() == 0u);
  BOOST_TEST(s.injected_failures() == 0u);
  BOOST_TEST(s.describe() == "failing(memory://)");
}

BOOST_AUTO_TEST_SUITE_END()

}  // namespace troupe::test
