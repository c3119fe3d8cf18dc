#include "runtime/engine.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/logger.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/thread_hook.hpp>

#include "actors/dispatcher.hpp"
#include "actors/inflight_gate.hpp"
#include "actors/lease_keeper.hpp"
#include "actors/node_agent.hpp"
#include "actors/run_actor.hpp"
#include "actors/trace.hpp"
#include "actors/writer_actor.hpp"
#include "messages/messages.hpp"
#include "persistence/forwarding_store.hpp"
#include "runtime/caches.hpp"
#include "runtime/detail/errors.hpp"
#include "runtime/detail/query_store.hpp"
#include "runtime/detail/run_handle_shared.hpp"
#include "runtime/ownership.hpp"
#include "runtime/plans.hpp"
#include "runtime/resume.hpp"
#include "runtime/runs.hpp"
#include "runtime/scheduler.hpp"

// The engine wires its parts (plans.hpp, caches.hpp, runs.hpp, resume.hpp: no CAF) to the actor
// system, the I/O threads, the blocking pool and the writer, through run_services
// (actors/run_actor.hpp). This file is the only one that creates threads or actors.

namespace troupe {

namespace {

// CAF 0.17 keeps a reference to the actor system's logger in a thread-local of every thread that
// spawns an actor or makes a scoped_actor (or constructs the system), until that thread exits,
// and ~actor_system waits for the logger's destructor: an embedder's thread that started a run
// and is still alive (a server's I/O thread, a pool) would hang shutdown() for ever. Engine
// calls from a thread that had no logger set leave none behind; engine threads keep theirs.
class caller_logger_guard {
 public:
  caller_logger_guard() : had_(caf::logger::current_logger() != nullptr) {}
  ~caller_logger_guard() {
    if (!had_) {
      caf::logger::set_current_actor_system(nullptr);
    }
  }
  caller_logger_guard(const caller_logger_guard&) = delete;
  caller_logger_guard& operator=(const caller_logger_guard&) = delete;

 private:
  bool had_;
};

}  // namespace


using detail::one_error;

namespace {

// Marks the threads of an engine (CAF's scheduler and detached actors, the I/O threads): a run
// started from one of them is queued instead of waiting for the writer, which these very
// threads must keep running.
thread_local bool on_engine_thread = false;

struct engine_thread_hook final : caf::thread_hook {
  void init(caf::actor_system&) override {}
  void thread_started() override { on_engine_thread = true; }
  void thread_terminates() override {}
};

std::int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The store objects of an engine that keeps a log (none in memory mode). The writer owns one
// connection and queries use another, except when both must use one object: memory:// (a second
// open would be a different, empty store) and a caller's store_object. Then `writer` is null and
// the writer gets a forwarding_store over `query` (such stores lock internally).
struct engine_stores {
  std::unique_ptr<store> writer;
  std::shared_ptr<store> query;
};

engine_stores open_stores(const engine_config& config) {
  engine_stores out;
  if (config.mode == persistence_mode::memory) {
    return out;
  }
  if (config.store_object) {
    out.query = config.store_object;
    return out;
  }
  auto open = [&] {
    auto opened = open_store(config.store);
    if (!opened) {
      throw engine_error("cannot open store '" + config.store + "': " + opened.error().message);
    }
    return std::move(*opened);
  };
  out.writer = open();
  if (config.store.rfind("memory://", 0) == 0) {
    out.query = std::move(out.writer);
  } else {
    out.query = open();
  }
  return out;
}

}  // namespace

struct engine::impl {
  impl(engine_config c, engine_stores stores);

  /// The run_services every actor of this engine shares: the parts below behind callbacks.
  std::shared_ptr<run_services> make_services();
  /// Registered workflows are stored so that a restarted engine can resume their runs.
  expected<plan_ptr, validation_errors> logged(expected<plan_ptr, validation_errors> p);

  const engine_config config;

  // The parts (no CAF). Declared before the actor system, so they outlive every actor that
  // calls them: run_services' callbacks and the runs' on_end hold plain pointers to them.
  plan_registry plans;
  std::unique_ptr<detail::query_store> queries;  // the query connection; null in memory mode
  output_cache outputs;
  spec_cache specs;
  run_index runs;
  memory_log log;  // filled in memory mode only
  std::mutex request_keys_mutex;
  std::unique_ptr<store> request_keys;  // memory mode only: the service's idempotency keys
  run_ids ids;
  std::shared_ptr<writer_metrics> metrics = std::make_shared<writer_metrics>();

