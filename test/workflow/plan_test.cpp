#define BOOST_TEST_MODULE workflow_plan
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

#include "workflow/plan.hpp"
#include "workflow/task.hpp"

using namespace troupe;

namespace {

// Uses every field of the format. Node order differs from topological order on purpose.
constexpr const char* every_field = R"({
  "name": "every-field.v2_x",
  "version": "7",
  "description": "uses every field",
  "inputs": {
    "urls": {"type": "array", "required": true},
    "size": {"type": "integer", "default": 128},
    "label": {"type": "string", "required": false, "default": "x"},
    "anything": {}
  },
  "vars": {"seen": 0, "greeting": "hello {{ inputs.label }}"},
  "nodes": [
    {"id": "fetch", "task": "echo", "for_each": "{{ inputs.urls }}", "concurrency": 4,
     "with": {"url": "{{ item }}", "i": "{{ index }}"},
     "retry": {"max_attempts": 3, "backoff_ms": 10, "factor": 1.5, "max_backoff_ms": 100},
     "timeout_ms": 500, "on_error": "continue", "cache": {"version": "v2"}},
    {"id": "last", "task": "noop", "needs": ["side", "gen"], "with": [1, "{{ vars.total }}"],
     "for_each": [1, 2, 3]},
    {"id": "gen", "task": "echo", "needs": ["fetch"], "when": "{{ len(nodes.fetch.output) > 0 }}",
     "dynamic": {"inputs": {"n": "{{ inputs.size }}"}}, "cache": {}, "on_error": "fail",
     "publish": {"total": "{{ output }}", "seen": "{{ 1 }}"}},
    {"id": "side", "task": "noop", "dynamic": {}, "publish": {"extra": "{{ output }}"}}
  ],
  "outputs": {"total": "{{ vars.total }}", "literal": 5},
  "max_concurrency": 16,
  "timeout_ms": 60000
})";

// The example of WORKFLOW_FORMAT.md, verbatim.
constexpr const char* format_example = R"({
  "name": "thumbnails",
  "inputs": { "urls": { "type": "array", "required": true }, "size": { "type": "integer", "default": 128 } },
  "nodes": [
    { "id": "resize", "task": "echo", "for_each": "{{ inputs.urls }}", "concurrency": 8,
      "with": { "url": "{{ item }}", "px": "{{ inputs.size }}" },
      "retry": { "max_attempts": 3, "backoff_ms": 50 }, "cache": { "version": "v1" } },
    { "id": "report", "task": "echo", "needs": ["resize"],
      "when": "{{ len(nodes.resize.output) > 0 }}",
      "with": { "count": "{{ len(nodes.resize.output) }}" },
      "publish": { "total": "{{ output.count }}" } }
  ],
  "outputs": { "count": "{{ vars.total }}", "first": "{{ nodes.resize.output[0].url }}" }
})";

std::string describe(const validation_errors& errors) {
  std::string out;
  for (const auto& e : errors) {
    out += "\n  '" + e.pointer + "': " + e.message;
  }
  return out;
}

plan_ptr compile_ok(std::string_view text, const compile_options& options = {}) {
  auto r = compile_workflow(text, options);
  BOOST_TEST_REQUIRE(r.has_value(),
                     "unexpected errors:" << (r ? std::string() : describe(r.error())));
  return *r;
}

validation_errors errors_of(std::string_view text, const compile_options& options = {}) {
  auto r = compile_workflow(text, options);
  BOOST_TEST_REQUIRE(!r.has_value(), "compiled, but errors were expected");
  return r.error();
}

bool has_error(const validation_errors& errors, std::string_view pointer,
               std::string_view message_part) {
  for (const auto& e : errors) {
    if (e.pointer == pointer && e.message.find(message_part) != std::string::npos) {
      return true;
    }
  }
  return false;
}

// Checks one expected error and prints every error reported when it is missing.
#define CHECK_ERROR(errors, pointer, part)     \
  BOOST_TEST(has_error(errors, pointer, part), \
             "no '" << pointer << "': " << part << " in:" << describe(errors))

// A workflow whose single node carries `node_fields`.
std::string one_node(std::string_view node_fields) {
  return R"({"name": "w", "nodes": [{"id": "a", "task": "noop")" +
         std::string(node_fields.empty() ? "" : ", ") + std::string(node_fields) + "}]}";
}

}  // namespace

BOOST_AUTO_TEST_SUITE(compiling)

