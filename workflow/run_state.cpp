#include "workflow/run_state.hpp"

#include "workflow/cache_key.hpp"

#include <algorithm>
#include <utility>

namespace troupe {

std::string_view to_string(run_status s) {
  switch (s) {
    case run_status::pending:
      return "pending";
    case run_status::running:
      return "running";
    case run_status::succeeded:
      return "succeeded";
    case run_status::failed:
      return "failed";
    case run_status::cancelled:
      return "cancelled";
    case run_status::timed_out:
      return "timed_out";
  }
  return "unknown";
}

std::string_view to_string(cache_status s) {
  switch (s) {
    case cache_status::off:
      return "off";
    case cache_status::hit:
      return "hit";
    case cache_status::miss:
      return "miss";
  }
  return "unknown";
}

namespace {

// "node 'fetch' field 'with/url' column 9: unknown name vars.y": every expression error names
// the node, the field and the column, as the format requires.
std::string field_error(std::string_view what, std::string_view name, std::string_view field,
                        const template_error& e) {
  std::string s;
  s.reserve(64 + e.error.message.size());
  s.append(what).append(" '").append(name).append("' field '").append(field);
  s.append(e.pointer).append("' column ").append(std::to_string(e.error.column));
  s.append(": ").append(e.error.message);
  return s;
}

json_ptr null_json() {
  static const json_ptr null = make_json(nullptr);
  return null;
}

}  // namespace

std::uint64_t run_state::exec_table::add(inflight_exec e, std::uint64_t sequence) {
  std::uint32_t slot;
  if (!free_.empty()) {
    slot = free_.back();
    free_.pop_back();
    slots_[slot] = std::move(e);
  } else {
    slot = static_cast<std::uint32_t>(slots_.size());
    slots_.push_back(std::move(e));
    ids_.push_back(0);
  }
  std::uint64_t id = (sequence << 32) | slot;
  ids_[slot] = id;
  ++live_;
  return id;
}

run_state::inflight_exec* run_state::exec_table::find(std::uint64_t exec) {
  auto slot = static_cast<std::size_t>(exec & 0xffffffffu);
  if (exec == 0 || slot >= ids_.size() || ids_[slot] != exec) {
    return nullptr;
  }
  return &slots_[slot];
}

void run_state::exec_table::erase(std::uint64_t exec) {
  auto slot = static_cast<std::size_t>(exec & 0xffffffffu);
  if (exec == 0 || slot >= ids_.size() || ids_[slot] != exec) {
    return;
  }
  ids_[slot] = 0;
  slots_[slot].input.reset();
  free_.push_back(static_cast<std::uint32_t>(slot));
  --live_;
}

void run_state::exec_table::clear() {
  slots_.clear();
  ids_.clear();
  free_.clear();
  live_ = 0;
}

run_state::run_state(plan_ptr p, run_options options)
    : plan_(std::move(p)), options_(std::move(options)) {
  last_event_seq_ = options_.events_after > 0 ? options_.events_after : 1;  // 1: run_started
  identity_.id = options_.run_id;
  identity_.workflow = plan_->name;
  nodes_.resize(plan_->nodes.size());
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    nodes_[i].join = static_cast<std::uint32_t>(plan_->nodes[i].needs.size());
  }
  std::size_t engine_limit = options_.max_concurrency > 0 ? options_.max_concurrency : 0;
  std::size_t plan_limit =
      plan_->max_concurrency ? static_cast<std::size_t>(*plan_->max_concurrency) : 0;
  if (engine_limit && plan_limit) {
    run_limit_ = std::min(engine_limit, plan_limit);
  } else {
    run_limit_ = engine_limit ? engine_limit : plan_limit;
  }
}

void run_state::restore(std::size_t node, json_ptr output) {
  if (status_ == run_status::pending && node < nodes_.size()) {
    nodes_[node].x().restored = output ? std::move(output) : null_json();
  }
}

void run_state::restore_item(std::size_t node, std::int64_t item, json_ptr output) {
  if (status_ == run_status::pending && node < nodes_.size() && item >= 0) {
    nodes_[node].x().restored_items.emplace_back(item, output ? std::move(output) : null_json());
  }
}

