#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "workflow/context.hpp"
#include "workflow/expected.hpp"
#include "workflow/expr.hpp"
#include "workflow/json.hpp"

namespace troupe {

class task_registry;

/// One problem in a workflow document: where (a JSON pointer into the document, RFC 6901) and
/// what, in plain words.
struct validation_error {
  std::string pointer;
  std::string message;
};
using validation_errors = std::vector<validation_error>;

enum class input_type { string, number, integer, boolean, array, object, any };
std::string_view to_string(input_type t);

struct input_decl {
  std::string name;
  input_type type = input_type::any;
  bool required = false;
  std::optional<json::value> default_value;
};

/// The longest delay a workflow may ask for (timeout_ms, backoff_ms, max_backoff_ms, a `sleep`
/// task's ms): 10^12 ms, about 31.7 years. Timers count nanoseconds in 64 bits (about 292
/// years from the clock's epoch), so larger values would wrap and fire at once.
inline constexpr std::int64_t max_delay_ms = 1'000'000'000'000;

struct retry_policy {
  int max_attempts = 1;
  std::int64_t backoff_ms = 0;
  double factor = 2.0;
  std::int64_t max_backoff_ms = 60000;

  /// The delay before attempt `next_attempt` (2 for the first retry): backoff_ms *
  /// factor^(next_attempt - 2), capped at max_backoff_ms.
  std::int64_t delay_before(int next_attempt) const;
};

enum class error_policy { fail, continue_run };

/// A node as the state machine runs it: every template compiled, every reference an index.
struct node_plan {
  std::string id;
  std::size_t index = 0;
  std::string task;
  std::vector<std::size_t> needs;       // indices of the nodes this one waits for
  std::vector<std::size_t> dependents;  // indices of the nodes that wait for this one
  std::optional<template_value> when;
  template_value with;
  json_ptr constant_input;  // `with` rendered once when it holds no expression
  std::optional<template_value> for_each;
  std::optional<int> concurrency;  // items in flight at once
  retry_policy retry;
  std::optional<std::int64_t> timeout_ms;  // per attempt
  error_policy on_error = error_policy::fail;
  std::vector<std::pair<std::size_t, template_value>> publish;  // var slot -> template
  std::optional<std::string> cache_version;                     // `cache.version`
  std::optional<template_value> dynamic_inputs;                 // `dynamic.inputs`
};

/// A compiled workflow. Immutable and shared (`plan_ptr`) by every run of the workflow.
struct plan {
  std::string name;
  std::string version = "1";
  std::string description;
  std::vector<input_decl> inputs;
  std::vector<std::string> var_names;                 // slot -> name
  std::vector<std::optional<template_value>> var_init;  // slot -> initial value (publish-only: none)
  std::vector<node_plan> nodes;                       // in document order; index == position
  std::vector<std::size_t> topological_order;
  std::vector<std::pair<std::string, template_value>> outputs;  // in document order
  std::optional<int> max_concurrency;
  std::optional<std::int64_t> timeout_ms;
  name_table names;
  json::value source;  // the document as written
  std::string hash;    // canonical_hash(source): equal for documents that differ only in spelling

  const node_plan* find_node(std::string_view id) const;
};
using plan_ptr = std::shared_ptr<const plan>;

/// Compiling the same document twice gives equal plans.
bool operator==(const plan& a, const plan& b);

/// Limits against hostile workflow documents.
struct workflow_limits {
  json_limits json;             // document size, nesting depth, string size
  std::size_t max_nodes = 100000;
  std::size_t max_expression_bytes = 64u << 10;
};

struct compile_options {
  /// Tasks that may be named. Null: any task name is accepted (used by tests of the model).
  const task_registry* tasks = nullptr;
  workflow_limits limits;
  /// canonical_hash() of the document when the caller has it already (the engine looks its
  /// compiled plans up by it); empty: the compiler computes it.
  std::string source_hash;
};

/// Parses, validates and compiles a workflow. A bad workflow gets every error at once, each with
/// a JSON pointer: unknown fields, wrong types, bad or duplicate ids, unknown needs, cycles (with
/// their members named), unknown tasks, unparsable expressions (with their column), unknown input
/// types, and any limit exceeded.
expected<plan_ptr, validation_errors> compile_workflow(std::string_view json_text,
                                                       const compile_options& options = {});
expected<plan_ptr, validation_errors> compile_workflow(const json::value& document,
                                                       const compile_options& options = {});
/// Text given as a literal: without this, a string literal converts equally well to
/// std::string_view and to json::value, and the call is ambiguous.
inline expected<plan_ptr, validation_errors> compile_workflow(const char* json_text,
                                                              const compile_options& options = {}) {
  return compile_workflow(std::string_view(json_text), options);
}

/// Checks run inputs against the plan's declarations and applies defaults: a missing required
/// input, an unknown input or a value of the wrong type is an error (pointer "/inputs/<name>").
expected<json::object, validation_errors> bind_inputs(const plan& p, const json::object& given);

}  // namespace troupe
