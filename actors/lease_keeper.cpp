#include "actors/lease_keeper.hpp"

#include <chrono>
#include <cstdio>
#include <unordered_map>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include "actors/traced_actor.hpp"
#include "messages/messages.hpp"

namespace troupe {

namespace {

std::int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct keeper_state {
  caf::actor writer;
  std::string owner;
  std::int64_t lease_ms = 0;
  struct held {
    std::int64_t epoch;
    caf::actor run;
  };
  std::unordered_map<std::string, held> runs;
  bool ticking = false;   // a renew_due message is on its way
  bool renewing = false;  // a renewal is out
  static inline const char* name = "lease_keeper";
};
using keeper_actor = caf::stateful_actor<keeper_state>;

void tick_later(keeper_actor* self) {
  auto& st = self->state;
  if (st.ticking || st.runs.empty()) {
    return;
  }
  st.ticking = true;
  self->delayed_send(self, std::chrono::milliseconds(std::max<std::int64_t>(1, st.lease_ms / 3)),
                     renew_due_atom::value);
}

void tell_lost(keeper_actor* self, const std::vector<std::string>& ids, const std::string& why) {
  auto& st = self->state;
  for (const auto& id : ids) {
    auto it = st.runs.find(id);
    if (it == st.runs.end()) {
      continue;
    }
    self->send(it->second.run, lost_atom::value, "run " + id + " " + why);
    st.runs.erase(it);
  }
}

caf::behavior keeper_behavior(keeper_actor* self, caf::actor writer, std::string owner,
                              std::int64_t lease_ms) {
  auto& st = self->state;
  st.writer = std::move(writer);
  st.owner = std::move(owner);
  st.lease_ms = lease_ms;
  return {
      [self](own_atom, const std::string& run, std::int64_t epoch, const caf::actor& actor) {
        self->state.runs.insert_or_assign(run, keeper_state::held{epoch, actor});
        tick_later(self);
      },
      [self](release_atom, const std::string& run, std::int64_t epoch) {
        // Only the registration of that epoch: a resume may have registered the run anew.
        auto& runs = self->state.runs;
        if (auto it = runs.find(run); it != runs.end() && it->second.epoch == epoch) {
          runs.erase(it);
        }
      },
      [self](lost_atom, const std::vector<std::string>& runs) {
        tell_lost(self, runs,
                  "lost its ownership: another engine claimed it, and this engine's rows were "
                  "refused");
      },
      [self](renew_due_atom) {
        auto& st = self->state;
        st.ticking = false;
        if (st.runs.empty() || st.renewing) {
          tick_later(self);
          return;
        }
        lease_renewal r;
        r.owner = st.owner;
        r.lease_until_us = wall_us() + st.lease_ms * 1000;
        r.runs.reserve(st.runs.size());
        for (const auto& [id, h] : st.runs) {
          r.runs.push_back(lease_ref{id, h.epoch});
        }
        st.renewing = true;
        self->request(st.writer,
                      std::chrono::milliseconds(std::max<std::int64_t>(1000, st.lease_ms)),
                      renew_atom::value, std::move(r))
            .then(
                [self](const std::vector<std::string>& lost) {
                  self->state.renewing = false;
                  tell_lost(self, lost, "lost its ownership: another engine claimed it");
                  tick_later(self);
                },
                [self](caf::error& e) {
                  // Tried again at the next tick; the leases last three ticks.
                  self->state.renewing = false;
                  std::fprintf(stderr, "troupe: lease renewal failed: %s\n",
                               self->system().render(e).c_str());
                  tick_later(self);
                });
        tick_later(self);
      },
  };
}

}  // namespace

caf::actor spawn_lease_keeper(caf::actor_system& sys, caf::actor writer, std::string owner,
                              std::int64_t lease_ms, trace::tracer* trace) {
  if (trace != nullptr) {
    return trace::spawn_traced<keeper_actor>(sys, trace, keeper_behavior, std::move(writer),
                                             std::move(owner), lease_ms);
  }
  return sys.spawn(keeper_behavior, std::move(writer), std::move(owner), lease_ms);
}

}  // namespace troupe