void run_state::continue_attempts(std::size_t node, int prior_attempts) {
  if (status_ == run_status::pending && node < nodes_.size() && prior_attempts > 0) {
    nodes_[node].attempt_offset = prior_attempts;
  }
}

void run_state::start(json::object inputs, std::int64_t now, std::vector<command>& out) {
  if (status_ != run_status::pending) {
    return;
  }
  status_ = run_status::running;
  started_us_ = now;
  ctx_ = context(plan_->nodes.size(), plan_->var_names.size(),
                 make_json(json::value(std::move(inputs))));
  // vars may refer to inputs and to vars declared before them.
  for (std::size_t slot = 0; slot < plan_->var_init.size(); ++slot) {
    const auto& init = plan_->var_init[slot];
    if (!init) {
      continue;
    }
    context_scope sc(plan_->names, ctx_, identity_);
    auto v = init->render(sc);
    if (!v) {
      finish_run(run_status::failed, field_error("var", plan_->var_names[slot], "", v.error()), now,
                 out);
      return;
    }
    ctx_.set_var(slot, make_json(std::move(*v)));
  }
  if (plan_->timeout_ms) {
    add_timer({timer_kind::run_timeout, {}, 0}, *plan_->timeout_ms, out);
  }
  // Resumed runs: what succeeded before is taken as done, in dependency order, so its output
  // and published vars are in the context before anything that needs them becomes ready.
  for (std::uint32_t n : plan_->topological_order) {
    auto& ns = nodes_[n];
    if (!ns.extra || !ns.extra->restored) {
      continue;
    }
    const auto& np = plan_->nodes[n];
    ns.ready_seen = true;
    ns.summary.status = node_status::succeeded;
    ns.summary.started_us = now;
    ns.summary.finished_us = now;
    for (const auto& [slot, tmpl] : np.publish) {
      context_scope sc(plan_->names, ctx_, identity_, ns.extra->restored.get());
      if (auto v = tmpl.render(sc)) {
        ctx_.set_var(slot, make_json(std::move(*v)));
      }
    }
    ctx_.set_node(n, node_result{node_status::succeeded, ns.extra->restored, nullptr});
    ++nodes_done_;
    for (std::size_t d : np.dependents) {
      --nodes_[d].join;
    }
  }
  if (nodes_done_ == nodes_.size()) {
    finish_if_all_done(now, out);
    return;
  }
  for (std::uint32_t n : plan_->topological_order) {
    if (finished()) {
      return;
    }
    if (nodes_[n].join == 0 && !nodes_[n].ready_seen) {
      node_ready(n, now, out);
    }
  }
  if (!finished()) {
    pump(now, out);
  }
}

void run_state::node_ready(std::uint32_t n, std::int64_t now, std::vector<command>& out) {
  auto& ns = nodes_[n];
  const auto& np = plan_->nodes[n];
  ns.ready_seen = true;
  ns.summary.started_us = now;
  if (np.when) {
    context_scope sc(plan_->names, ctx_, identity_);
    auto v = np.when->render(sc);
    if (!v) {
      node_failed(n, field_error("node", np.id, "when", v.error()), node_status::failed, now, out);
      return;
    }
    if (!truthy(*v)) {
      ns.summary.status = node_status::skipped;
      ns.summary.finished_us = now;
      ctx_.set_node(n, node_result{node_status::skipped, nullptr, nullptr});
      node_record_out(n, now, nullptr, out);
      node_done(n, now, out);
      return;
    }
  }
  ns.summary.status = node_status::running;
  if (np.for_each) {
    context_scope sc(plan_->names, ctx_, identity_);
    auto v = np.for_each->render(sc);
    if (!v) {
      node_failed(n, field_error("node", np.id, "for_each", v.error()), node_status::failed, now,
                  out);
      return;
    }
    if (!v->is_array()) {
      node_failed(n,
                  "node '" + np.id + "' field 'for_each': must render to an array, got " +
                      std::string(json_kind_name(*v)),
                  node_status::failed, now, out);
      return;
    }
    auto& x = ns.x();
    x.items = make_json(std::move(*v));
    ns.unit_count = static_cast<std::uint32_t>(x.items->as_array().size());
    ns.summary.items = static_cast<std::int64_t>(ns.unit_count);
    x.item_outputs.assign(ns.unit_count, nullptr);
    if (ns.unit_count == 0) {
      node_succeeded(n, make_json(json::array{}), now, out);
      return;
    }
    if (!x.restored_items.empty()) {
      // Items that succeeded before a resume keep their outputs and are not launched again.
      x.done_items.assign(ns.unit_count, false);
      for (auto& [item, output] : x.restored_items) {
        const auto i = static_cast<std::size_t>(item);
        if (i < ns.unit_count && !x.done_items[i]) {
          x.done_items[i] = true;
          x.item_outputs[i] = std::move(output);
          ++ns.units_done;
        }
      }
      x.restored_items.clear();
      x.restored_items.shrink_to_fit();
      skip_done_items(ns);
      if (ns.units_done == ns.unit_count) {
        items_succeeded(n, now, out);
        return;
      }
    }
  } else {
    ns.unit_count = 1;
  }
  if (!ns.queued) {
    ns.queued = true;
    launch_queue_.push_back(n);
  }
}

