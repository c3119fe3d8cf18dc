#include "runtime/engine.hpp"

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
#include <caf/send.hpp>

#include "actors/run_actor.hpp"
#include "messages/messages.hpp"

namespace troupe {

// ---- run_handle --------------------------------------------------------------------------

// Shared by the handle's copies and the run actor (as its sink). The result is written once,
// by the run actor; waiters block on the condition variable, so nothing polls.
struct run_handle::shared final : run_sink {
  std::string id;
  std::function<void(const run_event&)> on_event;
  std::function<void()> on_end;  // engine bookkeeping, called after waiters are released

  mutable std::mutex mutex;
  mutable std::condition_variable cv;
  std::optional<run_result> result;
  std::vector<std::function<void(const run_result&)>> callbacks;
  caf::actor actor;

  bool wants_events() const override { return static_cast<bool>(on_event); }
  void event(const run_event& e) override { on_event(e); }
  void finished(const run_result& r) override {
    std::vector<std::function<void(const run_result&)>> cbs;
    {
      std::lock_guard<std::mutex> lock(mutex);
      result = r;
      cbs.swap(callbacks);
      actor = caf::actor{};
    }
    cv.notify_all();
    for (auto& cb : cbs) {
      cb(r);
    }
    if (on_end) {
      on_end();
    }
  }
};

run_handle::run_handle(std::shared_ptr<shared> s) : s_(std::move(s)) {}

const std::string& run_handle::id() const { return s_->id; }

std::optional<run_result> run_handle::wait_for(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(s_->mutex);
  if (!s_->cv.wait_for(lock, timeout, [&] { return s_->result.has_value(); })) {
    return std::nullopt;
  }
  return s_->result;
}

run_result run_handle::wait() const {
  std::unique_lock<std::mutex> lock(s_->mutex);
  s_->cv.wait(lock, [&] { return s_->result.has_value(); });
  return *s_->result;
}

std::optional<run_result> run_handle::try_result() const {
  std::lock_guard<std::mutex> lock(s_->mutex);
  return s_->result;
}

void run_handle::on_finished(std::function<void(const run_result&)> callback) const {
  std::unique_lock<std::mutex> lock(s_->mutex);
  if (s_->result) {
    run_result r = *s_->result;
    lock.unlock();
    callback(r);
    return;
  }
  s_->callbacks.push_back(std::move(callback));
}

void run_handle::cancel() const {
  caf::actor a;
  {
    std::lock_guard<std::mutex> lock(s_->mutex);
    a = s_->actor;
  }
  if (a) {
    caf::anon_send(a, cancel_atom::value);
  }
}

// ---- engine ------------------------------------------------------------------------------

struct engine::impl {
  engine_config config;
  caf::actor_system_config caf_config;
  std::unique_ptr<caf::actor_system> system;
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> io_guard{
      io.get_executor()};
  std::vector<std::thread> io_threads;
  std::unique_ptr<boost::asio::thread_pool> blocking;

  // Copy-on-write: a run takes a snapshot; registering replaces the pointer.
  mutable std::mutex tasks_mutex;
  std::shared_ptr<const task_registry> tasks;

  mutable std::mutex workflows_mutex;
  std::map<std::string, std::map<std::string, plan_ptr>, std::less<>> workflows;
  std::map<std::string, std::string, std::less<>> latest_version;
  std::unordered_map<std::string, plan_ptr> plans_by_hash;  // one shared plan per document

  mutable std::mutex runs_mutex;
  std::condition_variable runs_cv;
  std::unordered_map<std::string, std::shared_ptr<run_handle::shared>> live;
  std::atomic<bool> accepting{true};
  bool stopped = false;

  std::string id_prefix;
  std::atomic<std::uint64_t> next_id{1};
  services_ptr services;

  std::shared_ptr<const task_registry> task_snapshot() const {
    std::lock_guard<std::mutex> lock(tasks_mutex);
    return tasks;
  }

  plan_ptr find(std::string_view name, std::string_view version) const {
    std::lock_guard<std::mutex> lock(workflows_mutex);
    auto w = workflows.find(name);
    if (w == workflows.end()) {
      return nullptr;
    }
    if (version.empty()) {
      auto l = latest_version.find(name);
      version = l->second;
    }
    auto v = w->second.find(std::string(version));
    return v == w->second.end() ? nullptr : v->second;
  }

  std::string new_run_id() {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%s-%06llu", id_prefix.c_str(),
                  static_cast<unsigned long long>(next_id.fetch_add(1)));
    return buf;
  }

  expected<plan_ptr, validation_errors> add_workflow(expected<plan_ptr, validation_errors> p) {
    if (!p) {
      return p;
    }
    std::lock_guard<std::mutex> lock(workflows_mutex);
    auto [it, inserted] = plans_by_hash.emplace((*p)->hash, *p);
    plan_ptr shared = it->second;
    workflows[shared->name][shared->version] = shared;
    latest_version[shared->name] = shared->version;
    return shared;
  }
};

namespace {
validation_errors one_error(std::string pointer, std::string message) {
  return validation_errors{validation_error{std::move(pointer), std::move(message)}};
}
}  // namespace

