#include "apps/serve.hpp"

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <optional>

#include "apps/cli.hpp"
#include "apps/http_server.hpp"
#include "apps/output.hpp"
#include "apps/service.hpp"
#include "apps/signals.hpp"
#include "runtime/engine.hpp"

namespace troupe::cli {

namespace {

bool loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "::1" || host.rfind("127.", 0) == 0 ||
         host == "localhost";
}

// "HOST:PORT", "[v6]:PORT" or ":PORT" (any address) to listen on.
bool split_listen(const std::string& text, std::string& host, std::uint16_t& port) {
  if (!split_host_port(text, host, port)) {
    return false;
  }
  if (host.empty()) {
    host = "0.0.0.0";
  }
  if (host == "localhost") {
    host = "127.0.0.1";
  }
  return true;
}

}  // namespace

int serve_command(const serve_options& o) {
  std::string host;
  std::uint16_t port = 0;
  if (!split_listen(o.listen, host, port)) {
    std::cerr << "troupe serve: --listen '" << o.listen << "' is not HOST:PORT\n";
    return exit_usage;
  }
  service_config sc;
  try {
    sc.api_keys = read_api_keys(o.api_keys_file, o.api_keys_env);
  } catch (const std::exception& e) {
    std::cerr << "troupe serve: " << e.what() << '\n';
    return exit_usage;
  }
  if (sc.api_keys.empty() && !loopback(host)) {
    std::cerr << "troupe serve: refusing to listen on " << host
              << " without API keys: anyone who can reach it could run workflows. Give keys "
                 "(--api-keys FILE or TROUPE_API_KEYS) or listen on 127.0.0.1.\n";
    return exit_usage;
  }
  for (const auto& name : split(o.allow_tasks, ',')) {
    if (name == "all") {
      sc.all_tasks = true;
    } else if (!name.empty()) {
      sc.allowed_tasks.insert(name);
    }
  }
  for (const auto& host : split(o.allow_http_hosts, ',')) {
    if (!host.empty()) {
      sc.allowed_http_hosts.push_back(host);
    }
  }
  sc.rate_per_key = o.rate_limit;
  sc.runs_per_key = o.runs_per_key;

  engine_config config;
  config.threads = o.threads;
  config.store = o.db;
  config.mode = o.mode;
  config.writer.mode = o.mode;
  config.adopt_expired_runs = false;
  config.lease = std::chrono::milliseconds(o.lease_ms);
  config.max_in_flight = o.max_in_flight;
  std::string cluster_host;
  std::uint16_t cluster_port = 0;
  if (!o.cluster_listen.empty()) {
    if (!split_listen(o.cluster_listen, cluster_host, cluster_port)) {
      std::cerr << "troupe serve: --cluster '" << o.cluster_listen << "' is not HOST:PORT\n";
      return exit_usage;
    }
    const bool postgres = o.db.rfind("postgres://", 0) == 0 || o.db.rfind("postgresql://", 0) == 0;
    if (!postgres && o.mode != persistence_mode::memory) {
      std::cerr << "troupe serve: --cluster needs a PostgreSQL database (--db postgres://...): "
                   "it is where coordinators agree on who owns which run. SQLite is for one "
                   "process.\n";
      return exit_usage;
    }
    config.cluster.enabled = true;
    config.cluster.heartbeat = std::chrono::milliseconds(o.heartbeat_ms);
    config.cluster.connection_timeout = std::chrono::milliseconds(o.connection_timeout_ms);
    config.cluster.run_here_without_workers = !o.wait_for_workers;
    for (const auto& name : split(o.remote_tasks, ',')) {
      if (!name.empty()) {
        config.cluster.remote_tasks.push_back(name);
      }
    }
    config.cluster.log = [](const std::string& line) {
      std::cerr << "troupe serve: " + line + "\n" << std::flush;
    };
    sc.cluster = true;
  }
  sc.log = [](const std::string& line) { std::cerr << "troupe serve: " + line + "\n" << std::flush; };
  std::optional<engine> eng;
  try {
    eng.emplace(config);
  } catch (const engine_error& e) {
    std::cerr << "troupe serve: " << e.what() << '\n';
    return exit_run_failed;
  }
  // The operator's workflows: trusted, every task allowed.
  if (!o.workflows_dir.empty()) {
    std::error_code ec;
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(o.workflows_dir, ec)) {
      if (entry.is_regular_file() && entry.path().extension() == ".json") {
        files.push_back(entry.path());
      }
    }
    if (ec) {
      std::cerr << "troupe serve: cannot read --workflows " << o.workflows_dir << ": "
                << ec.message() << '\n';
      return exit_usage;
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      auto r = eng->register_workflow_file(f.string());
      if (!r) {
        for (const auto& e : r.error()) {
          std::cerr << "troupe serve: " << f.string() << ": " << (e.pointer.empty() ? "" : e.pointer + ": ")
                    << e.message << '\n';
        }
        return exit_usage;
      }
      sc.trusted_plans.insert((*r)->hash);
      std::cerr << "troupe serve: registered " << (*r)->name << " version " << (*r)->version
                << " from " << f.string() << '\n';
    }
  }

  http_server_config hc;
  hc.host = host;
  hc.port = port;
  hc.threads = std::max(1, o.http_threads);
  hc.max_body_bytes = o.max_body;
  hc.max_connections = o.max_connections;
  hc.read_timeout = std::chrono::milliseconds(o.read_timeout_ms);
  hc.stream_keepalive = std::chrono::milliseconds(o.sse_keepalive_ms);
  hc.max_stream_buffer = o.max_stream_buffer;
  hc.max_stream_buffers_total = std::max(hc.max_stream_buffers_total, o.max_stream_buffer);

  std::unique_ptr<service> svc;
  std::unique_ptr<http_server> server;
  // Set once the server exists, read by /metrics on HTTP threads (which may already serve a
  // request before the assignment).
  std::atomic<http_server*> server_ptr{nullptr};
  svc = std::make_unique<service>(*eng, sc, [&server_ptr] {
    auto* s = server_ptr.load();
    return s ? s->stats() : http_server_stats{};
  });
  // Workers may join before runs of dead coordinators are adopted below.
  if (config.cluster.enabled) {
    auto bound = eng->serve_cluster(cluster_host, cluster_port);
    if (!bound) {
      std::cerr << "troupe serve: " << bound.error() << '\n';
      return exit_run_failed;
    }
    std::cout << "troupe serve: cluster listening on " << cluster_host << ":" << *bound
              << " (coordinator " << eng->owner_id() << ")" << std::endl;
    if (!loopback(cluster_host)) {
      std::cerr << "troupe serve: the cluster port has neither authentication nor encryption "
                   "(CAF 0.17's BASP): whoever reaches it can join as a worker and see inputs. "
                   "Keep it on a private network.\n";
    }
  }
  // Runs of engines that died on this database (this one, before a restart, or another) are
  // adopted now and whenever a lease runs out, as runs of this service.
  if (config.mode != persistence_mode::memory) {
    if (const std::size_t adopted = svc->adopt_expired_runs()) {
      std::cerr << "troupe serve: resumed " << adopted
                << " runs whose process had died (their leases had run out)\n";
    }
  }
  hc.before_body = [s = svc.get()](std::string_view authorization) {
    return s->refuse_before_body(authorization);
  };
  try {
    server = std::make_unique<http_server>(
        hc, [s = svc.get()](const std::shared_ptr<http_exchange>& ex, http_request req) {
          s->handle(ex, std::move(req));
        });
  } catch (const std::exception& e) {
    std::cerr << "troupe serve: " << e.what() << '\n';
    return exit_run_failed;
  }
  server_ptr = server.get();

  std::mutex m;
  std::condition_variable cv;
  int signals_seen = 0;
  signal_waiter signals([&](int, int count) {
    if (count > 1) {
      std::cerr << "troupe serve: terminated again, exiting without waiting\n";
      std::_Exit(exit_run_failed);
    }
    std::lock_guard lock(m);
    signals_seen = count;
    cv.notify_all();
  });

  std::cout << "troupe serve: listening on http://" << (host.find(':') != std::string::npos ? "[" + host + "]" : host)
            << ":" << server->port() << " (" << to_string(o.mode) << ", " << display_url(o.db)
            << ")" << std::endl;
  if (sc.api_keys.empty()) {
    std::cerr << "troupe serve: no API keys given: every request is accepted, so it listens "
                 "on loopback only\n";
  }
  {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return signals_seen > 0; });
  }
  std::cerr << "troupe serve: stopping: no new runs; " << svc->runs_in_flight()
            << " runs in flight get up to " << o.drain_ms << " ms to finish\n";
  server->stop_accepting();
  svc->stop_starting_runs();
  eng->shutdown(std::chrono::milliseconds(o.drain_ms));
  auto counts = eng->metrics().snapshot();
  svc->stop();
  server->stop();
  std::cerr << "troupe serve: stopped (" << counts.rows << " rows committed, " << counts.lost_rows
            << " lost)\n";
  return counts.lost_rows == 0 ? exit_ok : exit_run_failed;
}

}  // namespace troupe::cli