bool run_state::launchable(const node_state& ns) const {
  return ns.summary.status == node_status::running &&
         (ns.has_retries() || ns.next_unit < ns.unit_count);
}

void run_state::pump(std::int64_t now, std::vector<command>& out) {
  while (launch_head_ < launch_queue_.size() && !finished() &&
         (run_limit_ == 0 || inflight_.size() < run_limit_)) {
    std::uint32_t n = launch_queue_[launch_head_++];
    if (launch_head_ == launch_queue_.size()) {
      launch_queue_.clear();
      launch_head_ = 0;
    }
    auto& ns = nodes_[n];
    ns.queued = false;
    const auto& np = plan_->nodes[n];
    if (!launchable(ns)) {
      continue;
    }
    if (np.concurrency && ns.in_flight + ns.held >= static_cast<std::uint32_t>(*np.concurrency)) {
      continue;  // re-queued when one of its units finishes
    }
    unit u;
    if (ns.has_retries()) {
      auto& due = ns.extra->retries_due;
      u = due.front();
      due.erase(due.begin());
    } else {
      std::size_t i = ns.next_unit++;
      skip_done_items(ns);
      u = unit{n, np.for_each ? static_cast<std::int64_t>(i) : -1, 1};
    }
    launch(u, now, out);
    if (finished()) {
      return;
    }
    // Round-robin: a node with more units goes to the back so siblings get their turn.
    if (launchable(ns) && !ns.queued &&
        (!np.concurrency || ns.in_flight + ns.held < static_cast<std::uint32_t>(*np.concurrency))) {
      ns.queued = true;
      launch_queue_.push_back(n);
    }
  }
}

context run_state::view_for(const unit& u) const {
  if (u.item < 0) {
    return ctx_;
  }
  const auto& items = nodes_[u.node].extra->items;
  // Aliasing pointer: the item is read in place inside the shared array, never copied.
  json_ptr item(items, &items->as_array()[static_cast<std::size_t>(u.item)]);
  return ctx_.with_item(std::move(item), u.item);
}

