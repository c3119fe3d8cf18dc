#include "runtime/engine.hpp"

#include <algorithm>
#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "actors/inflight_gate.hpp"
#include "actors/run_actor.hpp"
#include "actors/trace.hpp"
#include "actors/writer_actor.hpp"
#include "messages/messages.hpp"
#include "persistence/forwarding_store.hpp"
#include "runtime/caches.hpp"
#include "runtime/detail/errors.hpp"
#include "runtime/detail/query_store.hpp"
#include "runtime/detail/run_handle_shared.hpp"
#include "runtime/plans.hpp"
#include "runtime/resume.hpp"
#include "runtime/runs.hpp"

// The engine wires its parts (plans.hpp, caches.hpp, runs.hpp, resume.hpp: no CAF) to the actor
// system, the I/O threads, the blocking pool and the writer, through run_services
// (actors/run_actor.hpp). This file is the only one that creates threads or actors.

namespace troupe {

using detail::one_error;

namespace {

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
  caf::actor writer;  // invalid in memory mode and after shutdown

  services_ptr services;
  std::shared_ptr<run_services> services_mut;  // the same object; shutdown drops its writer

  std::atomic<bool> accepting{true};
  bool stopped = false;  // set by shutdown(), on the caller's thread
};

engine::impl::impl(engine_config c, engine_stores stores)
    : config(std::move(c)),
      plans(config.limits, config.dynamic_plans),
      queries(stores.query ? std::make_unique<detail::query_store>(stores.query) : nullptr),
      outputs(config.cache_entries, queries.get()),
      specs(config.dynamic_plans, queries.get(), plans),
      log(config.memory_log_runs) {
  int threads = config.threads > 0
                    ? config.threads
                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  caf_config.set("scheduler.max-threads", threads);
  // An idle worker must block, not poll: CAF's relaxed phase waits on a condition variable with
  // this timeout before it looks for work to steal, so a long one makes idle threads sleep.
  caf_config.set("work-stealing.relaxed-sleep-duration", caf::timespan{std::chrono::seconds(10)});
  if (!config.trace_file.empty()) {
    try {
      trace = std::make_shared<trace::tracer>(config.trace_file);
    } catch (const std::exception& e) {
      throw engine_error(e.what());
    }
  }
  system = std::make_unique<caf::actor_system>(caf_config);
  for (int i = 0; i < std::max(1, config.io_threads); ++i) {
    io_threads.emplace_back([this] { io.run(); });
  }
  blocking = std::make_unique<boost::asio::thread_pool>(std::max(1, config.blocking_threads));
  auto svc = make_services();
  if (config.mode != persistence_mode::memory) {
    writer_config wc = config.writer;
    wc.mode = config.mode;
    std::unique_ptr<store> ws =
        stores.writer ? std::move(stores.writer) : std::make_unique<forwarding_store>(stores.query);
    writer = spawn_writer(*system, std::move(ws), wc, metrics, trace.get());
    svc->writer = writer;
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
  svc->prior_child = [q](const std::string& run, const std::string& node,
                         const plan& child) -> std::optional<resume_point> {
    if (!q) {
      return std::nullopt;
    }
    return prior_child(*q, run, node, child);
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

engine::engine(engine_config config) : impl_(std::make_unique<impl>(config, open_stores(config))) {}

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
  return start_run(p, std::move(inputs), std::move(options), {}, {});
}

expected<run_handle, validation_errors> engine::start_run(
    const plan_ptr& p, json::object inputs, start_options options,
    std::vector<std::pair<std::size_t, json_ptr>> restored,
    std::vector<std::pair<std::size_t, int>> prior_attempts) {
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
  if (m.writer) {
    // Too much not yet committed: the producer waits here instead of memory growing.
    m.metrics->wait_below(m.config.writer.pending_max);
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
  a.restored = std::move(restored);
  a.prior_attempts = std::move(prior_attempts);
  // The lock orders this store before finished() clears it, should the run end at once.
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
  auto stored = load_run(*m.queries, m.plans, run_id);
  if (!stored) {
    return make_unexpected(std::move(stored.error()));
  }
  const run_row& run = stored->run;
  if (run.status == run_status::succeeded) {
    return make_unexpected(one_error("", "run '" + std::string(run_id) + "' already succeeded"));
  }
  auto p = plan_to_resume(
      *stored, m.plans, [this](std::string_view document) { return register_workflow(document); });
  if (!p) {
    return make_unexpected(std::move(p.error()));
  }
  resume_point from = resume_point_of(**p, run.run_id, stored->nodes);
  json::object inputs =
      run.inputs && run.inputs->is_object() ? run.inputs->as_object() : json::object{};
  options.run_id = run.run_id;
  return start_run(*p, std::move(inputs), std::move(options), std::move(from.restored),
                   std::move(from.prior_attempts));
}

bool engine::flush(std::chrono::milliseconds timeout) {
  auto& m = *impl_;
  if (!m.writer) {
    return true;
  }
  bool ok = false;
  caf::scoped_actor self{*m.system};
  self->request(m.writer, caf::timespan{timeout}, commit_atom::value, persist{})
      .receive([&](caf::ok_atom) { ok = true; }, [](caf::error&) {});
  return ok;
}

std::vector<expected<run_handle, validation_errors>> engine::resume_unfinished() {
  auto& m = *impl_;
  std::vector<expected<run_handle, validation_errors>> out;
  if (!m.queries) {
    return out;
  }
  auto runs = unfinished_top_level_runs(*m.queries);
  if (!runs) {
    out.push_back(make_unexpected(std::move(runs.error())));
    return out;
  }
  for (const auto& r : *runs) {
    if (m.runs.contains(r.run_id)) {
      continue;  // running here already
    }
    out.push_back(resume(r.run_id));
  }
  return out;
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
  m.accepting = false;
  if (!m.runs.wait_until_empty(deadline)) {
    for (auto& sh : m.runs.live()) {
      run_handle(sh).cancel();
    }
    m.runs.wait_until_empty();
  }
  m.stopped = true;
  if (m.writer) {
    // Everything the runs recorded reaches the database before the engine stops.
    caf::scoped_actor self{*m.system};
    // A database that stays down must not hang the process forever: past the drain deadline
    // the writer is stopped and what it still holds is reported (metrics().pending), not lost
    // silently.
    bool drained = false;
    const auto drain_for = std::max(deadline, m.config.drain_deadline);
    self->request(m.writer, caf::timespan{drain_for + std::chrono::seconds(5)}, drain_atom::value,
                  static_cast<std::int64_t>(drain_for.count()))
        .receive([&](caf::ok_atom, std::uint64_t) { drained = true; }, [](caf::error&) {});
    if (!drained) {
      caf::anon_send_exit(m.writer, caf::exit_reason::user_shutdown);
    }
    m.writer = caf::actor{};
    // No run is left to read it; a live handle would keep the writer and its detached
    // committer's thread (and so the actor system's destructor) waiting forever.
    m.services_mut->writer = caf::actor{};
  }
  m.blocking->join();
  m.io_guard.reset();
  m.io.stop();
  for (auto& t : m.io_threads) {
    t.join();
  }
  m.system.reset();  // waits for the last actors (cancelled node actors) to quit
  if (m.trace) {
    m.trace->stop();  // every traced actor is gone: the file can be completed
  }
}

}  // namespace troupe
