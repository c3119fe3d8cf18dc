#pragma once

// A worker's agent: connects to every coordinator it is told to join, says hello to each one's
// dispatcher (actors/dispatcher.hpp), runs the attempts they order with this process's node
// actors and tasks, and reports each outcome to the dispatcher that ordered it.
//
// Everything is asynchronous: connecting is a request to the middleman actor (whose own thread
// does the TCP connect), every wait is a timer. A coordinator lost (its proxy's down_msg: the
// connection dropped or heartbeats stopped) takes its orders with it: they are cancelled here,
// since their outcome can no longer be delivered (the run's new owner runs them again from its
// log), and the agent reconnects with backoff. Links to other coordinators are untouched.

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <caf/actor.hpp>

#include "actors/cluster_link_event.hpp"
#include "actors/run_actor.hpp"

namespace troupe {

struct cluster_endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string text() const { return host + ":" + std::to_string(port); }
};

struct agent_config {
  std::vector<cluster_endpoint> join;
  std::vector<std::string> offer;  // the tasks it runs (already resolved by the caller)
  std::int32_t capacity = 1;       // attempts at once over all coordinators
  std::string worker_id;
  /// This node's middleman heartbeat settings, compared with each coordinator's (a mismatch
  /// is reported with the joined event).
  std::int64_t heartbeat_ms = 0;
  std::int64_t connection_timeout_ms = 0;
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds backoff_min{200};
  std::chrono::milliseconds backoff_max{5000};
  /// A coordinator that refused this node's version is tried again this much later.
  std::chrono::milliseconds refused_retry{30000};
};

/// `on_event` (one event per change of a link, for the worker's program to print) is called on
/// the agent's thread; it must not block.
caf::actor spawn_node_agent(const services_ptr& services, agent_config config,
                            std::function<void(const cluster_link_event&)> on_event);

}  // namespace troupe
