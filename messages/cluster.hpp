#pragma once

// The cluster's wire protocol: what a coordinator's dispatcher and a worker's agent exchange over
// CAF's middleman (BASP). Plain structs copied by value, each with an `inspect` and a type id of
// the `troupe_cluster` block, registered under the same name on every node by
// register_cluster_types(). JSON crosses as text (serialize once on the sending node's actor,
// parse on the receiving one): no shared pointers, no JSON type in CAF's type system.
//
// Any change to these structs or their meaning bumps `wire::protocol`: nodes of different
// protocols or troupe versions refuse each other at the BASP handshake (app_identifier()).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <caf/meta/type_name.hpp>
#include <caf/type_id.hpp>

#include "workflow/expected.hpp"
#include "workflow/json.hpp"
#include "workflow/task.hpp"

namespace caf {
class actor_system_config;
}

namespace troupe::wire {

inline constexpr std::int32_t protocol = 1;

/// "troupe/<version>/p<protocol>": the middleman's application identifier on every node of a
/// cluster. CAF's connecting side compares it with the server's and refuses a mismatch.
std::string app_identifier();
/// This build's troupe version ("0.1.0").
std::string_view version();

/// Worker agent -> dispatcher, as a request: who it is and what it offers.
struct worker_hello {
  std::int32_t protocol = 0;
  std::string version;
  std::string worker_id;           // the worker engine's identity, "host/pid/start_us"
  std::vector<std::string> tasks;  // the tasks it runs
  std::int32_t capacity = 0;       // attempts it runs at once
};

/// The dispatcher's answer to a hello.
struct welcome {
  std::string coordinator_id;  // the coordinator engine's identity
  /// The coordinator's middleman heartbeat settings: a worker with other values warns (a
  /// connection timeout on one side without heartbeats from the other drops healthy links).
  std::int64_t heartbeat_ms = 0;
  std::int64_t connection_timeout_ms = 0;
};

/// Dispatcher -> worker: run one attempt. `id` names the attempt on this link only.
struct attempt_order {
  std::uint64_t id = 0;
  std::string task;
  std::string input_json;
  std::string run_id;
  std::string node_id;
  std::int64_t item = -1;
  std::int32_t attempt = 1;
  /// Times this attempt's worker was lost before (it keeps its attempt number and execution key).
  std::int32_t lost = 0;
  /// The run's task_policy, when it has one.
  bool has_policy = false;
  bool all_tasks = false;
  bool private_addresses = false;
  std::vector<std::string> allowed_tasks;
  std::vector<std::string> allowed_hosts;
};

/// Worker -> dispatcher: the outcome of an order.
struct attempt_report {
  std::uint64_t id = 0;
  bool ok = true;
  std::string output_json;  // when ok
  std::string error;        // when not
};

/// Dispatcher -> worker: stop an order (the run cancelled it or timed it out). May be lost with
/// its link, and then the worker cancels every order of that link itself.
struct attempt_cancel {
  std::uint64_t id = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_hello& x) {
  return f(caf::meta::type_name("worker_hello"), x.protocol, x.version, x.worker_id, x.tasks,
           x.capacity);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, welcome& x) {
  return f(caf::meta::type_name("welcome"), x.coordinator_id, x.heartbeat_ms,
           x.connection_timeout_ms);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, attempt_order& x) {
  return f(caf::meta::type_name("attempt_order"), x.id, x.task, x.input_json, x.run_id, x.node_id,
           x.item, x.attempt, x.lost, x.has_policy, x.all_tasks, x.private_addresses,
           x.allowed_tasks, x.allowed_hosts);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, attempt_report& x) {
  return f(caf::meta::type_name("attempt_report"), x.id, x.ok, x.output_json, x.error);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, attempt_cancel& x) {
  return f(caf::meta::type_name("attempt_cancel"), x.id);
}

/// JSON as it crosses the wire: compact text, and its parse (the reason when it is not JSON).
std::string to_wire(const json::value& v);
expected<json::value, std::string> from_wire(std::string_view text);

/// The run's policy on the order, and back.
void put_policy(attempt_order& order, const task_policy* policy);
policy_ptr policy_of(const attempt_order& order);

/// Registers every wire type with the actor system being configured (call on every node).
void register_cluster_types(caf::actor_system_config& cfg);

}  // namespace troupe::wire

CAF_BEGIN_TYPE_ID_BLOCK(troupe_cluster, caf::first_custom_type_id)
  CAF_ADD_TYPE_ID(troupe_cluster, (troupe::wire::worker_hello))
  CAF_ADD_TYPE_ID(troupe_cluster, (troupe::wire::welcome))
  CAF_ADD_TYPE_ID(troupe_cluster, (troupe::wire::attempt_order))
  CAF_ADD_TYPE_ID(troupe_cluster, (troupe::wire::attempt_report))
  CAF_ADD_TYPE_ID(troupe_cluster, (troupe::wire::attempt_cancel))
CAF_END_TYPE_ID_BLOCK(troupe_cluster)
