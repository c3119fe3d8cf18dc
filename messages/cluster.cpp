#include "messages/cluster.hpp"

#include <boost/json/parse.hpp>
#include <caf/actor_system_config.hpp>

#include "workflow/json.hpp"

#ifndef TROUPE_VERSION
#error "TROUPE_VERSION must be defined by the build (messages/CMakeLists.txt)"
#endif

namespace troupe::wire {

std::string_view version() {
  return TROUPE_VERSION;
}

std::string app_identifier() {
  return "troupe/" + std::string(version()) + "/p" + std::to_string(protocol);
}

std::string to_wire(const json::value& v) {
  return to_json_text(v);
}

expected<json::value, std::string> from_wire(std::string_view text) {
  // The sender built this value itself (an input it rendered, an output a task returned): the
  // depth limit is the store's, not the one for untrusted documents.
  json::parse_options opts;
  opts.max_depth = 4096;
  json::error_code ec;
  json::value v = json::parse(text, ec, json::storage_ptr(), opts);
  if (ec) {
    return make_unexpected("not valid JSON: " + ec.message());
  }
  return v;
}

void put_policy(attempt_order& order, const task_policy* policy) {
  order.has_policy = policy != nullptr;
  if (policy == nullptr) {
    return;
  }
  order.all_tasks = policy->all_tasks;
  order.private_addresses = policy->private_addresses;
  order.allowed_tasks.assign(policy->tasks.begin(), policy->tasks.end());
  order.allowed_hosts = policy->allowed_hosts;
}

policy_ptr policy_of(const attempt_order& order) {
  if (!order.has_policy) {
    return nullptr;
  }
  auto p = std::make_shared<task_policy>();
  p->all_tasks = order.all_tasks;
  p->private_addresses = order.private_addresses;
  p->tasks.insert(order.allowed_tasks.begin(), order.allowed_tasks.end());
  p->allowed_hosts = order.allowed_hosts;
  return p;
}

void register_cluster_types(caf::actor_system_config& cfg) {
  cfg.add_message_types<caf::id_block::troupe_cluster>();
}

}  // namespace troupe::wire