BOOST_AUTO_TEST_CASE(a_workflow_using_every_field_compiles_to_the_expected_plan) {
  const auto registry = task_registry::with_builtins();
  compile_options options;
  options.tasks = &registry;
  const plan_ptr p = compile_ok(every_field, options);

  BOOST_TEST(p->name == "every-field.v2_x");
  BOOST_TEST(p->version == "7");
  BOOST_TEST(p->description == "uses every field");
  BOOST_TEST_REQUIRE(p->inputs.size() == 4u);
  BOOST_TEST(p->inputs[0].name == "urls");
  BOOST_TEST((p->inputs[0].type == input_type::array));
  BOOST_TEST(p->inputs[0].required);
  BOOST_TEST(!p->inputs[0].default_value.has_value());
  BOOST_TEST((p->inputs[1].type == input_type::integer));
  BOOST_TEST((p->inputs[1].default_value == json::value(128)));
  BOOST_TEST((p->inputs[2].type == input_type::string));
  BOOST_TEST(!p->inputs[2].required);
  BOOST_TEST((p->inputs[3].type == input_type::any));

  BOOST_TEST_REQUIRE(p->nodes.size() == 4u);
  const auto& fetch = p->nodes[0];
  const auto& last = p->nodes[1];
  const auto& gen = p->nodes[2];
  const auto& side = p->nodes[3];
  for (std::size_t i = 0; i < p->nodes.size(); ++i) {
    BOOST_TEST(p->nodes[i].index == i);
  }
  BOOST_TEST(fetch.id == "fetch");
  BOOST_TEST(fetch.task == "echo");
  BOOST_TEST(last.needs == (std::vector<std::size_t>{3, 2}));
  BOOST_TEST(gen.needs == (std::vector<std::size_t>{0}));
  BOOST_TEST(fetch.dependents == (std::vector<std::size_t>{2}));
  BOOST_TEST(gen.dependents == (std::vector<std::size_t>{1}));
  BOOST_TEST(side.dependents == (std::vector<std::size_t>{1}));
  BOOST_TEST(last.dependents.empty());
  BOOST_TEST(p->topological_order == (std::vector<std::size_t>{0, 2, 3, 1}));

  BOOST_TEST_REQUIRE(fetch.for_each.has_value());
  BOOST_TEST((fetch.for_each->source() == json::value("{{ inputs.urls }}")));
  BOOST_TEST_REQUIRE(last.for_each.has_value());
  BOOST_TEST((last.for_each->source() == json::parse("[1, 2, 3]")));
  BOOST_TEST((fetch.with.source() == json::parse(R"({"url": "{{ item }}", "i": "{{ index }}"})")));
  BOOST_TEST(gen.with.source().is_null());
  BOOST_TEST((fetch.concurrency == std::optional<int>(4)));
  BOOST_TEST(!gen.concurrency.has_value());
  BOOST_TEST(fetch.retry.max_attempts == 3);
  BOOST_TEST(fetch.retry.backoff_ms == 10);
  BOOST_TEST(fetch.retry.factor == 1.5);
  BOOST_TEST(fetch.retry.max_backoff_ms == 100);
  BOOST_TEST(gen.retry.max_attempts == 1);
  BOOST_TEST(gen.retry.backoff_ms == 0);
  BOOST_TEST(gen.retry.factor == 2.0);
  BOOST_TEST(gen.retry.max_backoff_ms == 60000);
  BOOST_TEST((fetch.timeout_ms == std::optional<std::int64_t>(500)));
  BOOST_TEST(!gen.timeout_ms.has_value());
  BOOST_TEST((fetch.on_error == error_policy::continue_run));
  BOOST_TEST((gen.on_error == error_policy::fail));
  BOOST_TEST((side.on_error == error_policy::fail));
  BOOST_TEST((fetch.cache_version == std::optional<std::string>("v2")));
  BOOST_TEST((gen.cache_version == std::optional<std::string>("1")));
  BOOST_TEST(!side.cache_version.has_value());
  BOOST_TEST_REQUIRE(gen.when.has_value());
  BOOST_TEST(!fetch.when.has_value());
  BOOST_TEST_REQUIRE(gen.dynamic_inputs.has_value());
  BOOST_TEST((gen.dynamic_inputs->source() == json::parse(R"({"n": "{{ inputs.size }}"})")));
  BOOST_TEST_REQUIRE(side.dynamic_inputs.has_value());
  BOOST_TEST((side.dynamic_inputs->source() == json::object()));
  BOOST_TEST(!fetch.dynamic_inputs.has_value());

  // Declared vars first, then publish-only vars in document order.
  BOOST_TEST(p->var_names == (std::vector<std::string>{"seen", "greeting", "total", "extra"}));
  BOOST_TEST_REQUIRE(p->var_init.size() == 4u);
  BOOST_TEST(p->var_init[0].has_value());
  BOOST_TEST(p->var_init[1].has_value());
  BOOST_TEST(!p->var_init[2].has_value());
  BOOST_TEST(!p->var_init[3].has_value());
  BOOST_TEST_REQUIRE(gen.publish.size() == 2u);
  BOOST_TEST(gen.publish[0].first == 2u);
  BOOST_TEST(gen.publish[1].first == 0u);
  BOOST_TEST_REQUIRE(side.publish.size() == 1u);
  BOOST_TEST(side.publish[0].first == 3u);

  BOOST_TEST_REQUIRE(p->outputs.size() == 2u);
  BOOST_TEST(p->outputs[0].first == "total");
  BOOST_TEST(p->outputs[1].first == "literal");
  BOOST_TEST((p->outputs[1].second.source() == json::value(5)));
  BOOST_TEST((p->max_concurrency == std::optional<int>(16)));
  BOOST_TEST((p->timeout_ms == std::optional<std::int64_t>(60000)));

  BOOST_TEST(p->names.nodes.at("gen") == 2u);
  BOOST_TEST(p->names.vars.at("extra") == 3u);
  BOOST_TEST(p->names.vars.at("seen") == 0u);
  BOOST_TEST_REQUIRE(p->find_node("side") != nullptr);
  BOOST_TEST(p->find_node("side")->index == 3u);
  BOOST_TEST(p->find_node("nope") == nullptr);

  BOOST_TEST((p->source == json::parse(every_field)));
  BOOST_TEST(p->hash == canonical_hash(json::parse(every_field)));
}

