#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "workflow/expr.hpp"
#include "workflow/json.hpp"
#include "workflow/pvector.hpp"

namespace troupe {

/// States of a node (and of one item or attempt of it).
enum class node_status : std::uint8_t {
  pending,
  running,
  succeeded,
  failed,
  skipped,
  cancelled,
  timed_out,
  /// An attempt that was running when the process running it died; closed on resume (it may
  /// or may not have had its effect: tasks make themselves idempotent with the execution key).
  interrupted
};
std::string_view to_string(node_status s);
bool is_terminal(node_status s);

/// What a finished node left in the context. Immutable once stored.
struct node_result {
  node_status status = node_status::pending;
  json_ptr output;  // null pointer reads as JSON null
  json_ptr error;   // a JSON string, or null pointer when there is no error
};

/// Transparent string hashing so lookups by string_view do not allocate.
struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
using name_index = std::unordered_map<std::string, std::size_t, string_hash, std::equal_to<>>;

/// Maps the names expressions use to the context's slots; the compiled plan owns one.
struct name_table {
  name_index nodes;  // node id -> node index
  name_index vars;   // variable name -> var slot
};

/// The immutable, persistent state a run's expressions read: inputs, vars, node results, and
/// inside a `for_each` item, `item` and `index`.
///
/// Copying a context copies four pointers and an integer, whatever it holds. `with_*` return a
/// new context that shares every part they did not change (node results and vars live in
/// persistent vectors, see pvector.hpp), so a for_each item's view costs O(1) and no two items can
/// observe each other's writes: each holds its own version.
class context {
 public:
  context() = default;
  context(std::size_t node_count, std::size_t var_count, json_ptr inputs);

  /// with_node and with_var throw std::out_of_range for a slot past node_count()/var_count().
  context with_node(std::size_t index, node_result r) const;
  context with_var(std::size_t slot, json_ptr value) const;
  /// The owner's update of its own current context (the run actor's): same result as
  /// `*this = with_node(...)`, but parts no other version shares are updated in place. Versions
  /// handed out before (item views, copies) keep what they saw.
  void set_node(std::size_t index, node_result r);
  void set_var(std::size_t slot, json_ptr value);
  /// Binds `item` and `index`; O(1). Pass an aliasing shared_ptr into the for_each array to
  /// avoid copying the element. Throws std::invalid_argument for a negative index. A null item
  /// pointer reads as JSON null inside the item.
  context with_item(json_ptr item, std::int64_t index) const;

  /// Null when the node has no result yet.
  const node_result* node(std::size_t index) const;
  /// Null pointer when the variable was never set.
  const json_ptr& var(std::size_t slot) const;
  const json_ptr& inputs() const { return inputs_; }
  const json_ptr& item() const { return item_; }
  std::optional<std::int64_t> index() const;

  std::size_t node_count() const { return nodes_.size(); }
  std::size_t var_count() const { return vars_.size(); }

  /// Structural sharing, observable for tests: true when both contexts hold the very same
  /// storage for that slot (not an equal copy).
  bool shares_node_storage(const context& other, std::size_t index) const;
  bool shares_var_storage(const context& other, std::size_t slot) const;
  bool shares_all_nodes(const context& other) const { return nodes_.same_root(other.nodes_); }

 private:
  pvector<node_result> nodes_;
  pvector<json_ptr> vars_;
  json_ptr inputs_;
  json_ptr item_;
  std::int64_t index_ = -1;  // -1: not inside a for_each item
};

/// Identity of a run, as `run.id` and `run.workflow` expose it.
struct run_identity {
  std::string id;
  std::string workflow;
};

/// Adapts a context to the expression evaluator's `scope`. Lives only for one evaluation: it
/// borrows everything it is given.
class context_scope final : public scope {
 public:
  context_scope(const name_table& names, const context& ctx, const run_identity& run,
                const json::value* output = nullptr);

  const json::value* inputs() const override;
  const json::value* var(std::string_view name) const override;
  const json::value* node(std::string_view id, node_field field) const override;
  const json::value* item() const override;
  const json::value* index() const override;
  const json::value* output() const override;
  const json::value* run(std::string_view field) const override;

 private:
  const name_table& names_;
  const context& ctx_;
  const run_identity& run_;
  const json::value* output_;
  json::value index_value_;
  json::value run_id_;
  json::value run_workflow_;
};

}  // namespace troupe
