#include "actors/dispatcher.hpp"

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include "actors/lease_keeper.hpp"
#include "actors/traced_actor.hpp"
#include "messages/messages.hpp"

namespace troupe {

bool offer_table::routes(std::string_view task) const {
  std::lock_guard lock(mutex_);
  return offered_->count(task) > 0 || remote_only_->count(task) > 0;
}

void offer_table::set_offered(task_set offered) {
  auto next = std::make_shared<const task_set>(std::move(offered));
  std::lock_guard lock(mutex_);
  offered_ = std::move(next);
}

void offer_table::set_remote_only(task_set names) {
  auto next = std::make_shared<const task_set>(std::move(names));
  std::lock_guard lock(mutex_);
  remote_only_ = std::move(next);
}

namespace {

struct worker_entry {
  caf::actor agent;
  std::string id;
  std::vector<std::string> tasks;
  std::int32_t capacity = 1;
  std::int32_t running = 0;                 // this dispatcher's orders on it
  std::unordered_set<std::uint64_t> orders;  // their ids
  bool offers(std::string_view task) const {
    return std::find(tasks.begin(), tasks.end(), task) != tasks.end();
  }
};

struct pending_attempt {
  wire::attempt_order order;  // order.id is the key; kept whole to place it again
  caf::actor proxy;           // the node actor standing in for it
  std::uint64_t exec = 0;     // the proxy's name for it
  caf::actor_addr on;         // the worker running it; null while it waits
};

struct dispatcher_state {
  dispatcher_config config;
  std::shared_ptr<offer_table> offers;
  std::shared_ptr<cluster_counters> counters;
  std::map<caf::actor_addr, worker_entry> workers;
  std::unordered_map<std::uint64_t, pending_attempt> attempts;
  std::map<std::pair<caf::actor_addr, std::uint64_t>, std::uint64_t> by_proxy;
  // Attempts no worker has room for, oldest first, by task (a cancel takes its entry out).
  std::unordered_map<std::string, std::deque<std::uint64_t>> waiting;
  std::uint64_t next_id = 1;
  static inline const char* name = "dispatcher";
};
using dispatcher_actor = caf::stateful_actor<dispatcher_state>;

void log_line(dispatcher_actor* self, const std::string& line) {
  if (self->state.config.log) {
    self->state.config.log(line);
  }
}

void publish_offers(dispatcher_actor* self) {
  offer_table::task_set all;
  for (const auto& [addr, w] : self->state.workers) {
    all.insert(w.tasks.begin(), w.tasks.end());
  }
  self->state.offers->set_offered(std::move(all));
  self->state.counters->workers = static_cast<std::int64_t>(self->state.workers.size());
}

// The worker with the most room (relative to its capacity) among those offering `task`, or null
// when each is full; `offered` says whether any offers it at all.
worker_entry* least_loaded(dispatcher_state& st, std::string_view task, bool& offered) {
  worker_entry* best = nullptr;
  offered = false;
  for (auto& [addr, w] : st.workers) {
    if (!w.offers(task)) {
      continue;
    }
    offered = true;
    if (w.running >= w.capacity) {
      continue;
    }
    // running/capacity < best.running/best.capacity, without division.
    if (best == nullptr || static_cast<std::int64_t>(w.running) * best->capacity <
                               static_cast<std::int64_t>(best->running) * w.capacity) {
      best = &w;
    }
  }
  return best;
}

void forget(dispatcher_state& st, std::unordered_map<std::uint64_t, pending_attempt>::iterator it) {
  st.by_proxy.erase({it->second.proxy.address(), it->second.exec});
  st.attempts.erase(it);
}

// Whether the engine is sure it owns the attempt's run now (always, without leases).
bool owned(const dispatcher_state& st, const pending_attempt& a) {
  if (!st.config.leases) {
    return true;
  }
  const auto now = std::chrono::duration_cast<std::chrono::microseconds>(
                       std::chrono::steady_clock::now().time_since_epoch())
                       .count() +
                   st.config.wall_offset_us;
  return st.config.leases->check(a.order.run_id, now, st.config.lease_ms * 1000 / 3) ==
         lease_registry::lease_state::sure;
}

void send_to(dispatcher_actor* self, worker_entry& w, pending_attempt& a) {
  auto& st = self->state;
  a.on = w.agent.address();
  ++w.running;
  w.orders.insert(a.order.id);
  ++st.counters->remote_in_flight;
  ++st.counters->dispatched;
  self->send(w.agent, a.order);
}

// Places attempt `id` (new, or back from a lost worker): on a worker with room, else it waits,
// else (no worker offers the task) it runs on the coordinator when the policy allows.
void place(dispatcher_actor* self, std::uint64_t id) {
  auto& st = self->state;
  auto it = st.attempts.find(id);
  if (it == st.attempts.end()) {
    return;
  }
  pending_attempt& a = it->second;
  if (!owned(st, a)) {
    // A coordinator that slept past its leases: its node actor renews before anything starts.
    self->send(a.proxy, attempt_placed{a.exec, std::string(), a.order.lost, false, true});
    forget(st, it);
    return;
  }
  bool offered = false;
  if (worker_entry* w = least_loaded(st, a.order.task, offered)) {
    send_to(self, *w, a);
    return;
  }
  if (!offered && st.config.no_worker == no_worker_policy::run_here) {
    ++st.counters->ran_here;
    self->send(a.proxy, attempt_placed{a.exec, std::string(), a.order.lost, true, false});
    forget(st, it);
    return;
  }
  st.waiting[a.order.task].push_back(id);
  ++st.counters->waiting;
}

// A worker has room again (a report, a cancel, a new worker): the oldest waiting attempts of the
// tasks it offers go to it.
void drain_waiting(dispatcher_actor* self, worker_entry& w) {
  auto& st = self->state;
  for (const auto& task : w.tasks) {
    auto q = st.waiting.find(task);
    while (q != st.waiting.end() && !q->second.empty() && w.running < w.capacity) {
      std::uint64_t id = q->second.front();
      q->second.pop_front();
      --st.counters->waiting;
      auto it = st.attempts.find(id);
      if (it == st.attempts.end() || it->second.on) {
        continue;
      }
      if (!owned(st, it->second)) {
        pending_attempt& a = it->second;
        self->send(a.proxy, attempt_placed{a.exec, std::string(), a.order.lost, false, true});
        forget(st, it);
        continue;
      }
      send_to(self, w, it->second);
    }
    if (q != st.waiting.end() && q->second.empty()) {
      st.waiting.erase(q);
    }
    if (w.running >= w.capacity) {
      return;
    }
  }
}

// Every attempt still waiting whose task nobody offers any more runs here (run_here policy).
void release_unoffered(dispatcher_actor* self) {
  auto& st = self->state;
  if (st.config.no_worker != no_worker_policy::run_here) {
    return;
  }
  std::vector<std::uint64_t> again;
  for (auto q = st.waiting.begin(); q != st.waiting.end();) {
    bool offered = false;
    least_loaded(st, q->first, offered);
    if (offered) {
      ++q;
      continue;
    }
    st.counters->waiting -= static_cast<std::int64_t>(q->second.size());
    again.insert(again.end(), q->second.begin(), q->second.end());
    q = st.waiting.erase(q);
  }
  for (auto id : again) {
    place(self, id);
  }
}

void worker_lost(dispatcher_actor* self, const caf::actor_addr& addr, const caf::error& reason) {
  auto& st = self->state;
  auto wit = st.workers.find(addr);
  if (wit == st.workers.end()) {
    return;
  }
  worker_entry w = std::move(wit->second);
  st.workers.erase(wit);
  publish_offers(self);
  log_line(self, "worker " + w.id + " lost (" + self->system().render(reason) + "), " +
                     std::to_string(w.orders.size()) + " attempts in flight dispatched again");
  // Their results can no longer arrive. Each goes back to its node actor, which dispatches it
  // again under the same execution key and attempt number (a loss is not a retry), once it is
  // sure its engine still owns the run.
  std::vector<std::uint64_t> ids(w.orders.begin(), w.orders.end());
  std::sort(ids.begin(), ids.end());
  for (auto id : ids) {
    auto it = st.attempts.find(id);
    if (it == st.attempts.end()) {
      continue;
    }
    --st.counters->remote_in_flight;
    ++st.counters->lost;
    pending_attempt& a = it->second;
    self->send(a.proxy, attempt_placed{a.exec, std::string(), a.order.lost + 1, false, true});
    forget(st, it);
  }
  release_unoffered(self);
}

caf::behavior dispatcher_behavior(dispatcher_actor* self, dispatcher_config config,
                                  std::shared_ptr<offer_table> offers,
                                  std::shared_ptr<cluster_counters> counters) {
  auto& st = self->state;
  st.config = std::move(config);
  st.offers = std::move(offers);
  st.counters = std::move(counters);
  // A stray message or an error reply must not end the dispatcher (CAF's default is to quit).
  self->set_default_handler(caf::drop);
  self->set_error_handler([](caf::error&) {});
  self->set_down_handler([self](caf::down_msg& dm) { worker_lost(self, dm.source, dm.reason); });
  return {
      [self](wire::worker_hello& hello) -> caf::result<wire::welcome> {
        auto& st = self->state;
        auto agent = caf::actor_cast<caf::actor>(self->current_sender());
        if (!agent) {
          return caf::make_error(caf::sec::invalid_argument, "hello without a sender");
        }
        if (hello.protocol != wire::protocol || hello.version != wire::version()) {
          log_line(self, "refused worker " + hello.worker_id + ": it runs troupe " +
                             hello.version + " protocol " + std::to_string(hello.protocol) +
                             ", this coordinator troupe " + std::string(wire::version()) +
                             " protocol " + std::to_string(wire::protocol));
          return caf::make_error(caf::sec::runtime_error,
                                 "troupe version mismatch: the coordinator runs " +
                                     wire::app_identifier());
        }
        worker_entry& w = st.workers[agent.address()];
        bool again = static_cast<bool>(w.agent);
        w.agent = agent;
        w.id = hello.worker_id;
        w.tasks = std::move(hello.tasks);
        w.capacity = std::max<std::int32_t>(1, hello.capacity);
        if (!again) {
          self->monitor(agent);
        }
        publish_offers(self);
        std::string tasks;
        for (const auto& t : w.tasks) {
          tasks += (tasks.empty() ? "" : ",") + t;
        }
        log_line(self, "worker " + w.id + " joined: capacity " + std::to_string(w.capacity) +
                           ", tasks " + tasks);
        drain_waiting(self, w);
        return wire::welcome{st.config.coordinator_id, st.config.heartbeat_ms,
                             st.config.connection_timeout_ms};
      },
      [self](remote_attempt& m) {
        auto& st = self->state;
        auto proxy = caf::actor_cast<caf::actor>(self->current_sender());
        if (!proxy) {
          return;
        }
        std::uint64_t id = st.next_id++;
        m.order.id = id;
        st.by_proxy[{proxy.address(), m.exec}] = id;
        st.attempts.emplace(id, pending_attempt{std::move(m.order), std::move(proxy), m.exec, {}});
        place(self, id);
      },
      [self](wire::attempt_report& r) {
        auto& st = self->state;
        auto it = st.attempts.find(r.id);
        auto from = caf::actor_cast<caf::actor_addr>(self->current_sender());
        if (it == st.attempts.end() || it->second.on != from) {
          return;  // cancelled meanwhile, or from a worker it was taken from
        }
        auto wit = st.workers.find(from);
        if (wit == st.workers.end()) {
          return;
        }
        worker_entry& w = wit->second;
        --w.running;
        w.orders.erase(r.id);
        --st.counters->remote_in_flight;
        pending_attempt& a = it->second;
        self->send(a.proxy, remote_result{a.exec, std::move(r), w.id, a.order.lost});
        forget(st, it);
        drain_waiting(self, w);
      },
      [self](cancel_atom, std::uint64_t exec) {
        auto& st = self->state;
        auto from = caf::actor_cast<caf::actor_addr>(self->current_sender());
        auto key = st.by_proxy.find({from, exec});
        if (key == st.by_proxy.end()) {
          return;
        }
        auto it = st.attempts.find(key->second);
        if (it == st.attempts.end()) {
          st.by_proxy.erase(key);
          return;
        }
        if (it->second.on) {
          if (auto wit = st.workers.find(it->second.on); wit != st.workers.end()) {
            worker_entry& w = wit->second;
            self->send(w.agent, wire::attempt_cancel{it->first});
            --w.running;
            w.orders.erase(it->first);
            --st.counters->remote_in_flight;
            forget(st, it);
            drain_waiting(self, w);
            return;
          }
        }
        // Waiting: out of its queue too (a task no worker ever offers must not keep them all).
        if (auto q = st.waiting.find(it->second.order.task); q != st.waiting.end()) {
          if (auto pos = std::find(q->second.begin(), q->second.end(), it->first);
              pos != q->second.end()) {
            q->second.erase(pos);
            --st.counters->waiting;
          }
          if (q->second.empty()) {
            st.waiting.erase(q);
          }
        }
        forget(st, it);
      },
  };
}

}  // namespace

caf::actor spawn_dispatcher(caf::actor_system& system, dispatcher_config config,
                            std::shared_ptr<offer_table> offers,
                            std::shared_ptr<cluster_counters> counters, trace::tracer* tracer) {
  if (tracer != nullptr) {
    return trace::spawn_traced<dispatcher_actor>(system, tracer, dispatcher_behavior,
                                                 std::move(config), std::move(offers),
                                                 std::move(counters));
  }
  return system.spawn(dispatcher_behavior, std::move(config), std::move(offers),
                      std::move(counters));
}

}  // namespace troupe