BOOST_AUTO_TEST_CASE(the_example_of_the_format_document_compiles) {
  const auto registry = task_registry::with_builtins();
  compile_options options;
  options.tasks = &registry;
  const plan_ptr p = compile_ok(format_example, options);
  BOOST_TEST(p->name == "thumbnails");
  BOOST_TEST(p->version == "1");
  BOOST_TEST_REQUIRE(p->nodes.size() == 2u);
  BOOST_TEST(p->nodes[1].needs == (std::vector<std::size_t>{0}));
  BOOST_TEST(p->var_names == (std::vector<std::string>{"total"}));
  BOOST_TEST((p->nodes[0].cache_version == std::optional<std::string>("v1")));
  BOOST_TEST(p->nodes[0].retry.max_attempts == 3);
  BOOST_TEST(p->nodes[0].retry.factor == 2.0);
}

BOOST_AUTO_TEST_CASE(compiling_twice_gives_equal_plans_and_hashes) {
  const plan_ptr a = compile_ok(every_field);
  const plan_ptr b = compile_ok(every_field);
  BOOST_TEST(a != b);
  BOOST_TEST((*a == *b));
  BOOST_TEST(a->hash == b->hash);
  BOOST_TEST(a->hash.size() == 32u);
}

BOOST_AUTO_TEST_CASE(reordered_keys_and_number_spellings_give_the_same_hash) {
  const plan_ptr a = compile_ok(R"({"name": "w", "timeout_ms": 100,
    "nodes": [{"id": "a", "task": "noop", "with": {"x": 1, "y": 2}}]})");
  const plan_ptr b = compile_ok(R"({"nodes": [{"with": {"y": 2.0, "x": 1}, "task": "noop",
    "id": "a"}], "timeout_ms": 1e2, "name": "w"})");
  BOOST_TEST(a->hash == b->hash);
  BOOST_TEST((b->timeout_ms == std::optional<std::int64_t>(100)));
}

BOOST_AUTO_TEST_CASE(different_workflows_are_not_equal) {
  const plan_ptr a = compile_ok(one_node(R"("with": 1)"));
  const plan_ptr b = compile_ok(one_node(R"("with": 2)"));
  BOOST_TEST(a->hash != b->hash);
  BOOST_TEST(!(*a == *b));
}

BOOST_AUTO_TEST_CASE(the_value_overload_compiles_like_the_text_overload) {
  auto r = compile_workflow(json::parse(every_field));
  BOOST_TEST_REQUIRE(r.has_value(), (r ? std::string() : describe(r.error())));
  BOOST_TEST((**r == *compile_ok(every_field)));
}

BOOST_AUTO_TEST_CASE(without_a_registry_any_task_name_is_accepted) {
  BOOST_TEST(
      compile_workflow(R"({"name": "w", "nodes": [{"id": "a", "task": "anything"}]})").has_value());
}

BOOST_AUTO_TEST_CASE(topological_order_breaks_ties_by_document_order) {
  const plan_ptr p = compile_ok(R"({"name": "w", "nodes": [
    {"id": "d", "task": "noop", "needs": ["c", "b"]},
    {"id": "c", "task": "noop", "needs": ["a"]},
    {"id": "b", "task": "noop"},
    {"id": "a", "task": "noop"}]})");
  BOOST_TEST(p->topological_order == (std::vector<std::size_t>{2, 3, 1, 0}));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(workflow_errors)

BOOST_AUTO_TEST_CASE(a_document_that_is_not_an_object_is_rejected) {
  const auto errors = errors_of("[1, 2]");
  CHECK_ERROR(errors, "", "a workflow must be a JSON object, got array");
}

BOOST_AUTO_TEST_CASE(unparsable_json_is_reported_with_line_and_column) {
  const auto errors = errors_of("{\n \"name\": \"w\",\n \"nodes\": [}\n");
  BOOST_TEST_REQUIRE(errors.size() == 1u);
  CHECK_ERROR(errors, "", "line 3, column 12");
}

BOOST_AUTO_TEST_CASE(missing_name_and_nodes_are_reported_at_the_top) {
  const auto errors = errors_of("{}");
  CHECK_ERROR(errors, "", "missing required field 'name'");
  CHECK_ERROR(errors, "", "missing required field 'nodes'");
}

BOOST_AUTO_TEST_CASE(an_unknown_top_level_field_is_reported_at_its_pointer) {
  const auto errors =
      errors_of(R"({"name": "w", "colour": "red", "nodes": [{"id": "a", "task": "noop"}]})");
  BOOST_TEST(errors.size() == 1u);
  CHECK_ERROR(errors, "/colour", "unknown field 'colour'");
}

