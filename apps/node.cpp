#include <condition_variable>
#include <iostream>
#include <mutex>
#include <optional>
#include <set>

#include "apps/cli.hpp"
#include "apps/serve.hpp"
#include "apps/signals.hpp"
#include "runtime/engine.hpp"

namespace troupe::cli {

namespace {

// "HOST:PORT" with a host and a port: a worker must know where its coordinator is.
bool parse_endpoint(const std::string& text, std::string& host, std::uint16_t& port) {
  return split_host_port(text, host, port) && !host.empty() && port != 0;
}

}  // namespace

int node_command(const node_options& o) {
  worker_options wo;
  for (const auto& item : split(o.join, ',')) {
    if (item.empty()) {
      continue;
    }
    std::string host;
    std::uint16_t port = 0;
    if (!parse_endpoint(item, host, port)) {
      std::cerr << "troupe node: --join '" << item << "' is not HOST:PORT\n";
      return exit_usage;
    }
    wo.join.emplace_back(host, port);
  }
  if (wo.join.empty()) {
    std::cerr << "troupe node: --join needs at least one coordinator (HOST:PORT of its "
                 "`troupe serve --cluster`)\n";
    return exit_usage;
  }
  for (const auto& t : split(o.offer, ',')) {
    if (!t.empty()) {
      wo.offer.push_back(t);
    }
  }
  wo.name = o.name;
  wo.capacity = o.capacity;

  engine_config config;
  config.threads = o.threads;
  config.blocking_threads = o.blocking_threads;
  config.mode = persistence_mode::memory;  // workers write nothing: the coordinator logs
  config.cluster.enabled = true;
  config.cluster.heartbeat = std::chrono::milliseconds(o.heartbeat_ms);
  config.cluster.connection_timeout = std::chrono::milliseconds(o.connection_timeout_ms);
  if (const char* id = std::getenv("TROUPE_CLUSTER_APP_ID"); id != nullptr && *id != '\0') {
    config.cluster.app_identifier = id;  // plays a node of another version (tests)
  }
  std::optional<engine> eng;
  try {
    eng.emplace(config);
  } catch (const engine_error& e) {
    std::cerr << "troupe node: " << e.what() << '\n';
    return exit_run_failed;
  }
  auto tasks = wo.offer.empty() ? eng->offerable_tasks() : wo.offer;
  for (const auto& t : tasks) {
    if (!eng->tasks()->contains(t)) {
      std::cerr << "troupe node: --offer names task '" << t << "', which this node does not have\n";
      return exit_usage;
    }
  }

  std::mutex m;
  std::condition_variable cv;
  int signals_seen = 0;
  bool all_refused = false;
  std::set<std::string> refused;
  bool ever_joined = false;
  const std::size_t endpoints = wo.join.size();
  signal_waiter signals([&](int, int count) {
    if (count > 1) {
      std::cerr << "troupe node: terminated again, exiting without waiting\n";
      std::_Exit(exit_run_failed);
    }
    std::lock_guard lock(m);
    signals_seen = count;
    cv.notify_all();
  });
  std::string list;
  for (const auto& t : tasks) {
    list += (list.empty() ? "" : ",") + t;
  }
  std::cout << "troupe node: " << (o.name.empty() ? eng->owner_id() : o.name) << " offers "
            << list << " (capacity "
            << (o.capacity > 0 ? o.capacity : std::max(1, o.blocking_threads)) << ")"
            << std::endl;
  eng->join_cluster(wo, [&](const cluster_link_event& e) {
    using kind = cluster_link_event::kind;
    switch (e.what) {
      case kind::joined:
        std::cout << "troupe node: joined " << e.endpoint << " (coordinator " << e.text << ")"
                  << std::endl;
        break;
      case kind::lost:
        std::cout << "troupe node: lost " << e.endpoint << " (" << e.text << "); reconnecting"
                  << std::endl;
        break;
      case kind::unreachable:
        std::cout << "troupe node: cannot reach " << e.endpoint << ": " << e.text
                  << "; retrying" << std::endl;
        break;
      case kind::version_refused:
        std::cerr << "troupe node: refused by " << e.endpoint << ": " << e.text
                  << "; upgrade one side" << std::endl;
        break;
    }
    std::lock_guard lock(m);
    if (e.what == kind::joined) {
      ever_joined = true;
      refused.erase(e.endpoint);
    } else if (e.what == kind::version_refused) {
      refused.insert(e.endpoint);
      if (!ever_joined && refused.size() == endpoints) {
        all_refused = true;
        cv.notify_all();
      }
    }
  });
  {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return signals_seen > 0 || all_refused; });
  }
  if (all_refused) {
    std::cerr << "troupe node: every coordinator refused this node's version; exiting\n";
    eng->shutdown(std::chrono::milliseconds(0));
    return exit_usage;
  }
  std::cerr << "troupe node: stopping: no new attempts; coordinators place the ones running "
               "here elsewhere\n";
  eng->shutdown(std::chrono::milliseconds(0));
  return exit_ok;
}

}  // namespace troupe::cli
