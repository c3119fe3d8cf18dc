#include "workflow/cache_key.hpp"

namespace troupe {

std::string cache_key(const node_plan& node, const json::value& input, const json::value* item) {
  if (!node.cache_version) {
    return {};
  }
  json::object o;
  o.reserve(4);
  o["task"] = node.task;
  o["with"] = input;
  o["item"] = item ? *item : json::value(nullptr);
  o["version"] = *node.cache_version;
  if (node.dynamic_inputs) {
    // A dynamic node's entry is the generated workflow, not an output: the marker keeps an
    // ordinary node with the same task and input from reading it as its output.
    o["dynamic"] = true;
  }
  return canonical_hash(json::value(std::move(o)));
}

}  // namespace troupe
