#pragma once

// The built-in workflows that `troupe load --scenario W1..W4` and bench_runtime run, built in
// one place so that both measure the same documents.

#include <string>
#include <string_view>

#include "workflow/json.hpp"

namespace troupe::scenarios {

/// W1: a chain of `length` nodes, each running `task` after the one before: the cost per hop.
json::value chain(std::string name, int length, std::string_view task);

/// W2: one `noop` source, `width` `noop` nodes after it, one `noop` join: a wide fan-out.
json::value fan(std::string name, int width);

/// W3: A -> B1..B8 -> C, the 10-node workflow of the throughput and latency goals. A runs
/// `first_task` with `first_with` (none when null: `sleep` holds runs open); with `memo`, every
/// node has `cache` (after one run, every node is a hit).
json::value w3(std::string name, std::string_view first_task = "noop",
               const json::value& first_with = nullptr, bool memo = false);

/// W4: 100 nodes each putting `inputs.blob` in the context, then a `for_each` over 1000 items:
/// what an item costs when the context is large.
json::value w4(std::string name);

}  // namespace troupe::scenarios
