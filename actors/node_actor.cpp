#include <chrono>
#include <exception>
#include <optional>
#include <utility>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include "actors/builtin/operation.hpp"
#include "actors/run_actor.hpp"
#include "messages/messages.hpp"

namespace troupe {

namespace {

// One in-flight attempt of a task that takes time. Lives until it has answered its run, or
// until the run cancels it. Work that happens elsewhere (an I/O thread, the blocking pool, a
// user's callback) reports back with anon_send to this actor, so the answer to the run always
// leaves from the actor's own thread.
struct node_actor_state {
  node_spawn_args args;
  caf::actor run;
  operation_ptr op;  // shell, http
  caf::actor child;  // workflow
  bool answered = false;
  std::optional<task_result> sync_result;  // set when a task completed inside start()

  static inline const char* name = "node";
};
using node_actor = caf::stateful_actor<node_actor_state>;

// The node actor currently inside a task's start() on this thread, if any.
thread_local node_actor* detail_starting = nullptr;

// After answering, the actor stays alive and idle: its run may hand it the next attempt
// (`node_spawn_args`). Terminating a CAF 0.17 actor wakes the clock thread and the registry's
// condition variable, which cost more than the attempt itself for a task that completes at once.
void answer(node_actor* self, task_result r) {
  auto& st = self->state;
  if (st.answered) {
    return;
  }
  st.answered = true;
  st.op.reset();
  st.child = caf::actor{};
  self->send(st.run, attempt_done{st.args.exec, std::move(r)});
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
  if (v < 0) {
    answer(self, task_result::failure("sleep: 'ms' must be a number >= 0"));
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
  if (st.args.depth + 1 > svc->max_workflow_depth) {
    answer(self, task_result::failure("workflow: nesting deeper than " +
                                      std::to_string(svc->max_workflow_depth) +
                                      " levels (max_workflow_depth)"));
    return;
  }
  plan_ptr p = svc->find_workflow(name->as_string(), version);
  if (!p) {
    answer(self, task_result::failure(
                     "workflow: no registered workflow '" + std::string(name->as_string()) + "'" +
                     (version.empty() ? "" : " version '" + std::string(version) + "'")));
    return;
  }
  json::object given;
  if (const json::value* i = o->if_contains("inputs")) {
    if (!i->is_object()) {
      answer(self, task_result::failure("workflow: 'inputs' must be an object"));
      return;
    }
    given = i->as_object();
  }
  auto bound = bind_inputs(*p, given);
  if (!bound) {
    std::string msg = "workflow: bad inputs for '" + p->name + "':";
    for (const auto& e : bound.error()) {
      msg += " " + e.pointer + ": " + e.message + ";";
    }
    answer(self, task_result::failure(std::move(msg)));
    return;
  }
  run_spawn_args a;
  a.plan = std::move(p);
  a.inputs = std::move(*bound);
  a.options.run_id = svc->new_run_id();
  a.depth = st.args.depth + 1;
  st.child = spawn_run(svc, std::move(a), caf::actor_cast<caf::actor>(self));
}

void begin(node_actor* self, const services_ptr& svc, node_spawn_args args) {
  auto& st = self->state;
  st.args = std::move(args);
  st.answered = false;
  st.sync_result.reset();
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
    caf::anon_send(me, attempt_done{exec, std::move(r)});
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
      boost::asio::post(*svc->blocking, [=] {
        task_call call{run_id, node_id, item, attempt};
        report(run_guarded(*task, *input, call));
      });
      break;
    }
    case task_kind::async: {
      task_call call{st.args.run_id, st.args.node_id, st.args.item, st.args.attempt};
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
        st.op = start_shell(*svc->io, *st.args.input, report);
      } else if (def.name == "http") {
        st.op = start_http(*svc->io, *st.args.input, report);
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
  begin(self, svc, std::move(args));
  return {
      [self, svc](node_spawn_args& next) { begin(self, svc, std::move(next)); },
      [self](attempt_done& m) {
        if (m.exec == self->state.args.exec) {
          answer(self, std::move(m.result));
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
        if (r.status == run_status::succeeded) {
          answer(self, task_result::success(r.outputs));
        } else {
          answer(self, task_result::failure("child run " + r.run_id + " " +
                                            std::string(to_string(r.status)) + ": " + r.error));
        }
      },
      [self](cancel_atom) {
        auto& st = self->state;
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

caf::actor spawn_node(const services_ptr& services, caf::event_based_actor* run,
                      node_spawn_args args) {
  return run->spawn<caf::monitored>(node_behavior, services, caf::actor_cast<caf::actor>(run),
                                    std::move(args));
}

}  // namespace troupe
