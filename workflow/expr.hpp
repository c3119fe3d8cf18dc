#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "workflow/expected.hpp"
#include "workflow/json.hpp"

namespace troupe {

/// The field of a node result that an expression can read: `nodes.<id>.output|status|error`.
enum class node_field { output, status, error };

/// Where the root names of an expression come from. The evaluator never copies what a scope
/// returns while it walks a path: returned pointers must stay valid until evaluate()/render()
/// returns. A null pointer means "this name does not exist", which is an evaluation error
/// (never a silent null) unless `default(...)` catches it.
class scope {
 public:
  virtual ~scope() = default;
  /// `inputs` as a whole (an object), or null when the scope has none.
  virtual const json::value* inputs() const = 0;
  /// `vars.<name>`.
  virtual const json::value* var(std::string_view name) const = 0;
  /// `nodes.<id>.<field>`; null when the node does not exist or has no result yet.
  virtual const json::value* node(std::string_view id, node_field field) const = 0;
  /// `item`, `index`: bound only inside a `for_each` item.
  virtual const json::value* item() const = 0;
  virtual const json::value* index() const = 0;
  /// `output`: bound only while rendering `publish`.
  virtual const json::value* output() const = 0;
  /// `run.id`, `run.workflow`.
  virtual const json::value* run(std::string_view field) const = 0;
};

/// What went wrong in an expression. `column` is 1-based and counts bytes of the string the
/// expression was written in (the whole template string, not just the part inside `{{ }}`).
struct expr_error {
  std::string message;
  std::size_t column = 0;
};

namespace detail {
struct expr_node;
struct template_node;
}  // namespace detail

/// A parsed expression (the text inside `{{ }}`). Immutable; copies share the syntax tree.
class expression {
 public:
  /// `column_offset` is added to reported columns, so an expression that starts at byte 7 of a
  /// template string reports columns relative to that string.
  static expected<expression, expr_error> parse(std::string_view source,
                                                std::size_t column_offset = 0);

  expected<json::value, expr_error> evaluate(const scope& s) const;

  const std::string& source() const;

 private:
  std::shared_ptr<const detail::expr_node> root_;
  std::shared_ptr<const std::string> source_;
};

/// An error inside a template value: `pointer` is the JSON pointer of the offending string
/// relative to the value that was compiled ("" for the value itself, "/url", "/items/0").
struct template_error {
  std::string pointer;
  expr_error error;
};

/// Any JSON value in which every string is a template (recursively through arrays and objects).
/// A string that is exactly one `{{ expr }}` (whitespace around it allowed) renders to the
/// expression's value with its type; any other string interpolates each `{{ expr }}` as text
/// (strings bare, other values as compact JSON). Immutable; copies share the compiled form.
class template_value {
 public:
  template_value();  // renders to null

  /// Every syntax error in the value is reported at once.
  static expected<template_value, std::vector<template_error>> compile(const json::value& v);

  /// Renders against a scope; the first evaluation error stops rendering.
  expected<json::value, template_error> render(const scope& s) const;

  /// True when the value holds no expression: render() returns the literal without evaluating.
  bool is_constant() const;

  /// The value as it was written.
  const json::value& source() const;

 private:
  std::shared_ptr<const detail::template_node> root_;
  json_ptr source_;
};

/// JSON truthiness used by `when`, `!`, `&&`, `||` and `?:`: false, null, 0, "", [] and {} are
/// false; everything else is true.
bool truthy(const json::value& v);

}  // namespace troupe