BOOST_AUTO_TEST_CASE(an_unknown_node_field_is_reported_at_its_pointer) {
  const auto errors = errors_of(one_node(R"("need": ["b"])"));
  CHECK_ERROR(errors, "/nodes/0/need", "unknown field 'need'");
}

BOOST_AUTO_TEST_CASE(fields_of_the_wrong_json_type_are_reported) {
  const auto errors = errors_of(R"({"name": 5, "version": 2, "nodes": {}, "vars": [],
    "max_concurrency": "many", "timeout_ms": 0})");
  CHECK_ERROR(errors, "/name", "must be a string, got integer");
  CHECK_ERROR(errors, "/version", "must be a string");
  CHECK_ERROR(errors, "/nodes", "must be an array, got object");
  CHECK_ERROR(errors, "/vars", "must be an object, got array");
  CHECK_ERROR(errors, "/max_concurrency", "must be an integer >= 1, got string");
  CHECK_ERROR(errors, "/timeout_ms", "must be an integer >= 1, got 0");
}

BOOST_AUTO_TEST_CASE(a_non_integral_number_is_not_an_integer) {
  const auto errors = errors_of(one_node(R"("timeout_ms": 1.5, "concurrency": 2.0)"));
  BOOST_TEST(errors.size() == 1u, describe(errors));
  CHECK_ERROR(errors, "/nodes/0/timeout_ms", "must be an integer >= 1, got 1.5");
}

BOOST_AUTO_TEST_CASE(an_empty_node_list_is_rejected) {
  const auto errors = errors_of(R"({"name": "w", "nodes": []})");
  CHECK_ERROR(errors, "/nodes", "at least one node");
}

BOOST_AUTO_TEST_CASE(a_bad_workflow_name_is_reported) {
  CHECK_ERROR(errors_of(R"({"name": "Thumb nails", "nodes": [{"id": "a", "task": "noop"}]})"),
              "/name", "invalid workflow name 'Thumb nails'");
  CHECK_ERROR(errors_of(R"({"name": "-w", "nodes": [{"id": "a", "task": "noop"}]})"), "/name",
              "invalid workflow name");
  const std::string too_long(129, 'a');
  CHECK_ERROR(
      errors_of(R"({"name": ")" + too_long + R"(", "nodes": [{"id": "a", "task": "noop"}]})"),
      "/name", "invalid workflow name");
  BOOST_TEST(compile_workflow(R"({"name": ")" + std::string(128, 'a') +
                              R"(", "nodes": [{"id": "a", "task": "noop"}]})")
                 .has_value());
}

BOOST_AUTO_TEST_CASE(a_bad_node_id_is_reported) {
  const auto errors = errors_of(R"({"name": "w", "nodes": [{"id": "1st", "task": "noop"},
    {"id": "has-dash", "task": "noop"}, {"id": ")" +
                                std::string(65, 'x') + R"(", "task": "noop"}]})");
  CHECK_ERROR(errors, "/nodes/0/id", "invalid node id '1st'");
  CHECK_ERROR(errors, "/nodes/1/id", "invalid node id 'has-dash'");
  CHECK_ERROR(errors, "/nodes/2/id", "invalid node id");
}

BOOST_AUTO_TEST_CASE(missing_id_and_task_are_reported_at_the_node) {
  const auto errors = errors_of(R"({"name": "w", "nodes": [{}, 3]})");
  CHECK_ERROR(errors, "/nodes/0", "missing required field 'id'");
  CHECK_ERROR(errors, "/nodes/0", "missing required field 'task'");
  CHECK_ERROR(errors, "/nodes/1", "a node must be an object, got integer");
}

BOOST_AUTO_TEST_CASE(duplicate_node_id_is_reported_at_the_second_id) {
  const auto errors = errors_of(R"({"name": "w", "nodes": [{"id": "a", "task": "noop"},
    {"id": "b", "task": "noop"}, {"id": "a", "task": "noop"}]})");
  BOOST_TEST(errors.size() == 1u, describe(errors));
  CHECK_ERROR(errors, "/nodes/2/id", "duplicate node id 'a' (first used by /nodes/0)");
}

BOOST_AUTO_TEST_CASE(an_unknown_need_is_reported_at_its_element) {
  const auto errors = errors_of(R"({"name": "w", "nodes": [{"id": "a", "task": "noop"},
    {"id": "b", "task": "noop", "needs": ["a", "zzz"]}]})");
  BOOST_TEST(errors.size() == 1u, describe(errors));
  CHECK_ERROR(errors, "/nodes/1/needs/1", "unknown node 'zzz'");
}

BOOST_AUTO_TEST_CASE(a_need_listed_twice_is_reported) {
  const auto errors = errors_of(R"({"name": "w", "nodes": [{"id": "a", "task": "noop"},
    {"id": "b", "task": "noop", "needs": ["a", "a"]}]})");
  CHECK_ERROR(errors, "/nodes/1/needs/1", "node 'a' is already needed at /nodes/1/needs/0");
}

