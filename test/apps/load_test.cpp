#define BOOST_TEST_MODULE apps_load
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "apps/histogram.hpp"
#include "test/apps/process.hpp"
#include "workflow/json.hpp"

namespace json = boost::json;
namespace utf = boost::unit_test;
using troupe::cli::latency_histogram;
using troupe::test::contains;
using troupe::test::process_result;
using troupe::test::run_troupe;
using troupe::test::temp_dir;

namespace {

constexpr const char* greeting = R"({
  "name": "greeting",
  "inputs": { "who": { "type": "string", "required": true } },
  "nodes": [
    { "id": "hello", "task": "echo", "with": "hello {{ inputs.who }}" },
    { "id": "twice", "task": "echo", "needs": ["hello"], "with": "{{ nodes.hello.output }}!" }
  ],
  "outputs": { "text": "{{ nodes.twice.output }}" }
})";

process_result load(const temp_dir& dir, std::vector<std::string> args) {
  args.insert(args.begin(), "load");
  return run_troupe(args, dir.path());
}

/// Stdout must be exactly one JSON document (the whole of it parses as one value).
json::object document_of(const process_result& r) {
  auto doc = troupe::parse_json(r.out);
  BOOST_TEST_REQUIRE(doc.has_value(),
                     "stdout is not one JSON document: " << r.out << "\nstderr: " << r.err);
  BOOST_TEST_REQUIRE(doc->is_object());
  return doc->as_object();
}

double number(const json::value& v) {
  return v.to_number<double>();
}

json::array results_of(const process_result& r) {
  const json::object doc = document_of(r);
  BOOST_TEST_REQUIRE(doc.contains("results"));
  return doc.at("results").as_array();
}

