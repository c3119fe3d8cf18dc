#include "runtime/plans.hpp"

#include <string>

#include "runtime/detail/errors.hpp"

namespace troupe {

namespace {

template <class Document>
expected<plan_ptr, validation_errors> compile_against(const Document& doc,
                                                      const task_registry& tasks,
                                                      const workflow_limits& limits,
                                                      std::string source_hash = {}) {
  compile_options o;
  o.tasks = &tasks;
  o.limits = limits;
  o.source_hash = std::move(source_hash);
  return compile_workflow(doc, o);
}

}  // namespace

plan_registry::plan_registry(workflow_limits limits, std::size_t dynamic_plans)
    : limits_(std::move(limits)),
      tasks_(std::make_shared<const task_registry>(task_registry::with_builtins())),
      other_tables_(dynamic_plans),
      dynamic_plans_(dynamic_plans) {}

// ---- tasks ---------------------------------------------------------------------------------

bool plan_registry::add_task(task_def def) {
  std::lock_guard<std::mutex> lock(tasks_mutex_);
  auto next = std::make_shared<task_registry>(*tasks_);
  if (!next->add(std::move(def))) {
    return false;
  }
  tasks_ = std::move(next);
  ++generation_;
  return true;
}

std::shared_ptr<const task_registry> plan_registry::tasks() const {
  std::lock_guard<std::mutex> lock(tasks_mutex_);
  return tasks_;
}

plan_registry::snapshot plan_registry::current() const {
  std::lock_guard<std::mutex> lock(tasks_mutex_);
  return {tasks_, generation_};
}

// ---- registered workflows ------------------------------------------------------------------

expected<plan_ptr, validation_errors> plan_registry::register_workflow(std::string_view json_text) {
  auto tasks = this->tasks();
  return add(compile_against(json_text, *tasks, limits_));
}

expected<plan_ptr, validation_errors> plan_registry::register_workflow(
    const json::value& document) {
  auto tasks = this->tasks();
  return add(compile_against(document, *tasks, limits_));
}

expected<plan_ptr, validation_errors> plan_registry::add(
    expected<plan_ptr, validation_errors> compiled) {
  if (!compiled) {
    return compiled;
  }
  std::lock_guard<std::mutex> lock(workflows_mutex_);
  const plan_ptr& shared = plans_by_hash_.emplace((*compiled)->hash, *compiled).first->second;
  workflows_[shared->name][shared->version] = shared;
  latest_version_[shared->name] = shared->version;
  return shared;
}

plan_ptr plan_registry::find(std::string_view name, std::string_view version) const {
  std::lock_guard<std::mutex> lock(workflows_mutex_);
  auto w = workflows_.find(name);
  if (w == workflows_.end()) {
    return nullptr;
  }
  if (version.empty()) {
    auto l = latest_version_.find(name);
    version = l->second;
  }
  auto v = w->second.find(std::string(version));
  return v == w->second.end() ? nullptr : v->second;
}

std::vector<plan_registry::registered_entry> plan_registry::registered() const {
  std::lock_guard<std::mutex> lock(workflows_mutex_);
  std::vector<registered_entry> out;
  for (const auto& [name, versions] : workflows_) {
    auto l = latest_version_.find(name);
    for (const auto& [version, p] : versions) {
      out.push_back({p, l != latest_version_.end() && l->second == version});
    }
  }
  return out;
}

// ---- task tables ---------------------------------------------------------------------------

namespace {

task_table resolve(const plan& p, const task_registry& tasks) {
  auto v = std::make_shared<std::vector<std::shared_ptr<const task_def>>>();
  v->reserve(p.nodes.size());
  for (const auto& n : p.nodes) {
    v->push_back(tasks.find_shared(n.task));
  }
  return v;
}

}  // namespace

task_table plan_registry::tasks_for(const plan_ptr& p) {
  snapshot now = current();
  if (p->hash.empty()) {
    return resolve(*p, *now.tasks);
  }
  if (is_registered(p->hash)) {
    std::lock_guard<std::mutex> lock(tables_mutex_);
    auto& [generation, table] = registered_tables_[p->hash];
    if (table && generation == now.generation) {
      return table;
    }
    task_table fresh = resolve(*p, *now.tasks);
    // A caller that took its snapshot before a concurrent add_task must not replace the newer
    // table: it gets its own.
    if (!table || generation < now.generation) {
      generation = now.generation;
      table = fresh;
    }
    return fresh;
  }
  std::string key = p->hash + "/" + std::to_string(now.generation);
  std::lock_guard<std::mutex> lock(tables_mutex_);
  if (auto t = other_tables_.find(key)) {
    return t;
  }
  task_table fresh = resolve(*p, *now.tasks);
  other_tables_.put(key, fresh);
  return fresh;
}

bool plan_registry::is_registered(const std::string& hash) const {
  std::lock_guard<std::mutex> lock(workflows_mutex_);
  return plans_by_hash_.count(hash) != 0;
}

std::size_t plan_registry::registered_plans() const {
  std::lock_guard<std::mutex> lock(workflows_mutex_);
  return plans_by_hash_.size();
}

std::size_t plan_registry::task_tables() const {
  std::lock_guard<std::mutex> lock(tables_mutex_);
  return registered_tables_.size() + other_tables_.size();
}

// ---- generated workflows -------------------------------------------------------------------

expected<plan_ptr, validation_errors> plan_registry::compile_dynamic(const json::value& generated) {
  json::value parsed;
  const json::value* doc = &generated;
  if (generated.is_string()) {
    // A generator that prints its workflow (a shell script without `output: json`).
    auto r = parse_json(generated.as_string(), limits_.json);
    if (!r) {
      return make_unexpected(detail::one_error(
          "", "the task's output is a string that is not JSON: " + r.error().message));
    }
    parsed = std::move(*r);
    doc = &parsed;
  }
  std::string hash = canonical_hash(*doc);
  if (auto p = dynamic_plans_.find(hash)) {
    return p;
  }
  auto registry = tasks();
  auto p = compile_against(*doc, *registry, limits_, hash);
  ++dynamic_compiles_;
  if (p) {
    dynamic_plans_.put(hash, *p);
  }
  return p;
}

}  // namespace troupe
