// Validation rules of workflow format version 1 (WORKFLOW_FORMAT.md is the contract).
//
// Every problem is reported, never only the first: each as {RFC 6901 pointer, plain message},
// sorted by position in the document (a field that is missing is reported at its parent object,
// after the problems inside that object's existing members; ties keep discovery order).
//
// Workflow (the document must be an object):
//   name             required string, [a-z0-9][a-z0-9_.-]{0,127}
//   version          string (default "1")
//   description      string
//   inputs           object: name -> {type, required, default}, nothing else. type is one of
//                    string number integer boolean array object any (default any); required is a
//                    boolean; a default must have the declared type.
//   vars             object: name -> any JSON, compiled as a template
//   nodes            required non-empty array, at most limits.max_nodes entries
//   outputs          object: name -> template
//   max_concurrency  integer >= 1
//   timeout_ms       integer >= 1, <= max_delay_ms
//   anything else    "unknown field 'x'"
// Node (must be an object):
//   id           required string, [A-Za-z_][A-Za-z0-9_]{0,63}, unique (a repeat is reported at
//                the later id, naming the first)
//   task         required string; with compile_options::tasks set, a name it contains
//   needs        array of ids of existing nodes, each at most once; the graph must be acyclic
//   when         template string
//   with         any JSON, compiled as a template (missing: null)
//   for_each     template string or literal array
//   concurrency  integer >= 1
//   retry        object with only max_attempts (integer >= 1), backoff_ms (integer >= 0),
//                factor (number >= 1), max_backoff_ms (integer >= 0); delays <= max_delay_ms
//   timeout_ms   integer >= 1, <= max_delay_ms
//   on_error     "fail" or "continue"
//   publish      object: var name -> template
//   cache        object: {version: string} (version defaults to "1")
//   dynamic      object: {inputs: template} (inputs defaults to {})
//   anything else "unknown field 'x'"
// Integers: JSON integers, or doubles with an integral value, within the field's range.
// Cycles: every strongly connected component with more than one node, and every self-need, is
//   reported once at /nodes/<first member>/needs as "cycle: a -> b -> a", where each node needs
//   the next.
// Templates: every template string is compiled; errors are reported at the string's pointer with
//   the column: "column 7: unknown function 'lenn'". A template string longer than
//   limits.max_expression_bytes is rejected without being compiled.
// Limits: document bytes, nesting depth and string bytes (limits.json) are checked first; a
//   document over them gets only those errors, since nothing else should walk a hostile document.
//   More nodes than limits.max_nodes is reported at /nodes and the nodes are not examined.

#include "workflow/plan.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <functional>
#include <limits>
#include <queue>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "workflow/task.hpp"