void run_state::launch(unit u, std::int64_t now, std::vector<command>& out) {
  auto& ns = nodes_[u.node];
  const auto& np = plan_->nodes[u.node];
  ++ns.summary.attempts;
  json_ptr input;
  json_ptr dynamic_inputs;
  if (np.with.is_constant() && np.constant_input && !np.dynamic_inputs) {
    input = np.constant_input;
  } else {
    context view = view_for(u);
    context_scope sc(plan_->names, view, identity_);
    std::string err;
    if (np.with.is_constant() && np.constant_input) {
      input = np.constant_input;
    } else if (auto v = np.with.render(sc)) {
      input = make_json(std::move(*v));
    } else {
      err = field_error("node", np.id, "with", v.error());
    }
    if (err.empty() && np.dynamic_inputs) {
      if (auto d = np.dynamic_inputs->render(sc); !d) {
        err = field_error("node", np.id, "dynamic/inputs", d.error());
      } else if (!d->is_object()) {
        err = "node '" + np.id + "' field 'dynamic/inputs': must render to an object (the " +
              "child run's inputs), got " + std::string(json_kind_name(*d));
      } else {
        dynamic_inputs = make_json(std::move(*d));
      }
    }
    if (!err.empty()) {
      // A template error is deterministic: retrying cannot fix it.
      node_record r;
      r.node = u.node;
      r.item = u.item;
      r.attempt = u.attempt + ns.attempt_offset;
      r.status = node_status::failed;
      r.error = err;
      r.started_us = now;
      r.finished_us = now;
      record(std::move(r), out);
      node_failed(u.node,
                  u.item >= 0 ? "item " + std::to_string(u.item) + ": " + err : std::move(err),
                  node_status::failed, now, out);
      return;
    }
  }
  std::int64_t started_seq = 0;
  if (options_.record_starts && options_.emit_records) {
    node_record r;
    r.node = u.node;
    r.item = u.item;
    r.attempt = u.attempt + ns.attempt_offset;
    r.status = node_status::running;
    r.input = input;
    r.started_us = now;
    record(std::move(r), out);
    started_seq = last_event_seq_;
  }
  std::uint64_t exec = inflight_.add(inflight_exec{u, input, now, 0, started_seq, {}, 0}, next_exec_++);
  ++ns.in_flight;
  max_inflight_seen_ = std::max(max_inflight_seen_, inflight_.size());
  std::string key;
  if (np.cache_version) {
    const json::value* item =
        u.item >= 0 ? &ns.extra->items->as_array()[static_cast<std::size_t>(u.item)] : nullptr;
    key = cache_key(np, *input, item);
  }
  // The attempt number as the log has it: a resumed run's attempts continue after the recorded
  // ones, and the task sees the same number (task_call::attempt, TROUPE_ATTEMPT).
  out.emplace_back(cmd::dispatch{exec, u.node, u.item, u.attempt + ns.attempt_offset,
                                 std::move(input), std::move(key),
                                 std::move(dynamic_inputs)});
  if (np.timeout_ms) {
    inflight_.find(exec)->timeout_timer =
        add_timer({timer_kind::attempt_timeout, u, exec}, *np.timeout_ms, out);
  }
}

std::uint64_t run_state::add_timer(timer_entry t, std::int64_t delay_ms,
                                   std::vector<command>& out) {
  std::uint64_t id = next_timer_++;
  timers_.emplace(id, t);
  out.emplace_back(cmd::start_timer{id, delay_ms});
  return id;
}

void run_state::task_finished(std::uint64_t exec, task_result result, std::int64_t now,
                              std::vector<command>& out) {
  exec_finished(exec, std::move(result), nullptr, nullptr, now, out);
}

void run_state::task_finished_dynamic(std::uint64_t exec, task_result result, dynamic_outcome how,
                                      std::int64_t now, std::vector<command>& out) {
  exec_finished(exec, std::move(result), nullptr, &how, now, out);
}

const std::string& run_state::child_run(std::size_t node) const {
  static const std::string none;
  const auto& ns = nodes_[node];
  return ns.extra ? ns.extra->child_run : none;
}

void run_state::task_finished_cached(std::uint64_t exec, json_ptr output, std::int64_t now,
                                     std::vector<command>& out) {
  exec_finished(exec, task_result{}, output ? std::move(output) : null_json(), nullptr, now, out);
}