engine::engine(engine_config config) : impl_(std::make_unique<impl>()) {
  auto& m = *impl_;
  m.config = config;
  int threads = config.threads > 0 ? config.threads
                                   : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  m.caf_config.set("scheduler.max-threads", threads);
  // An idle worker must block, not poll: CAF's relaxed phase waits on a condition variable with
  // this timeout before it looks for work to steal, so a long one makes idle threads sleep.
  m.caf_config.set("work-stealing.relaxed-sleep-duration", caf::timespan{std::chrono::seconds(10)});
  m.system = std::make_unique<caf::actor_system>(m.caf_config);
  for (int i = 0; i < std::max(1, config.io_threads); ++i) {
    m.io_threads.emplace_back([&m] { m.io.run(); });
  }
  m.blocking = std::make_unique<boost::asio::thread_pool>(std::max(1, config.blocking_threads));
  m.tasks = std::make_shared<const task_registry>(task_registry::with_builtins());
  std::random_device rd;
  char buf[24];
  std::snprintf(buf, sizeof buf, "%08x", rd());
  m.id_prefix = buf;
  auto svc = std::make_shared<run_services>();
  svc->system = m.system.get();
  svc->io = &m.io;
  svc->blocking = m.blocking.get();
  impl* self = impl_.get();
  svc->tasks = [self] { return self->task_snapshot(); };
  svc->find_workflow = [self](std::string_view n, std::string_view v) { return self->find(n, v); };
  svc->new_run_id = [self] { return self->new_run_id(); };
  svc->max_workflow_depth = config.max_workflow_depth;
  svc->max_in_flight = config.max_in_flight;
  m.services = std::move(svc);
}

engine::~engine() { shutdown(); }

bool engine::register_task(task_def def) {
  std::lock_guard<std::mutex> lock(impl_->tasks_mutex);
  auto next = std::make_shared<task_registry>(*impl_->tasks);
  if (!next->add(std::move(def))) {
    return false;
  }
  impl_->tasks = std::move(next);
  return true;
}

std::shared_ptr<const task_registry> engine::tasks() const { return impl_->task_snapshot(); }

expected<plan_ptr, validation_errors> engine::register_workflow(std::string_view json_text) {
  auto tasks = impl_->task_snapshot();
  compile_options o;
  o.tasks = tasks.get();
  o.limits = impl_->config.limits;
  return impl_->add_workflow(compile_workflow(json_text, o));
}

expected<plan_ptr, validation_errors> engine::register_workflow(const json::value& document) {
  auto tasks = impl_->task_snapshot();
  compile_options o;
  o.tasks = tasks.get();
  o.limits = impl_->config.limits;
  return impl_->add_workflow(compile_workflow(document, o));
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
  return impl_->find(name, version);
}

expected<run_handle, validation_errors> engine::start(std::string_view workflow_name,
                                                      json::object inputs, start_options options) {
  plan_ptr p = impl_->find(workflow_name, {});
  if (!p) {
    return make_unexpected(
        one_error("", "no registered workflow '" + std::string(workflow_name) + "'"));
  }
  return start(p, std::move(inputs), std::move(options));
}

expected<run_handle, validation_errors> engine::start(const plan_ptr& p, json::object inputs,
                                                      start_options options) {
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
  auto sh = std::make_shared<run_handle::shared>();
  sh->id = options.run_id.empty() ? m.new_run_id() : std::move(options.run_id);
  sh->on_event = std::move(options.on_event);
  impl* self = impl_.get();
  std::string id = sh->id;
  sh->on_end = [self, id] {
    {
      std::lock_guard<std::mutex> lock(self->runs_mutex);
      self->live.erase(id);
    }
    self->runs_cv.notify_all();
  };
  {
    std::lock_guard<std::mutex> lock(m.runs_mutex);
    if (!m.live.emplace(sh->id, sh).second) {
      return make_unexpected(one_error("", "a run with id '" + sh->id + "' is already running"));
    }
  }
  run_spawn_args a;
  a.plan = p;
  a.inputs = std::move(*bound);
  a.options.run_id = sh->id;
  a.options.max_concurrency = m.config.max_in_flight;
  a.sink = sh;
  // The lock orders this store before finished() clears it, should the run end at once.
  std::unique_lock<std::mutex> lock(sh->mutex);
  auto actor = spawn_run(m.services, std::move(a), caf::actor{});
  if (!sh->result) {
    sh->actor = actor;
  }
  lock.unlock();
  return run_handle(sh);
}

std::size_t engine::active_runs() const {
  std::lock_guard<std::mutex> lock(impl_->runs_mutex);
  return impl_->live.size();
}

void engine::shutdown(std::chrono::milliseconds deadline) {
  auto& m = *impl_;
  if (m.stopped) {
    return;
  }
  m.accepting = false;
  {
    std::unique_lock<std::mutex> lock(m.runs_mutex);
    if (!m.runs_cv.wait_for(lock, deadline, [&] { return m.live.empty(); })) {
      std::vector<std::shared_ptr<run_handle::shared>> runs;
      for (auto& [id, sh] : m.live) {
        runs.push_back(sh);
      }
      lock.unlock();
      for (auto& sh : runs) {
        run_handle(sh).cancel();
      }
      lock.lock();
      m.runs_cv.wait(lock, [&] { return m.live.empty(); });
    }
  }
  m.stopped = true;
  m.blocking->join();
  m.io_guard.reset();
  m.io.stop();
  for (auto& t : m.io_threads) {
    t.join();
  }
  m.system.reset();  // waits for the last actors (cancelled node actors) to quit
}

}  // namespace troupe
