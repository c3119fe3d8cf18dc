#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "workflow/json.hpp"

namespace troupe {

/// How a task is executed by the runtime:
/// - quick: pure and fast; the run actor calls it inline, no actor hop.
/// - blocking: may block its thread; runs on the engine's blocking pool.
/// - async: starts work and calls its completion callback later from any thread.
/// - builtin: implemented by the actor layer itself (sleep, shell, http, workflow); the model only
///   knows the name so that workflows using it validate.
enum class task_kind { quick, blocking, async, builtin };
std::string_view to_string(task_kind k);

/// The outcome of one attempt of a task.
struct task_result {
  bool ok = true;
  json::value output;  // the task's output when ok
  std::string error;   // why it failed when !ok

  static task_result success(json::value output) { return {true, std::move(output), {}}; }
  static task_result failure(std::string error) { return {false, nullptr, std::move(error)}; }
};

/// What a run from an untrusted source may do (troupe serve applies one to the runs of workflows
/// registered through its API). Immutable and shared; a run's `workflow` and `dynamic` child runs
/// inherit it, and a child whose workflow names a task outside it fails before it starts. A run
/// without a policy is unrestricted.
struct task_policy {
  /// The tasks runs may name, unless `all_tasks`.
  bool all_tasks = false;
  std::set<std::string, std::less<>> tasks;
  /// `http` tasks: connect to loopback, link-local, private, multicast or otherwise non-public
  /// addresses only when `private_addresses` is set, or the URL's host (as written, or the
  /// address it resolves to) is in `allowed_hosts`.
  bool private_addresses = false;
  std::vector<std::string> allowed_hosts;

  bool allows(std::string_view task) const { return all_tasks || tasks.count(task) > 0; }
};
using policy_ptr = std::shared_ptr<const task_policy>;

/// What a task attempt is told about itself. The views are valid during the call only: an async
/// task that needs them later keeps copies (execution_key() returns one).
struct task_call {
  std::string_view run_id;
  std::string_view node_id;
  std::int64_t item_index = -1;  // -1 outside for_each
  int attempt = 1;
  /// The run's limits (null: none); builtin tasks that reach out (http) honour it.
  const task_policy* policy = nullptr;

  /// "<run_id>/<node_id>", or "<run_id>/<node_id>/<item_index>" for an item of a for_each node:
  /// the same on every attempt of this task in this run, and after a resume (which keeps the run
  /// id), so a task can use it to make its side effects idempotent (an attempt that was in
  /// flight when troupe died may run again). Unambiguous: run and node ids contain no '/'.
  std::string execution_key() const;
};

using quick_fn = std::function<task_result(const json::value& input, const task_call& call)>;
using blocking_fn = quick_fn;
using completion = std::function<void(task_result)>;
using async_fn =
    std::function<void(const json::value& input, const task_call& call, completion done)>;

struct task_def {
  std::string name;
  task_kind kind = task_kind::quick;
  quick_fn run;         // quick and blocking tasks
  async_fn start;       // async tasks
  std::string summary;  // one line for `troupe tasks` and docs
};

/// Name -> task. Registration happens before runs start; lookups afterwards are read-only and
/// thread-safe.
class task_registry {
 public:
  /// A registry holding the model's own tasks (noop, echo, fail) and the names of the builtins
  /// the actor layer implements (sleep, shell, http, workflow).
  static task_registry with_builtins();

  /// Adds or replaces a task. Returns false (and changes nothing) when the definition is unusable:
  /// an empty name, or no function for a quick/blocking/async task.
  bool add(task_def def);
  const task_def* find(std::string_view name) const;
  /// The same definition, shared: a run keeps it alive even if the task is replaced later.
  std::shared_ptr<const task_def> find_shared(std::string_view name) const;
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  std::vector<std::string> names() const;

 private:
  std::unordered_map<std::string, std::shared_ptr<const task_def>> tasks_;
};

}  // namespace troupe
