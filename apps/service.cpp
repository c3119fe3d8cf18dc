#include "apps/service.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/json/serialize.hpp>

#include "apps/cli.hpp"
#include "apps/output.hpp"
#include "apps/prometheus.hpp"
#include "apps/runs.hpp"
#include "runtime/engine.hpp"

namespace troupe::cli {

namespace net = boost::asio;

namespace {

// The runs-per-key account of runs adopted from dead engines: no API key holds a line break.
const std::string adopted_runs_key = "\n";

using clock = std::chrono::steady_clock;

std::int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

http_response json_response(int status, const json::value& v) {
  return {status, "application/json", boost::json::serialize(v), {}};
}

http_response error_response(int status, std::string_view code, std::string_view message,
                             std::string_view pointer = {}) {
  return {status, "application/json", error_body(code, message, pointer), {}};
}

http_response validation_response(int status, std::string_view code,
                                  const validation_errors& errors) {
  json::array list;
  for (const auto& e : errors) {
    list.push_back(json::object{{"pointer", e.pointer}, {"message", e.message}});
  }
  json::object err;
  err["code"] = code;
  err["message"] = errors.empty() ? std::string("invalid request")
                   : errors.size() == 1
                       ? errors.front().message
                       : errors.front().message + " (and " + std::to_string(errors.size() - 1) +
                             " more)";
  if (!errors.empty() && !errors.front().pointer.empty()) {
    err["pointer"] = errors.front().pointer;
  }
  err["errors"] = std::move(list);
  return json_response(status, json::object{{"error", std::move(err)}});
}

// Constant time in the contents: every byte of the longer string is looked at.
bool same_secret(std::string_view a, std::string_view b) {
  std::size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (std::size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned>(x ^ y);
  }
  return diff == 0;
}

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> parts;
  while (!path.empty()) {
    if (path.front() == '/') {
      path.remove_prefix(1);
      continue;
    }
    auto slash = path.find('/');
    parts.push_back(path.substr(0, slash));
    path = slash == std::string_view::npos ? std::string_view() : path.substr(slash);
  }
  return parts;
}

std::optional<std::int64_t> to_int(std::string_view s) {
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) {
    return std::nullopt;
  }
  return v;
}

json::object event_object(const run_event& e) {
  json::object o;
  o["seq"] = e.seq;
  o["type"] = to_string(e.what);
  o["run_id"] = e.run_id;
  if (!e.workflow.empty()) {
    o["workflow"] = e.workflow;
  }
  if (!e.node_id.empty()) {
    o["node_id"] = e.node_id;
    if (e.item >= 0) {
      o["item"] = e.item;
    }
    o["attempt"] = e.attempt;
  }
  o["status"] = e.status;
  if (!e.error.empty()) {
    o["error"] = e.error;
  }
  if (e.output) {
    o["output"] = *e.output;
  }
  return o;
}

std::string sse_frame(std::int64_t seq, std::string_view type, const json::object& data) {
  std::string f = "id: " + std::to_string(seq) + "\nevent: ";
  f += type;
  f += "\ndata: ";
  f += boost::json::serialize(data);
  f += "\n\n";
  return f;
}

bool final_status(run_status s) {
  return s != run_status::pending && s != run_status::running;
}

