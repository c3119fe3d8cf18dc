#define BOOST_TEST_MODULE apps_cli
#include <boost/test/unit_test.hpp>

#include <boost/json/serialize.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test/apps/process.hpp"
#include "workflow/json.hpp"

namespace json = boost::json;
namespace utf = boost::unit_test;
using troupe::test::child;
using troupe::test::contains;
using troupe::test::process_result;
using troupe::test::run_troupe;
using troupe::test::temp_dir;

namespace {

constexpr const char* echo_inputs = R"({
  "name": "echo_inputs",
  "inputs": { "n": {}, "s": {}, "u": {}, "q": { "default": null }, "e": { "default": null },
              "from_file": { "default": null } },
  "nodes": [ { "id": "show", "task": "echo", "with": "{{ inputs }}" } ],
  "outputs": { "inputs": "{{ nodes.show.output }}" }
})";

constexpr const char* needs_integer = R"({
  "name": "needs_integer",
  "inputs": { "x": { "type": "integer", "required": true } },
  "nodes": [ { "id": "twice", "task": "echo", "with": "{{ inputs.x * 2 }}" } ],
  "outputs": { "twice": "{{ nodes.twice.output }}" }
})";

constexpr const char* two_steps = R"({
  "name": "two_steps",
  "inputs": { "who": { "type": "string", "default": "world" } },
  "nodes": [
    { "id": "hello", "task": "echo", "with": "hello {{ inputs.who }}" },
    { "id": "each", "task": "echo", "for_each": "{{ [1, 2, 3] }}", "with": "{{ item }}" }
  ],
  "outputs": { "greeting": "{{ nodes.hello.output }}", "items": "{{ nodes.each.output }}" }
})";

constexpr const char* breaks = R"({
  "name": "breaks",
  "nodes": [
    { "id": "ok", "task": "echo", "with": 1 },
    { "id": "boom", "task": "fail", "needs": ["ok"], "with": { "message": "the widget broke" } }
  ]
})";

// The shell task outlives the cancellation unless the engine kills it, so it also checks that a
// cancelled run does not leave its processes behind to hold the pipes open.
constexpr const char* long_sleep = R"({
  "name": "long_sleep",
  "nodes": [
    { "id": "nap", "task": "sleep", "with": { "ms": 120000 } },
    { "id": "shell_nap", "task": "shell", "with": { "argv": ["sleep", "120"] } },
    { "id": "after", "task": "echo", "needs": ["nap"], "with": "never" }
  ]
})";

process_result troupe_in(const temp_dir& dir, const std::vector<std::string>& args) {
  return run_troupe(args, dir.path());
}

json::value parse_stdout(const process_result& r) {
  auto doc = troupe::parse_json(r.out);
  BOOST_TEST_REQUIRE(doc.has_value(),
                     "stdout is not one JSON document: " << r.out << "\nstderr: " << r.err);
  return *doc;
}

json::array errors_of(const process_result& r) {
  const json::value doc = parse_stdout(r);
  BOOST_TEST_REQUIRE(doc.is_object());
  const json::value* errors = doc.as_object().if_contains("errors");
  BOOST_TEST_REQUIRE(errors != nullptr, "no errors member in " << r.out);
  BOOST_TEST_REQUIRE(errors->is_array());
  BOOST_TEST_REQUIRE(!errors->as_array().empty());
  for (const auto& e : errors->as_array()) {
    BOOST_TEST_REQUIRE(e.is_object());
    BOOST_TEST(e.as_object().contains("pointer"));
    BOOST_TEST_REQUIRE(e.as_object().contains("message"));
    BOOST_TEST(!e.at("message").as_string().empty());
  }
  return errors->as_array();
}

/// The message of the error at `pointer`, or "" when no error has that pointer.
std::string message_at(const json::array& errors, const std::string& pointer) {
  for (const auto& e : errors) {
    if (e.at("pointer").as_string() == pointer) {
      return std::string(e.at("message").as_string());
    }
  }
  return {};
}

json::value outputs_of(const process_result& r) {
  const json::value doc = parse_stdout(r);
  return doc.at("outputs");
}

}  // namespace

BOOST_AUTO_TEST_SUITE(bad_usage)

BOOST_AUTO_TEST_CASE(a_missing_workflow_file_is_named_and_exits_2, *utf::timeout(60)) {
  temp_dir dir;
  const auto text = troupe_in(dir, {"run", "no-such-file.json"});
  BOOST_TEST(text.exit_code == 2);
  BOOST_TEST(text.out.empty());
  BOOST_TEST(contains(text.err, "no-such-file.json"));
  BOOST_TEST(contains(text.err, "No such file"));

  const auto doc = troupe_in(dir, {"run", "no-such-file.json", "--json"});
  BOOST_TEST(doc.exit_code == 2);
  BOOST_TEST(contains(std::string(errors_of(doc)[0].at("message").as_string()), "no-such-file"));
}

BOOST_AUTO_TEST_CASE(malformed_json_gives_an_errors_document_with_the_parse_error,
                     *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("broken.json", R"({"name": "x", "nodes": [)");
  const auto r = troupe_in(dir, {"run", file, "--json"});
  BOOST_TEST(r.exit_code == 2);
  const auto errors = errors_of(r);
  BOOST_TEST(errors.size() == 1u);
  BOOST_TEST(contains(std::string(errors[0].at("message").as_string()), "line 1"));

  const auto text = troupe_in(dir, {"run", file});
  BOOST_TEST(text.exit_code == 2);
  BOOST_TEST(contains(text.err, "line 1"));
}

