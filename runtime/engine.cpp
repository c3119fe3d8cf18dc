#include "runtime/engine.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_map>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include <deque>

#include "actors/inflight_gate.hpp"
#include "actors/run_actor.hpp"
#include "actors/trace.hpp"
#include "actors/writer_actor.hpp"
#include "messages/messages.hpp"
#include "persistence/forwarding_store.hpp"
#include "runtime/caches.hpp"
#include "runtime/detail/query_store.hpp"
#include "runtime/detail/run_handle_shared.hpp"
#include "runtime/plans.hpp"
#include "runtime/resume.hpp"
#include "runtime/runs.hpp"

namespace troupe {

namespace {
std::int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

validation_errors one_error(std::string pointer, std::string message) {
  return validation_errors{validation_error{std::move(pointer), std::move(message)}};
}

}  // namespace

struct engine::impl {
  engine_config config;
  // Declared before the actor system: traced actors record into it until the system is gone.
  std::shared_ptr<trace::tracer> trace;
  caf::actor_system_config caf_config;
  std::unique_ptr<caf::actor_system> system;
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> io_guard{
      io.get_executor()};
  std::vector<std::thread> io_threads;
  std::unique_ptr<boost::asio::thread_pool> blocking;

  std::unique_ptr<plan_registry> plans;

  run_index runs;
  std::unique_ptr<memory_log> log;  // filled in memory mode only
  run_ids ids;
  std::atomic<bool> accepting{true};
  bool stopped = false;
  std::shared_ptr<store> shared_memory_store;

  services_ptr services;
  std::shared_ptr<run_services> services_mut;  // the same object; shutdown drops its writer

  // Persistence: the writer owns its connection; queries use a second one (or, for memory://,
  // the same thread-safe store object).
  std::shared_ptr<writer_metrics> metrics = std::make_shared<writer_metrics>();
  caf::actor writer;
  std::unique_ptr<detail::query_store> queries;  // null in memory mode
  std::unique_ptr<output_cache> outputs;
  std::unique_ptr<spec_cache> specs;