// `cached`: the output the driver found in the cache (the task did not run), else null.
void run_state::exec_finished(std::uint64_t exec, task_result result, json_ptr cached,
                              dynamic_outcome* dynamic, std::int64_t now,
                              std::vector<command>& out) {
  if (finished()) {
    return;
  }
  inflight_exec* found = inflight_.find(exec);
  if (found == nullptr) {
    return;  // cancelled or timed out already: its late result means nothing now
  }
  inflight_exec e = std::move(*found);
  inflight_.erase(exec);
  if (e.timeout_timer != 0) {
    timers_.erase(e.timeout_timer);
  }
  --nodes_[e.u.node].in_flight;
  if (options_.hold_item_slots && e.u.item >= 0 && (cached || result.ok)) {
    ++nodes_[e.u.node].held;
    ++held_total_;
  }
  if (dynamic && !dynamic->child_run.empty()) {
    nodes_[e.u.node].x().child_run = dynamic->child_run;
  }
  if (cached) {
    unit_succeeded(e, std::move(cached), cache_status::hit, nullptr, now, out);
  } else if (result.ok) {
    // A cached node that had to run its task missed (the driver looked it up first). A
    // dynamic node's key names its generated workflow: a spec hit skipped the task.
    cache_status c = cache_status::off;
    if (plan_->nodes[e.u.node].cache_version) {
      c = dynamic && dynamic->spec_cache == cache_status::hit ? cache_status::hit
                                                              : cache_status::miss;
    }
    unit_succeeded(e, make_json(std::move(result.output)), c, dynamic, now, out);
  } else {
    unit_failed(e, std::move(result.error), node_status::failed, now, out, dynamic);
  }
  if (!finished()) {
    auto& ns = nodes_[e.u.node];
    if (launchable(ns) && !ns.queued) {
      ns.queued = true;
      launch_queue_.push_back(e.u.node);
    }
    pump(now, out);
  }
}

void run_state::unit_succeeded(const inflight_exec& e, json_ptr out_ptr, cache_status cache,
                               dynamic_outcome* dynamic, std::int64_t now,
                               std::vector<command>& out) {
  auto& ns = nodes_[e.u.node];
  if (ns.summary.status != node_status::running) {
    return;
  }
  // The node says `hit` only when every unit (item) came from the cache: one execution of the
  // task makes it a `miss`.
  if (cache == cache_status::miss ||
      (cache == cache_status::hit && ns.summary.cache == cache_status::off)) {
    ns.summary.cache = cache;
  }
  if (dynamic) {
    ns.summary.spec_cache = dynamic->spec_cache;
  }
  if (options_.emit_records) {
    node_record r = attempt_record(e, node_status::succeeded);
    r.output = out_ptr;
    r.cache = cache;
    if (dynamic) {
      r.spec_cache = dynamic->spec_cache;
      r.child_run = dynamic->child_run;
    }
    r.finished_us = now;
    record(std::move(r), out);
  }
  if (e.u.item < 0) {
    node_succeeded(e.u.node, std::move(out_ptr), now, out);
    return;
  }
  ns.extra->item_outputs[static_cast<std::size_t>(e.u.item)] = std::move(out_ptr);
  if (++ns.units_done == ns.unit_count) {
    items_succeeded(e.u.node, now, out);
  }
}

std::vector<std::pair<std::uint32_t, std::uint32_t>> run_state::held_slots() const {
  std::vector<std::pair<std::uint32_t, std::uint32_t>> out;
  if (held_total_ == 0) {
    return out;
  }
  for (std::uint32_t n = 0; n < nodes_.size(); ++n) {
    if (nodes_[n].held > 0) {
      out.emplace_back(n, nodes_[n].held);
    }
  }
  return out;
}

void run_state::release_held_slots(
    const std::vector<std::pair<std::uint32_t, std::uint32_t>>& slots, std::int64_t now,
    std::vector<command>& out) {
  for (const auto& [n, count] : slots) {
    if (n >= nodes_.size()) {
      continue;
    }
    auto& ns = nodes_[n];
    const std::uint32_t k = std::min(count, ns.held);
    ns.held -= k;
    held_total_ -= k;
    if (!finished() && launchable(ns) && !ns.queued) {
      ns.queued = true;
      launch_queue_.push_back(n);
    }
  }
  if (!finished()) {
    pump(now, out);
  }
}

void run_state::skip_done_items(node_state& ns) {
  if (!ns.extra || ns.extra->done_items.empty()) {
    return;
  }
  const auto& done = ns.extra->done_items;
  while (ns.next_unit < ns.unit_count && done[ns.next_unit]) {
    ++ns.next_unit;
  }
}