BOOST_AUTO_TEST_CASE(an_invalid_workflow_lists_every_error_with_its_pointer, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("invalid.json", R"({
    "name": "Not A Valid Name",
    "nodes": [
      { "id": "a", "task": "echo" },
      { "id": "b", "task": "echo", "needs": ["missing"] },
      { "id": "a", "task": "echo", "surprise": true }
    ]
  })");
  const auto r = troupe_in(dir, {"run", file, "--json"});
  BOOST_TEST(r.exit_code == 2);
  const auto errors = errors_of(r);
  BOOST_TEST(errors.size() >= 4u);
  BOOST_TEST(!message_at(errors, "/name").empty());
  BOOST_TEST(contains(message_at(errors, "/nodes/1/needs/0"), "missing"));
  BOOST_TEST(contains(message_at(errors, "/nodes/2/id"), "duplicate"));
  BOOST_TEST(contains(message_at(errors, "/nodes/2/surprise"), "surprise"));

  // Text mode: the same errors, one per line on stderr, each with its pointer.
  const auto text = troupe_in(dir, {"run", file});
  BOOST_TEST(text.exit_code == 2);
  BOOST_TEST(text.out.empty());
  BOOST_TEST(contains(text.err, "/nodes/1/needs/0"));
  BOOST_TEST(contains(text.err, "/nodes/2/surprise"));
}

BOOST_AUTO_TEST_CASE(a_cycle_is_rejected_with_its_members_named, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("cycle.json", R"({
    "name": "cycle",
    "nodes": [
      { "id": "first", "task": "echo", "needs": ["third"] },
      { "id": "second", "task": "echo", "needs": ["first"] },
      { "id": "third", "task": "echo", "needs": ["second"] }
    ]
  })");
  const auto r = troupe_in(dir, {"run", file, "--json"});
  BOOST_TEST(r.exit_code == 2);
  const auto errors = errors_of(r);
  BOOST_TEST_REQUIRE(errors.size() == 1u);
  const std::string message(errors[0].at("message").as_string());
  BOOST_TEST(contains(message, "cycle"));
  BOOST_TEST(contains(message, "first"));
  BOOST_TEST(contains(message, "second"));
  BOOST_TEST(contains(message, "third"));
  BOOST_TEST(contains(std::string(errors[0].at("pointer").as_string()), "/nodes/"));
}

BOOST_AUTO_TEST_CASE(an_unknown_task_is_rejected_with_its_pointer, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("task.json", R"({
    "name": "unknown_task", "nodes": [ { "id": "x", "task": "teleport" } ] })");
  const auto r = troupe_in(dir, {"run", file, "--json"});
  BOOST_TEST(r.exit_code == 2);
  BOOST_TEST(contains(message_at(errors_of(r), "/nodes/0/task"), "teleport"));
}

BOOST_AUTO_TEST_CASE(a_missing_required_input_is_rejected_with_its_pointer, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("needs_integer.json", needs_integer);
  const auto r = troupe_in(dir, {"run", file, "--json"});
  BOOST_TEST(r.exit_code == 2);
  BOOST_TEST(contains(message_at(errors_of(r), "/inputs/x"), "x"));

  const auto text = troupe_in(dir, {"run", file});
  BOOST_TEST(text.exit_code == 2);
  BOOST_TEST(contains(text.err, "/inputs/x"));
}

BOOST_AUTO_TEST_CASE(an_input_of_the_wrong_type_or_unknown_is_rejected_with_its_pointer,
                     *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("needs_integer.json", needs_integer);
  const auto wrong = troupe_in(dir, {"run", file, "--json", "--input", "x=abc"});
  BOOST_TEST(wrong.exit_code == 2);
  BOOST_TEST(contains(message_at(errors_of(wrong), "/inputs/x"), "integer"));

  const auto unknown = troupe_in(dir, {"run", file, "--json", "--input", "x=1", "--input", "y=2"});
  BOOST_TEST(unknown.exit_code == 2);
  BOOST_TEST(!message_at(errors_of(unknown), "/inputs/y").empty());
}

BOOST_AUTO_TEST_CASE(an_unknown_option_prints_usage_on_stderr_and_exits_2, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  const auto r = troupe_in(dir, {"run", file, "--frobnicate"});
  BOOST_TEST(r.exit_code == 2);
  BOOST_TEST(r.out.empty());
  BOOST_TEST(contains(r.err, "--frobnicate"));
  BOOST_TEST(contains(r.err, "Usage"));
}

BOOST_AUTO_TEST_CASE(no_subcommand_or_an_unknown_one_prints_usage_and_exits_2, *utf::timeout(60)) {
  temp_dir dir;
  const auto none = troupe_in(dir, {});
  BOOST_TEST(none.exit_code == 2);
  BOOST_TEST(contains(none.err, "Usage"));
  BOOST_TEST(none.out.empty());

  const auto unknown = troupe_in(dir, {"launch", "x.json"});
  BOOST_TEST(unknown.exit_code == 2);
  BOOST_TEST(contains(unknown.err, "launch"));
  BOOST_TEST(contains(unknown.err, "Usage"));
}

BOOST_AUTO_TEST_CASE(help_prints_usage_on_stderr_and_exits_2, *utf::timeout(60)) {
  temp_dir dir;
  const auto top = troupe_in(dir, {"--help"});
  BOOST_TEST(top.exit_code == 2);
  BOOST_TEST(contains(top.err, "run"));
  BOOST_TEST(contains(top.err, "validate"));
  BOOST_TEST(contains(top.err, "runs"));

  const auto run = troupe_in(dir, {"run", "--help"});
  BOOST_TEST(run.exit_code == 2);
  BOOST_TEST(contains(run.err, "--input"));
  BOOST_TEST(contains(run.err, "--json"));
  BOOST_TEST(contains(run.err, "--db"));
  BOOST_TEST(contains(run.err, "--mode"));
}