  // Registered workflows are stored so that a restarted engine can resume their runs.
  expected<plan_ptr, validation_errors> stored(expected<plan_ptr, validation_errors> p) {
    if (p && writer) {
      const plan& shared = **p;
      persist m;
      m.workflows.push_back(workflow_row{shared.name, shared.version, shared.hash,
                                         to_json_text(shared.source), wall_us()});
      caf::anon_send(writer, std::move(m));
    }
    return p;
  }
};

namespace {

// Lets the writer own a handle to a store the engine also queries (memory:// only: a second
// open would be a different, empty store). The memory store locks internally.
using shared_store = forwarding_store;

}  // namespace

engine::engine(engine_config config) : impl_(std::make_unique<impl>()) {
  auto& m = *impl_;
  m.config = config;
  int threads = config.threads > 0
                    ? config.threads
                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  m.caf_config.set("scheduler.max-threads", threads);
  std::unique_ptr<store> writer_store;
  std::shared_ptr<store> query_store;
  if (config.mode != persistence_mode::memory && config.store_object) {
    query_store = config.store_object;
    m.shared_memory_store = config.store_object;
  } else if (config.mode != persistence_mode::memory) {
    auto opened = open_store(config.store);
    if (!opened) {
      throw engine_error("cannot open store '" + config.store + "': " + opened.error().message);
    }
    writer_store = std::move(*opened);
    if (config.store.rfind("memory://", 0) == 0) {
      // A second open would be a different, empty memory store: share this one (it locks).
      std::shared_ptr<store> shared(std::move(writer_store));
      query_store = shared;
      writer_store = nullptr;
      m.shared_memory_store = shared;
    } else {
      auto q = open_store(config.store);
      if (!q) {
        throw engine_error("cannot open store '" + config.store + "': " + q.error().message);
      }
      query_store = std::move(*q);
    }
  }
  if (query_store) {
    m.queries = std::make_unique<detail::query_store>(std::move(query_store));
  }
  // An idle worker must block, not poll: CAF's relaxed phase waits on a condition variable with
  // this timeout before it looks for work to steal, so a long one makes idle threads sleep.
  m.caf_config.set("work-stealing.relaxed-sleep-duration", caf::timespan{std::chrono::seconds(10)});
  if (!config.trace_file.empty()) {
    try {
      m.trace = std::make_shared<trace::tracer>(config.trace_file);
    } catch (const std::exception& e) {
      throw engine_error(e.what());
    }
  }
  m.system = std::make_unique<caf::actor_system>(m.caf_config);
  for (int i = 0; i < std::max(1, config.io_threads); ++i) {
    m.io_threads.emplace_back([&m] { m.io.run(); });
  }
  m.blocking = std::make_unique<boost::asio::thread_pool>(std::max(1, config.blocking_threads));
  m.plans = std::make_unique<plan_registry>(config.limits, config.dynamic_plans);
  m.log = std::make_unique<memory_log>(config.memory_log_runs);
  auto svc = std::make_shared<run_services>();
  svc->system = m.system.get();
  svc->io = &m.io;
  svc->blocking = m.blocking.get();
  plan_registry* plans = m.plans.get();
  svc->tasks = [plans] { return plans->tasks(); };
  svc->tasks_for = [plans](const plan_ptr& p) { return plans->tasks_for(p); };
  svc->find_workflow = [plans](std::string_view n, std::string_view v) {
    return plans->find(n, v);
  };
  run_ids* ids = &m.ids;
  svc->new_run_id = [ids] { return ids->next(); };
  m.outputs = std::make_unique<output_cache>(config.cache_entries, m.queries.get());
  output_cache* outputs = m.outputs.get();
  svc->cache_lookup = [outputs](const std::string& key) { return outputs->find(key); };
  if (outputs->has_store()) {
    svc->cache_load = [outputs](const std::string& key) { return outputs->load(key); };
  }
  svc->cache_remember = [outputs](const std::string& key, const json_ptr& output) {
    outputs->remember(key, output);
  };
  m.specs = std::make_unique<spec_cache>(config.dynamic_plans, m.queries.get(), *m.plans);
  spec_cache* specs = m.specs.get();
  svc->compile_dynamic = [plans](const json::value& doc) { return plans->compile_dynamic(doc); };
  svc->spec_lookup = [specs](const std::string& key) { return specs->lookup(key); };
  svc->spec_remember = [specs](const std::string& key, const plan_ptr& p) {
    specs->remember(key, p);
  };
  detail::query_store* queries = m.queries.get();
  svc->prior_child = [queries](const std::string& run, const std::string& node,
                               const plan& child) -> std::optional<resume_point> {
    if (!queries) {
      return std::nullopt;
    }
    return prior_child(*queries, run, node, child);
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
  if (config.mode != persistence_mode::memory) {
    writer_config wc = config.writer;
    wc.mode = config.mode;
    std::unique_ptr<store> ws =
        m.shared_memory_store ? std::unique_ptr<store>(new shared_store(m.shared_memory_store))
                              : std::move(writer_store);
    m.writer = spawn_writer(*m.system, std::move(ws), wc, m.metrics, m.trace.get());
    svc->writer = m.writer;
  }
  svc->trace = m.trace;
  m.services_mut = svc;
  m.services = std::move(svc);
}

engine::~engine() {
  shutdown();
}

bool engine::register_task(task_def def) {
  return impl_->plans->add_task(std::move(def));
}

std::shared_ptr<const task_registry> engine::tasks() const {
  return impl_->plans->tasks();
}

expected<plan_ptr, validation_errors> engine::register_workflow(std::string_view json_text) {
  return impl_->stored(impl_->plans->register_workflow(json_text));
}

expected<plan_ptr, validation_errors> engine::register_workflow(const json::value& document) {
  return impl_->stored(impl_->plans->register_workflow(document));
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
  return impl_->plans->find(name, version);
}

expected<run_handle, validation_errors> engine::start(std::string_view workflow_name,
                                                      json::object inputs, start_options options) {
  plan_ptr p = impl_->plans->find(workflow_name, {});
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
  memory_log* log = m.config.mode == persistence_mode::memory ? m.log.get() : nullptr;
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
  return m.log->list(q);
}

expected<std::optional<run_row>, store_error> engine::get_run(std::string_view run_id) const {
  auto& m = *impl_;
  if (m.queries) {
    return m.queries->with([&](store& s) { return s.get_run(run_id); });
  }
  return m.log->get(run_id);
}

expected<std::vector<node_row>, store_error> engine::node_rows(std::string_view run_id) const {
  auto& m = *impl_;
  if (m.queries) {
    return m.queries->with([&](store& s) { return s.node_rows(run_id); });
  }
  return m.log->node_rows(run_id);
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
  auto stored = load_run(*m.queries, *m.plans, run_id);
  if (!stored) {
    return make_unexpected(std::move(stored.error()));
  }
  const run_row& run = stored->run;
  if (run.status == run_status::succeeded) {
    return make_unexpected(one_error("", "run '" + std::string(run_id) + "' already succeeded"));
  }
  auto p = plan_to_resume(
      *stored, *m.plans, [this](std::string_view document) { return register_workflow(document); });
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
  return impl_->plans->dynamic_compiles();
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
    self->request(m.writer, caf::timespan{std::max(deadline, m.config.drain_deadline)},
                  drain_atom::value)
        .receive([&](caf::ok_atom) { drained = true; }, [](caf::error&) {});
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
