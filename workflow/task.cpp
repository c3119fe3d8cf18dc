#include "workflow/task.hpp"

#include <algorithm>
#include <utility>

namespace troupe {

std::string_view to_string(task_kind k) {
  switch (k) {
    case task_kind::quick:
      return "quick";
    case task_kind::blocking:
      return "blocking";
    case task_kind::async:
      return "async";
    case task_kind::builtin:
      return "builtin";
  }
  return "unknown";
}

std::string task_call::execution_key() const {
  std::string key;
  key.reserve(run_id.size() + node_id.size() + 22);
  key.append(run_id).append(1, '/').append(node_id);
  if (item_index >= 0) {
    key.append(1, '/').append(std::to_string(item_index));
  }
  return key;
}

namespace {

task_result run_noop(const json::value&, const task_call&) {
  return task_result::success(nullptr);
}

task_result run_echo(const json::value& input, const task_call&) {
  return task_result::success(input);
}

task_result run_fail(const json::value& input, const task_call&) {
  if (const auto* obj = input.if_object()) {
    if (const auto* message = obj->if_contains("message")) {
      if (const auto* text = message->if_string()) {
        return task_result::failure(std::string(*text));
      }
    }
  }
  return task_result::failure("failed");
}

}  // namespace

task_registry task_registry::with_builtins() {
  task_registry r;
  r.add({"noop", task_kind::quick, run_noop, {}, "does nothing; output null"});
  r.add({"echo", task_kind::quick, run_echo, {}, "outputs its rendered input"});
  r.add({"fail", task_kind::quick, run_fail, {}, "always fails with `message`"});
  // Implemented by the actor layer; registered by name only so that workflows using them
  // validate against the model alone.
  r.add({"sleep", task_kind::builtin, {}, {}, "outputs null after `ms` milliseconds, on a timer"});
  r.add({"shell", task_kind::builtin, {}, {}, "runs a command; outputs exit_code, stdout, stderr"});
  r.add(
      {"http", task_kind::builtin, {}, {}, "sends an HTTP request; outputs status, headers, body"});
  r.add({"workflow", task_kind::builtin, {}, {}, "runs a registered workflow as a child run"});
  return r;
}

bool task_registry::add(task_def def) {
  if (def.name.empty()) {
    return false;
  }
  switch (def.kind) {
    case task_kind::quick:
    case task_kind::blocking:
      if (!def.run) {
        return false;
      }
      break;
    case task_kind::async:
      if (!def.start) {
        return false;
      }
      break;
    case task_kind::builtin:
      break;
  }
  auto name = def.name;
  tasks_.insert_or_assign(std::move(name), std::make_shared<const task_def>(std::move(def)));
  return true;
}

std::shared_ptr<const task_def> task_registry::find_shared(std::string_view name) const {
  const auto it = tasks_.find(std::string(name));
  return it == tasks_.end() ? nullptr : it->second;
}

const task_def* task_registry::find(std::string_view name) const {
  // The map is not transparent; names are short, so the key usually fits the SSO buffer.
  const auto it = tasks_.find(std::string(name));
  return it != tasks_.end() ? it->second.get() : nullptr;
}

std::vector<std::string> task_registry::names() const {
  std::vector<std::string> out;
  out.reserve(tasks_.size());
  for (const auto& entry : tasks_) {
    out.push_back(entry.first);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace troupe
