#pragma once

#include <string>

#include "workflow/json.hpp"
#include "workflow/plan.hpp"

namespace troupe {

/// The key a node execution's output is memoized under (the node's `cache` field): the
/// canonical hash (XXH3-128, 32 hex digits) of {"task", "with": the rendered input, "item":
/// the for_each item or null, "version": the cache version}. Canonical JSON makes key order and
/// number spelling (1 vs 1.0) irrelevant, so equal inputs always meet the same entry. The node
/// id is deliberately not part of it: two nodes running the same task on the same input with
/// the same version share their output. Empty when the node has no `cache` field.
std::string cache_key(const node_plan& node, const json::value& input, const json::value* item);

}  // namespace troupe