BOOST_AUTO_TEST_CASE(an_input_without_an_equals_sign_is_rejected, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("needs_integer.json", needs_integer);
  const auto text = troupe_in(dir, {"run", file, "--input", "x"});
  BOOST_TEST(text.exit_code == 2);
  BOOST_TEST(contains(text.err, "NAME=VALUE"));

  const auto doc = troupe_in(dir, {"run", file, "--json", "--input", "x"});
  BOOST_TEST(doc.exit_code == 2);
  BOOST_TEST(contains(std::string(errors_of(doc)[0].at("message").as_string()), "NAME=VALUE"));
}

BOOST_AUTO_TEST_CASE(a_bad_thread_count_is_a_usage_error, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  const auto r = troupe_in(dir, {"run", file, "--threads", "-1"});
  BOOST_TEST(r.exit_code == 2);
  BOOST_TEST(contains(r.err, "--threads"));
}

BOOST_AUTO_TEST_CASE(an_oversized_document_is_refused_with_the_limit, *utf::timeout(60)) {
  temp_dir dir;
  const std::string huge = "{\"name\": \"huge\", \"description\": \"" +
                           std::string(20u << 20, 'x') + "\", \"nodes\": []}";
  const auto file = dir.write_file("huge.json", huge);
  const auto r = troupe_in(dir, {"run", file, "--json"});
  BOOST_TEST(r.exit_code == 2);
  const std::string message(errors_of(r)[0].at("message").as_string());
  BOOST_TEST(contains(message, "limit"));
  BOOST_TEST(contains(message, std::to_string(16u << 20)));

  const auto validate = troupe_in(dir, {"validate", file});
  BOOST_TEST(validate.exit_code == 2);
  BOOST_TEST(contains(validate.err, "limit"));
}

BOOST_AUTO_TEST_CASE(an_inputs_file_must_hold_a_json_object, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("echo_inputs.json", echo_inputs);
  const auto array = dir.write_file("array.json", "[1, 2]");
  const auto r = troupe_in(dir, {"run", file, "--json", "--inputs", array});
  BOOST_TEST(r.exit_code == 2);
  BOOST_TEST(contains(std::string(errors_of(r)[0].at("message").as_string()), "object"));

  const auto malformed = dir.write_file("malformed.json", "{\"n\": ");
  const auto bad = troupe_in(dir, {"run", file, "--inputs", malformed});
  BOOST_TEST(bad.exit_code == 2);
  BOOST_TEST(contains(bad.err, "malformed.json"));

  const auto missing = troupe_in(dir, {"run", file, "--inputs", "absent.json"});
  BOOST_TEST(missing.exit_code == 2);
  BOOST_TEST(contains(missing.err, "absent.json"));
}