namespace troupe {

namespace detail {
namespace {

constexpr std::string_view input_type_list = "string, number, integer, boolean, array, object, any";


std::string child(std::string_view base, std::string_view token) {
  std::string out(base);
  append_pointer_token(out, token);
  return out;
}

std::string child(std::string_view base, std::size_t index) {
  std::string out(base);
  out += '/';
  out += std::to_string(index);
  return out;
}

std::string quoted(std::string_view s) {
  std::string out = "'";
  out += s;
  out += '\'';
  return out;
}

bool is_lower_or_digit(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}
bool is_alpha_or_underscore(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

// [a-z0-9][a-z0-9_.-]{0,127}
bool valid_workflow_name(std::string_view s) {
  if (s.empty() || s.size() > 128 || !is_lower_or_digit(s[0])) {
    return false;
  }
  return std::all_of(s.begin() + 1, s.end(), [](char c) {
    return is_lower_or_digit(c) || c == '_' || c == '.' || c == '-';
  });
}

// [A-Za-z_][A-Za-z0-9_]{0,63}
bool valid_node_id(std::string_view s) {
  if (s.empty() || s.size() > 64 || !is_alpha_or_underscore(s[0])) {
    return false;
  }
  return std::all_of(s.begin() + 1, s.end(),
                     [](char c) { return is_alpha_or_underscore(c) || (c >= '0' && c <= '9'); });
}

std::optional<std::int64_t> as_integer(const json::value& v) {
  if (const auto* i = v.if_int64()) {
    return *i;
  }
  if (const auto* u = v.if_uint64()) {
    if (*u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      return static_cast<std::int64_t>(*u);
    }
    return std::nullopt;
  }
  if (const auto* d = v.if_double()) {
    if (std::isfinite(*d) && *d == std::trunc(*d) && *d >= -9223372036854775808.0 &&
        *d < 9223372036854775808.0) {
      return static_cast<std::int64_t>(*d);
    }
  }
  return std::nullopt;
}

bool is_integral(const json::value& v) {
  if (v.is_int64() || v.is_uint64()) {
    return true;
  }
  const auto* d = v.if_double();
  return d != nullptr && std::isfinite(*d) && *d == std::trunc(*d);
}

std::optional<input_type> parse_input_type(std::string_view s) {
  static constexpr std::pair<std::string_view, input_type> table[] = {
      {"string", input_type::string},   {"number", input_type::number},
      {"integer", input_type::integer}, {"boolean", input_type::boolean},
      {"array", input_type::array},     {"object", input_type::object},
      {"any", input_type::any}};
  for (const auto& [name, type] : table) {
    if (name == s) {
      return type;
    }
  }
  return std::nullopt;
}

bool matches_type(input_type t, const json::value& v) {
  switch (t) {
    case input_type::string:
      return v.is_string();
    case input_type::number:
      return v.is_number();
    case input_type::integer:
      return is_integral(v);
    case input_type::boolean:
      return v.is_bool();
    case input_type::array:
      return v.is_array();
    case input_type::object:
      return v.is_object();
    case input_type::any:
      return true;
  }
  return false;
}

// An integral double bound to an `integer` input becomes an integer, so expressions and
// rendered output see `3`, never `3.0`, whichever way the caller spelled it.
json::value normalize_input(input_type t, const json::value& v) {
  if (t == input_type::integer && v.is_double()) {
    if (auto i = as_integer(v)) {
      return json::value(*i);
    }
  }
  return v;
}

// Resolves a pointer to the member positions along it, so errors can be sorted in the order a
// reader meets them. Tokens that do not resolve sort after every existing sibling.
std::vector<std::size_t> position_of(const json::value& doc, std::string_view pointer) {
  constexpr std::size_t missing = std::numeric_limits<std::size_t>::max();
  std::vector<std::size_t> key;
  const json::value* cur = &doc;
  std::size_t pos = 0;
  while (pos < pointer.size() && pointer[pos] == '/') {
    const std::size_t end = std::min(pointer.find('/', pos + 1), pointer.size());
    std::string token;
    for (std::size_t i = pos + 1; i < end; ++i) {
      if (pointer[i] == '~' && i + 1 < end) {
        token += pointer[i + 1] == '1' ? '/' : '~';
        ++i;
      } else {
        token += pointer[i];
      }
    }
    pos = end;
    std::size_t index = missing;
    const json::value* next = nullptr;
    if (cur != nullptr) {
      if (const auto* o = cur->if_object()) {
        auto it = o->find(token);
        if (it != o->end()) {
          index = static_cast<std::size_t>(it - o->begin());
          next = &it->value();
        }
      } else if (const auto* a = cur->if_array()) {
        std::size_t i = 0;
        bool numeric = !token.empty();
        for (char c : token) {
          if (c < '0' || c > '9' || i > a->size()) {
            numeric = false;
            break;
          }
          i = i * 10 + static_cast<std::size_t>(c - '0');
        }
        if (numeric && i < a->size()) {
          index = i;
          next = &(*a)[i];
        }
      }
    }
    key.push_back(index);
    cur = next;
  }
  return key;
}

// Iterative Tarjan: a 100000-node chain must not exhaust the stack.
std::vector<std::vector<std::size_t>> strongly_connected(
    const std::vector<std::vector<std::size_t>>& edges) {
  const std::size_t n = edges.size();
  constexpr std::size_t unvisited = std::numeric_limits<std::size_t>::max();
  std::vector<std::size_t> index(n, unvisited), low(n, 0);
  std::vector<bool> on_stack(n, false);
  std::vector<std::size_t> stack;
  std::vector<std::vector<std::size_t>> components;
  std::size_t counter = 0;
  struct frame {
    std::size_t node;
    std::size_t next_edge;
  };
  std::vector<frame> call;
  for (std::size_t root = 0; root < n; ++root) {
    if (index[root] != unvisited) {
      continue;
    }
    call.push_back({root, 0});
    index[root] = low[root] = counter++;
    stack.push_back(root);
    on_stack[root] = true;
    while (!call.empty()) {
      frame& f = call.back();
      const std::size_t v = f.node;
      if (f.next_edge < edges[v].size()) {
        const std::size_t w = edges[v][f.next_edge++];
        if (index[w] == unvisited) {
          index[w] = low[w] = counter++;
          stack.push_back(w);
          on_stack[w] = true;
          call.push_back({w, 0});
        } else if (on_stack[w]) {
          low[v] = std::min(low[v], index[w]);
        }
        continue;
      }
      if (low[v] == index[v]) {
        std::vector<std::size_t> component;
        std::size_t w = 0;
        do {
          w = stack.back();
          stack.pop_back();
          on_stack[w] = false;
          component.push_back(w);
        } while (w != v);
        components.push_back(std::move(component));
      }
      call.pop_back();
      if (!call.empty()) {
        const std::size_t parent = call.back().node;
        low[parent] = std::min(low[parent], low[v]);
      }
    }
  }
  return components;
}

// The shortest cycle through `start` inside one component, following `needs` edges, so the
// message reads as a path the user can check edge by edge.
std::vector<std::size_t> cycle_through(std::size_t start,
                                       const std::vector<std::vector<std::size_t>>& edges,
                                       const std::unordered_set<std::size_t>& members) {
  std::unordered_map<std::size_t, std::size_t> parent;
  std::queue<std::size_t> queue;
  queue.push(start);
  while (!queue.empty()) {
    const std::size_t v = queue.front();
    queue.pop();
    for (std::size_t w : edges[v]) {
      if (!members.count(w)) {
        continue;
      }
      if (w == start) {
        std::vector<std::size_t> path{v};
        while (path.back() != start) {
          path.push_back(parent[path.back()]);
        }
        std::reverse(path.begin(), path.end());
        return path;
      }
      if (!parent.count(w)) {
        parent[w] = v;
        queue.push(w);
      }
    }
  }
  return {start};
}

class compiler {
 public:
  compiler(const json::value& doc, const compile_options& options) : doc_(doc), options_(options) {}

  expected<plan_ptr, validation_errors> run() {
    std::string pointer;
    check_json_limits(doc_, pointer, 1);
    if (!errors_.empty()) {
      return finish_errors();
    }
    check_workflow();
    if (!errors_.empty()) {
      return finish_errors();
    }
    return build();
  }

 private:
  struct pending_node {
    std::vector<std::pair<std::string, std::size_t>> needs;  // id, position in `needs`
    std::vector<std::pair<std::string, template_value>> publish;
  };

  void error(std::string pointer, std::string message) {
    errors_.push_back({std::move(pointer), std::move(message)});
  }

  unexpected<validation_errors> finish_errors() {
    std::vector<std::pair<std::vector<std::size_t>, std::size_t>> keys;
    keys.reserve(errors_.size());
    for (std::size_t i = 0; i < errors_.size(); ++i) {
      keys.emplace_back(position_of(doc_, errors_[i].pointer), i);
    }
    // The index tie-break keeps discovery order for errors at the same place.
    std::sort(keys.begin(), keys.end());
    validation_errors sorted;
    sorted.reserve(errors_.size());
    for (const auto& k : keys) {
      sorted.push_back(std::move(errors_[k.second]));
    }
    return make_unexpected(std::move(sorted));
  }

  // Depth counts containers the way the JSON parser does (the outermost one is level 1), so the
  // text and value overloads agree. Recursion stops at the limit. `pointer` is one buffer
  // extended and truncated on the way, since this visits every value of the document.
  void check_json_limits(const json::value& v, std::string& pointer, std::size_t depth) {
    const auto& limits = options_.limits.json;
    if (const auto* s = v.if_string()) {
      if (s->size() > limits.max_string_bytes) {
        error(pointer, "string too long: " + std::to_string(s->size()) + " bytes (limit " +
                           std::to_string(limits.max_string_bytes) + ")");
      }
      return;
    }
    if (!v.is_array() && !v.is_object()) {
      return;
    }
    if (depth > limits.max_depth) {
      error(pointer, "nesting too deep (limit " + std::to_string(limits.max_depth) + " levels)");
      return;
    }
    const std::size_t mark = pointer.size();
    if (const auto* a = v.if_array()) {
      for (std::size_t i = 0; i < a->size(); ++i) {
        pointer += '/';
        pointer += std::to_string(i);
        check_json_limits((*a)[i], pointer, depth + 1);
        pointer.resize(mark);
      }
      return;
    }
    for (const auto& kv : v.get_object()) {
      append_pointer_token(pointer, kv.key());
      if (kv.key().size() > limits.max_string_bytes) {
        error(pointer, "key too long: " + std::to_string(kv.key().size()) + " bytes (limit " +
                           std::to_string(limits.max_string_bytes) + ")");
      }
      check_json_limits(kv.value(), pointer, depth + 1);
      pointer.resize(mark);
    }
  }

  void unknown_fields(const json::object& o, const std::string& pointer,
                      std::initializer_list<std::string_view> known) {
    for (const auto& kv : o) {
      if (std::find(known.begin(), known.end(), std::string_view(kv.key())) == known.end()) {
        error(child(pointer, kv.key()), "unknown field " + quoted(kv.key()));
      }
    }
  }

  void wrong_type(const std::string& pointer, std::string_view expected, const json::value& v) {
    error(pointer, "must be " + std::string(expected) + ", got " + std::string(json_kind_name(v)));
  }

  const json::string* get_string(const json::value& v, const std::string& pointer) {
    const auto* s = v.if_string();
    if (s == nullptr) {
      wrong_type(pointer, "a string", v);
    }
    return s;
  }

  const json::object* get_object(const json::value& v, const std::string& pointer) {
    const auto* o = v.if_object();
    if (o == nullptr) {
      wrong_type(pointer, "an object", v);
    }
    return o;
  }

  std::optional<std::int64_t> get_integer(const json::value& v, const std::string& pointer,
                                          std::int64_t min, std::int64_t max) {
    auto i = as_integer(v);
    const std::string range = "an integer >= " + std::to_string(min);
    if (!i) {
      if (is_integral(v) && !v.is_int64() && !(v.is_double() && v.get_double() < 0)) {
        error(pointer,
              "must be an integer <= " + std::to_string(max) + ", got " + canonical_json(v));
      } else if (v.is_number()) {
        error(pointer, "must be " + range + ", got " + canonical_json(v));
      } else {
        wrong_type(pointer, range, v);
      }
      return std::nullopt;
    }
    if (*i < min) {
      error(pointer, "must be " + range + ", got " + std::to_string(*i));
      return std::nullopt;
    }
    if (*i > max) {
      error(pointer,
            "must be an integer <= " + std::to_string(max) + ", got " + std::to_string(*i));
      return std::nullopt;
    }
    return i;
  }

  // Reports every template string over the size limit; true when there was none. `pointer` is
  // extended and truncated in place: this visits every string of every template.
  bool check_template_sizes(const json::value& v, std::string& pointer) {
    const std::size_t limit = options_.limits.max_expression_bytes;
    if (const auto* s = v.if_string()) {
      if (s->size() > limit) {
        error(pointer, "template too long: " + std::to_string(s->size()) + " bytes (limit " +
                           std::to_string(limit) + ")");
        return false;
      }
      return true;
    }
    bool ok = true;
    const std::size_t mark = pointer.size();
    if (const auto* a = v.if_array()) {
      for (std::size_t i = 0; i < a->size(); ++i) {
        pointer += '/';
        pointer += std::to_string(i);
        ok = check_template_sizes((*a)[i], pointer) && ok;
        pointer.resize(mark);
      }
    } else if (const auto* o = v.if_object()) {
      for (const auto& kv : *o) {
        append_pointer_token(pointer, kv.key());
        ok = check_template_sizes(kv.value(), pointer) && ok;
        pointer.resize(mark);
      }
    }
    return ok;
  }

  std::optional<template_value> compile_template(const json::value& v, const std::string& pointer) {
    std::string scratch = pointer;
    if (!check_template_sizes(v, scratch)) {
      return std::nullopt;
    }
    auto compiled = template_value::compile(v);
    if (!compiled) {
      for (const auto& e : compiled.error()) {
        std::string message = e.error.message;
        if (e.error.column > 0) {
          message = "column " + std::to_string(e.error.column) + ": " + message;
        }
        error(pointer + e.pointer, std::move(message));
      }
      return std::nullopt;
    }
    return std::move(*compiled);
  }

  void check_workflow() {
    const auto* root = doc_.if_object();
    if (root == nullptr) {
      error("", "a workflow must be a JSON object, got " + std::string(json_kind_name(doc_)));
      return;
    }
    unknown_fields(*root, "",
                   {"name", "version", "description", "inputs", "vars", "nodes", "outputs",
                    "max_concurrency", "timeout_ms"});

    if (const auto* v = root->if_contains("name")) {
      if (const auto* s = get_string(*v, "/name")) {
        if (valid_workflow_name(*s)) {
          plan_.name = std::string(*s);
        } else {
          error("/name", "invalid workflow name " + quoted(*s) +
                             ": use 1 to 128 lowercase letters, digits, '_', '.' or '-', "
                             "starting with a letter or digit");
        }
      }
    } else {
      error("", "missing required field 'name'");
    }
    if (const auto* v = root->if_contains("version")) {
      if (const auto* s = get_string(*v, "/version")) {
        plan_.version = std::string(*s);
      }
    }
    if (const auto* v = root->if_contains("description")) {
      if (const auto* s = get_string(*v, "/description")) {
        plan_.description = std::string(*s);
      }
    }
    if (const auto* v = root->if_contains("inputs")) {
      check_inputs(*v);
    }
    if (const auto* v = root->if_contains("vars")) {
      if (const auto* o = get_object(*v, "/vars")) {
        for (const auto& kv : *o) {
          auto t = compile_template(kv.value(), child("/vars", kv.key()));
          plan_.var_names.emplace_back(kv.key());
          plan_.var_init.push_back(std::move(t));
        }
      }
    }
    if (const auto* v = root->if_contains("nodes")) {
      check_nodes(*v);
    } else {
      error("", "missing required field 'nodes'");
    }
    if (const auto* v = root->if_contains("outputs")) {
      if (const auto* o = get_object(*v, "/outputs")) {
        for (const auto& kv : *o) {
          if (auto t = compile_template(kv.value(), child("/outputs", kv.key()))) {
            plan_.outputs.emplace_back(std::string(kv.key()), std::move(*t));
          }
        }
      }
    }
    if (const auto* v = root->if_contains("max_concurrency")) {
      if (auto i = get_integer(*v, "/max_concurrency", 1, INT_MAX)) {
        plan_.max_concurrency = static_cast<int>(*i);
      }
    }
    if (const auto* v = root->if_contains("timeout_ms")) {
      plan_.timeout_ms =
          get_integer(*v, "/timeout_ms", 1, max_delay_ms);
    }
  }

  void check_inputs(const json::value& v) {
    const auto* inputs = get_object(v, "/inputs");
    if (inputs == nullptr) {
      return;
    }
    for (const auto& kv : *inputs) {
      const std::string pointer = child("/inputs", kv.key());
      input_decl decl;
      decl.name = std::string(kv.key());
      const auto* o = get_object(kv.value(), pointer);
      if (o == nullptr) {
        continue;
      }
      unknown_fields(*o, pointer, {"type", "required", "default"});
      bool type_known = true;
      if (const auto* t = o->if_contains("type")) {
        if (const auto* s = get_string(*t, pointer + "/type")) {
          if (auto parsed = parse_input_type(*s)) {
            decl.type = *parsed;
          } else {
            type_known = false;
            error(pointer + "/type", "unknown input type " + quoted(*s) + " (expected one of " +
                                         std::string(input_type_list) + ")");
          }
        } else {
          type_known = false;
        }
      }
      if (const auto* r = o->if_contains("required")) {
        if (const auto* b = r->if_bool()) {
          decl.required = *b;
        } else {
          wrong_type(pointer + "/required", "a boolean", *r);
        }
      }
      if (const auto* d = o->if_contains("default")) {
        if (type_known && !matches_type(decl.type, *d)) {
          error(pointer + "/default", "default must be " + std::string(to_string(decl.type)) +
                                          ", got " + std::string(json_kind_name(*d)));
        }
        decl.default_value = *d;
      }
      plan_.inputs.push_back(std::move(decl));
    }
  }

  void check_nodes(const json::value& v) {
    const auto* nodes = v.if_array();
    if (nodes == nullptr) {
      wrong_type("/nodes", "an array", v);
      return;
    }
    if (nodes->empty()) {
      error("/nodes", "must hold at least one node");
      return;
    }
    if (nodes->size() > options_.limits.max_nodes) {
      // Bounding the work spent on a hostile document matters more than its other errors.
      error("/nodes", "too many nodes: " + std::to_string(nodes->size()) + " (limit " +
                          std::to_string(options_.limits.max_nodes) + ")");
      return;
    }
    plan_.nodes.resize(nodes->size());
    pending_.resize(nodes->size());
    for (std::size_t i = 0; i < nodes->size(); ++i) {
      check_node((*nodes)[i], i);
    }
    resolve_needs();
  }

  void check_node(const json::value& v, std::size_t i) {
    const std::string pointer = child("/nodes", i);
    node_plan& node = plan_.nodes[i];
    node.index = i;
    const auto* o = v.if_object();
    if (o == nullptr) {
      error(pointer, "a node must be an object, got " + std::string(json_kind_name(v)));
      return;
    }
    unknown_fields(*o, pointer,
                   {"id", "task", "needs", "when", "with", "for_each", "concurrency", "retry",
                    "timeout_ms", "on_error", "publish", "cache", "dynamic"});

    if (const auto* f = o->if_contains("id")) {
      if (const auto* s = get_string(*f, pointer + "/id")) {
        node.id = std::string(*s);
        if (!valid_node_id(*s)) {
          error(pointer + "/id", "invalid node id " + quoted(*s) +
                                     ": use 1 to 64 letters, digits or '_', not starting with a "
                                     "digit");
        }
        // Invalid ids are still known, so needs naming them do not add a second error.
        auto [it, inserted] = ids_.emplace(node.id, i);
        if (!inserted) {
          error(pointer + "/id", "duplicate node id " + quoted(*s) + " (first used by /nodes/" +
                                     std::to_string(it->second) + ")");
        }
      }
    } else {
      error(pointer, "missing required field 'id'");
    }
    if (const auto* f = o->if_contains("task")) {
      if (const auto* s = get_string(*f, pointer + "/task")) {
        node.task = std::string(*s);
        if (options_.tasks != nullptr && !options_.tasks->contains(node.task)) {
          error(pointer + "/task", "unknown task " + quoted(*s));
        }
      }
    } else {
      error(pointer, "missing required field 'task'");
    }
    if (const auto* f = o->if_contains("needs")) {
      if (const auto* a = f->if_array()) {
        for (std::size_t k = 0; k < a->size(); ++k) {
          if (const auto* s = get_string((*a)[k], child(pointer + "/needs", k))) {
            pending_[i].needs.emplace_back(std::string(*s), k);
          }
        }
      } else {
        wrong_type(pointer + "/needs", "an array of node ids", *f);
      }
    }
    if (const auto* f = o->if_contains("when")) {
      if (f->is_string()) {
        node.when = compile_template(*f, pointer + "/when");
      } else {
        wrong_type(pointer + "/when", "a template string", *f);
      }
    }
    if (const auto* f = o->if_contains("with")) {
      if (auto t = compile_template(*f, pointer + "/with")) {
        node.with = std::move(*t);
      }
    }
    // A constant input is built once here and shared by every dispatch of every run.
    node.constant_input = make_json(node.with.is_constant() ? node.with.source() : json::value());
    if (const auto* f = o->if_contains("for_each")) {
      if (f->is_string() || f->is_array()) {
        node.for_each = compile_template(*f, pointer + "/for_each");
      } else {
        wrong_type(pointer + "/for_each", "a template string or an array", *f);
      }
    }
    if (const auto* f = o->if_contains("concurrency")) {
      if (auto c = get_integer(*f, pointer + "/concurrency", 1, INT_MAX)) {
        node.concurrency = static_cast<int>(*c);
      }
    }
    if (const auto* f = o->if_contains("retry")) {
      check_retry(*f, pointer + "/retry", node.retry);
    }
    if (const auto* f = o->if_contains("timeout_ms")) {
      node.timeout_ms =
          get_integer(*f, pointer + "/timeout_ms", 1, max_delay_ms);
    }
    if (const auto* f = o->if_contains("on_error")) {
      const auto* s = f->if_string();
      if (s != nullptr && *s == "fail") {
        node.on_error = error_policy::fail;
      } else if (s != nullptr && *s == "continue") {
        node.on_error = error_policy::continue_run;
      } else {
        error(pointer + "/on_error",
              "must be \"fail\" or \"continue\", got " +
                  (s != nullptr ? quoted(*s) : std::string(json_kind_name(*f))));
      }
    }
    if (const auto* f = o->if_contains("publish")) {
      if (const auto* p = get_object(*f, pointer + "/publish")) {
        for (const auto& kv : *p) {
          if (auto t = compile_template(kv.value(), child(pointer + "/publish", kv.key()))) {
            pending_[i].publish.emplace_back(std::string(kv.key()), std::move(*t));
          }
        }
      }
    }
    if (const auto* f = o->if_contains("cache")) {
      if (const auto* c = get_object(*f, pointer + "/cache")) {
        unknown_fields(*c, pointer + "/cache", {"version"});
        node.cache_version = "1";
        if (const auto* ver = c->if_contains("version")) {
          if (const auto* s = get_string(*ver, pointer + "/cache/version")) {
            node.cache_version = std::string(*s);
          }
        }
      }
    }
    if (const auto* f = o->if_contains("dynamic")) {
      if (const auto* d = get_object(*f, pointer + "/dynamic")) {
        unknown_fields(*d, pointer + "/dynamic", {"inputs"});
        if (const auto* in = d->if_contains("inputs")) {
          node.dynamic_inputs = compile_template(*in, pointer + "/dynamic/inputs");
        } else {
          node.dynamic_inputs = compile_template(json::object(), pointer + "/dynamic");
        }
      }
    }
  }

  void check_retry(const json::value& v, const std::string& pointer, retry_policy& retry) {
    const auto* o = get_object(v, pointer);
    if (o == nullptr) {
      return;
    }
    unknown_fields(*o, pointer, {"max_attempts", "backoff_ms", "factor", "max_backoff_ms"});
    if (const auto* f = o->if_contains("max_attempts")) {
      if (auto i = get_integer(*f, pointer + "/max_attempts", 1, INT_MAX)) {
        retry.max_attempts = static_cast<int>(*i);
      }
    }
    if (const auto* f = o->if_contains("backoff_ms")) {
      if (auto i = get_integer(*f, pointer + "/backoff_ms", 0, max_delay_ms)) {
        retry.backoff_ms = *i;
      }
    }
    if (const auto* f = o->if_contains("factor")) {
      const double factor = f->is_number() ? f->to_number<double>() : 0.0;
      if (f->is_number() && std::isfinite(factor) && factor >= 1.0) {
        retry.factor = factor;
      } else if (f->is_number()) {
        error(pointer + "/factor", "must be a number >= 1, got " + canonical_json(*f));
      } else {
        wrong_type(pointer + "/factor", "a number >= 1", *f);
      }
    }
    if (const auto* f = o->if_contains("max_backoff_ms")) {
      if (auto i = get_integer(*f, pointer + "/max_backoff_ms", 0, max_delay_ms)) {
        retry.max_backoff_ms = *i;
      }
    }
  }

  void resolve_needs() {
    const std::size_t n = plan_.nodes.size();
    edges_.assign(n, {});
    for (std::size_t i = 0; i < n; ++i) {
      const std::string pointer = child("/nodes", i) + "/needs";
      std::unordered_map<std::size_t, std::size_t> seen;  // node index -> position in needs
      for (const auto& [id, k] : pending_[i].needs) {
        auto it = ids_.find(id);
        if (it == ids_.end()) {
          error(child(pointer, k), "unknown node " + quoted(id));
          continue;
        }
        auto [prev, inserted] = seen.emplace(it->second, k);
        if (!inserted) {
          error(child(pointer, k),
                "node " + quoted(id) + " is already needed at " + child(pointer, prev->second));
          continue;
        }
        edges_[i].push_back(it->second);
      }
    }
    for (auto& component : strongly_connected(edges_)) {
      const bool self_loop = component.size() == 1 &&
                             std::find(edges_[component[0]].begin(), edges_[component[0]].end(),
                                       component[0]) != edges_[component[0]].end();
      if (component.size() < 2 && !self_loop) {
        continue;
      }
      const std::size_t first = *std::min_element(component.begin(), component.end());
      const std::unordered_set<std::size_t> members(component.begin(), component.end());
      const auto path = cycle_through(first, edges_, members);
      // A ring of thousands of nodes must not produce a megabyte-long message.
      constexpr std::size_t max_named = 32;
      std::string message = "cycle: ";
      for (std::size_t k = 0; k < path.size() && k < max_named; ++k) {
        message += plan_.nodes[path[k]].id + " -> ";
      }
      if (path.size() > max_named) {
        message += "... (" + std::to_string(path.size() - max_named) + " more) -> ";
      }
      message += plan_.nodes[first].id;
      if (self_loop) {
        message += " (a node cannot need itself)";
      } else {
        message += " (each node needs the next)";
      }
      if (members.size() > path.size()) {
        std::sort(component.begin(), component.end());
        message += "; the cycle also involves";
        const std::unordered_set<std::size_t> on_path(path.begin(), path.end());
        std::size_t named = 0;
        for (std::size_t v : component) {
          if (!on_path.count(v) && named++ < max_named) {
            message += " " + plan_.nodes[v].id;
          }
        }
        if (named > max_named) {
          message += " and " + std::to_string(named - max_named) + " more";
        }
      }
      error(child("/nodes", first) + "/needs", std::move(message));
    }
  }

  expected<plan_ptr, validation_errors> build() {
    const std::size_t n = plan_.nodes.size();
    for (std::size_t i = 0; i < n; ++i) {
      plan_.names.nodes.emplace(plan_.nodes[i].id, i);
    }
    for (std::size_t slot = 0; slot < plan_.var_names.size(); ++slot) {
      plan_.names.vars.emplace(plan_.var_names[slot], slot);
    }
    for (std::size_t i = 0; i < n; ++i) {
      node_plan& node = plan_.nodes[i];
      node.needs = edges_[i];
      // Visiting i in increasing order keeps every dependents list sorted by document order.
      for (std::size_t need : node.needs) {
        plan_.nodes[need].dependents.push_back(i);
      }
      for (auto& [name, t] : pending_[i].publish) {
        auto [it, inserted] = plan_.names.vars.emplace(name, plan_.var_names.size());
        if (inserted) {
          plan_.var_names.push_back(name);
          plan_.var_init.emplace_back(std::nullopt);
        }
        node.publish.emplace_back(it->second, std::move(t));
      }
    }
    // Kahn's algorithm; the min-heap breaks ties by document order, so the order is stable.
    std::vector<std::size_t> waiting(n);
    std::priority_queue<std::size_t, std::vector<std::size_t>, std::greater<>> ready;
    for (std::size_t i = 0; i < n; ++i) {
      waiting[i] = plan_.nodes[i].needs.size();
      if (waiting[i] == 0) {
        ready.push(i);
      }
    }
    plan_.topological_order.reserve(n);
    while (!ready.empty()) {
      const std::size_t v = ready.top();
      ready.pop();
      plan_.topological_order.push_back(v);
      for (std::size_t d : plan_.nodes[v].dependents) {
        if (--waiting[d] == 0) {
          ready.push(d);
        }
      }
    }
    plan_.source = doc_;
    plan_.hash = options_.source_hash.empty() ? canonical_hash(doc_) : options_.source_hash;
    return std::make_shared<const plan>(std::move(plan_));
  }

  const json::value& doc_;
  const compile_options& options_;
  validation_errors errors_;
  plan plan_;
  std::vector<pending_node> pending_;
  name_index ids_;                               // node id -> index of the first node with it
  std::vector<std::vector<std::size_t>> edges_;  // node -> the nodes it needs
};

expected<plan_ptr, validation_errors> compile_checked(const json::value& document,
                                                      const compile_options& options) {
  try {
    return compiler(document, options).run();
  } catch (const std::exception& e) {
    // Only allocation failure can get here; callers rely on errors never being thrown.
    return make_unexpected(validation_errors{{"", std::string("cannot compile: ") + e.what()}});
  }
}

}  // namespace
}  // namespace detail

std::int64_t retry_policy::delay_before(int next_attempt) const {
  if (next_attempt < 2 || backoff_ms <= 0 || max_backoff_ms <= 0) {
    return 0;
  }
  const double delay =
      static_cast<double>(backoff_ms) * std::pow(std::max(factor, 1.0), next_attempt - 2);
  // NaN and overflow both land on the cap.
  if (!(delay < static_cast<double>(max_backoff_ms))) {
    return max_backoff_ms;
  }
  return static_cast<std::int64_t>(delay);
}

std::string_view to_string(input_type t) {
  switch (t) {
    case input_type::string:
      return "string";
    case input_type::number:
      return "number";
    case input_type::integer:
      return "integer";
    case input_type::boolean:
      return "boolean";
    case input_type::array:
      return "array";
    case input_type::object:
      return "object";
    case input_type::any:
      return "any";
  }
  return "any";
}

const node_plan* plan::find_node(std::string_view id) const {
  auto it = names.nodes.find(id);
  if (it == names.nodes.end() || it->second >= nodes.size()) {
    return nullptr;
  }
  return &nodes[it->second];
}

bool operator==(const plan& a, const plan& b) {
  return a.hash == b.hash && a.nodes.size() == b.nodes.size() && a.source == b.source;
}

expected<plan_ptr, validation_errors> compile_workflow(std::string_view json_text,
                                                       const compile_options& options) {
  // String sizes are left to the value walk, which can say which string is too long.
  json_limits parse_limits = options.limits.json;
  parse_limits.max_string_bytes = std::numeric_limits<std::size_t>::max();
  auto document = parse_json(json_text, parse_limits);
  if (!document) {
    return make_unexpected(validation_errors{{"", std::move(document.error().message)}});
  }
  return detail::compile_checked(*document, options);
}

expected<plan_ptr, validation_errors> compile_workflow(const json::value& document,
                                                       const compile_options& options) {
  return detail::compile_checked(document, options);
}

expected<json::object, validation_errors> bind_inputs(const plan& p, const json::object& given) {
  validation_errors errors;
  try {
    for (const auto& kv : given) {
      const auto decl = std::find_if(p.inputs.begin(), p.inputs.end(),
                                     [&](const input_decl& d) { return d.name == kv.key(); });
      const std::string pointer = detail::child("/inputs", kv.key());
      if (decl == p.inputs.end()) {
        errors.push_back({pointer, "unknown input " + detail::quoted(kv.key())});
      } else if (!detail::matches_type(decl->type, kv.value())) {
        errors.push_back({pointer, "input " + detail::quoted(kv.key()) + " must be " +
                                       std::string(to_string(decl->type)) + ", got " +
                                       std::string(json_kind_name(kv.value()))});
      }
    }
    json::object bound;
    for (const auto& decl : p.inputs) {
      if (const auto* v = given.if_contains(decl.name)) {
        bound[decl.name] = detail::normalize_input(decl.type, *v);
      } else if (decl.default_value) {
        bound[decl.name] = detail::normalize_input(decl.type, *decl.default_value);
      } else if (decl.required) {
        errors.push_back({detail::child("/inputs", decl.name),
                          "missing required input " + detail::quoted(decl.name)});
      }
    }
    if (!errors.empty()) {
      return make_unexpected(std::move(errors));
    }
    return bound;
  } catch (const std::exception& e) {
    return make_unexpected(validation_errors{{"/inputs", std::string("cannot bind: ") + e.what()}});
  }
}

}  // namespace troupe
