#pragma once

// Builtin tasks that wait on I/O (shell, http) run as Asio operations: no thread blocks on them.
// This header stays free of Asio includes so that actors using operations compile fast.

#include <memory>

#include "workflow/json.hpp"
#include "workflow/task.hpp"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace troupe {

/// An operation in flight. `done` (given when it started) is called exactly once, from an I/O
/// thread: with the result, or after cancel() with a failure saying "cancelled".
class operation {
 public:
  virtual ~operation() = default;
  /// Stops the operation (kills a process and its children, closes a socket). Thread-safe,
  /// idempotent, harmless after completion.
  virtual void cancel() = 0;
};
using operation_ptr = std::shared_ptr<operation>;

/// `shell`: `{ "argv": [..] }` or `{ "command": s }` (through /bin/sh -c), optional `env`
/// (object of strings, added to the environment), `cwd`, `stdin` (string), `output`
/// ("text" | "json"). Output `{ "exit_code", "stdout", "stderr" }`, or stdout parsed as JSON with
/// `output: "json"`. A non-zero exit fails with stderr in the error. Bad input fails at once.
/// The process and its process group are killed when troupe dies, even by SIGKILL.
///
/// With `call` (a task attempt in a run), the child's environment also has
/// TROUPE_EXECUTION_KEY (call.execution_key()), TROUPE_RUN_ID, TROUPE_NODE_ID, TROUPE_ATTEMPT
/// and, for an item of a for_each node only, TROUPE_ITEM (the item's index). They replace
/// inherited variables and `env` entries of the same names; an inherited TROUPE_ITEM is removed
/// outside for_each. Without `call` (tools, tests) the environment is left as it is.
operation_ptr start_shell(boost::asio::io_context& io, const json::value& input,
                          const task_call& call, completion done);
operation_ptr start_shell(boost::asio::io_context& io, const json::value& input, completion done);

/// `http`: `{ "method", "url", "headers", "body" }` → `{ "status", "headers", "body" }` (body
/// parsed when JSON). A status >= 400 fails the attempt. Plain http:// only.
/// `policy` (null: none) limits where it may connect (task_policy::private_addresses,
/// allowed_hosts): the host's addresses are checked after resolution, and only allowed ones are
/// tried.
operation_ptr start_http(boost::asio::io_context& io, const json::value& input,
                         std::shared_ptr<const task_policy> policy, completion done);

}  // namespace troupe
