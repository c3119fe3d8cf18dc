#include <algorithm>
#include <chrono>
#include <exception>
#include <functional>
#include <optional>
#include <utility>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include "actors/builtin/operation.hpp"
#include "actors/dispatcher.hpp"
#include "actors/lease_keeper.hpp"
#include "actors/run_actor.hpp"
#include "actors/traced_actor.hpp"
#include "messages/messages.hpp"

namespace troupe {

/// The rest of an attempt, after work done on the blocking pool (a store read, a compile):
/// runs in the node actor's own handler, and only if the attempt is still the current one.
struct node_step {
  std::uint64_t exec = 0;
  std::function<void()> run;
};

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::node_step)

namespace troupe {

/// A node actor's lease check is due again (the keeper could not renew): `recheck_atom, exec`.
using recheck_atom = caf::atom_constant<caf::atom("tr_rechk")>;

namespace {

// One in-flight attempt of a task that takes time. Lives until it has answered its run, or
// until the run cancels it. Work that happens elsewhere (an I/O thread, the blocking pool, a
// user's callback) reports back with anon_send to this actor, so the answer to the run always
// leaves from the actor's own thread.
struct node_actor_state {
  node_spawn_args args;
  services_ptr services;
  caf::actor run;
  operation_ptr op;  // shell, http
  // The child run's persistence error, passed on with the answer.
  std::string child_persistence_error;
  caf::actor child;  // workflow, dynamic
  bool answered = false;
  std::optional<task_result> sync_result;  // set when a task completed inside start()
  // `dynamic` nodes run in two steps: the task generates a workflow, then a child run runs it.
  // `workflow` tasks report their child run too.
  bool generating = false;
  bool report_child = false;
  bool from_store = false;  // the answer is a cached output read from the store
  run_state::dynamic_outcome outcome;
  // Cluster: the attempt runs on a worker (the dispatcher placed it); where, and how many
  // workers were lost under it.
  bool remote = false;
  std::string worker;
  std::int32_t lost = 0;