// Every item of a for_each node succeeded: its output is the array of their outputs.
void run_state::items_succeeded(std::uint32_t n, std::int64_t now, std::vector<command>& out) {
  auto& ns = nodes_[n];
  json::array arr;
  arr.reserve(ns.unit_count);
  for (auto& o : ns.extra->item_outputs) {
    arr.push_back(o ? *o : json::value(nullptr));
  }
  ns.extra->item_outputs.clear();
  ns.extra->done_items.clear();
  node_succeeded(n, make_json(std::move(arr)), now, out);
}

void run_state::unit_failed(const inflight_exec& e, std::string error, node_status how,
                            std::int64_t now, std::vector<command>& out, dynamic_outcome* dynamic) {
  auto& ns = nodes_[e.u.node];
  const auto& np = plan_->nodes[e.u.node];
  node_record r = attempt_record(e, how);
  r.error = error;
  // A failed attempt of a cached node was looked up and missed; its output is never stored.
  r.cache = np.cache_version ? cache_status::miss : cache_status::off;
  if (dynamic) {
    // A spec hit skipped the generator; the failure was inside the child (or its inputs).
    if (np.cache_version && dynamic->spec_cache == cache_status::hit) {
      r.cache = cache_status::hit;
    }
    r.spec_cache = dynamic->spec_cache;
    r.child_run = dynamic->child_run;
    ns.summary.spec_cache = dynamic->spec_cache;
  }
  r.finished_us = now;
  if (np.cache_version) {
    ns.summary.cache = r.cache == cache_status::hit && ns.summary.cache != cache_status::miss
                           ? cache_status::hit
                           : cache_status::miss;
  }
  record(std::move(r), out);
  if (ns.summary.status != node_status::running) {
    return;
  }
  if (e.u.attempt < np.retry.max_attempts) {
    unit next{e.u.node, e.u.item, e.u.attempt + 1};
    std::int64_t delay = np.retry.delay_before(next.attempt);
    if (delay > 0) {
      add_timer({timer_kind::retry, next, 0}, delay, out);
    } else {
      ns.x().retries_due.push_back(next);
    }
    return;
  }
  if (e.u.item >= 0) {
    error = "item " + std::to_string(e.u.item) + ": " + error;
  }
  node_failed(e.u.node, std::move(error), how, now, out);
}

void run_state::node_succeeded(std::uint32_t n, json_ptr out_ptr, std::int64_t now,
                               std::vector<command>& out) {
  auto& ns = nodes_[n];
  const auto& np = plan_->nodes[n];
  if (!np.publish.empty()) {
    for (const auto& [slot, tmpl] : np.publish) {
      context_scope sc(plan_->names, ctx_, identity_, out_ptr.get());
      auto v = tmpl.render(sc);
      if (!v) {
        node_failed(n, field_error("node", np.id, "publish/" + plan_->var_names[slot], v.error()),
                    node_status::failed, now, out);
        return;
      }
      ctx_.set_var(slot, make_json(std::move(*v)));
    }
  }
  ns.summary.status = node_status::succeeded;
  ns.summary.finished_us = now;
  ctx_.set_node(n, node_result{node_status::succeeded, out_ptr, nullptr});
  if (np.for_each) {
    node_record_out(n, now, out_ptr, out);
  }
  node_done(n, now, out);
}

