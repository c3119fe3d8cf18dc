#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "actors/writer_config.hpp"

namespace troupe::cli {

/// `troupe serve`: the engine behind the HTTP API (apps/service.hpp). Every option also reads
/// an environment variable (TROUPE_LISTEN, TROUPE_DB, ...; see `troupe serve --help`).
struct serve_options {
  std::string listen = "127.0.0.1:8080";
  std::string db = "sqlite://troupe.db";
  persistence_mode mode = persistence_mode::durable;
  std::string workflows_dir;
  std::string api_keys_file;
  std::string api_keys_env;  // TROUPE_API_KEYS, comma-separated
  int threads = 0;
  int http_threads = 1;
  std::string allow_tasks;  // comma-separated; "all": any
  std::string allow_http_hosts;  // comma-separated; "*": any address
  std::size_t max_body = 1 << 20;
  std::size_t max_connections = 10000;
  double rate_limit = 0;
  std::size_t runs_per_key = 0;
  std::int64_t read_timeout_ms = 10000;
  std::int64_t drain_ms = 30000;
  std::int64_t sse_keepalive_ms = 15000;
  std::size_t max_stream_buffer = 8 << 20;
  /// How long a run stays owned without a renewal (another coordinator may adopt it then).
  std::int64_t lease_ms = 15000;
  /// The cluster (docs/cluster.md): HOST:PORT the dispatcher listens on for workers; empty: off.
  std::string cluster_listen;
  std::int64_t heartbeat_ms = 500;
  std::int64_t connection_timeout_ms = 2000;
  std::string remote_tasks;  // comma-separated: tasks only workers implement
  bool wait_for_workers = false;  // else a task no worker offers runs here
  int max_in_flight = 0;          // tasks in flight over all runs (0: no limit)
};

/// `troupe node`: a cluster worker running the builtin tasks (shell, http, sleep) for the
/// coordinators it joins. Programs with C++ tasks embed the engine and call join_cluster().
struct node_options {
  std::string join;  // comma-separated HOST:PORT
  std::string name;
  std::string offer;  // comma-separated; empty: every task it has but quick ones
  int capacity = 0;
  int threads = 0;
  int blocking_threads = 2;
  std::int64_t heartbeat_ms = 500;
  std::int64_t connection_timeout_ms = 2000;
};

int node_command(const node_options& o);

int serve_command(const serve_options& o);

}  // namespace troupe::cli
