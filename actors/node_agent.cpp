#include "actors/node_agent.hpp"

#include <algorithm>
#include <deque>
#include <map>
#include <unordered_map>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/stateful_actor.hpp>

#include "actors/traced_actor.hpp"
#include "messages/messages.hpp"

namespace troupe {

namespace {

/// The agent's timer for one link: `reconnect_atom, link index, generation`.
using reconnect_atom = caf::atom_constant<caf::atom("tr_recon")>;

struct link_state {
  cluster_endpoint at;
  caf::actor dispatcher;  // valid from a successful connect until the link is lost
  enum class phase { idle, connecting, hello, joined } step = phase::idle;
  // Bumped by every connect: replies and timers of an older one are ignored.
  std::uint64_t generation = 0;
  std::chrono::milliseconds backoff{0};
  bool failing = false;  // the last try failed (say so once, not at every retry)
};

struct running_order {
  std::size_t link = 0;
  std::uint64_t wire_id = 0;
  caf::actor node;
};

struct queued_order {
  std::size_t link = 0;
  wire::attempt_order order;
};

struct agent_state {
  agent_config config;
  services_ptr services;
  std::function<void(const cluster_link_event&)> on_event;
  std::vector<link_state> links;
  std::unordered_map<std::uint64_t, running_order> running;  // by local exec
  std::map<std::pair<std::size_t, std::uint64_t>, std::uint64_t> by_wire;  // (link, id) -> exec
  std::deque<queued_order> queue;  // orders beyond capacity, oldest first
  std::vector<caf::actor> idle_nodes;
  std::unordered_map<caf::actor_addr, std::uint64_t> exec_of_node;  // busy node actors
  std::uint64_t next_exec = 1;
  static inline const char* name = "node_agent";
};
using agent_actor = caf::stateful_actor<agent_state>;

void emit(agent_actor* self, cluster_link_event::kind what, std::size_t link, std::string text) {
  if (self->state.on_event) {
    self->state.on_event(
        cluster_link_event{what, self->state.links[link].at.text(), std::move(text)});
  }
}

bool is_system_error(const caf::error& e, caf::sec code) {
  return e.category() == caf::atom("system") && e.code() == static_cast<std::uint8_t>(code);
}

void connect(agent_actor* self, std::size_t i);

void retry_later(agent_actor* self, std::size_t i, std::chrono::milliseconds delay) {
  auto& l = self->state.links[i];
  l.step = link_state::phase::idle;
  self->delayed_send(self, delay, reconnect_atom::value, static_cast<std::uint64_t>(i),
                     l.generation);
}

void failed(agent_actor* self, std::size_t i, const std::string& why) {
  auto& st = self->state;
  auto& l = st.links[i];
  if (!l.failing) {
    emit(self, cluster_link_event::kind::unreachable, i, why);
  }
  l.failing = true;
  l.backoff = std::clamp(l.backoff * 2, st.config.backoff_min, st.config.backoff_max);
  retry_later(self, i, l.backoff);
}

void version_refused(agent_actor* self, std::size_t i, const std::string& why) {
  auto& l = self->state.links[i];
  l.failing = true;
  emit(self, cluster_link_event::kind::version_refused, i, why);
  retry_later(self, i, self->state.config.refused_retry);
}

void report(agent_actor* self, std::size_t link, std::uint64_t wire_id, const task_result& r) {
  auto& l = self->state.links[link];
  if (!l.dispatcher) {
    return;
  }
  wire::attempt_report m;
  m.id = wire_id;
  m.ok = r.ok;
  if (r.ok) {
    m.output_json = wire::to_wire(r.output);
  } else {
    m.error = r.error;
  }
  self->send(l.dispatcher, std::move(m));
}

void start(agent_actor* self, std::size_t link, wire::attempt_order& order) {
  auto& st = self->state;
  auto def = st.services->tasks()->find_shared(order.task);
  if (!def) {
    report(self, link, order.id,
           task_result::failure("task '" + order.task + "' is not registered on worker " +
                                st.config.worker_id));
    return;
  }
  auto input = wire::from_wire(order.input_json);
  if (!input) {
    report(self, link, order.id,
           task_result::failure("worker " + st.config.worker_id + " got an input that is " +
                                input.error()));
    return;
  }
  node_spawn_args a;
  a.exec = st.next_exec++;
  a.task = std::move(def);
  a.input = make_json(std::move(*input));
  a.run_id = std::move(order.run_id);
  a.node_id = std::move(order.node_id);
  a.item = order.item;
  a.attempt = order.attempt;
  a.policy = wire::policy_of(order);
  a.here = true;
  const std::uint64_t exec = a.exec;
  caf::actor node = start_node(st.services, self, st.idle_nodes, std::move(a));
  st.exec_of_node[node.address()] = exec;
  st.by_wire[{link, order.id}] = exec;
  st.running.emplace(exec, running_order{link, order.id, std::move(node)});
}

void start_queued(agent_actor* self) {
  auto& st = self->state;
  while (!st.queue.empty() &&
         st.running.size() < static_cast<std::size_t>(std::max(1, st.config.capacity))) {
    queued_order q = std::move(st.queue.front());
    st.queue.pop_front();
    start(self, q.link, q.order);
  }
}

void finished(agent_actor* self, std::uint64_t exec, const task_result* result) {
  auto& st = self->state;
  auto it = st.running.find(exec);
  if (it == st.running.end()) {
    return;
  }
  running_order r = std::move(it->second);
  st.running.erase(it);
  st.by_wire.erase({r.link, r.wire_id});
  st.exec_of_node.erase(r.node.address());
  if (result != nullptr) {
    report(self, r.link, r.wire_id, *result);
    st.idle_nodes.push_back(std::move(r.node));  // it answered and waits for more work
  } else {
    self->send(r.node, cancel_atom::value);  // it quits
  }
  start_queued(self);
}

void lost(agent_actor* self, std::size_t i, const caf::error& reason) {
  auto& st = self->state;
  auto& l = st.links[i];
  const bool was_joined = l.step == link_state::phase::joined;
  l.dispatcher = caf::actor{};
  std::vector<std::uint64_t> doomed;
  for (const auto& [exec, r] : st.running) {
    if (r.link == i) {
      doomed.push_back(exec);
    }
  }
  for (auto exec : doomed) {
    finished(self, exec, nullptr);
  }
  std::erase_if(st.queue, [i](const queued_order& q) { return q.link == i; });
  if (was_joined) {
    emit(self, cluster_link_event::kind::lost, i,
         self->system().render(reason) + ", " + std::to_string(doomed.size()) +
             " attempts cancelled");
    l.failing = false;
    l.backoff = st.config.backoff_min;
    retry_later(self, i, l.backoff);
  } else {
    failed(self, i, self->system().render(reason));
  }
}

void hello(agent_actor* self, std::size_t i, caf::actor dispatcher) {
  auto& st = self->state;
  auto& l = st.links[i];
  if (l.dispatcher != dispatcher) {
    self->monitor(dispatcher);
  }
  l.dispatcher = dispatcher;
  l.step = link_state::phase::hello;
  const auto gen = l.generation;
  wire::worker_hello h{wire::protocol, std::string(wire::version()), st.config.worker_id,
                       st.config.offer, std::max(1, st.config.capacity)};
  self->request(dispatcher, st.config.connect_timeout, std::move(h))
      .then(
          [self, i, gen](wire::welcome& w) {
            auto& st = self->state;
            auto& l = st.links[i];
            if (l.generation != gen || l.step != link_state::phase::hello) {
              return;
            }
            l.step = link_state::phase::joined;
            l.failing = false;
            l.backoff = st.config.backoff_min;
            std::string text = w.coordinator_id;
            if (w.heartbeat_ms != st.config.heartbeat_ms ||
                w.connection_timeout_ms != st.config.connection_timeout_ms) {
              text += "; warning: its heartbeat " + std::to_string(w.heartbeat_ms) +
                      " ms and connection timeout " + std::to_string(w.connection_timeout_ms) +
                      " ms differ from this node's " + std::to_string(st.config.heartbeat_ms) +
                      " ms and " + std::to_string(st.config.connection_timeout_ms) + " ms";
            }
            emit(self, cluster_link_event::kind::joined, i, std::move(text));
          },
          [self, i, gen](caf::error& e) {
            auto& l = self->state.links[i];
            if (l.generation != gen || l.step != link_state::phase::hello) {
              return;
            }
            const std::string why = self->system().render(e);
            if (why.find("version mismatch") != std::string::npos) {
              version_refused(self, i, why);
            } else {
              failed(self, i, "no answer to hello: " + why);
            }
          });
}

void connect(agent_actor* self, std::size_t i) {
  auto& st = self->state;
  auto& l = st.links[i];
  l.step = link_state::phase::connecting;
  const auto gen = ++l.generation;
  // The middleman actor connects on its own thread; this actor only waits for its answer.
  self->request(self->system().middleman().actor_handle(), st.config.connect_timeout,
                caf::connect_atom::value, l.at.host, l.at.port)
      .then(
          [self, i, gen](caf::node_id&, caf::strong_actor_ptr& ptr, std::set<std::string>&) {
            auto& l = self->state.links[i];
            if (l.generation != gen) {
              return;
            }
            if (!ptr) {
              failed(self, i, "nothing is published at that port");
              return;
            }
            hello(self, i, caf::actor_cast<caf::actor>(ptr));
          },
          [self, i, gen](caf::error& e) {
            auto& l = self->state.links[i];
            if (l.generation != gen) {
              return;
            }
            if (is_system_error(e, caf::sec::incompatible_application_ids)) {
              version_refused(self, i,
                              "it runs another troupe version or cluster protocol (this node is " +
                                  wire::app_identifier() + ")");
              return;
            }
            failed(self, i, self->system().render(e));
          });
}

caf::behavior agent_behavior(agent_actor* self, services_ptr services, agent_config config,
                             std::function<void(const cluster_link_event&)> on_event) {
  auto& st = self->state;
  st.services = std::move(services);
  st.config = std::move(config);
  st.on_event = std::move(on_event);
  for (const auto& at : st.config.join) {
    link_state l;
    l.at = at;
    l.backoff = st.config.backoff_min;
    st.links.push_back(std::move(l));
  }
  self->set_default_handler(caf::drop);
  self->set_error_handler([](caf::error&) {});
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    if (auto it = st.exec_of_node.find(dm.source); it != st.exec_of_node.end()) {
      // A node actor ended without answering (an exception escaped it).
      auto exec = it->second;
      auto r = st.running.find(exec);
      if (r != st.running.end()) {
        report(self, r->second.link, r->second.wire_id,
               task_result::failure("node actor ended without a result: " +
                                    self->system().render(dm.reason)));
        st.by_wire.erase({r->second.link, r->second.wire_id});
        st.running.erase(r);
      }
      st.exec_of_node.erase(it);
      start_queued(self);
      return;
    }
    std::erase_if(st.idle_nodes, [&](const caf::actor& a) { return a.address() == dm.source; });
    for (std::size_t i = 0; i < st.links.size(); ++i) {
      if (st.links[i].dispatcher && st.links[i].dispatcher.address() == dm.source) {
        lost(self, i, dm.reason);
      }
    }
  });
  for (std::size_t i = 0; i < st.links.size(); ++i) {
    connect(self, i);
  }
  return {
      [self](reconnect_atom, std::uint64_t i, std::uint64_t gen) {
        auto& st = self->state;
        if (i < st.links.size() && st.links[i].generation == gen &&
            st.links[i].step == link_state::phase::idle) {
          connect(self, i);
        }
      },
      [self](wire::attempt_order& order) {
        auto& st = self->state;
        auto from = caf::actor_cast<caf::actor_addr>(self->current_sender());
        for (std::size_t i = 0; i < st.links.size(); ++i) {
          if (st.links[i].dispatcher && st.links[i].dispatcher.address() == from) {
            if (st.running.size() < static_cast<std::size_t>(std::max(1, st.config.capacity))) {
              start(self, i, order);
            } else {
              st.queue.push_back(queued_order{i, std::move(order)});
            }
            return;
          }
        }
      },
      [self](wire::attempt_cancel& c) {
        auto& st = self->state;
        auto from = caf::actor_cast<caf::actor_addr>(self->current_sender());
        for (std::size_t i = 0; i < st.links.size(); ++i) {
          if (!st.links[i].dispatcher || st.links[i].dispatcher.address() != from) {
            continue;
          }
          if (auto it = st.by_wire.find({i, c.id}); it != st.by_wire.end()) {
            finished(self, it->second, nullptr);
          } else {
            std::erase_if(st.queue, [&](const queued_order& q) {
              return q.link == i && q.order.id == c.id;
            });
          }
          return;
        }
      },
      [self](attempt_done& m) { finished(self, m.exec, &m.result); },
  };
}

}  // namespace

caf::actor spawn_node_agent(const services_ptr& services, agent_config config,
                            std::function<void(const cluster_link_event&)> on_event) {
  auto& sys = *services->system;
  if (services->trace) {
    return trace::spawn_traced<agent_actor>(sys, services->trace.get(), agent_behavior, services,
                                            std::move(config), std::move(on_event));
  }
  return sys.spawn(agent_behavior, services, std::move(config), std::move(on_event));
}

}  // namespace troupe