BOOST_AUTO_TEST_CASE(needs_of_the_wrong_type_are_reported) {
  const auto errors =
      errors_of(R"({"name": "w", "nodes": [{"id": "a", "task": "noop", "needs": "b"},
    {"id": "b", "task": "noop", "needs": [1]}]})");
  CHECK_ERROR(errors, "/nodes/0/needs", "must be an array of node ids, got string");
  CHECK_ERROR(errors, "/nodes/1/needs/0", "must be a string, got integer");
}

BOOST_AUTO_TEST_CASE(a_node_that_needs_itself_is_a_cycle) {
  const auto errors = errors_of(R"({"name": "w", "nodes": [{"id": "x", "task": "noop"},
    {"id": "a", "task": "noop", "needs": ["x", "a"]}]})");
  BOOST_TEST(errors.size() == 1u, describe(errors));
  CHECK_ERROR(errors, "/nodes/1/needs", "cycle: a -> a");
}

BOOST_AUTO_TEST_CASE(a_three_node_cycle_names_its_members_in_order) {
  const auto errors = errors_of(R"({"name": "w", "nodes": [
    {"id": "start", "task": "noop"},
    {"id": "a", "task": "noop", "needs": ["start", "b"]},
    {"id": "c", "task": "noop", "needs": ["a"]},
    {"id": "b", "task": "noop", "needs": ["c"]}]})");
  BOOST_TEST(errors.size() == 1u, describe(errors));
  CHECK_ERROR(errors, "/nodes/1/needs", "cycle: a -> b -> c -> a");
}

BOOST_AUTO_TEST_CASE(every_cycle_is_reported_once) {
  const auto errors = errors_of(R"({"name": "w", "nodes": [
    {"id": "a", "task": "noop", "needs": ["b"]},
    {"id": "b", "task": "noop", "needs": ["a"]},
    {"id": "c", "task": "noop", "needs": ["d", "a"]},
    {"id": "d", "task": "noop", "needs": ["c"]},
    {"id": "e", "task": "noop", "needs": ["e"]}]})");
  BOOST_TEST(errors.size() == 3u, describe(errors));
  CHECK_ERROR(errors, "/nodes/0/needs", "cycle: a -> b -> a");
  CHECK_ERROR(errors, "/nodes/2/needs", "cycle: c -> d -> c");
  CHECK_ERROR(errors, "/nodes/4/needs", "cycle: e -> e");
}

BOOST_AUTO_TEST_CASE(members_of_a_cycle_off_its_shortest_path_are_named_too) {
  const auto errors = errors_of(R"({"name": "w", "nodes": [
    {"id": "a", "task": "noop", "needs": ["b"]},
    {"id": "b", "task": "noop", "needs": ["a", "c"]},
    {"id": "c", "task": "noop", "needs": ["b"]}]})");
  BOOST_TEST(errors.size() == 1u, describe(errors));
  CHECK_ERROR(errors, "/nodes/0/needs",
              "cycle: a -> b -> a (each node needs the next); the cycle also involves c");
}

BOOST_AUTO_TEST_CASE(a_long_cycle_is_named_in_a_bounded_message) {
  std::string text = R"({"name": "w", "nodes": [)";
  for (int i = 0; i < 1000; ++i) {
    text += std::string(i ? "," : "") + R"({"id": "n)" + std::to_string(i) +
            R"(", "task": "noop", "needs": ["n)" + std::to_string((i + 1) % 1000) + R"("]})";
  }
  text += "]}";
  const auto errors = errors_of(text);
  BOOST_TEST_REQUIRE(errors.size() == 1u);
  CHECK_ERROR(errors, "/nodes/0/needs", "cycle: n0 -> n1 -> n2");
  CHECK_ERROR(errors, "/nodes/0/needs", "-> ... (968 more) -> n0");
  BOOST_TEST(errors[0].message.size() < 500u);
}

BOOST_AUTO_TEST_CASE(an_unknown_task_is_reported_when_a_registry_is_given) {
  const auto registry = task_registry::with_builtins();
  compile_options options;
  options.tasks = &registry;
  const auto errors = errors_of(R"({"name": "w", "nodes": [{"id": "a", "task": "echo"},
    {"id": "b", "task": "ecko"}]})",
                                options);
  BOOST_TEST(errors.size() == 1u, describe(errors));
  CHECK_ERROR(errors, "/nodes/1/task", "unknown task 'ecko'");
}

BOOST_AUTO_TEST_CASE(an_unparsable_expression_is_reported_with_its_column) {
  const auto errors = errors_of(one_node(R"("with": {"n": [0, "x {{ ) }}"]})"));
  BOOST_TEST_REQUIRE(errors.size() == 1u, describe(errors));
  BOOST_TEST(errors[0].pointer == "/nodes/0/with/n/1");
  BOOST_TEST(errors[0].message.rfind("column 6: ", 0) == 0u, errors[0].message);
}

