#include "workflow/context.hpp"

#include <array>
#include <stdexcept>
#include <utility>

namespace troupe {

namespace {

constexpr std::array<std::string_view, 8> status_names = {
    "pending", "running", "succeeded", "failed", "skipped", "cancelled", "timed_out", "interrupted"};

// Expressions read statuses and absent values through pointers that must outlive the scope; these
// statics are built once (thread-safely) and never written, so every scope on every thread can
// hand them out without allocating.
const json::value& null_value() {
  static const json::value value;
  return value;
}

const json::value& status_value(node_status s) {
  static const std::array<json::value, status_names.size()> values = [] {
    std::array<json::value, status_names.size()> v;
    for (std::size_t i = 0; i < status_names.size(); ++i) {
      v[i] = json::string(status_names[i]);
    }
    return v;
  }();
  const auto i = static_cast<std::size_t>(s);
  return i < values.size() ? values[i] : null_value();
}

}  // namespace

std::string_view to_string(node_status s) {
  const auto i = static_cast<std::size_t>(s);
  return i < status_names.size() ? status_names[i] : std::string_view("unknown");
}

bool is_terminal(node_status s) {
  switch (s) {
    case node_status::pending:
    case node_status::running:
      return false;
    case node_status::succeeded:
    case node_status::failed:
    case node_status::skipped:
    case node_status::cancelled:
    case node_status::timed_out:
    case node_status::interrupted:
      return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// context

context::context(std::size_t node_count, std::size_t var_count, json_ptr inputs)
    : nodes_(node_count), vars_(var_count), inputs_(std::move(inputs)) {}

// Every with_* copies the context (pointers only) and replaces one part, so the result shares
// everything else with *this; *this is never modified, which is what lets concurrent readers and
// sibling for_each items hold versions without locks.
context context::with_node(std::size_t index, node_result r) const {
  context next = *this;
  next.nodes_ = nodes_.set(index, std::move(r));
  return next;
}

void context::set_node(std::size_t index, node_result r) {
  nodes_.assign(index, std::move(r));
}

void context::set_var(std::size_t slot, json_ptr value) {
  vars_.assign(slot, std::move(value));
}

context context::with_var(std::size_t slot, json_ptr value) const {
  context next = *this;
  next.vars_ = vars_.set(slot, std::move(value));
  return next;
}

context context::with_item(json_ptr item, std::int64_t index) const {
  if (index < 0) {
    throw std::invalid_argument("context::with_item: negative index");
  }
  context next = *this;
  next.item_ = std::move(item);
  next.index_ = index;
  return next;
}

const node_result* context::node(std::size_t index) const {
  return nodes_.find(index);
}

const json_ptr& context::var(std::size_t slot) const {
  return vars_.get(slot);
}

std::optional<std::int64_t> context::index() const {
  if (index_ < 0) {
    return std::nullopt;
  }
  return index_;
}

bool context::shares_node_storage(const context& other, std::size_t index) const {
  return nodes_.shares_leaf(other.nodes_, index);
}

bool context::shares_var_storage(const context& other, std::size_t slot) const {
  return vars_.shares_leaf(other.vars_, slot);
}

// ---------------------------------------------------------------------------------------------
// context_scope

context_scope::context_scope(const name_table& names, const context& ctx, const run_identity& run,
                             const json::value* output)
    : names_(names),
      ctx_(ctx),
      run_(run),
      output_(output),
      run_id_(json::string(run.id)),
      run_workflow_(json::string(run.workflow)) {
  if (const auto i = ctx_.index()) {
    index_value_ = *i;
  }
}

const json::value* context_scope::inputs() const {
  return ctx_.inputs().get();
}

const json::value* context_scope::var(std::string_view name) const {
  const auto it = names_.vars.find(name);
  if (it == names_.vars.end()) {
    return nullptr;
  }
  return ctx_.var(it->second).get();
}

const json::value* context_scope::node(std::string_view id, node_field field) const {
  const auto it = names_.nodes.find(id);
  if (it == names_.nodes.end()) {
    return nullptr;
  }
  const node_result* r = ctx_.node(it->second);
  if (r == nullptr) {
    return nullptr;
  }
  switch (field) {
    case node_field::output:
      return r->output ? r->output.get() : &null_value();
    case node_field::status:
      return &status_value(r->status);
    case node_field::error:
      return r->error ? r->error.get() : &null_value();
  }
  return nullptr;
}

const json::value* context_scope::item() const {
  if (!ctx_.index()) {
    return nullptr;
  }
  // Inside an item a null pointer is a JSON null element, not a missing name.
  return ctx_.item() ? ctx_.item().get() : &null_value();
}

const json::value* context_scope::index() const {
  return ctx_.index() ? &index_value_ : nullptr;
}

const json::value* context_scope::output() const {
  return output_;
}

const json::value* context_scope::run(std::string_view field) const {
  if (field == "id") {
    return &run_id_;
  }
  if (field == "workflow") {
    return &run_workflow_;
  }
  return nullptr;
}

}  // namespace troupe