// A run's events rebuilt from its log, with the numbers they had live (node_row::started_seq,
// finished_seq): run_started is 1, run_finished follows the largest (when the run ended).
std::vector<std::pair<std::int64_t, std::string>> frames_from_log(const run_row& run,
                                                                  const std::vector<node_row>& rows) {
  std::vector<std::pair<std::int64_t, std::string>> out;
  run_event start;
  start.what = run_event::kind::run_started;
  start.seq = 1;
  start.run_id = run.run_id;
  start.workflow = run.workflow;
  start.status = "running";
  out.emplace_back(1, sse_frame(1, "run_started", event_object(start)));
  std::int64_t last = 1;
  for (const auto& r : rows) {
    run_event e;
    e.run_id = r.run_id;
    e.node_id = r.node_id;
    e.item = r.item;
    e.attempt = r.attempt;
    if (r.started_seq > 0) {
      e.what = run_event::kind::node_started;
      e.seq = r.started_seq;
      e.status = "running";
      out.emplace_back(e.seq, sse_frame(e.seq, "node_started", event_object(e)));
      last = std::max(last, e.seq);
    }
    if (r.finished_seq > 0) {
      e.what = run_event::kind::node_finished;
      e.seq = r.finished_seq;
      e.status = std::string(to_string(r.status));
      e.error = r.error;
      if (r.status == node_status::succeeded) {
        e.output = r.output;
      }
      out.emplace_back(e.seq, sse_frame(e.seq, "node_finished", event_object(e)));
      last = std::max(last, e.seq);
    }
  }
  if (final_status(run.status)) {
    run_event end;
    end.what = run_event::kind::run_finished;
    end.seq = last + 1;
    end.run_id = run.run_id;
    end.status = std::string(to_string(run.status));
    end.error = run.error;
    out.emplace_back(end.seq, sse_frame(end.seq, "run_finished", event_object(end)));
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

// A finished run read back from the log, shaped like `troupe run --json` (the run's nodes as
// they ended, with their attempts counted).
json::value result_document_from_log(const run_row& run, const std::vector<node_row>& rows) {
  json::object o;
  o["run_id"] = run.run_id.str();
  o["workflow"] = run.workflow;
  o["status"] = to_string(run.status);
  o["outputs"] = run.outputs ? *run.outputs : json::value(nullptr);
  o["error"] = run.error.empty() ? json::value(nullptr) : json::value(run.error);
  o["duration_ms"] = run.finished_at > run.started_at
                         ? static_cast<double>(run.finished_at - run.started_at) / 1000.0
                         : 0.0;
  std::map<std::string, std::pair<int, std::string>> nodes;  // id -> attempts, last status
  std::vector<std::string> order;
  for (const auto& r : rows) {
    if (r.item >= 0) {
      continue;
    }
    auto [it, fresh] = nodes.try_emplace(r.node_id, 0, std::string());
    if (fresh) {
      order.push_back(r.node_id);
    }
    it->second.first = std::max(it->second.first, r.attempt);
    it->second.second = std::string(to_string(r.status));
  }
  json::array list;
  for (const auto& id : order) {
    list.push_back(json::object{{"id", id},
                                {"status", nodes[id].second},
                                {"attempts", nodes[id].first}});
  }
  o["nodes"] = std::move(list);
  o["from_log"] = true;
  return o;
}

// The events of one run started or resumed here, for streams: kept in memory while it runs and
// for a while after (finished_feeds), with its result document once it ended.
struct run_feed {
  std::string run_id;
  std::mutex mutex;
  // Events as they came (their run_id left empty: it is the feed's), rendered as SSE frames only
  // for a stream that wants them: most runs are never watched.
  std::deque<run_event> history;
  bool trimmed = false;  // older events were dropped: replay those from the log
  bool resumed = false;  // a resumed run: its events before the resume are in the log only
  bool finished = false;
  // Once finished: the result, and its document (JSON text) made the first time one is asked
  // for (most runs' callers never read it back: async starts).
  std::shared_ptr<const run_result> result_value;
  std::string result;

  const std::string& result_text() {
    if (result.empty() && result_value) {
      result = boost::json::serialize(to_json(*result_value));
    }
    return result;
  }
  // Requests waiting for the end (guarded by mutex); answered once, then cleared.
  std::vector<std::function<void(http_response)>> waiters;
  // The run could not be started: what its waiters are told instead of a result.
  std::optional<http_response> failed;

  http_response final_answer() {
    if (failed) {
      return *failed;
    }
    return {200, "application/json", result_text(), {}};
  }
  std::vector<std::shared_ptr<http_exchange>> streams;

  // Marks the feed finished (its result or `failed` set first): every waiter gets the final
  // answer, every stream ends. The caller holds `mutex`.
  void end() {
    finished = true;
    if (!waiters.empty()) {
      http_response answer = final_answer();
      for (auto& w : waiters) {
        w(answer);
      }
      waiters.clear();
    }
    end_streams();
  }
  void end_streams() {
    for (auto& s : streams) {
      s->end_stream();
    }
    streams.clear();
  }
};

struct key_state {
  double tokens = 0;
  clock::time_point refilled{};
  bool primed = false;
  std::size_t runs = 0;
};

}  // namespace

struct service::impl {
  engine& eng;
  service_config config;
  std::function<http_server_stats()> server_stats;
  policy_ptr policy;  // for runs of workflows registered through the API
  std::mutex register_mutex;
  std::set<std::string, std::less<>> operator_names;  // names of the trusted workflows
  net::thread_pool pool;
  std::atomic<bool> starting{true};
  std::atomic<std::size_t> in_flight{0};
  std::atomic<std::uint64_t> remembered{0};

  std::mutex feeds_mutex;
  std::unordered_map<std::string, std::shared_ptr<run_feed>> feeds;
  std::deque<std::string> finished_order;
  std::unordered_map<std::string, run_handle> live;  // guarded by feeds_mutex
  // Runs the engine is about to adopt: their feeds and workflows (guarded by feeds_mutex).
  std::unordered_map<std::string, std::pair<std::shared_ptr<run_feed>, std::string>> adopting;

  std::mutex keys_mutex;
  std::unordered_map<std::string, key_state> keys;

  counter_family runs_started{"troupe_runs_started_total",
                              "Runs started or resumed through the service.", {"workflow"}};
  counter_family runs_finished{"troupe_runs_finished_total",
                               "Runs that ended, by workflow and final status.",
                               {"workflow", "status"}};
  histogram_family node_seconds{"troupe_node_duration_seconds",
                                "Node attempt durations, by task.", {"task"},
                                latency_buckets()};
  counter_family http_requests{"troupe_http_requests_total", "HTTP requests by route and status.",
                               {"route", "status"}};
  histogram_family http_seconds{"troupe_http_request_duration_seconds",
                                "HTTP request latency (to the response, or to a stream's start).",
                                {"route"}, latency_buckets()};

  impl(engine& e, service_config c, std::function<http_server_stats()> s)
      : eng(e),
        config(std::move(c)),
        server_stats(std::move(s)),
        pool(static_cast<std::size_t>(std::max(1, config.query_threads))) {
    if (config.allowed_tasks.empty() && !config.all_tasks) {
      for (const auto& name : eng.tasks()->names()) {
        if (name != "shell") {
          config.allowed_tasks.insert(name);
        }
      }
    }
    auto p = std::make_shared<task_policy>();
    p->all_tasks = config.all_tasks;
    p->tasks = config.allowed_tasks;
    p->allowed_hosts = config.allowed_http_hosts;
    p->private_addresses =
        std::find(p->allowed_hosts.begin(), p->allowed_hosts.end(), "*") != p->allowed_hosts.end();
    policy = std::move(p);
    for (const auto& w : eng.workflows()) {
      if (config.trusted_plans.count(w.plan->hash)) {
        operator_names.insert(w.plan->name);
      }
    }
  }

  // Runs of workflows that came through the API are held to the operator's limits (their
  // generated and called workflows too, at run time); the operator's own are not.
  policy_ptr policy_for(const plan& p) const {
    return config.trusted_plans.count(p.hash) ? nullptr : policy;
  }

  // ---- requests -------------------------------------------------------------------------

  struct request_scope {
    std::shared_ptr<http_exchange> exchange;
    std::string route;
    clock::time_point began;
    impl* self;
    void answer(http_response r) const {
      self->http_requests.add({route, std::to_string(r.status)});
      self->http_seconds.observe(
          {route}, std::chrono::duration<double>(clock::now() - began).count());
      exchange->respond(std::move(r));
    }
  };

  // The key an Authorization header names ("" without keys); nullopt: none of the keys.
  std::optional<std::string> key_of(std::string_view auth) const {
    if (config.api_keys.empty()) {
      return std::string();
    }
    constexpr std::string_view bearer = "Bearer ";
    if (auth.size() > bearer.size() && auth.substr(0, bearer.size()) == bearer) {
      std::string_view token = auth.substr(bearer.size());
      bool ok = false;
      std::string matched;
      for (const auto& k : config.api_keys) {  // every key compared: constant time
        if (same_secret(token, k)) {
          ok = true;
          matched = k;
        }
      }
      if (ok) {
        return matched;
      }
    }
    return std::nullopt;
  }

  static http_response unauthorized() {
    http_response r = error_response(401, "unauthorized",
                                     "a valid API key is required: Authorization: Bearer KEY");
    r.headers.emplace_back("WWW-Authenticate", "Bearer");
    return r;
  }

  // The key a request authenticated with ("" without keys); nullopt: refused (answered).
  std::optional<std::string> authenticate(const request_scope& rs, const http_request& req) {
    auto key = key_of(req.header("authorization"));
    if (!key) {
      rs.answer(unauthorized());
    }
    return key;
  }

  // Token bucket per key; false: refused with 429 (answered).
  bool admit_request(const request_scope& rs, const std::string& key) {
    if (config.rate_per_key <= 0) {
      return true;
    }
    double wait_s = 0;
    {
      std::lock_guard lock(keys_mutex);
      auto& k = keys[key];
      auto now = clock::now();
      if (!k.primed) {
        k.primed = true;
        k.tokens = config.rate_burst;
        k.refilled = now;
      }
      double elapsed = std::chrono::duration<double>(now - k.refilled).count();
      k.tokens = std::min(config.rate_burst, k.tokens + elapsed * config.rate_per_key);
      k.refilled = now;
      if (k.tokens >= 1) {
        k.tokens -= 1;
        return true;
      }
      wait_s = (1 - k.tokens) / config.rate_per_key;
    }
    http_response r = error_response(429, "rate_limited",
                                     "too many requests for this key: at most " +
                                         std::to_string(config.rate_per_key) + " per second");
    r.headers.emplace_back("Retry-After", std::to_string(static_cast<long>(wait_s) + 1));
    rs.answer(std::move(r));
    return false;
  }

  bool take_run_slot(const std::string& key) {
    if (config.runs_per_key == 0) {
      return true;
    }
    std::lock_guard lock(keys_mutex);
    auto& k = keys[key];
    if (k.runs >= config.runs_per_key) {
      return false;
    }
    ++k.runs;
    return true;
  }
  void give_run_slot(const std::string& key) {
    if (config.runs_per_key == 0) {
      return;
    }
    std::lock_guard lock(keys_mutex);
    auto& k = keys[key];
    if (k.runs > 0) {
      --k.runs;
    }
  }

  void handle(const std::shared_ptr<http_exchange>& ex, http_request req) {
    auto parts = split_path(req.path);
    request_scope rs{ex, "other", clock::now(), this};
    const std::string& m = req.method;
    auto method_not_allowed = [&](std::string allow) {
      http_response r = error_response(405, "method_not_allowed",
                                       m + " is not allowed on " + req.path + "; use " + allow);
      r.headers.emplace_back("Allow", std::move(allow));
      rs.answer(std::move(r));
    };
    // Probes: no key needed.
    if (parts.size() == 1 && parts[0] == "healthz") {
      rs.route = "/healthz";
      return rs.answer(json_response(
          200, json::object{{"status", "ok"}, {"mode", std::string(to_string(eng.mode()))}}));
    }
    if (parts.size() == 1 && parts[0] == "readyz") {
      rs.route = "/readyz";
      return readyz(rs);
    }
    auto key = authenticate(rs, req);
    if (!key) {
      return;
    }
    if (!admit_request(rs, *key)) {
      return;
    }
    if (parts.size() == 1 && parts[0] == "metrics") {
      rs.route = "/metrics";
      return rs.answer({200, "text/plain; version=0.0.4", metrics_text(), {}});
    }
    if (parts.empty() || parts[0] != "v1") {
      return rs.answer(error_response(404, "not_found", "no such route: " + req.path));
    }
    if (parts.size() >= 2 && parts[1] == "workflows") {
      if (parts.size() == 2) {
        rs.route = "/v1/workflows";
        if (m == "POST") {
          return register_workflow(rs, req);
        }
        if (m == "GET") {
          return list_workflows(rs, {});
        }
        return method_not_allowed("GET, POST");
      }
      if (parts.size() == 3) {
        rs.route = "/v1/workflows/{name}";
        if (m == "GET") {
          return list_workflows(rs, std::string(parts[2]));
        }
        return method_not_allowed("GET");
      }
    }
    if (parts.size() >= 2 && parts[1] == "runs") {
      if (parts.size() == 2) {
        rs.route = "/v1/runs";
        if (m == "POST") {
          return start_run(rs, req, *key);
        }
        if (m == "GET") {
          return list_runs(rs, req);
        }
        return method_not_allowed("GET, POST");
      }
      std::string id(parts[2]);
      if (parts.size() == 3) {
        rs.route = "/v1/runs/{id}";
        if (m == "GET") {
          return get_run(rs, id, false);
        }
        return method_not_allowed("GET");
      }
      if (parts.size() == 4 && parts[3] == "nodes") {
        rs.route = "/v1/runs/{id}/nodes";
        if (m == "GET") {
          return get_run(rs, id, true);
        }
        return method_not_allowed("GET");
      }
      if (parts.size() == 4 && parts[3] == "events") {
        rs.route = "/v1/runs/{id}/events";
        if (m == "GET") {
          return stream_events(rs, req, id);
        }
        return method_not_allowed("GET");
      }
      if (parts.size() == 4 && parts[3] == "cancel") {
        rs.route = "/v1/runs/{id}/cancel";
        if (m == "POST") {
          return cancel_run(rs, id);
        }
        return method_not_allowed("POST");
      }
      if (parts.size() == 4 && parts[3] == "resume") {
        rs.route = "/v1/runs/{id}/resume";
        if (m == "POST") {
          return resume_run(rs, id, *key);
        }
        return method_not_allowed("POST");
      }
    }
    rs.answer(error_response(404, "not_found", "no such route: " + req.path));
  }

  // ---- probes and metrics ---------------------------------------------------------------

  std::mutex ready_mutex;  // guards the three below
  bool ready_probing = false;
  std::optional<http_response> ready_last;
  std::vector<request_scope> ready_waiting;  // only before the first probe has answered

  // Anyone may ask (no key): at most one probe of the store is queued at a time; requests
  // that come while one is out get the last answer.
  void readyz(const request_scope& rs) {
    {
      std::lock_guard lock(ready_mutex);
      if (ready_probing) {
        if (ready_last) {
          return rs.answer(*ready_last);
        }
        ready_waiting.push_back(rs);
        return;
      }
      ready_probing = true;
    }
    net::post(pool, [this, rs] {
      auto probe = eng.get_run("readyz-probe");
      auto counts = eng.metrics().snapshot();
      bool writer_ok = !eng.metrics().closed.load() || eng.mode() == persistence_mode::memory;
      json::object o;
      o["store"] = probe ? "ok" : probe.error().message;
      o["writer_pending"] = counts.pending;
      o["accepting_runs"] = starting.load();
      bool ready = probe && writer_ok && counts.pending < config.ready_max_pending &&
                   starting.load();
      o["ready"] = ready;
      http_response answer = json_response(ready ? 200 : 503, o);
      std::vector<request_scope> waiting;
      {
        std::lock_guard lock(ready_mutex);
        ready_probing = false;
        ready_last = answer;
        waiting.swap(ready_waiting);
      }
      for (auto& w : waiting) {
        w.answer(answer);
      }
      rs.answer(std::move(answer));
    });
  }

  std::string metrics_text() {
    std::string out;
    runs_started.render(out);
    runs_finished.render(out);
    render_single(out, "troupe_runs_in_flight", "gauge",
                  "Runs started through the service that have not ended.",
                  static_cast<double>(in_flight.load()));
    render_single(out, "troupe_engine_active_runs", "gauge",
                  "Runs in progress in the engine (all of them, however started).",
                  static_cast<double>(eng.active_runs()));
    node_seconds.render(out);
    auto w = eng.metrics().snapshot();
    render_single(out, "troupe_writer_batches_total", "counter", "Commits of the writer.",
                  static_cast<double>(w.batches));
    render_single(out, "troupe_writer_rows_total", "counter", "Rows committed.",
                  static_cast<double>(w.rows));
    render_single(out, "troupe_writer_retries_total", "counter", "Commits retried.",
                  static_cast<double>(w.retries));
    render_single(out, "troupe_writer_errors_total", "counter", "Commits that failed.",
                  static_cast<double>(w.errors));
    render_single(out, "troupe_writer_pending_rows", "gauge", "Rows waiting for a commit.",
                  static_cast<double>(w.pending));
    render_single(out, "troupe_writer_lag_seconds", "gauge",
                  "Age of the oldest pending row at the last flush.",
                  static_cast<double>(w.lag_us) / 1e6);
    render_single(out, "troupe_writer_dead_letters_total", "counter",
                  "Rows the database refused for good.", static_cast<double>(w.dead_letters));
    http_requests.render(out);
    http_seconds.render(out);
    if (server_stats) {
      auto s = server_stats();
      render_single(out, "troupe_http_open_connections", "gauge", "Open HTTP connections.",
                    static_cast<double>(s.open_connections));
      render_single(out, "troupe_http_refused_connections_total", "counter",
                    "Connections refused over the limit.",
                    static_cast<double>(s.refused_connections));
      render_single(out, "troupe_http_timed_out_total", "counter",
                    "Connections cut off for reading too slowly or idling.",
                    static_cast<double>(s.timed_out));
      render_single(out, "troupe_http_stream_bytes_waiting", "gauge",
                    "Event-stream bytes queued for slow readers, over all streams.",
                    static_cast<double>(s.stream_bytes_waiting));
      render_single(out, "troupe_http_streams_cut_total", "counter",
                    "Event streams closed because their reader fell too far behind.",
                    static_cast<double>(s.streams_cut));
    }
    if (config.cluster) {
      auto c = eng.cluster();
      render_single(out, "troupe_cluster_workers", "gauge", "Workers connected to this coordinator.",
                    static_cast<double>(c.workers));
      render_single(out, "troupe_cluster_remote_in_flight", "gauge",
                    "Attempts running on workers for this coordinator.",
                    static_cast<double>(c.remote_in_flight));
      render_single(out, "troupe_cluster_waiting", "gauge",
                    "Attempts waiting for a worker with room.", static_cast<double>(c.waiting));
      render_single(out, "troupe_cluster_dispatched_total", "counter",
                    "Attempts sent to workers (again after a loss too).",
                    static_cast<double>(c.dispatched));
      render_single(out, "troupe_cluster_lost_total", "counter",
                    "Attempts whose worker was lost (dispatched again).",
                    static_cast<double>(c.lost));
      render_single(out, "troupe_cluster_ran_here_total", "counter",
                    "Attempts of tasks no connected worker offered, run on the coordinator.",
                    static_cast<double>(c.ran_here));
    }
    return out;
  }

  // ---- workflows ------------------------------------------------------------------------

  void register_workflow(const request_scope& rs, const http_request& req) {
    net::post(pool, [this, rs, body = req.body] {
      auto doc = parse_json(body, workflow_limits{}.json);
      if (!doc) {
        return rs.answer(error_response(400, "invalid_json", doc.error().message));
      }
      compile_options opts;
      auto tasks = eng.tasks();
      opts.tasks = tasks.get();
      auto compiled = compile_workflow(*doc, opts);
      if (!compiled) {
        return rs.answer(validation_response(400, "invalid_workflow", compiled.error()));
      }
      validation_errors refused;
      for (const auto& n : (*compiled)->nodes) {
        const std::string pointer = "/nodes/" + std::to_string(n.index);
        if (!config.all_tasks && !config.allowed_tasks.count(n.task)) {
          refused.push_back({pointer + "/task", "task '" + n.task +
                                                    "' is not allowed for workflows registered "
                                                    "through the API (see --allow-tasks)"});
        }
      }
      if (!refused.empty()) {
        return rs.answer(validation_response(403, "task_not_allowed", refused));
      }
      const plan& c = **compiled;
      // Under one lock: the check and the registration, so that two clients cannot both
      // pass the check with different documents.
      std::lock_guard register_lock(register_mutex);
      if (operator_names.count(c.name)) {
        return rs.answer(error_response(
            403, "reserved_workflow",
            "'" + c.name + "' is the name of one of the operator's workflows: a workflow "
            "registered through the API cannot take it (nor a version of it)",
            "/name"));
      }
      if (auto existing = eng.find_workflow(c.name, c.version);
          existing && existing->hash != c.hash) {
        return rs.answer(error_response(
            409, "version_exists",
            "'" + c.name + "' version '" + c.version +
                "' is registered already with another document: give it a new version",
            "/version"));
      }
      auto registered = eng.register_workflow(*doc);
      if (!registered) {
        return rs.answer(validation_response(400, "invalid_workflow", registered.error()));
      }
      const plan& p = **registered;
      http_response r = json_response(
          201, json::object{{"name", p.name}, {"version", p.version}, {"hash", p.hash}});
      r.headers.emplace_back("Location", "/v1/workflows/" + p.name);
      rs.answer(std::move(r));
    });
  }

  void list_workflows(const request_scope& rs, std::optional<std::string> name) {
    json::array list;
    for (const auto& w : eng.workflows()) {
      if (name && w.plan->name != *name) {
        continue;
      }
      json::array inputs;
      for (const auto& in : w.plan->inputs) {
        inputs.push_back(json::object{{"name", in.name},
                                      {"type", to_string(in.type)},
                                      {"required", in.required}});
      }
      list.push_back(json::object{{"name", w.plan->name},
                                  {"version", w.plan->version},
                                  {"hash", w.plan->hash},
                                  {"latest", w.latest},
                                  {"description", w.plan->description},
                                  {"inputs", std::move(inputs)}});
    }
    if (name && list.empty()) {
      return rs.answer(error_response(404, "not_found", "no workflow named '" + *name + "'"));
    }
    if (name) {
      return rs.answer(json_response(200, json::object{{"name", *name}, {"versions", list}}));
    }
    rs.answer(json_response(200, json::object{{"workflows", std::move(list)}}));
  }

  // ---- runs -----------------------------------------------------------------------------

  std::shared_ptr<run_feed> feed_of(const std::string& id) {
    std::lock_guard lock(feeds_mutex);
    auto it = feeds.find(id);
    return it == feeds.end() ? nullptr : it->second;
  }

  static std::string frame_of(const run_feed& feed, const run_event& e) {
    json::object o = event_object(e);
    o["run_id"] = feed.run_id;
    return sse_frame(e.seq, to_string(e.what), o);
  }

  // What a run started here reports as it goes: its events for streams, metrics.
  std::function<void(const run_event&)> event_sink(std::shared_ptr<run_feed> feed, plan_ptr p) {
    return [this, feed, p](const run_event& e) {
      if (e.what == run_event::kind::node_finished && e.duration_us >= 0) {
        const node_plan* np = p ? p->find_node(e.node_id) : nullptr;
        node_seconds.observe({np ? std::string_view(np->task) : std::string_view("?")},
                             static_cast<double>(e.duration_us) / 1e6);
      }
      run_event kept;
      kept.what = e.what;
      kept.seq = e.seq;
      kept.workflow = e.workflow;
      kept.node_id = e.node_id;
      kept.item = e.item;
      kept.attempt = e.attempt;
      kept.status = e.status;
      kept.error = e.error;
      kept.output = e.output;
      std::lock_guard lock(feed->mutex);
      if (!feed->streams.empty()) {
        std::string frame = frame_of(*feed, kept);
        for (auto& s : feed->streams) {
          s->send(frame);
        }
      }
      feed->history.push_back(std::move(kept));
      if (feed->history.size() > config.feed_events) {
        feed->history.pop_front();
        feed->trimmed = true;
      }
    };
  }

  // Called once when a run started here ends, on an engine thread.
  void run_ended(const std::shared_ptr<run_feed>& feed, const run_result& r,
                 const std::string& key) {
    runs_finished.add({r.workflow, to_string(r.status)});
    give_run_slot(key);
    in_flight.fetch_sub(1);
    auto kept = std::make_shared<const run_result>(r);
    {
      std::lock_guard lock(feed->mutex);
      feed->result_value = std::move(kept);
      while (feed->history.size() > config.finished_feed_events) {
        feed->history.pop_front();
        feed->trimmed = true;
      }
      feed->end();
    }
    std::lock_guard lock(feeds_mutex);
    live.erase(r.run_id);
    finished_order.push_back(r.run_id);
    while (finished_order.size() > config.finished_feeds) {
      // Only a finished feed goes: the id may be running again (resumed) under a new one.
      if (auto it = feeds.find(finished_order.front());
          it != feeds.end() && live_feed_finished(*it->second)) {
        feeds.erase(it);
      }
      finished_order.pop_front();
    }
  }

  struct run_request {
    std::string workflow;
    std::string version;
    json::object inputs;
    std::string response = "async";
    std::chrono::milliseconds wait{0};
  };

  expected<run_request, validation_errors> parse_run_request(const std::string& body) {
    auto doc = parse_json(body, workflow_limits{}.json);
    if (!doc) {
      return make_unexpected(validation_errors{{"", "invalid JSON: " + doc.error().message}});
    }
    if (!doc->is_object()) {
      return make_unexpected(validation_errors{{"", "the body must be a JSON object"}});
    }
    const auto& o = doc->as_object();
    run_request r;
    r.wait = config.default_wait;
    validation_errors errors;
    for (const auto& [k, v] : o) {
      if (k == "workflow") {
        if (v.is_string()) {
          r.workflow = std::string(v.as_string());
        } else {
          errors.push_back({"/workflow", "must be a string (a registered workflow's name)"});
        }
      } else if (k == "version") {
        if (v.is_string()) {
          r.version = std::string(v.as_string());
        } else {
          errors.push_back({"/version", "must be a string"});
        }
      } else if (k == "inputs") {
        if (v.is_object()) {
          r.inputs = v.as_object();
        } else if (!v.is_null()) {
          errors.push_back({"/inputs", "must be an object"});
        }
      } else if (k == "response") {
        if (v.is_string() && (v.as_string() == "async" || v.as_string() == "wait" ||
                              v.as_string() == "stream")) {
          r.response = std::string(v.as_string());
        } else {
          errors.push_back({"/response", "must be \"async\", \"wait\" or \"stream\""});
        }
      } else if (k == "wait_ms") {
        if (v.is_int64() && v.as_int64() >= 0) {
          r.wait = std::min(config.max_wait, std::chrono::milliseconds(v.as_int64()));
        } else if (v.is_uint64()) {
          r.wait = config.max_wait;
        } else {
          errors.push_back({"/wait_ms", "must be a non-negative integer (milliseconds)"});
        }
      } else {
        errors.push_back({"/" + std::string(k), "unknown field"});
      }
    }
    if (r.workflow.empty() && errors.empty()) {
      errors.push_back({"/workflow", "is required"});
    }
    if (!errors.empty()) {
      return make_unexpected(std::move(errors));
    }
    return r;
  }

  void start_run(const request_scope& rs, const http_request& req, const std::string& key) {
    if (!starting) {
      return rs.answer(error_response(503, "shutting_down", "the service is shutting down"));
    }
    auto parsed = parse_run_request(req.body);
    if (!parsed) {
      return rs.answer(validation_response(400, "invalid_request", parsed.error()));
    }
    plan_ptr p = eng.find_workflow(parsed->workflow, parsed->version);
    if (!p) {
      return rs.answer(error_response(
          404, "unknown_workflow",
          "no workflow '" + parsed->workflow +
              (parsed->version.empty() ? std::string() : "' version '" + parsed->version) +
              "' is registered",
          "/workflow"));
    }
    std::string idem(req.header("idempotency-key"));
    if (idem.empty()) {
      return launch(rs, std::move(*parsed), p, key, eng.new_run_id());
    }
    if (idem.size() > 255) {
      return rs.answer(error_response(400, "invalid_idempotency_key",
                                      "Idempotency-Key is longer than 255 bytes"));
    }
    // The key is remembered before the run starts: a retry that comes while the first request
    // is still being answered gets the same run.
    json::object fingerprint{{"workflow", p->name},
                             {"version", p->version},
                             {"inputs", parsed->inputs}};
    net::post(pool, [this, rs, idem, key, p, r = std::move(*parsed),
                     hash = canonical_hash(fingerprint)]() mutable {
      request_key_row row;
      row.key = idem;
      row.scope = p->name;
      row.request_hash = hash;
      row.run_id = eng.new_run_id();
      row.created_at = wall_us();
      if (remembered.fetch_add(1) % 1024 == 1023) {
        // Keys past their retention are replaced when reused; this keeps the table bounded.
        (void)eng.forget_requests(row.created_at -
                                  std::chrono::duration_cast<std::chrono::microseconds>(
                                      config.idempotency_retention)
                                      .count());
      }
      auto stored = eng.remember_request(
          row, row.created_at - std::chrono::duration_cast<std::chrono::microseconds>(
                                    config.idempotency_retention)
                                    .count());
      if (!stored) {
        return rs.answer(error_response(503, "store_unavailable",
                                        "cannot record the Idempotency-Key: " +
                                            stored.error().message));
      }
      if (stored->run_id == row.run_id) {
        return launch(rs, std::move(r), p, key, row.run_id);
      }
      if (stored->request_hash != hash) {
        return rs.answer(error_response(
            422, "idempotency_key_reused",
            "this Idempotency-Key was used for a different request (workflow, version or "
            "inputs differ)"));
      }
      replay_prior(rs, std::move(r), p, key, stored->run_id);
    });
  }

  // A retry: answer with the run the first request started, as the response mode asks.
  void replay_prior(const request_scope& rs, run_request r, const plan_ptr& p,
                    const std::string& key, const std::string& id) {
    if (auto feed = feed_of(id)) {
      return answer_for(rs, r, feed, id, 200);
    }
    auto run = eng.get_run(id);
    if (!run) {
      return rs.answer(error_response(503, "store_unavailable", run.error().message));
    }
    if (!*run) {
      // The first request's process stopped before its run was recorded: start it now, under
      // the id the key names.
      return launch(rs, std::move(r), p, key, id);
    }
    if (r.response == "stream") {
      return stream_from_log(rs, **run, 0);
    }
    if (final_status((*run)->status) || r.response == "async") {
      auto nodes = eng.node_rows(id);
      if (!nodes) {
        return rs.answer(error_response(503, "store_unavailable", nodes.error().message));
      }
      if (!final_status((*run)->status)) {
        return rs.answer(accepted(id, 200));
      }
      return rs.answer(json_response(200, result_document_from_log(**run, *nodes)));
    }
    rs.answer(accepted(id, 200));  // running elsewhere: its end is not ours to wait for
  }

  http_response accepted(const std::string& id, int status) {
    http_response r = json_response(status, json::object{{"run_id", id},
                                                         {"status", "running"},
                                                         {"location", "/v1/runs/" + id}});
    r.headers.emplace_back("Location", "/v1/runs/" + id);
    return r;
  }

  void launch(const request_scope& rs, run_request r, const plan_ptr& p, const std::string& key,
              const std::string& id) {
    if (!take_run_slot(key)) {
      return rs.answer(error_response(429, "too_many_runs",
                                      "this key has " + std::to_string(config.runs_per_key) +
                                          " runs in flight already"));
    }
    auto feed = std::make_shared<run_feed>();
    feed->run_id = id;
    std::shared_ptr<run_feed> existing;
    {
      std::lock_guard lock(feeds_mutex);
      auto [it, inserted] = feeds.try_emplace(id, feed);
      if (!inserted) {
        existing = it->second;
      }
    }
    if (existing) {
      // A retry that overtook the first request of its Idempotency-Key: that request starts
      // the run; this one answers from its feed.
      give_run_slot(key);
      return answer_for(rs, r, existing, id, 200);
    }
    start_options o;
    o.run_id = id;
    o.on_event = event_sink(feed, p);
    o.policy = policy_for(*p);
    o.never_wait = true;  // an HTTP thread serves other connections: never block it
    auto started = eng.start(p, std::move(r.inputs), std::move(o));
    if (!started) {
      give_run_slot(key);
      http_response refused = validation_response(400, "invalid_inputs", started.error());
      abandon(feed, refused);
      return rs.answer(std::move(refused));
    }
    track(*started, feed, p->name, key);
    answer_for(rs, r, feed, id, 202);
  }

  static bool live_feed_finished(run_feed& f) {
    std::lock_guard lock(f.mutex);
    return f.finished;
  }

  // A run that could not be started: its feed goes, and whoever waits on it hears why.
  void abandon(const std::shared_ptr<run_feed>& feed, const http_response& why) {
    {
      std::lock_guard lock(feeds_mutex);
      if (auto it = feeds.find(feed->run_id); it != feeds.end() && it->second == feed) {
        feeds.erase(it);
      }
    }
    std::lock_guard lock(feed->mutex);
    feed->failed = why;
    feed->end();
  }

  void track(const run_handle& h, const std::shared_ptr<run_feed>& feed,
             const std::string& workflow, const std::string& key) {
    in_flight.fetch_add(1);
    runs_started.add({workflow});
    {
      std::lock_guard lock(feeds_mutex);
      live.emplace(h.id(), h);
    }
    h.on_finished([this, feed, key](const run_result& res) { run_ended(feed, res, key); });
  }

  // Answers a start (202 async) or a retry (200) in the response mode asked for.
  void answer_for(const request_scope& rs, const run_request& r,
                  const std::shared_ptr<run_feed>& feed, const std::string& id,
                  int async_status) {
    if (r.response == "stream") {
      return subscribe(rs, feed, 0, id);
    }
    if (r.response == "async") {
      return rs.answer(accepted(id, async_status));
    }
    // wait: the result when the run ends within the wait, else 202. The feed answers its
    // waiters when the run ends (run_ended) or fails to start (abandon): a retry that found
    // the feed before the first request's run was started waits on it the same way.
    struct waiter {
      request_scope rs;
      std::atomic<bool> answered{false};
      net::steady_timer timer;
      waiter(request_scope s, net::any_io_executor ex) : rs(std::move(s)), timer(ex) {}
    };
    // The timer is armed before the waiter is published: once it is, the run's end may cancel
    // the timer (on its strand) at any moment, and a wait armed after that cancel would hold
    // the timer (and stop()'s join of the pool) for the whole wait.
    auto strand = net::make_strand(pool);
    auto w = std::make_shared<waiter>(rs, strand);
    w->timer.expires_after(r.wait);
    w->timer.async_wait([this, w, id](const boost::system::error_code& ec) {
      if (ec || w->answered.exchange(true)) {
        return;
      }
      w->rs.answer(accepted(id, 202));
    });
    auto cancel_timer = [w, strand] { net::post(strand, [w] { w->timer.cancel(); }); };
    std::lock_guard lock(feed->mutex);
    if (feed->finished) {
      if (!w->answered.exchange(true)) {
        rs.answer(feed->final_answer());
      }
      return cancel_timer();
    }
    feed->waiters.push_back([w, cancel_timer](http_response answer) {
      if (w->answered.exchange(true)) {
        return;
      }
      w->rs.answer(std::move(answer));
      cancel_timer();
    });
  }

  void subscribe(const request_scope& rs, const std::shared_ptr<run_feed>& feed,
                 std::int64_t after, const std::string& id) {
    bool trimmed_past = false;
    {
      std::lock_guard lock(feed->mutex);
      trimmed_past = (feed->trimmed || feed->resumed) &&
                     (feed->history.empty() || feed->history.front().seq > after + 1);
    }
    if (trimmed_past) {
      // The events asked for left memory (or, for a resumed run, came before the resume): the
      // older ones come from the log, then the stream
      // joins the feed (when the log holds every event up to the feed's oldest; its rows may
      // lag the live run, and then the stream ends after what the log has: reconnect later).
      return net::post(pool, [this, rs, id, after, feed] {
        // Twice at most: when the log lags the live events (rows handed to the writer, not yet
        // committed), the writer is flushed and the log read again.
        for (int attempt = 0;; ++attempt) {
          auto run = eng.get_run(id);
          if (!run || !*run) {
            return rs.answer(error_response(404, "not_found", "no run " + id));
          }
          auto rows = eng.node_rows(id);
          if (!rows) {
            return rs.answer(error_response(503, "store_unavailable", rows.error().message));
          }
          auto logged = logged_after(**run, *rows, after);
          if (join_feed(rs, feed, after, logged)) {
            return;
          }
          if (attempt == 1 || !eng.flush(std::chrono::seconds(5))) {
            return stream_frames(rs, **run, logged);
          }
        }
      });
    }
    join_feed(rs, feed, after, {});
  }

  // Streams `logged` (events after `after`, in order), then the feed's events after them, then
  // live. False, with nothing answered, when the feed's oldest event in memory is not the one
  // after the last of `logged`.
  bool join_feed(const request_scope& rs, const std::shared_ptr<run_feed>& feed,
                 std::int64_t after, const std::vector<std::pair<std::int64_t, std::string>>& logged) {
    std::int64_t sent = after;
    for (const auto& [seq, frame] : logged) {
      if (seq != sent + 1) {
        break;  // a gap: the log lags
      }
      sent = seq;
    }
    auto ex = rs.exchange;
    std::weak_ptr<run_feed> weak = feed;
    // The stream may close (the client left) before it is added to the feed below: the flag,
    // set before the feed is locked, keeps a closed stream out of it.
    auto closed = std::make_shared<std::atomic<bool>>(false);
    std::lock_guard lock(feed->mutex);
    if (!feed->history.empty() && feed->history.front().seq > sent + 1) {
      return false;
    }
    http_requests.add({rs.route, "200"});
    http_seconds.observe({rs.route},
                         std::chrono::duration<double>(clock::now() - rs.began).count());
    ex->start_stream([weak, ex, closed] {
      closed->store(true);
      if (auto f = weak.lock()) {
        std::lock_guard lock(f->mutex);
        std::erase(f->streams, ex);
      }
    });
    for (const auto& [seq, frame] : logged) {
      if (seq > sent) {
        break;
      }
      ex->send(frame);
    }
    for (const auto& e : feed->history) {
      if (e.seq > sent) {
        ex->send(frame_of(*feed, e));
      }
    }
    if (feed->finished) {
      ex->end_stream();
    } else if (!closed->load()) {
      feed->streams.push_back(ex);
    }
    return true;
  }

  // A stream of the log's events after `after` for a run this process does not run (or whose
  // log lags what it has in memory): it ends after them.
  void stream_frames(const request_scope& rs, const run_row& run,
                     const std::vector<std::pair<std::int64_t, std::string>>& logged) {
    http_requests.add({rs.route, "200"});
    auto ex = rs.exchange;
    ex->start_stream({});
    for (const auto& [seq, frame] : logged) {
      ex->send(frame);
    }
    if (!final_status(run.status)) {
      ex->send(": the run is not running in this process; reconnect with Last-Event-ID later\n\n");
    }
    ex->end_stream();
  }

  void stream_from_log(const request_scope& rs, const run_row& run, std::int64_t after) {
    auto rows = eng.node_rows(run.run_id.str());
    if (!rows) {
      return rs.answer(error_response(503, "store_unavailable", rows.error().message));
    }
    stream_frames(rs, run, logged_after(run, *rows, after));
  }

  // The log's events of a run after `after`, in order.
  static std::vector<std::pair<std::int64_t, std::string>> logged_after(
      const run_row& run, const std::vector<node_row>& rows, std::int64_t after) {
    auto logged = frames_from_log(run, rows);
    std::erase_if(logged, [after](const auto& f) { return f.first <= after; });
    std::sort(logged.begin(), logged.end(),
              [](const auto& x, const auto& y) { return x.first < y.first; });
    return logged;
  }

  void stream_events(const request_scope& rs, const http_request& req, const std::string& id) {
    std::int64_t after = 0;
    std::string_view last = req.header("last-event-id");
    if (!last.empty()) {
      auto v = to_int(last);
      if (!v || *v < 0) {
        return rs.answer(error_response(400, "invalid_last_event_id",
                                        "Last-Event-ID must be an event number"));
      }
      after = *v;
    } else if (const std::string* a = req.param("after")) {
      auto v = to_int(*a);
      if (!v || *v < 0) {
        return rs.answer(error_response(400, "invalid_after", "after must be an event number"));
      }
      after = *v;
    }
    if (auto feed = feed_of(id)) {
      return subscribe(rs, feed, after, id);
    }
    net::post(pool, [this, rs, id, after] {
      auto run = eng.get_run(id);
      if (!run) {
        return rs.answer(error_response(503, "store_unavailable", run.error().message));
      }
      if (!*run) {
        return rs.answer(error_response(404, "not_found", "no run " + id));
      }
      if (auto feed = feed_of(id)) {  // started meanwhile (a resume)
        return subscribe(rs, feed, after, id);
      }
      stream_from_log(rs, **run, after);
    });
  }

  void list_runs(const request_scope& rs, const http_request& req) {
    run_query q;
    q.limit = 50;
    if (const std::string* s = req.param("status")) {
      run_status st{};
      if (!parse_run_status(*s, st)) {
        return rs.answer(error_response(400, "invalid_status", "unknown status '" + *s + "'"));
      }
      q.status = st;
    }
    if (const std::string* w = req.param("workflow")) {
      q.workflow = *w;
    }
    if (const std::string* pr = req.param("parent")) {
      q.parent_run_id = *pr;
    }
    if (const std::string* l = req.param("limit")) {
      auto v = to_int(*l);
      if (!v || *v < 1 || *v > 1000) {
        return rs.answer(error_response(400, "invalid_limit", "limit must be 1..1000"));
      }
      q.limit = static_cast<std::size_t>(*v);
    }
    bool top_level = false;
    if (const std::string* t = req.param("top_level")) {
      top_level = *t == "true" || *t == "1";
    }
    std::string cursor;
    if (const std::string* c = req.param("cursor")) {
      cursor = *c;
    }
    net::post(pool, [this, rs, q, top_level, cursor]() mutable {
      // Newest first by (started_at, run_id); a cursor names the last run of the page before,
      // and the store continues after it (an index walk, not a scan).
      std::optional<std::pair<std::int64_t, std::string>> from;
      if (!cursor.empty()) {
        auto colon = cursor.find(':');
        auto at = colon == std::string::npos ? std::nullopt
                                             : to_int(std::string_view(cursor).substr(0, colon));
        if (!at) {
          return rs.answer(error_response(400, "invalid_cursor", "not a cursor of this API"));
        }
        from.emplace(*at, cursor.substr(colon + 1));
      }
      std::size_t want = q.limit;
      q.limit = want + 1;  // one more than the page: whether there is a next one
      q.top_level = top_level;
      if (from) {
        q.before_started_at = from->first;
        q.before_run_id = from->second;
      }
      auto runs = eng.list_runs(q);
      if (!runs) {
        return rs.answer(error_response(503, "store_unavailable", runs.error().message));
      }
      std::vector<run_row>& page = *runs;
      const bool more = page.size() > want;
      if (more) {
        page.resize(want);
      }
      json::object doc = runs_document(page).as_object();
      if (more) {
        const auto& last = page.back();
        doc["next_cursor"] = std::to_string(last.started_at) + ":" + last.run_id.str();
      } else {
        doc["next_cursor"] = nullptr;
      }
      rs.answer(json_response(200, doc));
    });
  }

  void get_run(const request_scope& rs, const std::string& id, bool nodes_only) {
    net::post(pool, [this, rs, id, nodes_only] {
      auto run = eng.get_run(id);
      if (!run) {
        return rs.answer(error_response(503, "store_unavailable", run.error().message));
      }
      if (!*run) {
        if (auto feed = feed_of(id)) {  // started here, not committed yet
          return rs.answer(accepted(id, 200));
        }
        return rs.answer(error_response(404, "not_found", "no run " + id));
      }
      auto nodes = eng.node_rows(id);
      if (!nodes) {
        return rs.answer(error_response(503, "store_unavailable", nodes.error().message));
      }
      json::value doc = run_detail_document(**run, *nodes);
      if (nodes_only) {
        return rs.answer(json_response(200, json::object{{"nodes", doc.as_object()["nodes"]}}));
      }
      rs.answer(json_response(200, doc));
    });
  }

  void cancel_run(const request_scope& rs, const std::string& id) {
    std::optional<run_handle> h;
    {
      std::lock_guard lock(feeds_mutex);
      if (auto it = live.find(id); it != live.end()) {
        h = it->second;
      }
    }
    if (h) {
      h->cancel();
      return rs.answer(json_response(
          202, json::object{{"run_id", id}, {"status", "cancelling"}}));
    }
    net::post(pool, [this, rs, id] {
      auto run = eng.get_run(id);
      if (!run) {
        return rs.answer(error_response(503, "store_unavailable", run.error().message));
      }
      if (!*run) {
        return rs.answer(error_response(404, "not_found", "no run " + id));
      }
      if (final_status((*run)->status)) {
        return rs.answer(error_response(409, "run_finished",
                                        "run " + id + " already ended: " +
                                            std::string(to_string((*run)->status))));
      }
      rs.answer(error_response(409, "not_running_here",
                               "run " + id + " is not running in this process (owner: " +
                                   (*run)->owner.str() + ")"));
    });
  }

  void resume_run(const request_scope& rs, const std::string& id, const std::string& key) {
    if (!starting) {
      return rs.answer(error_response(503, "shutting_down", "the service is shutting down"));
    }
    net::post(pool, [this, rs, id, key] {
      auto run = eng.get_run(id);
      if (!run) {
        return rs.answer(error_response(503, "store_unavailable", run.error().message));
      }
      if (!*run) {
        return rs.answer(error_response(404, "not_found", "no run " + id));
      }
      if (!take_run_slot(key)) {
        return rs.answer(error_response(429, "too_many_runs", "this key has too many runs"));
      }
      auto feed = std::make_shared<run_feed>();
      feed->run_id = id;
      feed->resumed = true;
      plan_ptr p = eng.find_workflow((*run)->workflow, (*run)->version);
      start_options o;
      o.on_event = event_sink(feed, p);  // p may be null: its workflow is not registered here
      o.policy = p ? policy_for(*p) : policy;  // ...and then not the operator's
      o.never_wait = true;
      {
        std::lock_guard lock(feeds_mutex);
        auto& slot = feeds[id];
        if (slot && !live_feed_finished(*slot)) {
          give_run_slot(key);
          return rs.answer(error_response(409, "running_here", "run " + id +
                                                                   " is running in this process"));
        }
        slot = feed;
      }
      auto resumed = eng.resume(id, std::move(o));
      if (!resumed) {
        give_run_slot(key);
        http_response refused = validation_response(409, "cannot_resume", resumed.error());
        abandon(feed, refused);
        return rs.answer(std::move(refused));
      }
      track(*resumed, feed, (*run)->workflow, key);
      rs.answer(accepted(id, 202));
    });
  }
};

std::size_t service::adopt_expired_runs() {
  auto& m = *impl_;
  engine::adoption_hooks hooks;
  // A run adopted here (its engine died) joins the service's view like a run resumed through
  // the API: a live event stream, cancel, metrics. It is charged to no API key.
  hooks.prepare = [&m](const run_row& run) {
    const std::string id = run.run_id.str();
    auto feed = std::make_shared<run_feed>();
    feed->run_id = id;
    feed->resumed = true;
    plan_ptr p = m.eng.find_workflow(run.workflow, run.version);
    start_options o;
    o.on_event = m.event_sink(feed, p);  // p may be null: not registered here since a restart
    o.policy = p ? m.policy_for(*p) : m.policy;
    o.never_wait = true;
    std::lock_guard lock(m.feeds_mutex);
    m.adopting[id] = {feed, run.workflow};
    m.feeds[id] = feed;  // the engine runs it nowhere here (it checked): no live feed to keep
    return o;
  };
  hooks.done = [&m](const std::string& id, const run_handle* adopted) {
    std::pair<std::shared_ptr<run_feed>, std::string> prepared;
    {
      std::lock_guard lock(m.feeds_mutex);
      auto it = m.adopting.find(id);
      if (it == m.adopting.end()) {
        return;
      }
      prepared = std::move(it->second);
      m.adopting.erase(it);
      auto f = m.feeds.find(id);
      if (!adopted && f != m.feeds.end() && f->second == prepared.first) {
        m.feeds.erase(f);
      }
    }
    if (adopted) {
      m.track(*adopted, prepared.first, prepared.second, adopted_runs_key);
    }
  };
  // Later rounds (a lease ran out while serving) say what they adopted.
  auto later = hooks;
  later.done = [&m, done = hooks.done](const std::string& id, const run_handle* adopted) {
    done(id, adopted);
    if (adopted && m.config.log) {
      m.config.log("adopted run " + id + " (its owner's lease ran out)");
    }
  };
  // The first round here, before the service answers anything: a run that was in flight when
  // the previous process died is live again when the first request comes.
  std::size_t adopted = 0;
  engine::resume_claimable(m.eng, hooks.prepare,
                           [&](const std::string& id, expected<run_handle, validation_errors> r) {
                             if (r) {
                               ++adopted;
                             }
                             hooks.done(id, r ? &*r : nullptr);
                           });
  m.eng.adopt_expired_runs(std::move(later));
  return adopted;
}

service::service(engine& e, service_config config, std::function<http_server_stats()> stats)
    : impl_(std::make_unique<impl>(e, std::move(config), std::move(stats))) {}

service::~service() { stop(); }

void service::handle(const std::shared_ptr<http_exchange>& exchange, http_request request) {
  impl_->handle(exchange, std::move(request));
}

std::optional<http_response> service::refuse_before_body(std::string_view authorization) const {
  if (impl_->key_of(authorization)) {
    return std::nullopt;
  }
  return impl::unauthorized();
}

void service::stop_starting_runs() { impl_->starting = false; }

std::size_t service::runs_in_flight() const { return impl_->in_flight.load(); }

void service::stop() {
  impl_->starting = false;
  impl_->pool.join();
  std::lock_guard lock(impl_->feeds_mutex);
  for (auto& [id, feed] : impl_->feeds) {
    std::lock_guard f(feed->mutex);
    feed->end_streams();
  }
}

std::vector<std::string> read_api_keys(const std::string& path, const std::string& env_value) {
  std::vector<std::string> keys;
  auto add = [&](std::string k) {
    while (!k.empty() && (k.back() == '\r' || k.back() == ' ' || k.back() == '\t')) {
      k.pop_back();
    }
    std::size_t i = 0;
    while (i < k.size() && (k[i] == ' ' || k[i] == '\t')) {
      ++i;
    }
    k.erase(0, i);
    if (!k.empty() && k[0] != '#') {
      keys.push_back(std::move(k));
    }
  };
  if (!path.empty()) {
    std::ifstream in(path);
    if (!in) {
      throw std::runtime_error("cannot read the API keys file '" + path + "'");
    }
    std::string line;
    while (std::getline(in, line)) {
      add(line);
    }
  }
  for (const auto& key : split(env_value, ',')) {
    add(key);
  }
  return keys;
}

}  // namespace troupe::cli