BOOST_AUTO_TEST_CASE(every_kind_of_template_is_compiled) {
  const auto errors = errors_of(R"({"name": "w",
    "vars": {"v": "{{ ( }}"},
    "nodes": [{"id": "a", "task": "noop", "when": "{{ ( }}", "for_each": "{{ ( }}",
               "publish": {"p/q": "{{ ( }}"}, "dynamic": {"inputs": "{{ ( }}"}}],
    "outputs": {"o": "{{ ( }}"}})");
  BOOST_TEST(errors.size() == 6u, describe(errors));
  CHECK_ERROR(errors, "/vars/v", "column ");
  CHECK_ERROR(errors, "/nodes/0/when", "column ");
  CHECK_ERROR(errors, "/nodes/0/for_each", "column ");
  CHECK_ERROR(errors, "/nodes/0/publish/p~1q", "column ");
  CHECK_ERROR(errors, "/nodes/0/dynamic/inputs", "column ");
  CHECK_ERROR(errors, "/outputs/o", "column ");
}

BOOST_AUTO_TEST_CASE(when_and_for_each_must_be_templates) {
  const auto errors = errors_of(one_node(R"("when": true, "for_each": 3)"));
  CHECK_ERROR(errors, "/nodes/0/when", "must be a template string, got boolean");
  CHECK_ERROR(errors, "/nodes/0/for_each", "must be a template string or an array, got integer");
}

BOOST_AUTO_TEST_CASE(an_unknown_input_type_lists_the_valid_ones) {
  const auto errors = errors_of(R"({"name": "w", "inputs": {"x": {"type": "strng"}},
    "nodes": [{"id": "a", "task": "noop"}]})");
  CHECK_ERROR(errors, "/inputs/x/type",
              "unknown input type 'strng' (expected one of string, number, integer, boolean, "
              "array, object, any)");
}

BOOST_AUTO_TEST_CASE(bad_input_declarations_are_reported) {
  const auto errors = errors_of(R"({"name": "w", "inputs": {
      "a": 1,
      "b": {"type": "integer", "default": "ten"},
      "c": {"required": "yes", "optional": true}},
    "nodes": [{"id": "a", "task": "noop"}]})");
  BOOST_TEST(errors.size() == 4u, describe(errors));
  CHECK_ERROR(errors, "/inputs/a", "must be an object, got integer");
  CHECK_ERROR(errors, "/inputs/b/default", "default must be integer, got string");
  CHECK_ERROR(errors, "/inputs/c/required", "must be a boolean, got string");
  CHECK_ERROR(errors, "/inputs/c/optional", "unknown field 'optional'");
}

BOOST_AUTO_TEST_CASE(bad_retry_fields_are_each_reported) {
  const auto errors = errors_of(one_node(
      R"("retry": {"max_attempts": 0, "backoff_ms": -1, "factor": 0.5, "max_backoff_ms": "x", "jitter": 1})"));
  BOOST_TEST(errors.size() == 5u, describe(errors));
  CHECK_ERROR(errors, "/nodes/0/retry/max_attempts", "must be an integer >= 1, got 0");
  CHECK_ERROR(errors, "/nodes/0/retry/backoff_ms", "must be an integer >= 0, got -1");
  CHECK_ERROR(errors, "/nodes/0/retry/factor", "must be a number >= 1, got 0.5");
  CHECK_ERROR(errors, "/nodes/0/retry/max_backoff_ms", "must be an integer >= 0, got string");
  CHECK_ERROR(errors, "/nodes/0/retry/jitter", "unknown field 'jitter'");
}

BOOST_AUTO_TEST_CASE(a_bad_on_error_is_reported) {
  CHECK_ERROR(errors_of(one_node(R"("on_error": "retry")")), "/nodes/0/on_error",
              "must be \"fail\" or \"continue\", got 'retry'");
}

BOOST_AUTO_TEST_CASE(bad_cache_and_dynamic_objects_are_reported) {
  const auto errors = errors_of(R"({"name": "w", "nodes": [
    {"id": "a", "task": "noop", "cache": {"version": 2, "ttl": 1}, "dynamic": {"input": 1}},
    {"id": "b", "task": "noop", "cache": true, "dynamic": [], "publish": 1}]})");
  BOOST_TEST(errors.size() == 6u, describe(errors));
  CHECK_ERROR(errors, "/nodes/0/cache/version", "must be a string, got integer");
  CHECK_ERROR(errors, "/nodes/0/cache/ttl", "unknown field 'ttl'");
  CHECK_ERROR(errors, "/nodes/0/dynamic/input", "unknown field 'input'");
  CHECK_ERROR(errors, "/nodes/1/cache", "must be an object, got boolean");
  CHECK_ERROR(errors, "/nodes/1/dynamic", "must be an object, got array");
  CHECK_ERROR(errors, "/nodes/1/publish", "must be an object, got integer");
}