  // Declared before the actor system: traced actors record into it until the system is gone.
  std::shared_ptr<trace::tracer> trace;
  caf::actor_system_config caf_config;
  std::unique_ptr<caf::actor_system> system;
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> io_guard{
      io.get_executor()};
  std::vector<std::thread> io_threads;
  std::unique_ptr<boost::asio::thread_pool> blocking;
  // adopt_expired_runs(): its rounds run here, on a thread of their own, so that a pool full of
  // long blocking tasks cannot delay taking over a dead engine's runs. Made on first use.
  std::unique_ptr<boost::asio::thread_pool> adopt_pool;
  caf::actor writer;  // invalid in memory mode and after shutdown
  // Ownership: who this engine is, its lease terms, and the actor renewing its runs' leases
  // (invalid in memory mode).
  std::string owner = this_process_identity().to_string();
  lease_terms terms;
  caf::actor keeper;
  // Runs started from engine threads while the writer was too far behind: spawned when it has
  // caught up (writer_hooks::room), or at shutdown.
  std::mutex admission_mutex;
  std::vector<std::pair<std::shared_ptr<run_handle::shared>, run_spawn_args>> admission;
  void admit_queued();
  // adopt_expired_runs(): its timer (on the I/O threads) and callback.
  std::mutex adopt_mutex;
  engine::adoption_hooks adoption;
  std::unique_ptr<boost::asio::steady_timer> adopt_timer;
  bool adopting = false;
  std::shared_ptr<std::function<void()>> adopt_round;  // the round the timer posts

  // The cluster (config.cluster.enabled): this engine's dispatcher, the tasks it routes, its
  // counters, and the agent when the engine is a worker too.
  caf::actor dispatcher;
  std::shared_ptr<offer_table> offers;
  std::shared_ptr<cluster_counters> cluster_counts = std::make_shared<cluster_counters>();
  std::mutex agent_mutex;
  caf::actor agent;

  services_ptr services;
  std::shared_ptr<run_services> services_mut;  // the same object, writable while wiring