void check_percentiles_ordered(const json::object& result) {
  const json::object& l = result.at("latency_us").as_object();
  const double p50 = number(l.at("p50"));
  const double p90 = number(l.at("p90"));
  const double p99 = number(l.at("p99"));
  const double p999 = number(l.at("p99.9"));
  const double max = number(l.at("max"));
  BOOST_TEST(p50 > 0);
  BOOST_TEST(p50 <= p90);
  BOOST_TEST(p90 <= p99);
  BOOST_TEST(p99 <= p999);
  BOOST_TEST(p999 <= max);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(the_load_command)

BOOST_AUTO_TEST_CASE(a_closed_loop_on_w3_reports_every_run_without_errors_and_ordered_percentiles,
                     *utf::timeout(120)) {
  temp_dir dir;
  const auto r = load(dir, {"--scenario", "W3", "--runs", "2000", "--in-flight", "16", "--mode",
                            "memory", "--json"});
  BOOST_TEST(r.exit_code == 0, r.err);
  const json::object doc = document_of(r);
  BOOST_TEST(doc.at("scenario").as_string() == "W3");
  BOOST_TEST(doc.at("loop").as_string() == "closed");
  BOOST_TEST(doc.at("nodes").to_number<int>() == 10);
  const json::array results = doc.at("results").as_array();
  BOOST_TEST_REQUIRE(results.size() == 1u);
  const json::object& m = results[0].as_object();
  BOOST_TEST(m.at("mode").as_string() == "memory");
  BOOST_TEST(m.at("runs").to_number<std::uint64_t>() == 2000u);
  BOOST_TEST(m.at("errors").to_number<std::uint64_t>() == 0u);
  BOOST_TEST(number(m.at("throughput")) > 0);
  BOOST_TEST(m.at("peak_in_flight").to_number<std::uint64_t>() <= 16u);
  BOOST_TEST(m.at("peak_rss_kb").to_number<std::int64_t>() > 0);
  check_percentiles_ordered(m);
}

BOOST_AUTO_TEST_CASE(an_open_loop_starts_about_rate_times_duration_runs, *utf::timeout(120)) {
  temp_dir dir;
  const auto r = load(dir, {"--scenario", "W3", "--rate", "400", "--duration", "1.5", "--mode",
                            "memory", "--json"});
  BOOST_TEST(r.exit_code == 0, r.err);
  const json::object doc = document_of(r);
  BOOST_TEST(doc.at("loop").as_string() == "open");
  const json::object& m = doc.at("results").as_array().at(0).as_object();
  const auto runs = m.at("runs").to_number<std::uint64_t>();
  BOOST_TEST(runs >= 300u);  // 400 x 1.5 = 600, within 50%
  BOOST_TEST(runs <= 900u);
  BOOST_TEST(m.at("errors").to_number<std::uint64_t>() == 0u);
  BOOST_TEST(m.at("max_lateness_us").is_number());
  // The arrivals' own lateness, ordered as percentiles are.
  BOOST_TEST(m.at("lateness_p50_us").to_number<double>() <=
             m.at("lateness_p99_us").to_number<double>());
  BOOST_TEST(m.at("lateness_p99_us").to_number<double>() <=
             m.at("max_lateness_us").to_number<double>() + 1.0);
  check_percentiles_ordered(m);
}

BOOST_AUTO_TEST_CASE(compare_measures_each_mode_on_its_own_sqlite_file_with_ratios_to_the_first,
                     *utf::timeout(120)) {
  temp_dir dir;
  const std::string db = "sqlite://" + (dir.path() / "load.db").string();
  const auto r = load(dir, {"--scenario", "W3", "--runs", "1000", "--compare", "memory,async",
                            "--db", db, "--json"});
  BOOST_TEST(r.exit_code == 0, r.err);
  const json::array results = results_of(r);
  BOOST_TEST_REQUIRE(results.size() == 2u);
  const json::object& first = results[0].as_object();
  const json::object& second = results[1].as_object();
  BOOST_TEST(first.at("mode").as_string() == "memory");
  BOOST_TEST(second.at("mode").as_string() == "async");
  BOOST_TEST(number(first.at("ratio").at("throughput")) == 1.0);
  BOOST_TEST(number(first.at("ratio").at("p50")) == 1.0);
  BOOST_TEST(number(first.at("ratio").at("p99")) == 1.0);
  BOOST_TEST(number(second.at("ratio").at("throughput")) > 0);
  for (const auto& v : results) {
    BOOST_TEST(v.at("runs").to_number<std::uint64_t>() == 1000u);
    BOOST_TEST(v.at("errors").to_number<std::uint64_t>() == 0u);
    check_percentiles_ordered(v.as_object());
  }
  // Memory mode has no writer; async wrote every row and was drained before the report.
  BOOST_TEST(first.at("writer").at("rows").to_number<std::uint64_t>() == 0u);
  const json::object& w = second.at("writer").as_object();
  BOOST_TEST(w.at("batches").to_number<std::uint64_t>() > 0u);
  BOOST_TEST(w.at("rows").to_number<std::uint64_t>() >= 1000u * 11u);  // a run row + 10 nodes
  BOOST_TEST(w.at("rows_received").to_number<std::uint64_t>() >=
             w.at("rows").to_number<std::uint64_t>());
  BOOST_TEST(w.at("pending").to_number<std::uint64_t>() == 0u);
  BOOST_TEST(second.at("drained").as_bool());
  BOOST_TEST(std::filesystem::exists(dir.path() / "load-async.db"));
  BOOST_TEST(!std::filesystem::exists(dir.path() / "load.db"));
}

BOOST_AUTO_TEST_CASE(a_workflow_file_runs_with_the_inputs_given, *utf::timeout(120)) {
  temp_dir dir;
  const auto file = dir.write_file("greeting.json", greeting);
  const auto r = load(dir, {file, "--input", "who=world", "--runs", "300", "--json"});
  BOOST_TEST(r.exit_code == 0, r.err);
  const json::object doc = document_of(r);
  BOOST_TEST(doc.at("scenario").is_null());
  BOOST_TEST(doc.at("workflow").as_string() == "greeting");
  const json::object& m = doc.at("results").as_array().at(0).as_object();
  BOOST_TEST(m.at("mode").as_string() == "async");  // the default, as for `troupe run`
  BOOST_TEST(m.at("runs").to_number<std::uint64_t>() == 300u);
  BOOST_TEST(m.at("errors").to_number<std::uint64_t>() == 0u);
  // The default store is a temporary directory, not a troupe.db in the working directory.
  BOOST_TEST(!std::filesystem::exists(dir.path() / "troupe.db"));
}

BOOST_AUTO_TEST_CASE(failing_runs_are_counted_as_errors_and_exit_1, *utf::timeout(120)) {
  temp_dir dir;
  const auto file = dir.write_file("breaks.json", R"({
    "name": "breaks",
    "nodes": [ { "id": "boom", "task": "fail", "with": { "message": "the widget broke" } } ]
  })");
  const auto r = load(dir, {file, "--runs", "50", "--mode", "memory", "--json"});
  BOOST_TEST(r.exit_code == 1, r.err);
  const json::array results = results_of(r);
  const json::object& m = results.at(0).as_object();
  BOOST_TEST(m.at("runs").to_number<std::uint64_t>() == 50u);
  BOOST_TEST(m.at("errors").to_number<std::uint64_t>() == 50u);
  BOOST_TEST(contains(std::string(m.at("first_error").as_string()), "the widget broke"));
}

