#pragma once

// The HTTP API of `troupe serve` (docs: apps/README.md, "The service"). Routes requests to the
// engine without a blocking round trip into the actor system: starts and cancels are calls that
// return at once, results and events arrive through the engine's callbacks, and store queries
// (the log, idempotency keys) run on the service's own small thread pool, never on the HTTP
// threads.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "apps/http_server.hpp"

namespace troupe {
class engine;
}

namespace troupe::cli {

struct service_config {
  /// Bearer tokens accepted; empty: no authentication (serve then listens on loopback only).
  std::vector<std::string> api_keys;
  /// Tasks that workflows registered through the API may name; `all_tasks`: any. By default
  /// every task the engine has but `shell`.
  std::set<std::string, std::less<>> allowed_tasks;
  bool all_tasks = false;
  /// `http` tasks of those runs may reach these hosts (names as written in URLs, or addresses)
  /// even when they are loopback or private; "*": any address. Otherwise only public ones.
  std::vector<std::string> allowed_http_hosts;
  /// Hashes of the operator's workflows (`--workflows DIR`): their runs are trusted, no limits.
  std::set<std::string, std::less<>> trusted_plans;
  /// Requests per second per key (token bucket, `rate_burst` deep); 0: no limit.
  double rate_per_key = 0;
  double rate_burst = 50;
  /// Runs in flight per key; 0: no limit.
  std::size_t runs_per_key = 0;
  /// How long an Idempotency-Key is remembered.
  std::chrono::milliseconds idempotency_retention{std::chrono::hours(24)};
  /// `wait` responses: the default and the largest wait_ms.
  std::chrono::milliseconds default_wait{std::chrono::seconds(30)};
  std::chrono::milliseconds max_wait{std::chrono::minutes(10)};
  /// Events kept in memory per run for streams that join late (older ones replay from the log),
  /// and how many finished runs keep theirs (and their result documents).
  std::size_t feed_events = 10000;
  std::size_t finished_feeds = 1000;
  /// A finished run keeps at most this many of its latest events in memory (the rest replay
  /// from the log): bounds what finished_feeds hold.
  std::size_t finished_feed_events = 1000;
  /// /readyz fails while the writer holds this many rows or more waiting for a commit.
  std::size_t ready_max_pending = 100000;
  /// Threads of the pool that runs store queries.
  int query_threads = 2;
  /// The engine coordinates a cluster: /metrics adds its troupe_cluster_* families.
  bool cluster = false;
  /// One line per run adopted from a dead engine after start (must not block). May be empty.
  std::function<void(const std::string&)> log;
};

class service {
 public:
  /// `server_stats` feeds /metrics with the HTTP server's counters (may be empty).
  service(engine& e, service_config config, std::function<http_server_stats()> server_stats = {});
  ~service();
  service(const service&) = delete;
  service& operator=(const service&) = delete;

  /// The http_handler: answers every route.
  void handle(const std::shared_ptr<http_exchange>& exchange, http_request request);
  /// The http_server_config::before_body hook: a 401 for a request without a valid key (none
  /// without keys). Any thread.
  std::optional<http_response> refuse_before_body(std::string_view authorization) const;
  /// Has the engine adopt the runs of engines that died (engine::adopt_expired_runs), now and
  /// whenever a lease runs out, as runs of this service: their events stream live and they can
  /// be cancelled. The first round runs before it returns (how many runs it adopted). Call after
  /// the workflows are registered, before the server listens.
  std::size_t adopt_expired_runs();
  /// From now on, requests that would start or resume a run get 503 (shutting down).
  void stop_starting_runs();
  /// Runs started or resumed through this service that have not ended.
  std::size_t runs_in_flight() const;
  /// Ends every open event stream, stops the query pool (waits for its work), and then answers
  /// nothing more. Call after the engine has shut down.
  void stop();

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

/// Reads API keys: one per line of `path` (blank lines and lines starting with '#' ignored),
/// or comma-separated from `env_value`. Throws std::runtime_error when the file cannot be read.
std::vector<std::string> read_api_keys(const std::string& path, const std::string& env_value);

}  // namespace troupe::cli