  std::atomic<bool> accepting{true};
  bool stopped = false;  // set by shutdown(), on the caller's thread
};

engine::impl::impl(engine_config c, engine_stores stores)
    : config(std::move(c)),
      plans(config.limits, config.dynamic_plans),
      queries(stores.query ? std::make_unique<detail::query_store>(stores.query) : nullptr),
      outputs(config.cache_entries, queries.get()),
      specs(config.dynamic_plans, queries.get(), plans),
      log(config.memory_log_runs),
      terms(config.lease.count()) {
  int threads = config.threads > 0
                    ? config.threads
                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  caf_config.set("scheduler.max-threads", threads);
  // Idle workers block and every enqueue wakes one (runtime/scheduler.hpp): CAF's own policy
  // either polls with sleeps no enqueue can cut short or leaves work queued behind a busy worker.
  use_waking_scheduler(caf_config);
  caf_config.add_thread_hook<engine_thread_hook>();
  if (!config.trace_file.empty()) {
    try {
      trace = std::make_shared<trace::tracer>(config.trace_file);
    } catch (const std::exception& e) {
      throw engine_error(e.what());
    }
  }
  if (config.cluster.enabled) {
    // The middleman, with heartbeats on (CAF's default leaves a frozen peer unnoticed until a
    // TCP timeout), and the identifier that refuses nodes of another version at the handshake.
    caf_config.load<caf::io::middleman>();
    caf_config.set("middleman.app-identifiers",
                   std::vector<std::string>{config.cluster.app_identifier.empty()
                                                ? wire::app_identifier()
                                                : config.cluster.app_identifier});
    caf_config.set("middleman.heartbeat-interval", caf::timespan{config.cluster.heartbeat});
    caf_config.set("middleman.connection-timeout",
                   caf::timespan{config.cluster.connection_timeout});
    wire::register_cluster_types(caf_config);
    for (const auto& name : config.cluster.remote_tasks) {
      task_def def;
      def.name = name;
      def.kind = task_kind::blocking;
      def.summary = "runs on cluster workers only";
      def.run = [name](const json::value&, const task_call&) {
        return task_result::failure("task '" + name +
                                    "' runs on cluster workers only, and no connected worker "
                                    "offers it");
      };
      plans.add_task(std::move(def));
    }
  }
  system = std::make_unique<caf::actor_system>(caf_config);
  for (int i = 0; i < std::max(1, config.io_threads); ++i) {
    io_threads.emplace_back([this] {
      on_engine_thread = true;
      io.run();
    });
  }
  const int pool_threads = std::max(1, config.blocking_threads);
  blocking = std::make_unique<boost::asio::thread_pool>(pool_threads);
  {
    // Marks every pool thread as the engine's: each job waits until all have started, so they
    // run on distinct threads; the constructor waits for them. (A mutex and a condition
    // variable: libstdc++ 12's std::latch can miss a wake-up.)
    std::mutex mark_mutex;
    std::condition_variable marked;
    int arrived = 0;
    for (int i = 0; i < pool_threads; ++i) {
      boost::asio::post(*blocking, [&, pool_threads] {
        on_engine_thread = true;
        std::unique_lock<std::mutex> lock(mark_mutex);
        ++arrived;
        marked.notify_all();
        marked.wait(lock, [&] { return arrived >= pool_threads + 1; });
        ++arrived;  // past pool_threads + 1: this job is done with the locals
        marked.notify_all();
      });
    }
    std::unique_lock<std::mutex> lock(mark_mutex);
    marked.wait(lock, [&] { return arrived == pool_threads; });
    ++arrived;
    marked.notify_all();
    marked.wait(lock, [&] { return arrived == 2 * pool_threads + 1; });
  }
  auto svc = make_services();
  if (config.mode != persistence_mode::memory) {
    writer_config wc = config.writer;
    wc.mode = config.mode;
    std::unique_ptr<store> ws =
        stores.writer ? std::move(stores.writer) : std::make_unique<forwarding_store>(stores.query);
    // The keeper is spawned after the writer it renews through; the writer's hook reaches it
    // through this holder, set before any run can exist.
    auto keeper_of = std::make_shared<caf::actor>();
    writer_hooks hooks;
    hooks.lost_runs = [keeper_of](const std::vector<std::string>& runs) {
      if (*keeper_of) {
        caf::anon_send(*keeper_of, lost_atom::value, runs);
      }
    };
    hooks.room = [this] { admit_queued(); };
    writer = spawn_writer(*system, std::move(ws), wc, metrics, trace.get(), std::move(hooks));
    auto leases = std::make_shared<lease_registry>();
    keeper = spawn_lease_keeper(*system, writer, owner, terms.lease_ms(), leases, trace.get());
    *keeper_of = keeper;
    svc->writer = writer;
    svc->owner = owner;
    svc->lease_ms = terms.lease_ms();
    svc->leases = std::move(leases);
    svc->lease_keeper = keeper;
  }
  if (config.cluster.enabled) {
    offers = std::make_shared<offer_table>();
    offers->set_remote_only(
        {config.cluster.remote_tasks.begin(), config.cluster.remote_tasks.end()});
    dispatcher_config dc;
    dc.coordinator_id = owner;
    dc.heartbeat_ms = config.cluster.heartbeat.count();
    dc.connection_timeout_ms = config.cluster.connection_timeout.count();
    dc.no_worker = config.cluster.run_here_without_workers ? no_worker_policy::run_here
                                                           : no_worker_policy::wait;
    dc.log = config.cluster.log;
    dc.leases = svc->leases;
    dc.lease_ms = svc->lease_ms;
    dc.wall_offset_us = svc->wall_offset_us;
    dispatcher = spawn_dispatcher(*system, std::move(dc), offers, cluster_counts, trace.get());
    svc->dispatcher = dispatcher;
    svc->offers = offers;
  }
  services_mut = svc;
  services = std::move(svc);
}

std::shared_ptr<run_services> engine::impl::make_services() {
  auto svc = std::make_shared<run_services>();
  svc->system = system.get();
  svc->io = &io;
  svc->blocking = blocking.get();
  plan_registry* p = &plans;
  svc->tasks = [p] { return p->tasks(); };
  svc->tasks_for = [p](const plan_ptr& plan) { return p->tasks_for(plan); };
  svc->find_workflow = [p](std::string_view n, std::string_view v) { return p->find(n, v); };
  svc->compile_dynamic = [p](const json::value& doc) { return p->compile_dynamic(doc); };
  run_ids* i = &ids;
  svc->new_run_id = [i] { return i->next(); };
  output_cache* o = &outputs;
  svc->cache_lookup = [o](const std::string& key) { return o->find(key); };
  if (o->has_store()) {
    svc->cache_load = [o](const std::string& key) { return o->load(key); };
  }
  svc->cache_remember = [o](const std::string& key, const json_ptr& output) {
    o->remember(key, output);
  };
  spec_cache* s = &specs;
  svc->spec_lookup = [s](const std::string& key) { return s->lookup(key); };
  svc->spec_remember = [s](const std::string& key, const plan_ptr& plan) {
    s->remember(key, plan);
  };
  detail::query_store* q = queries.get();
  svc->prior_child = [q, this](const std::string& run, const std::string& node,
                               const plan& child) -> std::optional<resume_point> {
    if (!q) {
      return std::nullopt;
    }
    return prior_child(*q, run, node, child, owner, terms);
  };
  svc->max_workflow_depth = config.max_workflow_depth;
  svc->max_in_flight = config.max_in_flight;
  if (config.max_in_flight > 0) {
    svc->gate = std::make_shared<inflight_gate>(static_cast<std::size_t>(config.max_in_flight));
  }
  svc->mode = config.mode;
  svc->wall_offset_us = std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count() -
                        std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::steady_clock::now().time_since_epoch())
                            .count();
  svc->trace = trace;
  return svc;
}