  static inline const char* name = "node";
  std::string_view trace_run() const { return args.run_id; }
  std::string_view trace_node() const { return args.node_id; }
};
using node_actor = caf::stateful_actor<node_actor_state>;

// The node actor currently inside a task's start() on this thread, if any.
thread_local node_actor* detail_starting = nullptr;

// After answering, the actor stays alive and idle: its run may hand it the next attempt
// (`node_spawn_args`). Terminating a CAF 0.17 actor wakes the clock thread and the registry's
// condition variable, which cost more than the attempt itself for a task that completes at once.
void run_generated(node_actor* self, json::value generated);
void start_task(node_actor* self);
void use_generated(node_actor* self, expected<plan_ptr, validation_errors> compiled);

void answer(node_actor* self, task_result r) {
  auto& st = self->state;
  if (st.answered) {
    return;
  }
  if (st.generating && r.ok) {
    st.generating = false;
    st.op.reset();
    run_generated(self, std::move(r.output));
    return;
  }
  st.answered = true;
  st.op.reset();
  st.child = caf::actor{};
  attempt_done m{st.args.exec, std::move(r), false, {}, st.from_store, {}, {}, 0};
  m.persistence_error = std::move(st.child_persistence_error);
  m.worker = std::move(st.worker);
  m.lost = st.lost;
  if (st.args.dynamic || st.report_child) {
    m.has_outcome = true;
    m.outcome = std::move(st.outcome);
  }
  self->send(st.run, std::move(m));
}

// Runs `work` on the blocking pool, then `then(result)` back on this actor's thread, unless the
// attempt was answered or replaced meanwhile. The actor outlives the message or drops it (a
// message to a dead actor is discarded), so `self` in the continuation is safe.
template <class Work, class Then>
void off_thread(node_actor* self, Work work, Then then) {
  auto& st = self->state;
  caf::actor me = caf::actor_cast<caf::actor>(self);
  boost::asio::post(*st.services->blocking, [me, self, exec = st.args.exec, work = std::move(work),
                                             then = std::move(then)]() mutable {
    auto result = work();
    caf::anon_send(
        me, node_step{exec, [self, then = std::move(then), result = std::move(result)]() mutable {
                        then(self, std::move(result));
                      }});
  });
}

// The node's label among its parent's child runs: an item of a for_each has its own child.
std::string parent_label(const node_spawn_args& a) {
  return a.item < 0 ? a.node_id : a.node_id + "[" + std::to_string(a.item) + "]";
}

void start_child_run(node_actor* self, plan_ptr p, const json::object& given, const char* what) {
  auto& st = self->state;
  const auto& svc = st.services;
  if (st.args.depth + 1 > svc->max_workflow_depth) {
    answer(self, task_result::failure(std::string(what) + ": nesting deeper than " +
                                      std::to_string(svc->max_workflow_depth) +
                                      " levels (max_workflow_depth)"));
    return;
  }
  auto bound = bind_inputs(*p, given);
  if (!bound) {
    std::string msg = std::string(what) + ": bad inputs for '" + p->name + "':";
    for (const auto& e : bound.error()) {
      msg += " " + e.pointer + ": " + e.message + ";";
    }
    answer(self, task_result::failure(std::move(msg)));
    return;
  }
  if (const task_policy* policy = st.args.policy.get(); policy != nullptr) {
    // A restricted run's children are held to its policy: what a generated workflow (or a
    // workflow it calls) names is checked here, before anything of it runs.
    for (const auto& n : p->nodes) {
      if (!policy->allows(n.task)) {
        answer(self, task_result::failure(std::string(what) + ": workflow '" + p->name +
                                          "' uses task '" + n.task + "' (node '" + n.id +
                                          "'), which this run may not use"));
        return;
      }
    }
  }
  run_spawn_args a;
  a.inputs = std::move(*bound);
  a.depth = st.args.depth + 1;
  a.policy = st.args.policy;
  a.parent_run_id = st.args.run_id;
  a.parent_node_id = parent_label(st.args);
  a.plan = std::move(p);
  auto spawn = [](node_actor* self, run_spawn_args a, std::optional<resume_point> prior) {
    auto& st = self->state;
    if (prior) {
      resume_from(a, std::move(*prior));
    } else {
      a.options.run_id = st.services->new_run_id();
    }
    st.outcome.child_run = a.options.run_id;
    st.child = spawn_run(st.services, std::move(a), caf::actor_cast<caf::actor>(self));
  };
  if (!svc->prior_child) {
    spawn(self, std::move(a), std::nullopt);
    return;
  }
  // A `dynamic` or `workflow` node that runs again (a retry, or its run resumed after a crash
  // or a failure) continues its earlier child of the same plan: what succeeded there is not run
  // again.
  auto shared_args = std::make_shared<run_spawn_args>(std::move(a));
  off_thread(
      self,
      [svc, shared_args] {
        return svc->prior_child(shared_args->parent_run_id, shared_args->parent_node_id,
                                *shared_args->plan);
      },
      [spawn, shared_args](node_actor* self, std::optional<resume_point> prior) {
        spawn(self, std::move(*shared_args), std::move(prior));
      });
}

// The generator's output is a workflow: validate and compile it (equal documents share one
// plan), remember it under the node's cache key, and run it as a child.
void run_generated(node_actor* self, json::value generated) {
  auto& st = self->state;
  const auto& svc = st.services;
  if (!svc->compile_dynamic) {
    answer(self, task_result::failure("dynamic: this engine cannot compile workflows"));
    return;
  }
  off_thread(
      self,
      [svc, doc = std::make_shared<const json::value>(std::move(generated))] {
        return svc->compile_dynamic(*doc);
      },
      [](node_actor* self, expected<plan_ptr, validation_errors> compiled) {
        use_generated(self, std::move(compiled));
      });
}

void use_generated(node_actor* self, expected<plan_ptr, validation_errors> compiled) {
  auto& st = self->state;
  const auto& svc = st.services;
  const dynamic_attempt& dyn = *st.args.dynamic;
  if (!compiled) {
    std::string msg = "dynamic: the generated workflow is invalid:";
    for (const auto& e : compiled.error()) {
      msg += " " + (e.pointer.empty() ? std::string("/") : e.pointer) + ": " + e.message + ";";
    }
    answer(self, task_result::failure(std::move(msg)));
    return;
  }
  plan_ptr p = std::move(*compiled);
  if (!dyn.spec_key.empty()) {
    if (svc->spec_remember) {
      svc->spec_remember(dyn.spec_key, p);
    }
    if (svc->writer) {
      cache_row row;
      row.key = dyn.spec_key;
      row.workflow = dyn.workflow;
      row.node_id = st.args.node_id;
      row.value = std::make_shared<const json::value>(p->source);
      row.kind = "spec";
      row.created_at = std::chrono::duration_cast<std::chrono::microseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
      persist m;
      m.cache.push_back(std::move(row));
      self->send(svc->writer, std::move(m));
    }
  }
  start_child_run(self, std::move(p), dyn.inputs->as_object(), "dynamic");
}

task_result run_guarded(const task_def& def, const json::value& input, const task_call& call) {
  try {
    return def.run(input, call);
  } catch (const std::exception& e) {
    return task_result::failure(std::string("task threw: ") + e.what());
  } catch (...) {
    return task_result::failure("task threw an unknown exception");
  }
}

void start_sleep(node_actor* self) {
  const auto& in = *self->state.args.input;
  const json::value* ms = in.is_object() ? in.as_object().if_contains("ms") : nullptr;
  double v = -1;
  if (ms && ms->is_int64()) {
    v = static_cast<double>(ms->as_int64());
  } else if (ms && ms->is_uint64()) {
    v = static_cast<double>(ms->as_uint64());
  } else if (ms && ms->is_double()) {
    v = ms->as_double();
  }
  if (!(v >= 0)) {
    answer(self, task_result::failure("sleep: 'ms' must be a number >= 0"));
    return;
  }
  if (v > static_cast<double>(max_delay_ms)) {
    // Larger delays would wrap the timer's nanosecond count and fire at once.
    answer(self, task_result::failure("sleep: 'ms' must be at most " +
                                      std::to_string(max_delay_ms) + " (about 31 years), got " +
                                      to_json_text(*ms)));
    return;
  }
  self->delayed_send(self, std::chrono::microseconds(static_cast<std::int64_t>(v * 1000)),
                     wake_atom::value, self->state.args.exec);
}

void start_child_workflow(node_actor* self, const services_ptr& svc) {
  auto& st = self->state;
  const auto& in = *st.args.input;
  const json::object* o = in.if_object();
  const json::value* name = o ? o->if_contains("name") : nullptr;
  if (!name || !name->is_string()) {
    answer(self, task_result::failure("workflow: 'name' must be a string"));
    return;
  }
  std::string_view version;
  if (const json::value* v = o->if_contains("version")) {
    if (!v->is_string()) {
      answer(self, task_result::failure("workflow: 'version' must be a string"));
      return;
    }
    version = v->as_string();
  }
  plan_ptr p = svc->find_workflow(name->as_string(), version);
  if (!p) {
    answer(self, task_result::failure(
                     "workflow: no registered workflow '" + std::string(name->as_string()) + "'" +
                     (version.empty() ? "" : " version '" + std::string(version) + "'")));
    return;
  }
  static const json::object none;
  const json::object* given = &none;
  if (const json::value* i = o->if_contains("inputs")) {
    if (!i->is_object()) {
      answer(self, task_result::failure("workflow: 'inputs' must be an object"));
      return;
    }
    given = &i->as_object();
  }
  st.report_child = true;
  start_child_run(self, std::move(p), *given, "workflow");
}

void begin(node_actor* self, const services_ptr& svc, node_spawn_args args) {
  auto& st = self->state;
  st.args = std::move(args);
  st.answered = false;
  st.sync_result.reset();
  st.report_child = false;
  st.from_store = false;
  st.outcome = {};
  st.remote = false;
  st.worker.clear();
  st.lost = 0;
  st.generating = static_cast<bool>(st.args.dynamic);
  if (st.generating && !st.args.dynamic->spec_key.empty() && svc->spec_lookup) {
    // A spec hit skips the generating task and the compile.
    off_thread(
        self, [svc, key = st.args.dynamic->spec_key] { return svc->spec_lookup(key); },
        [](node_actor* self, plan_ptr p) {
          auto& st = self->state;
          if (!p) {
            st.outcome.spec_cache = cache_status::miss;
            start_task(self);
            return;
          }
          st.generating = false;
          st.outcome.spec_cache = cache_status::hit;
          start_child_run(self, std::move(p), st.args.dynamic->inputs->as_object(), "dynamic");
        });
    return;
  }
  if (!st.args.stored_key.empty() && svc->cache_load) {
    off_thread(
        self, [svc, key = st.args.stored_key] { return svc->cache_load(key); },
        [](node_actor* self, json_ptr hit) {
          if (!hit) {
            start_task(self);
            return;
          }
          self->state.from_store = true;
          answer(self, task_result::success(*hit));
        });
    return;
  }
  start_task(self);
}

// Cluster: a task some worker offers goes to the dispatcher, which places it on a worker (or
// hands it back with run_here). Quick tasks never get here; `workflow` tasks and `dynamic` nodes
// start child runs, which belong to this process.
bool dispatch_remotely(node_actor* self) {
  auto& st = self->state;
  const auto& svc = st.services;
  const task_def& def = *st.args.task;
  if (st.args.here || !svc->dispatcher || !svc->offers || st.args.dynamic ||
      def.name == "workflow" || def.kind == task_kind::quick || !svc->offers->routes(def.name)) {
    return false;
  }
  remote_attempt m;
  m.exec = st.args.exec;
  m.order.task = def.name;
  m.order.input_json = wire::to_wire(*st.args.input);
  m.order.run_id = st.args.run_id;
  m.order.node_id = st.args.node_id;
  m.order.item = st.args.item;
  m.order.attempt = st.args.attempt;
  m.order.lost = st.lost;
  wire::put_policy(m.order, st.args.policy.get());
  st.remote = true;
  self->send(svc->dispatcher, std::move(m));
  return true;
}

void start_local(node_actor* self);

void start_now(node_actor* self) {
  if (!dispatch_remotely(self)) {
    start_local(self);
  }
}

// Wall-clock µs as the engine stamps rows and leases (steady clock + offset).
std::int64_t wall_now_us(const run_services& svc) {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
             .count() +
         svc.wall_offset_us;
}

void refuse_lost_run(node_actor* self) {
  answer(self, task_result::failure("this engine no longer owns run " + self->state.args.run_id +
                                    ": the attempt was not started"));
}

// Cluster coordinators: an attempt (remote or local) starts only while this engine is sure it
// still owns the run (lease_registry::check). A coordinator frozen past its leases, or cut off
// from its database, asks the keeper to renew first: a run another engine claimed meanwhile is
// not run here again (its run actor is told `lost_atom` and stops); the others go on.
void start_task(node_actor* self) {
  auto& st = self->state;
  const auto& svc = st.services;
  if (!svc->dispatcher || !svc->leases || !svc->lease_keeper || st.args.here) {
    start_now(self);
    return;
  }
  using state = lease_registry::lease_state;
  const std::int64_t margin = svc->lease_ms * 1000 / 3;
  switch (svc->leases->check(st.args.run_id, wall_now_us(*svc), margin)) {
    case state::sure:
      start_now(self);
      return;
    case state::not_held:
      refuse_lost_run(self);
      return;
    case state::unsure:
      break;
  }
  const auto exec = st.args.exec;
  self->request(svc->lease_keeper,
                std::chrono::milliseconds(std::max<std::int64_t>(1000, svc->lease_ms)),
                renew_now_atom::value)
      .then(
          [self, exec](const std::vector<std::string>&) {
            auto& st = self->state;
            if (exec != st.args.exec || st.answered) {
              return;
            }
            // The renewal told the runs it lost (they stop); this one is still held, or not.
            start_task(self);
          },
          [self, exec](caf::error&) {
            auto& st = self->state;
            if (exec != st.args.exec || st.answered) {
              return;
            }
            // The store did not answer: ask again a tick later (a timer, not a loop).
            self->delayed_send(self,
                               std::chrono::milliseconds(std::max<std::int64_t>(
                                   10, st.services->lease_ms / 3)),
                               recheck_atom::value, exec);
          });
}

void start_local(node_actor* self) {
  auto& st = self->state;
  const auto& svc = st.services;
  const task_def& def = *st.args.task;
  caf::actor me = caf::actor_cast<caf::actor>(self);
  // Anything that reports from another thread goes through the actor's mailbox, tagged with
  // its attempt (a late report must not answer a later attempt of a reused actor). A task that
  // completes inside its own start() call (on this thread) is answered directly instead: the
  // thread-local marks "this actor is inside start()", so no other thread can take that path.
  auto report = [me, raw = self, exec = st.args.exec](task_result r) {
    if (detail_starting == raw) {
      raw->state.sync_result = std::move(r);
      return;
    }
    caf::anon_send(me, attempt_done{exec, std::move(r), false, {}, false, {}, {}, 0});
  };
  switch (def.kind) {
    case task_kind::quick:
    case task_kind::blocking: {
      auto task = st.args.task;
      auto input = st.args.input;
      auto run_id = st.args.run_id;
      auto node_id = st.args.node_id;
      auto item = st.args.item;
      auto attempt = st.args.attempt;
      auto policy = st.args.policy;
      boost::asio::post(*svc->blocking, [=] {
        task_call call{run_id, node_id, item, attempt, policy.get()};
        report(run_guarded(*task, *input, call));
      });
      break;
    }
    case task_kind::async: {
      task_call call{st.args.run_id, st.args.node_id, st.args.item, st.args.attempt,
                     st.args.policy.get()};
      detail_starting = self;
      try {
        def.start(*st.args.input, call, report);
      } catch (const std::exception& e) {
        st.sync_result = task_result::failure(std::string("task threw: ") + e.what());
      } catch (...) {
        st.sync_result = task_result::failure("task threw an unknown exception");
      }
      detail_starting = nullptr;
      if (st.sync_result) {
        answer(self, std::move(*st.sync_result));
      }
      break;
    }
    case task_kind::builtin:
      if (def.name == "sleep") {
        start_sleep(self);
      } else if (def.name == "shell") {
        const task_call call{st.args.run_id, st.args.node_id, st.args.item, st.args.attempt,
                             st.args.policy.get()};
        st.op = start_shell(*svc->io, *st.args.input, call, report);
      } else if (def.name == "http") {
        st.op = start_http(*svc->io, *st.args.input, st.args.policy, report);
      } else if (def.name == "workflow") {
        start_child_workflow(self, svc);
      } else {
        answer(self, task_result::failure("builtin task '" + def.name + "' has no implementation"));
      }
      break;
  }
}

caf::behavior node_behavior(node_actor* self, services_ptr svc, caf::actor run,
                            node_spawn_args args) {
  self->state.run = std::move(run);
  self->state.services = svc;
  begin(self, svc, std::move(args));
  return {
      [self, svc](node_spawn_args& next) { begin(self, svc, std::move(next)); },
      [self](node_step& step) {
        if (step.exec == self->state.args.exec && !self->state.answered) {
          step.run();
        }
      },
      [self](attempt_done& m) {
        if (m.exec == self->state.args.exec) {
          answer(self, std::move(m.result));
        }
      },
      [self](recheck_atom, std::uint64_t exec) {
        if (exec == self->state.args.exec && !self->state.answered) {
          start_task(self);
        }
      },
      [self](wake_atom, std::uint64_t exec) {
        if (exec == self->state.args.exec) {
          answer(self, task_result::success(nullptr));
        }
      },
      [self](run_done& m) {
        if (!self->state.child) {
          return;  // a child of an attempt that was already answered
        }
        const run_result& r = *m.result;
        self->state.child_persistence_error = r.persistence_error;
        if (r.status == run_status::succeeded) {
          answer(self, task_result::success(r.outputs));
        } else {
          answer(self, task_result::failure("child run " + r.run_id + " " +
                                            std::string(to_string(r.status)) + ": " + r.error));
        }
      },
      [self](attempt_placed& p) {
        auto& st = self->state;
        if (p.exec != st.args.exec || st.answered || !st.remote) {
          return;
        }
        st.worker = p.worker;
        st.lost = p.lost;
        const bool run_here = p.run_here;
        const bool again = p.again;
        if (p.lost > 0) {
          self->send(st.run, std::move(p));  // the run records the loss
        }
        if (run_here) {
          st.remote = false;
          start_local(self);
        } else if (again) {
          st.remote = false;
          start_task(self);
        }
      },
      [self](remote_result& m) {
        auto& st = self->state;
        if (m.exec != st.args.exec || st.answered || !st.remote) {
          return;
        }
        st.worker = std::move(m.worker);
        st.lost = m.lost;
        if (!m.report.ok) {
          answer(self, task_result::failure(std::move(m.report.error)));
          return;
        }
        auto out = wire::from_wire(m.report.output_json);
        if (!out) {
          answer(self, task_result::failure("worker " + st.worker + " sent an output that is " +
                                            out.error()));
          return;
        }
        answer(self, task_result::success(std::move(*out)));
      },
      [self](cancel_atom) {
        auto& st = self->state;
        if (st.remote && !st.answered) {
          self->send(st.services->dispatcher, cancel_atom::value, st.args.exec);
        }
        st.answered = true;  // the run has stopped listening
        if (st.op) {
          st.op->cancel();
        }
        if (st.child) {
          self->send(st.child, cancel_atom::value);
        }
        self->quit();
      },
  };
}

}  // namespace

void reuse_node(const caf::actor& node, caf::event_based_actor* run, node_spawn_args args) {
  run->send(node, std::move(args));
}

caf::actor start_node(const services_ptr& services, caf::event_based_actor* owner,
                      std::vector<caf::actor>& idle, node_spawn_args args) {
  if (idle.empty()) {
    return spawn_node(services, owner, std::move(args));
  }
  caf::actor node = std::move(idle.back());
  idle.pop_back();
  reuse_node(node, owner, std::move(args));
  return node;
}

caf::actor spawn_node(const services_ptr& services, caf::event_based_actor* run,
                      node_spawn_args args) {
  if (services->trace) {
    return trace::spawn_traced<node_actor, caf::monitored>(
        *run, services->trace.get(), node_behavior, services, caf::actor_cast<caf::actor>(run),
        std::move(args));
  }
  return run->spawn<caf::monitored>(node_behavior, services, caf::actor_cast<caf::actor>(run),
                                    std::move(args));
}

}  // namespace troupe