void run_state::node_failed(std::uint32_t n, std::string error, node_status how, std::int64_t now,
                            std::vector<command>& out) {
  auto& ns = nodes_[n];
  const auto& np = plan_->nodes[n];
  // The format: with `on_error: continue` "the node ends failed" and dependents see "failed",
  // whatever the last attempt died of (its own record keeps timed_out).
  if (np.on_error == error_policy::continue_run) {
    how = node_status::failed;
  }
  ns.summary.status = how;
  ns.summary.finished_us = now;
  ns.summary.error_text = std::make_shared<const std::string>(error);
  if (ns.extra) {
    ns.extra->retries_due.clear();
  }
  ns.next_unit = ns.unit_count;
  // Sibling items still in flight lose their purpose once the node has failed.
  if (ns.in_flight > 0) {
    std::vector<std::uint64_t> doomed;
    inflight_.each([&](std::uint64_t exec, const inflight_exec& e) {
      if (e.u.node == n) {
        doomed.push_back(exec);
      }
    });
    std::sort(doomed.begin(), doomed.end());  // deterministic command order
    for (auto exec : doomed) {
      inflight_exec& e = *inflight_.find(exec);
      if (e.timeout_timer != 0) {
        timers_.erase(e.timeout_timer);
      }
      node_record r = attempt_record(e, node_status::cancelled);
      r.finished_us = now;
      record(std::move(r), out);
      out.emplace_back(cmd::cancel_task{exec});
      inflight_.erase(exec);
    }
    ns.in_flight = 0;
  }
  ctx_.set_node(n, node_result{how, nullptr, make_json(json::value(error))});
  if (np.for_each || ns.summary.attempts == 0) {
    node_record_out(n, now, nullptr, out);
  }
  if (np.on_error == error_policy::continue_run) {
    node_done(n, now, out);
    return;
  }
  finish_run(run_status::failed,
             "node '" + np.id + "' " + std::string(to_string(how)) + ": " + error, now, out);
}

void run_state::node_done(std::uint32_t n, std::int64_t now, std::vector<command>& out) {
  ++nodes_done_;
  for (std::size_t d : plan_->nodes[n].dependents) {
    if (finished()) {
      return;
    }
    auto& ds = nodes_[d];
    if (--ds.join == 0 && !ds.ready_seen) {
      node_ready(static_cast<std::uint32_t>(d), now, out);
    }
  }
  if (finished() || nodes_done_ < nodes_.size()) {
    return;
  }
  finish_if_all_done(now, out);
}

void run_state::finish_if_all_done(std::int64_t now, std::vector<command>& out) {
  json::object outputs;
  for (const auto& [name, tmpl] : plan_->outputs) {
    context_scope sc(plan_->names, ctx_, identity_);
    auto v = tmpl.render(sc);
    if (!v) {
      finish_run(run_status::failed, field_error("output", name, "", v.error()), now, out);
      return;
    }
    outputs[name] = std::move(*v);
  }
  outputs_ = make_json(json::value(std::move(outputs)));
  finish_run(run_status::succeeded, {}, now, out);
}

void run_state::timer_fired(std::uint64_t timer, std::int64_t now, std::vector<command>& out) {
  if (finished()) {
    return;
  }
  auto it = timers_.find(timer);
  if (it == timers_.end()) {
    return;  // its purpose is gone: the attempt it guarded finished first
  }
  timer_entry t = it->second;
  timers_.erase(it);
  switch (t.kind) {
    case timer_kind::run_timeout:
      finish_run(run_status::timed_out,
                 "run timed out after " + std::to_string(*plan_->timeout_ms) + " ms", now, out);
      return;
    case timer_kind::retry: {
      auto& ns = nodes_[t.u.node];
      if (ns.summary.status != node_status::running) {
        return;
      }
      ns.x().retries_due.push_back(t.u);
      if (!ns.queued) {
        ns.queued = true;
        launch_queue_.push_back(t.u.node);
      }
      pump(now, out);
      return;
    }
    case timer_kind::attempt_timeout: {
      inflight_exec* found = inflight_.find(t.exec);
      if (found == nullptr) {
        return;
      }
      inflight_exec e = std::move(*found);
      inflight_.erase(t.exec);
      --nodes_[e.u.node].in_flight;
      out.emplace_back(cmd::cancel_task{t.exec});
      const auto& np = plan_->nodes[e.u.node];
      unit_failed(e, "timed out after " + std::to_string(*np.timeout_ms) + " ms",
                  node_status::timed_out, now, out);
      if (!finished()) {
        auto& ns = nodes_[e.u.node];
        if (launchable(ns) && !ns.queued) {
          ns.queued = true;
          launch_queue_.push_back(e.u.node);
        }
        pump(now, out);
      }
      return;
    }
  }
}