BOOST_AUTO_TEST_CASE(five_different_errors_are_all_reported_in_document_order) {
  const auto errors = errors_of(R"({"name": "Bad", "extra": 1, "nodes": [
    {"id": "a", "task": "noop", "on_error": "maybe"},
    {"id": "a", "task": "noop", "needs": ["ghost"]}]})");
  BOOST_TEST_REQUIRE(errors.size() == 5u, describe(errors));
  BOOST_TEST(errors[0].pointer == "/name");
  BOOST_TEST(errors[1].pointer == "/extra");
  BOOST_TEST(errors[2].pointer == "/nodes/0/on_error");
  BOOST_TEST(errors[3].pointer == "/nodes/1/id");
  BOOST_TEST(errors[4].pointer == "/nodes/1/needs/0");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(limits)

BOOST_AUTO_TEST_CASE(too_many_nodes_are_reported_at_nodes) {
  compile_options options;
  options.limits.max_nodes = 3;
  std::string text = R"({"name": "w", "nodes": [)";
  for (int i = 0; i < 4; ++i) {
    text +=
        std::string(i ? "," : "") + R"({"id": "n)" + std::to_string(i) + R"(", "task": "noop"})";
  }
  text += "]}";
  const auto errors = errors_of(text, options);
  BOOST_TEST(errors.size() == 1u, describe(errors));
  CHECK_ERROR(errors, "/nodes", "too many nodes: 4 (limit 3)");
  options.limits.max_nodes = 4;
  BOOST_TEST(compile_workflow(text, options).has_value());
}

BOOST_AUTO_TEST_CASE(a_chain_as_long_as_the_node_limit_compiles) {
  // Deep enough to overflow the stack of any recursive graph walk.
  std::string text = R"({"name": "w", "nodes": [{"id": "n0", "task": "noop"})";
  const std::size_t n = workflow_limits{}.max_nodes;
  for (std::size_t i = 1; i < n; ++i) {
    text += R"(,{"id": "n)" + std::to_string(i) + R"(", "task": "noop", "needs": ["n)" +
            std::to_string(i - 1) + R"("]})";
  }
  text += "]}";
  const plan_ptr p = compile_ok(text);
  BOOST_TEST_REQUIRE(p->topological_order.size() == n);
  BOOST_TEST(p->topological_order.front() == 0u);
  BOOST_TEST(p->topological_order.back() == n - 1);
}

BOOST_AUTO_TEST_CASE(a_too_deep_document_is_rejected) {
  compile_options options;
  // Levels: document 1, nodes 2, node 3, with 4, a 5, b 6.
  options.limits.json.max_depth = 5;
  const std::string text = one_node(R"("with": {"a": {"b": [1]}})");
  const auto errors = errors_of(text, options);
  BOOST_TEST(errors.size() == 1u, describe(errors));
  CHECK_ERROR(errors, "", "nesting too deep at line 1");
  CHECK_ERROR(errors, "", "(limit 5 levels)");

  auto from_value = compile_workflow(json::parse(text), options);
  BOOST_TEST_REQUIRE(!from_value.has_value());
  CHECK_ERROR(from_value.error(), "/nodes/0/with/a/b", "nesting too deep (limit 5 levels)");

  options.limits.json.max_depth = 6;
  BOOST_TEST(compile_workflow(text, options).has_value());
}

BOOST_AUTO_TEST_CASE(an_oversized_document_is_rejected) {
  compile_options options;
  const std::string text = one_node("");
  options.limits.json.max_document_bytes = text.size() - 1;
  const auto errors = errors_of(text, options);
  CHECK_ERROR(errors, "",
              "document too large: " + std::to_string(text.size()) + " bytes (limit " +
                  std::to_string(text.size() - 1) + ")");
}

BOOST_AUTO_TEST_CASE(an_oversized_string_is_reported_at_its_pointer) {
  compile_options options;
  options.limits.json.max_string_bytes = 8;
  const auto errors = errors_of(one_node(R"("with": ["short", "much too long"])"), options);
  BOOST_TEST(errors.size() == 1u, describe(errors));
  CHECK_ERROR(errors, "/nodes/0/with/1", "string too long: 13 bytes (limit 8)");
}

BOOST_AUTO_TEST_CASE(an_oversized_template_is_reported_at_its_pointer) {
  compile_options options;
  options.limits.max_expression_bytes = 16;
  const auto errors = errors_of(
      one_node(R"("with": {"ok": "{{ item }}", "big": "{{ item }} and {{ index }}"})"), options);
  BOOST_TEST(errors.size() == 1u, describe(errors));
  CHECK_ERROR(errors, "/nodes/0/with/big", "template too long: 26 bytes (limit 16)");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(inputs)

const char* const typed_inputs = R"({"name": "w", "inputs": {
    "urls": {"type": "array", "required": true},
    "size": {"type": "integer", "default": 128},
    "ratio": {"type": "number"},
    "note": {"type": "string"},
    "blob": {"type": "any", "required": true, "default": {"k": 1}}},
  "nodes": [{"id": "a", "task": "noop"}]})";

BOOST_AUTO_TEST_CASE(defaults_fill_missing_optional_inputs) {
  const plan_ptr p = compile_ok(typed_inputs);
  auto bound = bind_inputs(*p, json::parse(R"({"urls": ["u"]})").as_object());
  BOOST_TEST_REQUIRE(bound.has_value(), (bound ? std::string() : describe(bound.error())));
  BOOST_TEST(
      (json::value(*bound) == json::parse(R"({"urls": ["u"], "size": 128, "blob": {"k": 1}})")));
  BOOST_TEST(!bound->contains("note"));
}