BOOST_AUTO_TEST_CASE(a_registered_workflow_with_errors_is_reported_with_its_file,
                     *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  const auto child_file = dir.write_file("child.json", R"({"name": "child", "nodes": []})");
  const auto r = troupe_in(dir, {"run", file, "--json", "--register", child_file});
  BOOST_TEST(r.exit_code == 2);
  const auto errors = errors_of(r);
  BOOST_TEST(errors[0].at("file").as_string() == child_file);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(inputs)

BOOST_AUTO_TEST_CASE(input_values_are_json_when_they_parse_and_strings_otherwise,
                     *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("echo_inputs.json", echo_inputs);
  const auto r = troupe_in(dir, {"run", file, "--json", "--input", "n=3", "--input", "s=abc",
                                 "--input", R"(u=["a"])", "--input", R"(q="3")", "--input", "e="});
  BOOST_TEST_REQUIRE(r.exit_code == 0, r.err);
  const json::value expected = {{"n", 3},   {"s", "abc"}, {"u", json::array{"a"}},
                                {"q", "3"}, {"e", ""},    {"from_file", nullptr}};
  const json::value got = outputs_of(r).at("inputs");
  BOOST_TEST(got == expected, json::serialize(got) << " != " << json::serialize(expected));
}

BOOST_AUTO_TEST_CASE(input_flags_override_the_inputs_file, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("echo_inputs.json", echo_inputs);
  const auto inputs =
      dir.write_file("inputs.json", R"({"n": 1, "s": "from file", "u": [], "from_file": true})");
  const auto r = troupe_in(
      dir, {"run", file, "--json", "--inputs", inputs, "--input", "n=2", "--input", "u={}"});
  BOOST_TEST_REQUIRE(r.exit_code == 0, r.err);
  const json::value got = outputs_of(r).at("inputs");
  BOOST_TEST(got.at("n") == json::value(2));
  BOOST_TEST(got.at("s") == json::value("from file"));
  BOOST_TEST(got.at("u") == json::value(json::object{}));
  BOOST_TEST(got.at("from_file") == json::value(true));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(validate)

BOOST_AUTO_TEST_CASE(a_valid_workflow_is_reported_ok_in_both_modes, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  const auto text = troupe_in(dir, {"validate", file});
  BOOST_TEST(text.exit_code == 0);
  BOOST_TEST(contains(text.out, "ok: two_steps version 1, 2 nodes"));

  const auto doc = troupe_in(dir, {"validate", file, "--json"});
  BOOST_TEST(doc.exit_code == 0);
  const json::value v = parse_stdout(doc);
  BOOST_TEST(v.at("valid") == json::value(true));
  BOOST_TEST(v.at("name") == json::value("two_steps"));
  BOOST_TEST(v.at("version") == json::value("1"));
  BOOST_TEST(v.at("nodes").to_number<int>() == 2);
  BOOST_TEST(v.at("hash").as_string().size() == 32u);
}

BOOST_AUTO_TEST_CASE(an_invalid_workflow_is_reported_with_pointers_in_both_modes,
                     *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("bad.json", R"({
    "name": "bad", "nodes": [ { "id": "a", "task": "echo", "needs": ["ghost"] },
                              { "id": "b", "task": "nope" } ] })");
  const auto text = troupe_in(dir, {"validate", file});
  BOOST_TEST(text.exit_code == 2);
  BOOST_TEST(text.out.empty());
  BOOST_TEST(contains(text.err, "/nodes/0/needs/0"));
  BOOST_TEST(contains(text.err, "/nodes/1/task"));

  const auto doc = troupe_in(dir, {"validate", file, "--json"});
  BOOST_TEST(doc.exit_code == 2);
  const auto errors = errors_of(doc);
  BOOST_TEST(errors.size() == 2u);
  BOOST_TEST(contains(message_at(errors, "/nodes/0/needs/0"), "ghost"));
  BOOST_TEST(contains(message_at(errors, "/nodes/1/task"), "nope"));
}

BOOST_AUTO_TEST_CASE(validating_a_missing_file_exits_2, *utf::timeout(60)) {
  temp_dir dir;
  const auto r = troupe_in(dir, {"validate", "absent.json"});
  BOOST_TEST(r.exit_code == 2);
  BOOST_TEST(contains(r.err, "absent.json"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(running)

BOOST_AUTO_TEST_CASE(text_mode_shows_the_node_table_and_the_outputs, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  const auto r = troupe_in(dir, {"run", file, "--input", "who=table"});
  BOOST_TEST_REQUIRE(r.exit_code == 0, r.err);
  BOOST_TEST(contains(r.out, "two_steps"));
  BOOST_TEST(contains(r.out, "succeeded"));
  for (const char* column : {"NODE", "STATUS", "ATTEMPTS", "ITEMS", "CACHE", "DURATION", "ERROR"}) {
    BOOST_TEST(contains(r.out, column), column);
  }
  BOOST_TEST(contains(r.out, " ms"));
  BOOST_TEST(contains(r.out, "outputs:"));
  BOOST_TEST(contains(r.out, "\"greeting\": \"hello table\""));
  BOOST_TEST(contains(r.err, "started"));

  // Columns are aligned: the status column starts at the same offset on every table line.
  std::vector<std::string> lines;
  std::size_t begin = 0;
  for (std::size_t end; (end = r.out.find('\n', begin)) != std::string::npos; begin = end + 1) {
    lines.push_back(r.out.substr(begin, end - begin));
  }
  std::size_t header = 0;
  while (header < lines.size() && lines[header].rfind("NODE", 0) != 0) {
    ++header;
  }
  BOOST_TEST_REQUIRE(header + 2 < lines.size());
  const auto column = lines[header].find("STATUS");
  BOOST_TEST(lines[header + 1].rfind("hello ", 0) == 0u);
  BOOST_TEST(lines[header + 1].find("succeeded") == column);
  BOOST_TEST(lines[header + 2].rfind("each ", 0) == 0u);
  BOOST_TEST(lines[header + 2].find("succeeded") == column);
}

BOOST_AUTO_TEST_CASE(json_mode_prints_exactly_one_document_with_every_field, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  const auto r = troupe_in(dir, {"run", file, "--json"});
  BOOST_TEST_REQUIRE(r.exit_code == 0, r.err);
  const json::value doc = parse_stdout(r);
  for (const char* field : {"run_id", "workflow", "status", "outputs", "error", "nodes"}) {
    BOOST_TEST(doc.as_object().contains(field), field);
  }
  BOOST_TEST(doc.at("status") == json::value("succeeded"));
  BOOST_TEST(doc.at("error").is_null());
  const json::array& nodes = doc.at("nodes").as_array();
  BOOST_TEST_REQUIRE(nodes.size() == 2u);
  for (const auto& n : nodes) {
    for (const char* field : {"id", "status", "attempts", "duration_ms", "error", "cache"}) {
      BOOST_TEST(n.as_object().contains(field), field);
    }
  }
  BOOST_TEST(!nodes[0].as_object().contains("items"));
  BOOST_TEST(nodes[1].at("items").to_number<int>() == 3);
  BOOST_TEST(doc.at("outputs").at("items") == json::value(json::array{1, 2, 3}));
}

BOOST_AUTO_TEST_CASE(a_failing_run_exits_1_with_its_error, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("breaks.json", breaks);
  const auto text = troupe_in(dir, {"run", file});
  BOOST_TEST(text.exit_code == 1);
  BOOST_TEST(contains(text.out, "failed"));
  BOOST_TEST(contains(text.out, "the widget broke"));  // the node's error column
  BOOST_TEST(contains(text.err, "the widget broke"));
  BOOST_TEST(!contains(text.out, "outputs:"));

  const auto doc = troupe_in(dir, {"run", file, "--json"});
  BOOST_TEST(doc.exit_code == 1);
  const json::value v = parse_stdout(doc);
  BOOST_TEST(v.at("status") == json::value("failed"));
  BOOST_TEST(contains(std::string(v.at("error").as_string()), "the widget broke"));
  BOOST_TEST(v.at("nodes").at(1).at("status") == json::value("failed"));
}

BOOST_AUTO_TEST_CASE(progress_reports_node_events_on_stderr, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  const auto r = troupe_in(dir, {"run", file, "--json", "--progress"});
  BOOST_TEST_REQUIRE(r.exit_code == 0, r.err);
  BOOST_TEST(contains(r.err, "node hello started"));
  BOOST_TEST(contains(r.err, "node each[2] succeeded"));
  parse_stdout(r);  // stdout stays one JSON document
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(cancellation)

// The line "run <id> started" is written once the run exists; blocking on it (a read of the
// child's stderr) orders the signal after the start without any sleep.
void interrupt_and_expect_cancelled(int signal, std::vector<std::string> extra_args,
                                    bool json_mode) {
  temp_dir dir;
  const auto file = dir.write_file("long_sleep.json", long_sleep);
  std::vector<std::string> args = {"run", file};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  child c(args, dir.path());
  BOOST_TEST_REQUIRE(c.wait_for_stderr(" started"));
  const auto sent = std::chrono::steady_clock::now();
  c.send(signal);
  const process_result r = c.finish();
  const auto took = std::chrono::steady_clock::now() - sent;
  BOOST_TEST(r.signal == 0, "killed by signal " << r.signal);
  BOOST_TEST(r.exit_code == 1, r.err);
  BOOST_TEST(took < std::chrono::seconds(10));
  if (json_mode) {
    const json::value doc = parse_stdout(r);
    BOOST_TEST(doc.at("status") == json::value("cancelled"));
    for (const auto& n : doc.at("nodes").as_array()) {
      BOOST_TEST(n.at("status") == json::value("cancelled"), n.at("id"));
    }
  } else {
    BOOST_TEST(contains(r.out, "cancelled"));
    BOOST_TEST(contains(r.err, "cancelling"));
  }
}

BOOST_AUTO_TEST_CASE(sigint_during_a_long_run_cancels_it_and_exits_1, *utf::timeout(60)) {
  interrupt_and_expect_cancelled(SIGINT, {}, false);
}

BOOST_AUTO_TEST_CASE(sigterm_in_json_mode_cancels_the_run_and_prints_its_document,
                     *utf::timeout(60)) {
  interrupt_and_expect_cancelled(SIGTERM, {"--json", "--progress"}, true);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(execution_log)

// Three nodes, the middle one failing its first attempt: the log must hold both attempts. The
// marker lives in the child's working directory (a fresh temp_dir), so every run starts afresh.
constexpr const char* logged = R"({
  "name": "logged",
  "nodes": [
    { "id": "first", "task": "echo", "with": "a" },
    { "id": "flaky", "task": "shell", "needs": ["first"],
      "with": { "command": "if [ -e marker ]; then echo recovered; else touch marker; exit 3; fi" },
      "retry": { "max_attempts": 3, "backoff_ms": 1 } },
    { "id": "last", "task": "echo", "needs": ["flaky"], "with": "{{ nodes.flaky.output.stdout }}" }
  ]
})";

std::string db_url(const temp_dir& dir) {
  return "sqlite://" + (dir.path() / "log.db").string();
}

/// Runs `file` with `args` in `dir` in JSON mode and returns the new run's id.
std::string run_logged(const temp_dir& dir, const std::string& file,
                       const std::vector<std::string>& args, int expected_exit = 0) {
  std::vector<std::string> all = {"run", file, "--json", "--db", db_url(dir)};
  all.insert(all.end(), args.begin(), args.end());
  const auto r = troupe_in(dir, all);
  BOOST_TEST_REQUIRE(r.exit_code == expected_exit, r.err);
  // The writer's acknowledgements once reached the run actor as unhandled messages, which CAF
  // prints on stderr: a symptom of a broken commit protocol even when the run succeeds.
  BOOST_TEST(!contains(r.err, "unexpected message"), r.err);
  return std::string(parse_stdout(r).at("run_id").as_string());
}

json::array listed_runs(const temp_dir& dir, const std::vector<std::string>& args = {}) {
  std::vector<std::string> all = {"runs", "list", "--db", db_url(dir), "--json"};
  all.insert(all.end(), args.begin(), args.end());
  const auto r = troupe_in(dir, all);
  BOOST_TEST_REQUIRE(r.exit_code == 0, r.err);
  return parse_stdout(r).at("runs").as_array();
}

/// "node/attempt/status" for every row of `runs show --json`, in the order given.
std::vector<std::string> node_executions(const json::value& shown) {
  std::vector<std::string> rows;
  for (const auto& n : shown.at("nodes").as_array()) {
    rows.push_back(std::string(n.at("node_id").as_string()) + "/" +
                   std::to_string(n.at("attempt").to_number<int>()) + "/" +
                   std::string(n.at("status").as_string()));
  }
  std::sort(rows.begin(), rows.end());
  return rows;
}

// Whatever the mode, the process has committed the whole run by the time it exits: a second
// process reads it back complete.
void expect_the_run_logged_completely(const std::string& mode) {
  temp_dir dir;
  const auto file = dir.write_file("logged.json", logged);
  const std::string id = run_logged(dir, file, {"--mode", mode});

  const json::array runs = listed_runs(dir);
  BOOST_TEST_REQUIRE(runs.size() == 1u);
  const json::value& run = runs[0];
  BOOST_TEST(run.at("run_id") == json::value(id));
  BOOST_TEST(run.at("workflow") == json::value("logged"));
  BOOST_TEST(run.at("version") == json::value("1"));
  BOOST_TEST(run.at("status") == json::value("succeeded"));
  BOOST_TEST(run.at("error").is_null());
  BOOST_TEST(run.at("started_at").is_string());
  BOOST_TEST(run.at("finished_at").is_string());
  BOOST_TEST(run.at("duration_ms").is_number());

  const auto show = troupe_in(dir, {"runs", "show", id, "--db", db_url(dir), "--json"});
  BOOST_TEST_REQUIRE(show.exit_code == 0, show.err);
  const json::value shown = parse_stdout(show);
  BOOST_TEST(shown.at("run").at("run_id") == json::value(id));
  BOOST_TEST(shown.at("run").at("status") == json::value("succeeded"));
  BOOST_TEST(shown.at("run").at("outputs").is_object());
  const std::vector<std::string> expected = {"first/1/succeeded", "flaky/1/failed",
                                             "flaky/2/succeeded", "last/1/succeeded"};
  BOOST_TEST(node_executions(shown) == expected, boost::test_tools::per_element());
  for (const auto& n : shown.at("nodes").as_array()) {
    for (const char* field : {"item", "duration_ms", "error", "cache", "input", "output"}) {
      BOOST_TEST(n.as_object().contains(field), field);
    }
    if (n.at("node_id") == json::value("flaky") && n.at("attempt") == json::value(1)) {
      BOOST_TEST(contains(std::string(n.at("error").as_string()), "exit code 3"));
    }
  }

  const auto text = troupe_in(dir, {"runs", "show", id, "--db", db_url(dir)});
  BOOST_TEST_REQUIRE(text.exit_code == 0, text.err);
  BOOST_TEST(contains(text.out, "run " + id + " (logged version 1) succeeded"));
  for (const char* column : {"NODE", "ATTEMPT", "STATUS", "CACHE", "DURATION", "ERROR"}) {
    BOOST_TEST(contains(text.out, column), column);
  }
}

// examples/dynamic.json twice on one database: the second run's generator is a spec cache
// hit, and the log links each child run to its parent both ways.
BOOST_AUTO_TEST_CASE(dynamic_children_are_linked_in_the_log_and_the_spec_is_reused,
                     *utf::timeout(60)) {
  temp_dir dir;
  const std::string file = std::string(TROUPE_SOURCE_DIR) + "/examples/dynamic.json";
  std::vector<std::string> args = {"run", file, "--json", "--db", db_url(dir), "--mode", "durable"};
  const auto first = troupe_in(dir, args);
  BOOST_TEST_REQUIRE(first.exit_code == 0, first.err);
  const auto second = troupe_in(dir, args);
  BOOST_TEST_REQUIRE(second.exit_code == 0, second.err);
  const json::value a = parse_stdout(first), b = parse_stdout(second);
  BOOST_TEST(a.at("nodes").as_array().at(0).at("spec_cache") == json::value("miss"));
  BOOST_TEST(b.at("nodes").as_array().at(0).at("spec_cache") == json::value("hit"));
  BOOST_TEST(b.at("nodes").as_array().at(0).at("cache") == json::value("hit"));
  BOOST_TEST(b.at("outputs") == a.at("outputs"));
  const std::string parent(b.at("run_id").as_string());
  const std::string child(b.at("nodes").as_array().at(0).at("child_run").as_string());

  const json::array children = listed_runs(dir, {"--parent", parent});
  BOOST_TEST_REQUIRE(children.size() == 1u);
  BOOST_TEST(children[0].at("run_id") == json::value(child));
  BOOST_TEST(children[0].at("workflow") == json::value("squares"));

  const auto show_child = troupe_in(dir, {"runs", "show", child, "--db", db_url(dir), "--json"});
  BOOST_TEST_REQUIRE(show_child.exit_code == 0, show_child.err);
  const json::value c = parse_stdout(show_child);
  BOOST_TEST(c.at("run").at("parent_run_id") == json::value(parent));
  BOOST_TEST(c.at("run").at("parent_node_id") == json::value("generate"));
  const auto show_parent = troupe_in(dir, {"runs", "show", parent, "--db", db_url(dir), "--json"});
  BOOST_TEST_REQUIRE(show_parent.exit_code == 0, show_parent.err);
  bool linked = false;
  const json::value p = parse_stdout(show_parent);
  for (const auto& n : p.at("nodes").as_array()) {
    if (n.at("node_id") == json::value("generate")) {
      linked = n.at("child_run_id") == json::value(child) &&
               n.at("spec_cache") == json::value("hit");
    }
  }
  BOOST_TEST(linked);
  const auto text = troupe_in(dir, {"runs", "show", parent, "--db", db_url(dir)});
  BOOST_TEST(contains(text.out, "CHILD RUN"), text.out);
  BOOST_TEST(contains(text.out, child), text.out);
}

BOOST_AUTO_TEST_CASE(a_durable_run_is_listed_and_shows_every_node_execution, *utf::timeout(60)) {
  expect_the_run_logged_completely("durable");
}

BOOST_AUTO_TEST_CASE(an_async_run_is_logged_completely_by_the_time_the_process_exits,
                     *utf::timeout(60)) {
  expect_the_run_logged_completely("async");
}

BOOST_AUTO_TEST_CASE(a_sync_run_with_tiny_batches_is_logged_completely, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("logged.json", logged);
  run_logged(dir, file, {"--mode", "sync", "--batch-max", "1", "--flush-ms", "0"});
  BOOST_TEST(listed_runs(dir).at(0).at("status") == json::value("succeeded"));
}

BOOST_AUTO_TEST_CASE(memory_mode_writes_no_database, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  const auto r = troupe_in(dir, {"run", file, "--mode", "memory", "--db", db_url(dir)});
  BOOST_TEST_REQUIRE(r.exit_code == 0, r.err);
  BOOST_TEST(!contains(r.out, "log:"));
  BOOST_TEST(!std::filesystem::exists(dir.path() / "log.db"));
  BOOST_TEST(!std::filesystem::exists(dir.path() / "troupe.db"));
}

BOOST_AUTO_TEST_CASE(by_default_the_log_goes_to_troupe_db_and_text_mode_says_so,
                     *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  const auto r = troupe_in(dir, {"run", file});
  BOOST_TEST_REQUIRE(r.exit_code == 0, r.err);
  BOOST_TEST(std::filesystem::exists(dir.path() / "troupe.db"));
  const auto at = r.out.find("\nlog: sqlite://troupe.db (run ");
  BOOST_TEST_REQUIRE(at != std::string::npos, r.out);
  BOOST_TEST(at > r.out.find("outputs:"));  // after the outputs

  const auto list = troupe_in(dir, {"runs", "list"});
  BOOST_TEST_REQUIRE(list.exit_code == 0, list.err);
  for (const char* column : {"RUN", "WORKFLOW", "VERSION", "STATUS", "STARTED", "DURATION"}) {
    BOOST_TEST(contains(list.out, column), column);
  }
  BOOST_TEST(contains(list.out, "two_steps"));
}

BOOST_AUTO_TEST_CASE(runs_list_filters_by_status_and_workflow_and_limits_newest_first,
                     *utf::timeout(60)) {
  temp_dir dir;
  const auto ok_file = dir.write_file("two_steps.json", two_steps);
  const auto bad_file = dir.write_file("breaks.json", breaks);
  const std::string first = run_logged(dir, ok_file, {});
  const std::string failed = run_logged(dir, bad_file, {}, 1);
  const std::string last = run_logged(dir, ok_file, {});

  const json::array all = listed_runs(dir);
  BOOST_TEST_REQUIRE(all.size() == 3u);
  BOOST_TEST(all[0].at("run_id") == json::value(last));
  BOOST_TEST(all[2].at("run_id") == json::value(first));

  const json::array failures = listed_runs(dir, {"--status", "failed"});
  BOOST_TEST_REQUIRE(failures.size() == 1u);
  BOOST_TEST(failures[0].at("run_id") == json::value(failed));
  BOOST_TEST(failures[0].at("workflow") == json::value("breaks"));
  BOOST_TEST(contains(std::string(failures[0].at("error").as_string()), "the widget broke"));

  BOOST_TEST(listed_runs(dir, {"--status", "cancelled"}).empty());
  BOOST_TEST(listed_runs(dir, {"--workflow", "two_steps"}).size() == 2u);

  const json::array newest = listed_runs(dir, {"--limit", "2"});
  BOOST_TEST_REQUIRE(newest.size() == 2u);
  BOOST_TEST(newest[0].at("run_id") == json::value(last));
  BOOST_TEST(newest[1].at("run_id") == json::value(failed));
  BOOST_TEST(listed_runs(dir, {"--limit", "0"}).size() == 3u);
}

BOOST_AUTO_TEST_CASE(showing_an_unknown_run_exits_1_naming_the_database, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  run_logged(dir, file, {});
  const auto r = troupe_in(dir, {"runs", "show", "no-such-run", "--db", db_url(dir)});
  BOOST_TEST(r.exit_code == 1);
  BOOST_TEST(r.out.empty());
  BOOST_TEST(contains(r.err, "no run 'no-such-run' in " + db_url(dir)));

  const auto doc = troupe_in(dir, {"runs", "show", "no-such-run", "--db", db_url(dir), "--json"});
  BOOST_TEST(doc.exit_code == 1);
  BOOST_TEST(contains(std::string(errors_of(doc)[0].at("message").as_string()), "no-such-run"));
}

BOOST_AUTO_TEST_CASE(a_bad_mode_status_or_writer_setting_is_a_usage_error, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  const auto mode = troupe_in(dir, {"run", file, "--mode", "fast"});
  BOOST_TEST(mode.exit_code == 2);
  BOOST_TEST(mode.out.empty());
  BOOST_TEST(contains(mode.err, "--mode"));
  BOOST_TEST(contains(mode.err, "'fast'"));
  BOOST_TEST(contains(mode.err, "durable"));

  const auto status = troupe_in(dir, {"runs", "list", "--status", "bogus"});
  BOOST_TEST(status.exit_code == 2);
  BOOST_TEST(contains(status.err, "'bogus'"));
  for (const char* name : {"pending", "running", "succeeded", "failed", "cancelled", "timed_out"}) {
    BOOST_TEST(contains(status.err, name), name);
  }

  BOOST_TEST(troupe_in(dir, {"run", file, "--batch-max", "0"}).exit_code == 2);
  BOOST_TEST(troupe_in(dir, {"run", file, "--flush-ms", "-1"}).exit_code == 2);
  BOOST_TEST(troupe_in(dir, {"runs", "list", "--limit", "-1"}).exit_code == 2);
  BOOST_TEST(troupe_in(dir, {"runs"}).exit_code == 2);
  BOOST_TEST(troupe_in(dir, {"runs", "show"}).exit_code == 2);
  // None of these got as far as opening the default store.
  BOOST_TEST(!std::filesystem::exists(dir.path() / "troupe.db"));
}

BOOST_AUTO_TEST_CASE(a_store_that_cannot_be_opened_exits_2_naming_it, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("two_steps.json", two_steps);
  const std::string bad = "sqlite:///nonexistent/dir/x.db";
  const auto text = troupe_in(dir, {"run", file, "--db", bad});
  BOOST_TEST(text.exit_code == 2);
  BOOST_TEST(text.out.empty());
  BOOST_TEST(contains(text.err, "cannot open store '" + bad + "': "), text.err);

  const auto doc = troupe_in(dir, {"run", file, "--db", bad, "--json"});
  BOOST_TEST(doc.exit_code == 2);
  BOOST_TEST(contains(std::string(errors_of(doc)[0].at("message").as_string()),
                      "cannot open store '" + bad + "'"));

  const auto unknown = troupe_in(dir, {"run", file, "--db", "mysql://x"});
  BOOST_TEST(unknown.exit_code == 2);
  BOOST_TEST(contains(unknown.err, "mysql://x"));

  // Reading must not create a database where there was none.
  const auto list = troupe_in(dir, {"runs", "list", "--db", db_url(dir)});
  BOOST_TEST(list.exit_code == 2);
  BOOST_TEST(contains(list.err, "cannot open store '" + db_url(dir) + "'"));
  BOOST_TEST(!std::filesystem::exists(dir.path() / "log.db"));
}

// A run that failed is resumed: what succeeded (and appended its line) is not run again, what
// failed runs with attempt numbers after the recorded ones.
BOOST_AUTO_TEST_CASE(runs_resume_reruns_only_what_did_not_succeed, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("resumable.json", R"({
    "name": "resumable",
    "nodes": [
      { "id": "effect", "task": "shell", "with": { "command": "echo ran >> effects.txt" } },
      { "id": "gate", "task": "shell", "needs": ["effect"],
        "with": { "command": "test -e open || { echo closed >&2; exit 4; }" } },
      { "id": "after", "task": "echo", "needs": ["gate"], "with": "done" }
    ],
    "outputs": { "after": "{{ nodes.after.output }}" }
  })");
  const std::string id = run_logged(dir, file, {"--mode", "durable"}, 1);
  dir.write_file("open", "");
  const auto r = troupe_in(dir, {"runs", "resume", id, "--db", db_url(dir), "--json"});
  BOOST_TEST_REQUIRE(r.exit_code == 0, r.err);
  const json::value result = parse_stdout(r);
  BOOST_TEST(result.at("status").as_string() == "succeeded");
  BOOST_TEST(result.at("run_id").as_string() == id);
  BOOST_TEST(json::serialize(result.at("outputs")) == R"({"after":"done"})");
  std::ifstream effects(dir.path() / "effects.txt");
  std::string line;
  int lines = 0;
  while (std::getline(effects, line)) {
    ++lines;
  }
  BOOST_TEST(lines == 1);  // `effect` succeeded the first time: not run again
  const auto shown = troupe_in(dir, {"runs", "show", id, "--db", db_url(dir), "--json"});
  BOOST_TEST_REQUIRE(shown.exit_code == 0, shown.err);
  const auto rows = node_executions(parse_stdout(shown));
  BOOST_TEST(std::count(rows.begin(), rows.end(), "gate/1/failed") == 1);
  BOOST_TEST(std::count(rows.begin(), rows.end(), "gate/2/succeeded") == 1);
  BOOST_TEST(std::count(rows.begin(), rows.end(), "effect/1/succeeded") == 1);
  // Resuming a run that succeeded, or one that does not exist, is refused.
  BOOST_TEST(troupe_in(dir, {"runs", "resume", id, "--db", db_url(dir)}).exit_code == 1);
  BOOST_TEST(troupe_in(dir, {"runs", "resume", "nope", "--db", db_url(dir)}).exit_code == 1);
}

// A cached node's output is reused by the next process on the same database, listed by
// `troupe cache list` and gone after `troupe cache clear`.
BOOST_AUTO_TEST_CASE(cache_entries_are_reused_listed_and_cleared, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = dir.write_file("memo.json", R"({
    "name": "memo",
    "nodes": [
      { "id": "slow", "task": "shell", "cache": { "version": "v1" },
        "with": { "command": "echo ran >> effects.txt; echo 42", "output": "json" } }
    ],
    "outputs": { "v": "{{ nodes.slow.output }}" }
  })");
  run_logged(dir, file, {"--mode", "durable"});
  const auto second = troupe_in(dir, {"run", file, "--json", "--db", db_url(dir)});
  BOOST_TEST_REQUIRE(second.exit_code == 0, second.err);
  const json::value result = parse_stdout(second);
  BOOST_TEST(json::serialize(result.at("outputs")) == R"({"v":42})");
  BOOST_TEST(result.at("nodes").as_array().at(0).at("cache").as_string() == "hit");
  std::ifstream effects(dir.path() / "effects.txt");
  std::string line;
  int lines = 0;
  while (std::getline(effects, line)) {
    ++lines;
  }
  BOOST_TEST(lines == 1);

  const auto listed = troupe_in(dir, {"cache", "list", "--db", db_url(dir), "--json"});
  BOOST_TEST_REQUIRE(listed.exit_code == 0, listed.err);
  const auto entries = parse_stdout(listed).at("entries").as_array();
  BOOST_TEST_REQUIRE(entries.size() == 1u);
  BOOST_TEST(entries[0].at("workflow").as_string() == "memo");
  BOOST_TEST(json::serialize(entries[0].at("value")) == "42");
  const auto other =
      troupe_in(dir, {"cache", "list", "--workflow", "other", "--db", db_url(dir), "--json"});
  BOOST_TEST(parse_stdout(other).at("entries").as_array().empty());

  const auto cleared = troupe_in(dir, {"cache", "clear", "--db", db_url(dir), "--json"});
  BOOST_TEST_REQUIRE(cleared.exit_code == 0, cleared.err);
  BOOST_TEST(parse_stdout(cleared).at("removed").to_number<int>() == 1);
  const auto after = troupe_in(dir, {"cache", "list", "--db", db_url(dir), "--json"});
  BOOST_TEST(parse_stdout(after).at("entries").as_array().empty());
}

BOOST_AUTO_TEST_SUITE_END()