expected<plan_ptr, validation_errors> engine::impl::logged(
    expected<plan_ptr, validation_errors> p) {
  if (p && writer) {
    const plan& shared = **p;
    persist m;
    m.workflows.push_back(workflow_row{shared.name, shared.version, shared.hash,
                                       to_json_text(shared.source), wall_us()});
    caf::anon_send(writer, std::move(m));
  }
  return p;
}

void engine::impl::admit_queued() {
  std::vector<std::pair<std::shared_ptr<run_handle::shared>, run_spawn_args>> ready;
  {
    std::lock_guard<std::mutex> lock(admission_mutex);
    ready.swap(admission);
  }
  caller_logger_guard logger_guard;
  for (auto& [sh, args] : ready) {
    std::unique_lock<std::mutex> lock(sh->mutex);
    auto actor = spawn_run(services, std::move(args), caf::actor{});
    if (!sh->result) {
      sh->actor = actor;
    }
  }
}

engine::engine(engine_config config) {
  caller_logger_guard logger_guard;  // the system's constructor sets this thread's logger
  impl_ = std::make_unique<impl>(config, open_stores(config));
  if (impl_->config.adopt_expired_runs && impl_->queries) {
    adopt_expired_runs();
  }
}

const std::string& engine::owner_id() const {
  return impl_->owner;
}

expected<std::uint16_t, std::string> engine::serve_cluster(const std::string& host,
                                                           std::uint16_t port) {
  auto& m = *impl_;
  if (!m.dispatcher) {
    return make_unexpected(std::string("the cluster is not enabled in this engine's config"));
  }
  caller_logger_guard guard;
  auto bound = m.system->middleman().publish(m.dispatcher, port,
                                             host.empty() ? nullptr : host.c_str(), true);
  if (!bound) {
    return make_unexpected("cannot listen on " + host + ":" + std::to_string(port) + ": " +
                           m.system->render(bound.error()));
  }
  return *bound;
}

std::vector<std::string> engine::offerable_tasks() const {
  const auto& remote = impl_->config.cluster.remote_tasks;
  auto reg = impl_->plans.tasks();
  std::vector<std::string> out;
  for (auto& name : reg->names()) {
    const task_def* def = reg->find(name);
    if (def == nullptr || def->kind == task_kind::quick || name == "workflow" ||
        std::find(remote.begin(), remote.end(), name) != remote.end()) {
      continue;
    }
    out.push_back(std::move(name));
  }
  return out;
}

void engine::join_cluster(worker_options options,
                          std::function<void(const cluster_link_event&)> on_event) {
  auto& m = *impl_;
  if (!m.config.cluster.enabled) {
    throw engine_error("join_cluster: the cluster is not enabled in this engine's config");
  }
  agent_config ac;
  for (auto& [host, port] : options.join) {
    ac.join.push_back(cluster_endpoint{std::move(host), port});
  }
  ac.offer = options.offer.empty() ? offerable_tasks() : std::move(options.offer);
  ac.capacity = options.capacity > 0 ? options.capacity : std::max(1, m.config.blocking_threads);
  ac.worker_id = options.name.empty() ? m.owner : std::move(options.name);
  ac.heartbeat_ms = m.config.cluster.heartbeat.count();
  ac.connection_timeout_ms = m.config.cluster.connection_timeout.count();
  ac.connect_timeout = options.connect_timeout;
  caller_logger_guard guard;
  auto agent = spawn_node_agent(m.services, std::move(ac), std::move(on_event));
  std::lock_guard lock(m.agent_mutex);
  if (m.agent) {
    caf::anon_send_exit(m.agent, caf::exit_reason::user_shutdown);
  }
  m.agent = std::move(agent);
}