BOOST_AUTO_TEST_CASE(a_missing_required_input_is_rejected) {
  const plan_ptr p = compile_ok(typed_inputs);
  auto bound = bind_inputs(*p, json::object());
  BOOST_TEST_REQUIRE(!bound.has_value());
  BOOST_TEST(bound.error().size() == 1u, describe(bound.error()));
  CHECK_ERROR(bound.error(), "/inputs/urls", "missing required input 'urls'");
}

BOOST_AUTO_TEST_CASE(an_unknown_input_is_rejected) {
  const plan_ptr p = compile_ok(typed_inputs);
  auto bound = bind_inputs(*p, json::parse(R"({"urls": [], "colour": 1})").as_object());
  BOOST_TEST_REQUIRE(!bound.has_value());
  CHECK_ERROR(bound.error(), "/inputs/colour", "unknown input 'colour'");
}

BOOST_AUTO_TEST_CASE(an_input_of_the_wrong_type_is_rejected) {
  const plan_ptr p = compile_ok(typed_inputs);
  auto bound =
      bind_inputs(*p, json::parse(R"({"urls": [], "size": "big", "ratio": "x"})").as_object());
  BOOST_TEST_REQUIRE(!bound.has_value());
  CHECK_ERROR(bound.error(), "/inputs/size", "input 'size' must be integer, got string");
  CHECK_ERROR(bound.error(), "/inputs/ratio", "input 'ratio' must be number, got string");
}

BOOST_AUTO_TEST_CASE(an_integral_double_is_accepted_as_an_integer) {
  const plan_ptr p = compile_ok(typed_inputs);
  auto bound =
      bind_inputs(*p, json::parse(R"({"urls": [], "size": 64.0, "ratio": 2})").as_object());
  BOOST_TEST_REQUIRE(bound.has_value(), (bound ? std::string() : describe(bound.error())));
  BOOST_TEST(bound->at("size").is_int64());
  BOOST_TEST(bound->at("size").as_int64() == 64);
  BOOST_TEST(bound->at("ratio").is_int64());

  auto fractional = bind_inputs(*p, json::parse(R"({"urls": [], "size": 64.5})").as_object());
  BOOST_TEST_REQUIRE(!fractional.has_value());
  CHECK_ERROR(fractional.error(), "/inputs/size", "input 'size' must be integer, got number");
}

BOOST_AUTO_TEST_CASE(every_input_error_is_reported_at_once) {
  const plan_ptr p = compile_ok(typed_inputs);
  auto bound = bind_inputs(*p, json::parse(R"({"size": true, "colour": 1})").as_object());
  BOOST_TEST_REQUIRE(!bound.has_value());
  BOOST_TEST(bound.error().size() == 3u, describe(bound.error()));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(model)

BOOST_AUTO_TEST_CASE(retry_delay_grows_by_the_factor_and_stops_at_the_cap) {
  retry_policy r;
  r.backoff_ms = 100;
  r.factor = 2.0;
  r.max_backoff_ms = 1000;
  BOOST_TEST(r.delay_before(1) == 0);
  BOOST_TEST(r.delay_before(2) == 100);
  BOOST_TEST(r.delay_before(3) == 200);
  BOOST_TEST(r.delay_before(5) == 800);
  BOOST_TEST(r.delay_before(6) == 1000);
  BOOST_TEST(r.delay_before(100000) == 1000);
}

// Timers count nanoseconds in 64 bits: a delay past max_delay_ms would wrap and fire at once.
BOOST_AUTO_TEST_CASE(delays_a_timer_cannot_hold_are_validation_errors) {
  const auto errors = errors_of(R"({"name": "w", "timeout_ms": 1e13, "nodes": [
      {"id": "a", "task": "noop", "timeout_ms": 10000000000000,
       "retry": {"max_attempts": 2, "backoff_ms": 9223372036854775807,
                 "max_backoff_ms": 1000000000001}}]})");
  CHECK_ERROR(errors, "/timeout_ms", "must be an integer <= 1000000000000");
  CHECK_ERROR(errors, "/nodes/0/timeout_ms", "must be an integer <= 1000000000000");
  CHECK_ERROR(errors, "/nodes/0/retry/backoff_ms", "must be an integer <= 1000000000000");
  CHECK_ERROR(errors, "/nodes/0/retry/max_backoff_ms", "must be an integer <= 1000000000000");
  // The largest delay itself is fine.
  BOOST_TEST(compile_workflow(one_node(R"("timeout_ms": 1000000000000)")).has_value());
}

BOOST_AUTO_TEST_CASE(input_types_print_as_written) {
  BOOST_TEST(to_string(input_type::integer) == "integer");
  BOOST_TEST(to_string(input_type::any) == "any");
  BOOST_TEST(to_string(input_type::boolean) == "boolean");
}

BOOST_AUTO_TEST_SUITE_END()
