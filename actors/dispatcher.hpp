#pragma once

// A coordinator's dispatcher: places the attempts of tasks that workers offer on the least
// loaded worker offering them, and places them again when a worker is lost. One per engine,
// published through CAF's middleman (engine::serve_cluster); workers' agents
// (actors/node_agent.hpp) say hello to it and then receive orders.
//
// Who owns what: the dispatcher's state is its own (one actor, one thread at a time). The offer
// table and the counters are shared with node actors and the engine and are thread-safe. A
// worker is known only while its agent's proxy lives: the dispatcher monitors it, and its
// down_msg (the connection dropped, or heartbeats stopped) is the only sign of a lost worker.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <caf/actor.hpp>

namespace caf {
class actor_system;
}

namespace troupe {

class lease_registry;
namespace trace {
class tracer;
}

/// The tasks an attempt may be dispatched for: those some worker offers now, and those only
/// workers implement (declared by the coordinator). Read by node actors on every non-quick
/// attempt; written by the dispatcher when workers come and go.
class offer_table {
 public:
  using task_set = std::set<std::string, std::less<>>;
  bool routes(std::string_view task) const;
  void set_offered(task_set offered);
  void set_remote_only(task_set names);

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const task_set> offered_ = std::make_shared<const task_set>();
  std::shared_ptr<const task_set> remote_only_ = std::make_shared<const task_set>();
};

/// What the dispatcher has done, read by anyone (metrics) without asking it.
struct cluster_counters {
  std::atomic<std::int64_t> workers{0};
  std::atomic<std::int64_t> remote_in_flight{0};  // placed on a worker, not reported yet
  std::atomic<std::int64_t> waiting{0};           // every worker offering the task is full
  std::atomic<std::uint64_t> dispatched{0};       // orders sent to workers (re-dispatches too)
  std::atomic<std::uint64_t> lost{0};             // attempts whose worker was lost
  std::atomic<std::uint64_t> ran_here{0};         // attempts no worker offered: run locally
};

/// When no connected worker offers a task that is routed to the dispatcher.
enum class no_worker_policy {
  run_here,  // the coordinator runs it (a remote-only task then fails with a clear error)
  wait,      // it waits for a worker (bounded by the attempt's and run's timeouts)
};

struct dispatcher_config {
  std::string coordinator_id;
  std::int64_t heartbeat_ms = 0;
  std::int64_t connection_timeout_ms = 0;
  no_worker_policy no_worker = no_worker_policy::run_here;
  /// One line per worker that joins, is refused or is lost; called on the dispatcher's thread,
  /// must not block. May be empty.
  std::function<void(const std::string&)> log;
  /// The engine's leases (null in memory mode): an order goes out only while the engine is sure
  /// it owns the run (lease_registry::check); otherwise it goes back to its node actor, which
  /// renews first. Wall-clock µs = steady µs + wall_offset_us.
  std::shared_ptr<const lease_registry> leases;
  std::int64_t lease_ms = 0;
  std::int64_t wall_offset_us = 0;
};

caf::actor spawn_dispatcher(caf::actor_system& system, dispatcher_config config,
                            std::shared_ptr<offer_table> offers,
                            std::shared_ptr<cluster_counters> counters, trace::tracer* tracer);

}  // namespace troupe