cluster_stats engine::cluster() const {
  const auto& c = *impl_->cluster_counts;
  cluster_stats s;
  s.workers = c.workers.load();
  s.remote_in_flight = c.remote_in_flight.load();
  s.waiting = c.waiting.load();
  s.dispatched = c.dispatched.load();
  s.lost = c.lost.load();
  s.ran_here = c.ran_here.load();
  return s;
}

engine::~engine() {
  shutdown();
}

bool engine::register_task(task_def def) {
  return impl_->plans.add_task(std::move(def));
}

std::shared_ptr<const task_registry> engine::tasks() const {
  return impl_->plans.tasks();
}

expected<plan_ptr, validation_errors> engine::register_workflow(std::string_view json_text) {
  return impl_->logged(impl_->plans.register_workflow(json_text));
}

expected<plan_ptr, validation_errors> engine::register_workflow(const json::value& document) {
  return impl_->logged(impl_->plans.register_workflow(document));
}

expected<plan_ptr, validation_errors> engine::register_workflow_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_unexpected(one_error("", "cannot read workflow file '" + path + "'"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return register_workflow(text.str());
}

std::vector<engine::registered_workflow> engine::workflows() const {
  std::vector<registered_workflow> out;
  for (auto& e : impl_->plans.registered()) {
    out.push_back({std::move(e.plan), e.latest});
  }
  return out;
}

std::string engine::new_run_id() { return impl_->ids.next(); }

plan_ptr engine::find_workflow(std::string_view name, std::string_view version) const {
  return impl_->plans.find(name, version);
}

expected<run_handle, validation_errors> engine::start(std::string_view workflow_name,
                                                      json::object inputs, start_options options) {
  plan_ptr p = impl_->plans.find(workflow_name, {});
  if (!p) {
    return make_unexpected(
        one_error("", "no registered workflow '" + std::string(workflow_name) + "'"));
  }
  return start(p, std::move(inputs), std::move(options));
}

expected<run_handle, validation_errors> engine::start(const plan_ptr& p, json::object inputs,
                                                      start_options options) {
  return start_run(p, std::move(inputs), std::move(options), nullptr);
}

expected<run_handle, validation_errors> engine::start_run(const plan_ptr& p, json::object inputs,
                                                          start_options options,
                                                          resume_point* from) {
  auto& m = *impl_;
  if (!p) {
    return make_unexpected(one_error("", "no plan given"));
  }
  if (!m.accepting.load()) {
    return make_unexpected(one_error("", "the engine is shutting down"));
  }
  auto bound = bind_inputs(*p, inputs);
  if (!bound) {
    return make_unexpected(std::move(bound.error()));
  }
  bool queue = false;
  if (m.writer && m.metrics->pending.load() >= m.config.writer.pending_max) {
    if (on_engine_thread || options.never_wait) {
      queue = true;  // never wait on a thread the writer needs: start it once it caught up
    } else {
      // Too much not yet committed: the producer waits here instead of memory growing.
      m.metrics->wait_below(m.config.writer.pending_max);
      if (!m.accepting.load()) {
        return make_unexpected(one_error("", "the engine is shutting down"));
      }
    }
  }
  auto sh = std::make_shared<run_handle::shared>();
  sh->id = options.run_id.empty() ? m.ids.next() : std::move(options.run_id);
  sh->on_event = std::move(options.on_event);
  memory_log* log = m.config.mode == persistence_mode::memory ? &m.log : nullptr;
  sh->on_end = [runs = &m.runs, log, id = sh->id, sh_weak = std::weak_ptr<run_handle::shared>(sh)] {
    if (log) {
      if (auto s = sh_weak.lock(); s && s->result) {
        log->remember(*s->result);
      }
    }
    runs->remove(id);
  };
  if (!m.runs.add(sh->id, sh)) {
    return make_unexpected(one_error("", "a run with id '" + sh->id + "' is already running"));
  }
  run_spawn_args a;
  a.plan = p;
  a.inputs = std::move(*bound);
  a.options.run_id = sh->id;
  a.sink = sh;
  a.policy = std::move(options.policy);
  if (from) {
    resume_from(a, std::move(*from));
    a.options.run_id = sh->id;
  }
  if (queue) {
    bool room = false;
    {
      std::lock_guard<std::mutex> lock(m.admission_mutex);
      if (!m.accepting.load()) {  // shutdown drained the queue already: nobody would start it
        m.runs.remove(sh->id);
        return make_unexpected(one_error("", "the engine is shutting down"));
      }
      m.admission.emplace_back(sh, std::move(a));
      // The writer may have caught up since the check above: then no hook call is coming.
      room = m.metrics->pending.load() < m.config.writer.pending_max;
    }
    if (room) {
      m.admit_queued();
    }
    return run_handle(sh);
  }
  // The lock orders this store before finished() clears it, should the run end at once.
  caller_logger_guard logger_guard;
  std::unique_lock<std::mutex> lock(sh->mutex);
  auto actor = spawn_run(m.services, std::move(a), caf::actor{});
  if (!sh->result) {
    sh->actor = actor;
  }
  lock.unlock();
  return run_handle(sh);
}

expected<std::vector<run_row>, store_error> engine::list_runs(const run_query& q) const {
  auto& m = *impl_;
  if (m.queries) {
    return m.queries->with([&](store& s) { return s.list_runs(q); });
  }
  return m.log.list(q);
}

expected<request_key_row, store_error> engine::remember_request(const request_key_row& row,
                                                                std::int64_t expired_before_us) {
  auto& m = *impl_;
  if (m.queries) {
    return m.queries->with([&](store& s) { return s.remember_request(row, expired_before_us); });
  }
  std::lock_guard lock(m.request_keys_mutex);
  if (!m.request_keys) {
    auto opened = open_store("memory://");
    if (!opened) {
      return make_unexpected(opened.error());
    }
    m.request_keys = std::move(*opened);
  }
  return m.request_keys->remember_request(row, expired_before_us);
}

expected<std::size_t, store_error> engine::forget_requests(std::int64_t before_us) {
  auto& m = *impl_;
  if (m.queries) {
    return m.queries->with([&](store& s) { return s.forget_requests(before_us); });
  }
  std::lock_guard lock(m.request_keys_mutex);
  if (!m.request_keys) {
    return std::size_t{0};
  }
  return m.request_keys->forget_requests(before_us);
}

expected<std::optional<run_row>, store_error> engine::get_run(std::string_view run_id) const {
  auto& m = *impl_;
  if (m.queries) {
    return m.queries->with([&](store& s) { return s.get_run(run_id); });
  }
  return m.log.get(run_id);
}

expected<std::vector<node_row>, store_error> engine::node_rows(std::string_view run_id) const {
  auto& m = *impl_;
  if (m.queries) {
    return m.queries->with([&](store& s) { return s.node_rows(run_id); });
  }
  return m.log.node_rows(run_id);
}

writer_metrics& engine::metrics() const {
  return *impl_->metrics;
}

persistence_mode engine::mode() const {
  return impl_->config.mode;
}

expected<run_handle, validation_errors> engine::resume(std::string_view run_id,
                                                       start_options options) {
  auto& m = *impl_;
  if (!m.queries) {
    return make_unexpected(
        one_error("", "resume needs a store: memory mode keeps no resumable log"));
  }
  if (m.runs.contains(std::string(run_id))) {
    return make_unexpected(one_error("", "run '" + std::string(run_id) + "' is running here"));
  }
  auto head = m.queries->with([&](store& s) { return s.get_run(run_id); });
  if (!head) {
    return make_unexpected(
        one_error("", "cannot read run '" + std::string(run_id) + "': " + head.error().message));
  }
  if (!*head) {
    return make_unexpected(one_error("", "no run '" + std::string(run_id) + "' in the log"));
  }
  if ((*head)->status == run_status::succeeded) {
    return make_unexpected(one_error("", "run '" + std::string(run_id) + "' already succeeded"));
  }
  if (!m.accepting.load()) {  // never claim a run nobody here would run
    return make_unexpected(one_error("", "the engine is shutting down"));
  }
  // Claimed first, read after: every row the previous owner got committed is in.
  auto claim = claim_for_resume(*m.queries, **head, m.owner, m.terms);
  if (!claim) {
    return make_unexpected(one_error("", std::move(claim.error())));
  }
  auto stored = load_run(*m.queries, m.plans, run_id);
  if (!stored) {
    return make_unexpected(std::move(stored.error()));
  }
  const run_row& run = stored->run;
  auto p = plan_to_resume(
      *stored, m.plans, [this](std::string_view document) { return register_workflow(document); });
  if (!p) {
    return make_unexpected(std::move(p.error()));
  }
  resume_point from = resume_point_of(**p, run.run_id, stored->nodes, wall_us());
  from.epoch = claim->epoch;
  json::object inputs =
      run.inputs && run.inputs->is_object() ? run.inputs->as_object() : json::object{};
  options.run_id = run.run_id;
  return start_run(*p, std::move(inputs), std::move(options), &from);
}

bool engine::flush(std::chrono::milliseconds timeout) {
  auto& m = *impl_;
  if (!m.writer) {
    return true;
  }
  bool ok = false;
  caller_logger_guard logger_guard;  // outlives the scoped actor
  caf::scoped_actor self{*m.system};
  self->request(m.writer, caf::timespan{timeout}, commit_atom::value, persist{})
      .receive([&](caf::ok_atom) { ok = true; }, [](caf::error&) {});
  return ok;
}

std::vector<expected<run_handle, validation_errors>> engine::resume_unfinished(
    start_options options) {
  std::vector<expected<run_handle, validation_errors>> out;
  resume_claimable(*this, [&](const run_row&) { return options; },
                   [&](const std::string&, expected<run_handle, validation_errors> r) {
                     if (!r && r.error().front().message.find("is owned by") != std::string::npos) {
                       return;  // another engine claimed it since it was listed
                     }
                     out.push_back(std::move(r));
                   });
  return out;
}

// Resumes every top-level run that can be claimed now, each with the options `prepare` gives;
// `done` gets each result (a run another engine claimed meanwhile is skipped, after `done` with
// that error so the caller can forget what it prepared).
void engine::resume_claimable(
    engine& e,
    const std::function<start_options(const run_row&)>& prepare,
    const std::function<void(const std::string&, expected<run_handle, validation_errors>)>& done) {
  auto& m = *e.impl_;
  if (!m.queries) {
    return;
  }
  auto runs = unfinished_top_level_runs(*m.queries);
  if (!runs) {
    done(std::string(), make_unexpected(std::move(runs.error())));
    return;
  }
  const std::int64_t now = wall_us();
  for (const auto& r : *runs) {
    if (m.runs.contains(r.run_id) ||
        !lease_terms::claimable(r.lease_until, now, !r.owner.empty() && owner_gone(r.owner))) {
      continue;  // running here already, or another live engine holds it
    }
    const std::string id = r.run_id.str();
    done(id, e.resume(id, prepare(r)));
  }
}

namespace {
// One round of adopt_expired_runs(): resumes what can be claimed now and returns when the next
// lease of another engine seen in the store runs out (wall µs; 0: none seen).
std::int64_t adopt_round(engine& e, detail::query_store& q, const std::string& me,
                         const engine::adoption_hooks& hooks) {
  engine::resume_claimable(
      e,
      [&](const run_row& run) { return hooks.prepare ? hooks.prepare(run) : start_options{}; },
      [&](const std::string& id, expected<run_handle, validation_errors> r) {
        if (!r && r.error().front().message.find("is owned by") == std::string::npos) {
          std::fprintf(stderr, "troupe: cannot adopt a run: %s\n",
                       r.error().front().message.c_str());
        }
        if (hooks.done && !id.empty()) {
          hooks.done(id, r ? &*r : nullptr);
        }
      });
  auto runs = unfinished_top_level_runs(q);
  std::int64_t next = 0;
  if (runs) {
    for (const auto& r : *runs) {
      if (r.owner != me && r.lease_until > 0 && (next == 0 || r.lease_until < next)) {
        next = r.lease_until;
      }
    }
  }
  return next;
}
}  // namespace

void engine::adopt_expired_runs(std::function<void(const run_handle&)> on_adopted) {
  adoption_hooks hooks;
  if (on_adopted) {
    hooks.done = [f = std::move(on_adopted)](const std::string&, const run_handle* h) {
      if (h) {
        f(*h);
      }
    };
  }
  adopt_expired_runs(std::move(hooks));
}

void engine::adopt_expired_runs(adoption_hooks hooks) {
  auto& m = *impl_;
  if (!m.queries) {
    return;
  }
  {
    std::lock_guard<std::mutex> lock(m.adopt_mutex);
    m.adoption = std::move(hooks);
    if (m.adopting) {
      return;
    }
    m.adopting = true;
    m.adopt_timer = std::make_unique<boost::asio::steady_timer>(m.io);
    m.adopt_pool = std::make_unique<boost::asio::thread_pool>(1);
    // An engine thread: runs it resumes never wait for the writer (see start()).
    boost::asio::post(*m.adopt_pool, [] { on_engine_thread = true; });
  }
  // Each round runs on the adoption thread (store calls); its timer waits on the I/O threads:
  // at the earliest lease end seen, and at least once per lease length.
  auto round = std::make_shared<std::function<void()>>();
  std::weak_ptr<std::function<void()>> weak = round;
  *round = [this, weak] {
    auto& m = *impl_;
    auto self = weak.lock();
    if (!self || !m.accepting.load()) {
      return;
    }
    adoption_hooks hooks;
    {
      std::lock_guard<std::mutex> lock(m.adopt_mutex);
      hooks = m.adoption;
    }
    const std::int64_t next = adopt_round(*this, *m.queries, m.owner, hooks);
    std::int64_t wait_us = m.terms.lease_ms() * 1000;
    if (next > 0) {
      // Just past the lease's end, so that the claim finds it expired.
      wait_us = std::clamp<std::int64_t>(next - wall_us() + 1000, 1000, wait_us);
    }
    std::lock_guard<std::mutex> lock(m.adopt_mutex);
    if (!m.accepting.load() || !m.adopt_timer) {
      return;
    }
    m.adopt_timer->expires_after(std::chrono::microseconds(wait_us));
    m.adopt_timer->async_wait([this, self](const boost::system::error_code& ec) {
      if (!ec) {
        boost::asio::post(*impl_->adopt_pool, *self);
      }
    });
  };
  m.adopt_round = round;
  boost::asio::post(*m.adopt_pool, *round);
}

std::size_t engine::dynamic_compiles() const {
  return impl_->plans.dynamic_compiles();
}

plan_memory engine::plans_in_memory() const {
  plan_memory out;
  out.registered_plans = impl_->plans.registered_plans();
  out.generated_plans = impl_->plans.generated_plans();
  out.spec_plans = impl_->specs.size();
  out.task_tables = impl_->plans.task_tables();
  return out;
}

std::size_t engine::active_runs() const {
  return impl_->runs.size();
}

void engine::shutdown(std::chrono::milliseconds deadline) {
  auto& m = *impl_;
  if (m.stopped) {
    return;
  }
  {
    // Under the admission lock: a run being queued either is in the queue drained below, or
    // sees the engine closed.
    std::lock_guard<std::mutex> lock(m.admission_mutex);
    m.accepting = false;
  }
  {
    std::lock_guard<std::mutex> lock(m.adopt_mutex);
    if (m.adopt_timer) {
      boost::asio::post(m.io, [t = m.adopt_timer.get()] { t->cancel(); });
    }
  }
  {
    // A worker takes no more orders: its coordinators see the link go and place the attempts
    // it had elsewhere.
    std::lock_guard lock(m.agent_mutex);
    if (m.agent) {
      caf::anon_send_exit(m.agent, caf::exit_reason::user_shutdown);
      m.agent = caf::actor{};
    }
  }
  m.admit_queued();  // queued runs start, and end with the others below
  if (!m.runs.wait_until_empty(deadline)) {
    for (auto& sh : m.runs.live()) {
      run_handle(sh).cancel();
    }
    // Cancelled runs end at once, except those waiting for a commit the writer cannot make
    // (a database that is down): the drain below answers them by its deadline.
    m.runs.wait_until_empty(deadline);
  }
  m.stopped = true;
  if (m.writer) {
    // Everything the runs recorded reaches the database before the engine stops. A database
    // that stays down must not hang the process: at the drain deadline the writer answers every
    // run still waiting with an error (run_result::persistence_error), drops what it holds and
    // counts it (metrics().lost_rows).
    caf::scoped_actor self{*m.system};
    bool drained = false;
    const auto drain_for = std::max(deadline, m.config.drain_deadline);
    self->request(m.writer, caf::timespan{drain_for + std::chrono::seconds(5)}, drain_atom::value,
                  static_cast<std::int64_t>(drain_for.count()))
        .receive([&](caf::ok_atom, std::uint64_t) { drained = true; }, [](caf::error&) {});
    if (!drained) {
      caf::anon_send_exit(m.writer, caf::exit_reason::user_shutdown);
    }
    // Every waiter has its answer now: the runs that waited for a commit end.
    m.runs.wait_until_empty(deadline);
    // The writer has quit (drained or given up); actors may still hold its handle, which
    // keeps no thread alive.
  }
  if (m.keeper) {
    caf::anon_send_exit(m.keeper, caf::exit_reason::user_shutdown);
  }
  if (m.dispatcher) {
    caf::anon_send_exit(m.dispatcher, caf::exit_reason::user_shutdown);
  }
  m.blocking->join();
  if (m.adopt_pool) {
    m.adopt_pool->join();  // a round in progress ends; the timer was cancelled above
  }
  m.io_guard.reset();
  m.io.stop();
  for (auto& t : m.io_threads) {
    t.join();
  }
  m.adopt_timer.reset();
  m.adopt_round.reset();
  m.system.reset();  // waits for the last actors (cancelled node actors) to quit
  if (m.trace) {
    m.trace->stop();  // every traced actor is gone: the file can be completed
  }
}

}  // namespace troupe
