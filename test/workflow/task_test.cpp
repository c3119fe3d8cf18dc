#define BOOST_TEST_MODULE workflow_task
#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

#include "workflow/task.hpp"

using namespace troupe;

namespace {

task_result call(const task_registry& r, std::string_view name, const json::value& input) {
  const task_def* def = r.find(name);
  BOOST_TEST_REQUIRE(def != nullptr);
  BOOST_TEST_REQUIRE(static_cast<bool>(def->run));
  return def->run(input, task_call{"run-1", "node", -1, 1});
}

task_def quick(std::string name) {
  return {std::move(name),
          task_kind::quick,
          [](const json::value&, const task_call&) { return task_result::success(1); },
          {},
          ""};
}

}  // namespace

BOOST_AUTO_TEST_CASE(task_kinds_have_their_names) {
  BOOST_TEST(to_string(task_kind::quick) == "quick");
  BOOST_TEST(to_string(task_kind::blocking) == "blocking");
  BOOST_TEST(to_string(task_kind::async) == "async");
  BOOST_TEST(to_string(task_kind::builtin) == "builtin");
}

BOOST_AUTO_TEST_CASE(builtins_hold_the_model_tasks_and_the_actor_layer_names) {
  const auto r = task_registry::with_builtins();
  for (const char* name : {"noop", "echo", "fail"}) {
    BOOST_TEST_REQUIRE(r.find(name) != nullptr, name);
    BOOST_TEST((r.find(name)->kind == task_kind::quick), name);
    BOOST_TEST(r.find(name)->name == name);
  }
  for (const char* name : {"sleep", "shell", "http", "workflow"}) {
    BOOST_TEST_REQUIRE(r.find(name) != nullptr, name);
    BOOST_TEST((r.find(name)->kind == task_kind::builtin), name);
    BOOST_TEST(!r.find(name)->run, name);
  }
  const std::vector<std::string> expected = {"echo",  "fail",  "http",    "noop",
                                             "shell", "sleep", "workflow"};
  BOOST_TEST(r.names() == expected, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(noop_outputs_null_whatever_its_input) {
  const auto r = task_registry::with_builtins();
  const auto res = call(r, "noop", json::value{{"a", 1}});
  BOOST_TEST(res.ok);
  BOOST_TEST(res.output.is_null());
}

BOOST_AUTO_TEST_CASE(echo_outputs_its_input) {
  const auto r = task_registry::with_builtins();
  const json::value input = {{"a", json::array{1, "two", nullptr}}, {"b", true}};
  const auto res = call(r, "echo", input);
  BOOST_TEST(res.ok);
  BOOST_TEST(res.output == input);
}

BOOST_AUTO_TEST_CASE(fail_fails_with_its_message) {
  const auto r = task_registry::with_builtins();
  const auto res = call(r, "fail", json::value{{"message", "disk full"}});
  BOOST_TEST(!res.ok);
  BOOST_TEST(res.error == "disk full");
}

BOOST_AUTO_TEST_CASE(fail_without_a_string_message_says_failed) {
  const auto r = task_registry::with_builtins();
  for (const json::value& input :
       {json::value(nullptr), json::value{{"message", 3}}, json::value("message")}) {
    const auto res = call(r, "fail", input);
    BOOST_TEST(!res.ok);
    BOOST_TEST(res.error == "failed");
  }
}

BOOST_AUTO_TEST_CASE(add_rejects_unusable_definitions_and_changes_nothing) {
  auto r = task_registry::with_builtins();
  const auto before = r.names();
  BOOST_TEST(!r.add(quick("")));
  BOOST_TEST(!r.add({"q", task_kind::quick, {}, {}, ""}));
  BOOST_TEST(!r.add({"b", task_kind::blocking, {}, {}, ""}));
  BOOST_TEST(!r.add({"a", task_kind::async, {}, {}, ""}));
  // An async task needs `start`; a `run` alone is not enough.
  BOOST_TEST(!r.add({"a", task_kind::async, quick("x").run, {}, ""}));
  BOOST_TEST(r.names() == before, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(add_accepts_each_kind_with_its_function) {
  task_registry r;
  BOOST_TEST(r.add(quick("q")));
  BOOST_TEST(r.add({"b", task_kind::blocking, quick("x").run, {}, ""}));
  BOOST_TEST(r.add(
      {"a",
       task_kind::async,
       {},
       [](const json::value&, const task_call&, completion done) { done(task_result::success(2)); },
       ""}));
  BOOST_TEST(r.add({"n", task_kind::builtin, {}, {}, "name only"}));
  const std::vector<std::string> expected = {"a", "b", "n", "q"};
  BOOST_TEST(r.names() == expected, boost::test_tools::per_element());
  BOOST_TEST((r.find("a")->kind == task_kind::async));
}

BOOST_AUTO_TEST_CASE(add_replaces_a_task_of_the_same_name) {
  auto r = task_registry::with_builtins();
  BOOST_TEST(r.add({"echo",
                    task_kind::quick,
                    [](const json::value&, const task_call&) { return task_result::success(7); },
                    {},
                    "replaced"}));
  BOOST_TEST(r.find("echo")->summary == "replaced");
  BOOST_TEST(call(r, "echo", "x").output == json::value(7));
  BOOST_TEST(r.names().size() == 7u);
}

BOOST_AUTO_TEST_CASE(unknown_names_are_not_found) {
  const auto r = task_registry::with_builtins();
  BOOST_TEST(r.find("nope") == nullptr);
  BOOST_TEST(r.find("") == nullptr);
  BOOST_TEST(!r.contains("Echo"));
  BOOST_TEST(r.contains("echo"));
  BOOST_TEST(task_registry{}.names().empty());
}
