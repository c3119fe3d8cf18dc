#include "runtime/resume.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "actors/run_actor.hpp"
#include "runtime/detail/errors.hpp"
#include "runtime/ownership.hpp"

namespace troupe {

using detail::one_error;

expected<stored_run, validation_errors> load_run(detail::query_store& store,
                                                 const plan_registry& plans,
                                                 std::string_view run_id) {
  stored_run out;
  std::string error = store.with([&](troupe::store& s) -> std::string {
    auto r = s.get_run(run_id);
    if (!r) {
      return "cannot read run '" + std::string(run_id) + "': " + r.error().message;
    }
    if (!*r) {
      return "no run '" + std::string(run_id) + "' in " + s.describe();
    }
    out.run = std::move(**r);
    auto n = s.node_rows(run_id);
    if (!n) {
      return "cannot read the nodes of run '" + std::string(run_id) + "': " + n.error().message;
    }
    out.nodes = std::move(*n);
    if (!plans.find(out.run.workflow, out.run.version)) {
      auto w = s.get_workflow(out.run.workflow, out.run.version);
      if (w && *w) {
        out.workflow = std::move(**w);
      }
    }
    return {};
  });
  if (!error.empty()) {
    return make_unexpected(one_error("", std::move(error)));
  }
  return out;
}

expected<plan_ptr, validation_errors> plan_to_resume(
    const stored_run& r, const plan_registry& plans,
    const std::function<expected<plan_ptr, validation_errors>(std::string_view document)>&
        register_document) {
  if (plan_ptr p = plans.find(r.run.workflow, r.run.version)) {
    return p;
  }
  if (r.workflow) {
    return register_document(r.workflow->document);
  }
  return make_unexpected(one_error("", "workflow '" + r.run.workflow + "' version '" +
                                           r.run.version + "' is neither registered nor stored"));
}

resume_point resume_point_of(const plan& p, std::string run_id, const std::vector<node_row>& rows,
                             std::int64_t now_us) {
  resume_point out;
  out.run_id = std::move(run_id);
  std::map<std::size_t, int> attempts;
  std::set<std::size_t> done_nodes;
  for (const auto& r : rows) {
    const node_plan* np = p.find_node(r.node_id);
    if (np && r.item == -1 && r.status == node_status::succeeded) {
      done_nodes.insert(np->index);
    }
  }
  for (const auto& r : rows) {
    const node_plan* np = p.find_node(r.node_id);
    if (!np) {
      continue;
    }
    if (r.item == -1 && r.status == node_status::succeeded) {
      out.restored.emplace_back(np->index, r.output);
    }
    if (np->for_each && r.item >= 0 && r.status == node_status::succeeded &&
        !done_nodes.count(np->index)) {
      out.restored_items.emplace_back(np->index, r.item, r.output);
    }
    if (r.item == -1 || np->for_each) {
      attempts[np->index] = std::max(attempts[np->index], r.attempt);
    }
    out.events_after = std::max({out.events_after, r.started_seq, r.finished_seq});
    if (r.attempt > 0 && (r.status == node_status::running || r.status == node_status::pending)) {
      // The process running this attempt died with it: it may or may not have had its effect.
      node_row closed = r;
      closed.status = node_status::interrupted;
      closed.finished_at = now_us;
      closed.error = "interrupted: the engine running it stopped before it finished";
      out.interrupted.push_back(std::move(closed));
    }
  }
  out.prior_attempts.assign(attempts.begin(), attempts.end());
  return out;
}

std::optional<resume_point> prior_child(detail::query_store& store, const std::string& parent_run,
                                        const std::string& parent_node, const plan& child,
                                        const std::string& me, const lease_terms& terms) {
  auto found = store.with([&](troupe::store& s) -> std::optional<run_row> {
    run_query q;
    q.parent_run_id = parent_run;
    q.limit = 0;
    auto runs = s.list_runs(q);
    if (!runs) {
      return std::nullopt;  // a fresh child is always correct, only slower
    }
    for (auto& r : *runs) {  // newest first
      if (r.parent_node_id == parent_node && r.plan_hash == child.hash) {
        return std::move(r);
      }
    }
    return std::nullopt;
  });
  if (!found || found->status == run_status::succeeded) {
    // A child that succeeded is continued too: its nodes are all restored, nothing runs.
    if (!found) {
      return std::nullopt;
    }
  }
  std::int64_t epoch = 0;
  if (found->status != run_status::succeeded) {
    auto claim = claim_for_resume(store, *found, me, terms);
    if (!claim) {
      return std::nullopt;
    }
    epoch = claim->epoch;
  }
  auto rows = store.with([&](troupe::store& s) { return s.node_rows(found->run_id); });
  if (!rows) {
    return std::nullopt;
  }
  resume_point out = resume_point_of(child, found->run_id, *rows, wall_now_us());
  out.epoch = epoch;
  return out;
}

expected<std::vector<run_row>, validation_errors> unfinished_top_level_runs(
    detail::query_store& store) {
  auto r = store.with([](troupe::store& s) { return s.unfinished_runs(); });
  if (!r) {
    return make_unexpected(one_error("", "cannot list unfinished runs: " + r.error().message));
  }
  std::vector<run_row> out;
  for (auto& run : *r) {
    if (run.parent_run_id.empty()) {
      out.push_back(std::move(run));
    }
  }
  return out;
}

}  // namespace troupe
