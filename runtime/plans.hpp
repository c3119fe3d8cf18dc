#pragma once

// The engine's plans: the task registry runs resolve against, registered workflows, generated
// (`dynamic`) workflows, and each plan's tasks resolved once. No CAF here.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/detail/lru_cache.hpp"
#include "workflow/expected.hpp"
#include "workflow/json.hpp"
#include "workflow/plan.hpp"
#include "workflow/task.hpp"

namespace troupe {

/// Node index -> its task definition (null: unknown task), resolved once per plan and registry.
/// The same type as actors/run_actor.hpp's task_table, declared again so that this header needs
/// no CAF; the two must name the same type (a translation unit that sees both fails to compile
/// otherwise).
using task_table = std::shared_ptr<const std::vector<std::shared_ptr<const task_def>>>;

/// Tasks, registered and generated workflows, and task tables. Thread-safe: called from the
/// embedder's threads (registration, start), run actors (tasks_for, find) and the blocking pool
/// (compile_dynamic). Never holds a lock while calling out of this class.
class plan_registry {
 public:
  /// `limits` apply to every plan this registry compiles; `dynamic_plans` is how many compiled
  /// generated plans are kept (least recently used dropped first).
  plan_registry(workflow_limits limits, std::size_t dynamic_plans);

  // -- tasks ----------------------------------------------------------------------------------

  /// Adds or replaces a task for runs started from now on. False (nothing changes) when the
  /// definition is unusable.
  bool add_task(task_def def);
  /// The registry as of now: an immutable snapshot (copy-on-write; add_task replaces it).
  std::shared_ptr<const task_registry> tasks() const;

  // -- registered workflows -------------------------------------------------------------------

  /// Compiles a document against the current tasks and registers it under (name, version), now
  /// the latest version of that name. Equal documents (by canonical hash) share one plan: the
  /// first one registered. Registered plans live as long as the registry.
  expected<plan_ptr, validation_errors> register_workflow(std::string_view json_text);
  expected<plan_ptr, validation_errors> register_workflow(const json::value& document);
  /// A registered plan; empty version: the most recently registered version of `name`.
  plan_ptr find(std::string_view name, std::string_view version) const;
  /// Every registered (name, version), by name then version, with the latest version of each
  /// name flagged.
  struct registered_entry {
    plan_ptr plan;
    bool latest = false;
  };
  std::vector<registered_entry> registered() const;

  // -- task tables ----------------------------------------------------------------------------

  /// The plan's nodes resolved against the current registry. Runs of equal plans (by hash)
  /// share one table until a task is registered again. Memory is bounded: one table per
  /// registered plan (the newest registry's), and at most `dynamic_plans` for every other plan
  /// (generated ones, or compiled by the embedder), least recently used dropped first; a plan
  /// without a hash (built by hand) gets a fresh table per call.
  task_table tasks_for(const plan_ptr& p);

  // -- generated workflows --------------------------------------------------------------------

  /// Compiles a generated workflow (an object, or a string holding its JSON text) against the
  /// current tasks. Equal documents (by content hash) share one plan while it is kept. May take
  /// long for a big document: called on the blocking pool.
  expected<plan_ptr, validation_errors> compile_dynamic(const json::value& generated);
  /// Generated workflows really compiled so far (reuses not counted).
  std::size_t dynamic_compiles() const { return dynamic_compiles_.load(); }

  // -- what is held, for tests and metrics ----------------------------------------------------

  /// Registered plans: one per distinct document, kept for the registry's life.
  std::size_t registered_plans() const;
  /// Compiled generated plans kept by content hash (at most `dynamic_plans`).
  std::size_t generated_plans() const { return dynamic_plans_.size(); }
  /// Task tables kept (at most registered_plans() + `dynamic_plans`).
  std::size_t task_tables() const;

 private:
  expected<plan_ptr, validation_errors> add(expected<plan_ptr, validation_errors> compiled);

  const workflow_limits limits_;

  // A task table depends only on the plan's task names, which its document (so its hash) fixes,
  // and on the registry. A registry snapshot is named by its generation (add_task counts it up):
  // a table of an older generation is never looked up again, and no old registry or plan needs
  // to be held to keep a key unique.
  struct snapshot {
    std::shared_ptr<const task_registry> tasks;
    std::uint64_t generation = 0;
  };
  snapshot current() const;
  bool is_registered(const std::string& hash) const;

  mutable std::mutex tasks_mutex_;  // guards the two members below
  std::shared_ptr<const task_registry> tasks_;
  std::uint64_t generation_ = 0;

  mutable std::mutex workflows_mutex_;  // guards the three maps below
  std::map<std::string, std::map<std::string, plan_ptr>, std::less<>> workflows_;
  std::map<std::string, std::string, std::less<>> latest_version_;
  std::unordered_map<std::string, plan_ptr> plans_by_hash_;  // one shared plan per document

  // Held for every lookup-and-fill of a table, so that concurrent runs of a plan share one.
  mutable std::mutex tables_mutex_;
  // Registered plans by hash: the table of the newest generation seen (guarded by tables_mutex_).
  std::unordered_map<std::string, std::pair<std::uint64_t, task_table>> registered_tables_;
  // Every other plan, by "hash/generation"; bounded by `dynamic_plans`.
  detail::lru_cache<task_table> other_tables_;

  detail::lru_cache<plan_ptr> dynamic_plans_;  // by content hash
  std::atomic<std::size_t> dynamic_compiles_{0};
};

}  // namespace troupe
