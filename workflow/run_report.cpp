#include "workflow/run_report.hpp"

#include <boost/json/value.hpp>

namespace troupe {

run_result make_report(const run_state& rs) {
  run_result r;
  const plan& p = rs.workflow();
  r.run_id = rs.run_id();
  r.workflow = p.name;
  r.status = rs.status();
  r.outputs = rs.status() == run_status::succeeded && rs.outputs() ? *rs.outputs() : nullptr;
  r.error = rs.error();
  if (rs.finished_us() > 0 || rs.finished()) {
    r.duration_ms = static_cast<double>(rs.finished_us() - rs.started_us()) / 1000.0;
  }
  r.nodes.reserve(p.nodes.size());
  for (std::size_t i = 0; i < p.nodes.size(); ++i) {
    const node_summary& s = rs.summary(i);
    node_report n;
    n.id = p.nodes[i].id;
    n.status = s.status;
    n.attempts = s.attempts;
    if (s.started_us >= 0 && s.finished_us >= s.started_us) {
      n.duration_ms = static_cast<double>(s.finished_us - s.started_us) / 1000.0;
    }
    n.error = s.error();
    n.cache = s.cache;
    n.items = s.items;
    if (p.nodes[i].dynamic_inputs) {
      n.dynamic = true;
      n.spec_cache = s.spec_cache;
      n.child_run = rs.child_run(i);
    }
    r.nodes.push_back(std::move(n));
  }
  return r;
}

run_event event_of(const run_state& rs, const node_record& rec) {
  run_event e;
  e.what = rec.status == node_status::running ? run_event::kind::node_started
                                              : run_event::kind::node_finished;
  e.run_id = rs.run_id();
  e.node_id = rs.workflow().nodes[rec.node].id;
  e.item = rec.item;
  e.attempt = rec.attempt;
  e.status = std::string(to_string(rec.status));
  e.error = rec.error;
  if (rec.status == node_status::running) {
    e.seq = rec.started_seq;
  } else {
    e.seq = rec.finished_seq;
    if (rec.started_seq > 0 && rec.finished_us >= rec.started_us) {
      e.duration_us = rec.finished_us - rec.started_us;
    }
    if (rec.status == node_status::succeeded) {
      e.output = rec.output;
    }
  }
  return e;
}

std::string_view to_string(run_event::kind k) {
  switch (k) {
    case run_event::kind::run_started:
      return "run_started";
    case run_event::kind::node_started:
      return "node_started";
    case run_event::kind::node_finished:
      return "node_finished";
    case run_event::kind::run_finished:
      return "run_finished";
  }
  return "unknown";
}

json::value to_json(const run_result& r) {
  json::object o;
  o["run_id"] = r.run_id;
  o["workflow"] = r.workflow;
  o["status"] = to_string(r.status);
  o["outputs"] = r.outputs;
  o["error"] = r.error.empty() ? json::value(nullptr) : json::value(r.error);
  o["duration_ms"] = r.duration_ms;
  if (!r.persistence_error.empty()) {
    o["persistence_error"] = r.persistence_error;
  }
  json::array nodes;
  nodes.reserve(r.nodes.size());
  for (const auto& n : r.nodes) {
    json::object j;
    j["id"] = n.id;
    j["status"] = to_string(n.status);
    j["attempts"] = n.attempts;
    j["duration_ms"] = n.duration_ms;
    j["error"] = n.error.empty() ? json::value(nullptr) : json::value(n.error);
    j["cache"] = to_string(n.cache);
    if (n.items >= 0) {
      j["items"] = n.items;
    }
    if (n.dynamic) {
      j["spec_cache"] = to_string(n.spec_cache);
      j["child_run"] = n.child_run.empty() ? json::value(nullptr) : json::value(n.child_run);
    }
    nodes.push_back(std::move(j));
  }
  o["nodes"] = std::move(nodes);
  return o;
}

}  // namespace troupe