void run_state::cancel(std::int64_t now, std::vector<command>& out) {
  if (finished()) {
    return;
  }
  if (status_ == run_status::pending) {
    status_ = run_status::running;
    started_us_ = now;
  }
  finish_run(run_status::cancelled, "cancelled", now, out);
}

void run_state::cancel_everything(std::int64_t now, std::vector<command>& out) {
  std::vector<std::uint64_t> execs;
  execs.reserve(inflight_.size());
  inflight_.each([&](std::uint64_t exec, const inflight_exec&) { execs.push_back(exec); });
  std::sort(execs.begin(), execs.end());
  for (auto exec : execs) {
    const inflight_exec& e = *inflight_.find(exec);
    node_record r = attempt_record(e, node_status::cancelled);
    r.finished_us = now;
    record(std::move(r), out);
    out.emplace_back(cmd::cancel_task{exec});
  }
  inflight_.clear();
  timers_.clear();
  launch_queue_.clear();
  launch_head_ = 0;
  // Nodes that never finished end cancelled: the log shows every node of the run.
  for (std::uint32_t n = 0; n < nodes_.size(); ++n) {
    auto& ns = nodes_[n];
    if (is_terminal(ns.summary.status)) {
      continue;
    }
    ns.summary.status = node_status::cancelled;
    ns.summary.finished_us = now;
    ns.in_flight = 0;
    if (plan_->nodes[n].for_each || ns.summary.attempts == 0) {
      node_record_out(n, now, nullptr, out);
    }
  }
}

void run_state::finish_run(run_status s, std::string error, std::int64_t now,
                           std::vector<command>& out) {
  if (finished()) {
    return;
  }
  if (s != run_status::succeeded) {
    cancel_everything(now, out);
  }
  status_ = s;
  error_ = std::move(error);
  finished_us_ = now;
  out.emplace_back(cmd::finish{s, s == run_status::succeeded ? outputs_ : null_json(), error_});
}

node_record run_state::attempt_record(const inflight_exec& e, node_status status) const {
  node_record r;
  r.node = e.u.node;
  r.item = e.u.item;
  r.attempt = e.u.attempt + nodes_[e.u.node].attempt_offset;
  r.status = status;
  r.input = e.input;
  r.started_us = e.started_us;
  r.started_seq = e.started_seq;
  r.worker = e.worker;
  r.lost = e.lost;
  return r;
}

void run_state::placed(std::uint64_t exec, std::string worker, std::int32_t lost, bool announce,
                       std::int64_t now_us, std::vector<command>& out) {
  (void)now_us;  // kept for symmetry with the other events: placement takes no time of its own
  if (finished()) {
    return;
  }
  inflight_exec* e = inflight_.find(exec);
  if (e == nullptr) {
    return;
  }
  e->worker = std::move(worker);
  e->lost = lost;
  if (announce && options_.record_starts && options_.emit_records) {
    // The attempt's row again, same key and event number: the log learns of the loss now.
    out.emplace_back(cmd::record{attempt_record(*e, node_status::running), true});
  }
}

void run_state::record(node_record r, std::vector<command>& out) {
  if (options_.emit_records) {
    if (r.status == node_status::running) {
      r.started_seq = ++last_event_seq_;
    } else {
      r.finished_seq = ++last_event_seq_;
    }
    out.emplace_back(cmd::record{std::move(r)});
  }
}

// The node-level record: for_each aggregates, skipped nodes, and nodes that never started.
void run_state::node_record_out(std::uint32_t n, std::int64_t now, json_ptr output,
                                std::vector<command>& out) {
  const auto& ns = nodes_[n];
  node_record r;
  r.node = n;
  r.item = -1;
  r.attempt = 0;
  r.status = ns.summary.status;
  r.output = std::move(output);
  r.error = ns.summary.error();
  r.cache = ns.summary.cache;
  r.started_us = ns.summary.started_us >= 0 ? ns.summary.started_us : now;
  r.finished_us = now;
  record(std::move(r), out);
}

}  // namespace troupe