BOOST_AUTO_TEST_CASE(every_built_in_scenario_runs, *utf::timeout(120)) {
  temp_dir dir;
  for (const char* scenario : {"W1", "W2", "W4", "w3"}) {
    const auto r = load(dir, {"--scenario", scenario, "--runs", "5", "--mode", "memory", "--json"});
    BOOST_TEST(r.exit_code == 0, scenario << ": " << r.err);
    const json::array results = results_of(r);
    const json::object& m = results.at(0).as_object();
    BOOST_TEST(m.at("runs").to_number<std::uint64_t>() == 5u, scenario);
    BOOST_TEST(m.at("errors").to_number<std::uint64_t>() == 0u, scenario);
  }
}

BOOST_AUTO_TEST_CASE(the_text_report_has_no_progress_line_when_stdout_is_not_a_terminal,
                     *utf::timeout(120)) {
  temp_dir dir;
  // Long enough for several 250 ms ticks, had the progress printer been started.
  const auto r = load(dir, {"--scenario", "W3", "--duration", "0.8", "--compare", "memory,async",
                            "--db", "sqlite://" + (dir.path() / "t.db").string()});
  BOOST_TEST(r.exit_code == 0, r.err);
  BOOST_TEST(!contains(r.out, "\r"));
  BOOST_TEST(!contains(r.err, "\r"));
  BOOST_TEST(contains(r.out, "P99.9"));
  BOOST_TEST(contains(r.out, "\nmemory "));
  BOOST_TEST(contains(r.out, "\nasync "));
  BOOST_TEST(contains(r.out, "WRITER"));
  BOOST_TEST(contains(r.out, "ratio to memory"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(bad_arguments)

struct bad_case {
  std::vector<std::string> args;
  std::string message;
};

BOOST_AUTO_TEST_CASE(each_bad_argument_is_named_and_exits_2, *utf::timeout(120)) {
  temp_dir dir;
  const auto valid = dir.write_file("greeting.json", greeting);
  const auto invalid = dir.write_file("invalid.json", R"({"name": "x", "nodes": [
    { "id": "a", "task": "no_such_task" } ]})");
  const auto malformed = dir.write_file("malformed.json", R"({"name": "x", "nodes": [)");
  const std::vector<bad_case> cases = {
      {{"--scenario", "W9"}, "unknown scenario 'W9'"},
      {{valid, "--scenario", "W3"}, "not both"},
      {{}, "give a workflow FILE or --scenario"},
      {{"--scenario", "W3", "--runs", "10", "--duration", "1"}, "--runs or --duration"},
      {{"--scenario", "W3", "--runs", "0"}, "--runs must be at least 1"},
      {{"--scenario", "W3", "--duration", "0"}, "--duration must be"},
      {{"--scenario", "W3", "--rate", "0"}, "--rate must be more than 0"},
      {{"--scenario", "W3", "--rate", "-5"}, "--rate must be more than 0"},
      {{"--scenario", "W3", "--in-flight", "0"}, "--in-flight must be"},
      {{"--scenario", "W3", "--compare", "memory,bogus"}, "'bogus' is not a persistence mode"},
      {{"--scenario", "W3", "--compare", "memory,memory"}, "twice"},
      {{"--scenario", "W3", "--mode", "fast"}, "'fast' is not a persistence mode"},
      {{"--scenario", "W3", "--mode", "memory", "--compare", "memory,async"}, "not both"},
      {{"no-such-file.json"}, "cannot open 'no-such-file.json'"},
      {{invalid, "--runs", "1"}, "no_such_task"},
      {{malformed, "--runs", "1"}, "line 1"},
      {{valid, "--runs", "1"}, "/inputs/who"},  // a required input is missing
      {{"--scenario", "W3", "--input", "novalue"}, "NAME=VALUE"},
      {{"--scenario", "W3", "--rate", "abc"}, "--rate"},
      {{"--scenario", "W3", "--db", "sqlite:///nonexistent/dir/x.db", "--runs", "1"},
       "nonexistent"},
  };
  for (const auto& c : cases) {
    const auto r = load(dir, c.args);
    std::string shown;
    for (const auto& a : c.args) {
      shown += a + ' ';
    }
    BOOST_TEST(r.exit_code == 2, shown << "exit " << r.exit_code << "\n" << r.out << r.err);
    BOOST_TEST(contains(r.err, c.message),
               shown << "stderr lacks '" << c.message << "': " << r.err);
  }
  // With --json the error is the errors document on stdout, as for `troupe run`.
  const auto doc = load(dir, {"--scenario", "W3", "--rate", "0", "--json"});
  BOOST_TEST(doc.exit_code == 2);
  const json::object errors = document_of(doc);
  BOOST_TEST(contains(troupe::to_json_text(errors.at("errors")), "--rate must be more than 0"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(the_latency_histogram)

BOOST_AUTO_TEST_CASE(buckets_cover_every_value_with_under_one_percent_error) {
  for (std::uint64_t v : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{255},
                          std::uint64_t{256}, std::uint64_t{257}, std::uint64_t{1000},
                          std::uint64_t{123456789}, std::uint64_t{1} << 40, ~std::uint64_t{0}}) {
    const std::size_t i = latency_histogram::index_of(v);
    BOOST_TEST_REQUIRE(i < latency_histogram::bucket_count, v);
    BOOST_TEST(latency_histogram::lowest_in(i) <= v, v);
    BOOST_TEST(latency_histogram::highest_in(i) >= v, v);
    const double width =
        static_cast<double>(latency_histogram::highest_in(i) - latency_histogram::lowest_in(i));
    BOOST_TEST(width <= static_cast<double>(v) / 100.0 + 1e-9, v);
  }
  // Consecutive buckets tile the range: no gap, no overlap.
  for (std::size_t i = 0; i + 1 < latency_histogram::bucket_count; ++i) {
    BOOST_TEST_REQUIRE(latency_histogram::highest_in(i) + 1 == latency_histogram::lowest_in(i + 1),
                       i);
  }
}

BOOST_AUTO_TEST_CASE(percentiles_match_the_exact_ones_within_one_percent) {
  auto h = std::make_unique<latency_histogram>();
  std::mt19937_64 rng(42);
  std::lognormal_distribution<double> dist(11.0, 1.0);  // ~60 us median, a long tail
  std::vector<std::uint64_t> exact;
  for (int i = 0; i < 100000; ++i) {
    const auto v = static_cast<std::uint64_t>(dist(rng));
    exact.push_back(v);
    h->record(v);
  }
  std::sort(exact.begin(), exact.end());
  BOOST_TEST(h->count() == exact.size());
  BOOST_TEST(h->max() == exact.back());
  for (double q : {0.5, 0.9, 0.99, 0.999}) {
    const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(exact.size())));
    const double want = static_cast<double>(exact[rank - 1]);
    const double got = static_cast<double>(h->percentile(q));
    BOOST_TEST(got >= want, q);
    BOOST_TEST(got <= want * 1.01, q);
  }
  BOOST_TEST(h->percentile(1.0) == exact.back());
}

BOOST_AUTO_TEST_CASE(recording_from_several_threads_loses_nothing_and_costs_little) {
  auto h = std::make_unique<latency_histogram>();
  constexpr int per_thread = 1'000'000;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&h, t] {
      for (int i = 0; i < per_thread; ++i) {
        h->record(static_cast<std::uint64_t>(20'000 + (i % 5000) + t));  // one hot region
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  const double ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
      (2.0 * per_thread);
  BOOST_TEST(h->count() == 2u * per_thread);
  BOOST_TEST_MESSAGE("histogram record, 2 threads contending: " << ns << " ns per value");
  // A W3 run takes tens of microseconds at best; recording must stay far below that (loose
  // bound for a noisy, shared machine).
  BOOST_TEST(ns < 2000.0);
}

BOOST_AUTO_TEST_SUITE_END()
