#define BOOST_TEST_MODULE apps_cli
#include <boost/test/unit_test.hpp>

#include <boost/json/serialize.hpp>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "test/apps/process.hpp"
#include "workflow/json.hpp"

namespace json = boost::json;
namespace utf = boost::unit_test;
using troupe::test::child;
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

std::string write_file(const temp_dir& dir, const std::string& name, const std::string& text) {
  const auto path = dir.path() / name;
  std::ofstream out(path, std::ios::binary);
  out << text;
  return path.string();
}

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

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
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
  const auto file = write_file(dir, "broken.json", R"({"name": "x", "nodes": [)");
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
  const auto file = write_file(dir, "invalid.json", R"({
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
  const auto file = write_file(dir, "cycle.json", R"({
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
  const auto file = write_file(dir, "task.json", R"({
    "name": "unknown_task", "nodes": [ { "id": "x", "task": "teleport" } ] })");
  const auto r = troupe_in(dir, {"run", file, "--json"});
  BOOST_TEST(r.exit_code == 2);
  BOOST_TEST(contains(message_at(errors_of(r), "/nodes/0/task"), "teleport"));
}

BOOST_AUTO_TEST_CASE(a_missing_required_input_is_rejected_with_its_pointer, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = write_file(dir, "needs_integer.json", needs_integer);
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
  const auto file = write_file(dir, "needs_integer.json", needs_integer);
  const auto wrong = troupe_in(dir, {"run", file, "--json", "--input", "x=abc"});
  BOOST_TEST(wrong.exit_code == 2);
  BOOST_TEST(contains(message_at(errors_of(wrong), "/inputs/x"), "integer"));

  const auto unknown = troupe_in(dir, {"run", file, "--json", "--input", "x=1", "--input", "y=2"});
  BOOST_TEST(unknown.exit_code == 2);
  BOOST_TEST(!message_at(errors_of(unknown), "/inputs/y").empty());
}

BOOST_AUTO_TEST_CASE(an_unknown_option_prints_usage_on_stderr_and_exits_2, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = write_file(dir, "two_steps.json", two_steps);
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

  const auto run = troupe_in(dir, {"run", "--help"});
  BOOST_TEST(run.exit_code == 2);
  BOOST_TEST(contains(run.err, "--input"));
  BOOST_TEST(contains(run.err, "--json"));
}

BOOST_AUTO_TEST_CASE(an_input_without_an_equals_sign_is_rejected, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = write_file(dir, "needs_integer.json", needs_integer);
  const auto text = troupe_in(dir, {"run", file, "--input", "x"});
  BOOST_TEST(text.exit_code == 2);
  BOOST_TEST(contains(text.err, "NAME=VALUE"));

  const auto doc = troupe_in(dir, {"run", file, "--json", "--input", "x"});
  BOOST_TEST(doc.exit_code == 2);
  BOOST_TEST(contains(std::string(errors_of(doc)[0].at("message").as_string()), "NAME=VALUE"));
}

BOOST_AUTO_TEST_CASE(a_bad_thread_count_is_a_usage_error, *utf::timeout(60)) {
  temp_dir dir;
  const auto file = write_file(dir, "two_steps.json", two_steps);
  const auto r = troupe_in(dir, {"run", file, "--threads", "-1"});
  BOOST_TEST(r.exit_code == 2);
  BOOST_TEST(contains(r.err, "--threads"));
}

BOOST_AUTO_TEST_CASE(an_oversized_document_is_refused_with_the_limit, *utf::timeout(60)) {
  temp_dir dir;
  const std::string huge = "{\"name\": \"huge\", \"description\": \"" +
                           std::string(20u << 20, 'x') + "\", \"nodes\": []}";
  const auto file = write_file(dir, "huge.json", huge);
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
  const auto file = write_file(dir, "echo_inputs.json", echo_inputs);
  const auto array = write_file(dir, "array.json", "[1, 2]");
  const auto r = troupe_in(dir, {"run", file, "--json", "--inputs", array});
  BOOST_TEST(r.exit_code == 2);
  BOOST_TEST(contains(std::string(errors_of(r)[0].at("message").as_string()), "object"));

  const auto malformed = write_file(dir, "malformed.json", "{\"n\": ");
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
  const auto file = write_file(dir, "two_steps.json", two_steps);
  const auto child_file = write_file(dir, "child.json", R"({"name": "child", "nodes": []})");
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
  const auto file = write_file(dir, "echo_inputs.json", echo_inputs);
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
  const auto file = write_file(dir, "echo_inputs.json", echo_inputs);
  const auto inputs =
      write_file(dir, "inputs.json", R"({"n": 1, "s": "from file", "u": [], "from_file": true})");
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
  const auto file = write_file(dir, "two_steps.json", two_steps);
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
  const auto file = write_file(dir, "bad.json", R"({
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
  const auto file = write_file(dir, "two_steps.json", two_steps);
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
  const auto file = write_file(dir, "two_steps.json", two_steps);
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
  const auto file = write_file(dir, "breaks.json", breaks);
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
  const auto file = write_file(dir, "two_steps.json", two_steps);
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
  const auto file = write_file(dir, "long_sleep.json", long_sleep);
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
