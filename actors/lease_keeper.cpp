#include "actors/lease_keeper.hpp"

#include <chrono>
#include <cstdio>
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
  std::shared_ptr<lease_registry> runs;
  bool ticking = false;   // a renew_due message is on its way
  bool renewing = false;  // a renewal is out
  // Asked for a renewal now (renew_now_atom): answered when the next renewal completes.
  std::vector<caf::typed_response_promise<std::vector<std::string>>> waiters;
  static inline const char* name = "lease_keeper";
};
using keeper_actor = caf::stateful_actor<keeper_state>;

void tick_later(keeper_actor* self) {
  auto& st = self->state;
  if (st.ticking) {
    return;
  }
  st.ticking = true;
  self->delayed_send(self, std::chrono::milliseconds(std::max<std::int64_t>(1, st.lease_ms / 3)),
                     renew_due_atom::value);
}

void tell_lost(keeper_actor* self, const std::vector<std::string>& ids, const std::string& why) {
  auto lost = self->state.runs->take(ids);
  if (lost.empty()) {
    return;
  }
  std::string names;
  for (std::size_t i = 0; i < lost.size() && i < 10; ++i) {
    names += (i == 0 ? "" : ", ") + lost[i].run_id.str();
  }
  if (lost.size() > 10) {
    names += ", ...";
  }
  // The operator's one sign that this process was frozen or cut off past its leases.
  std::fprintf(stderr, "troupe: %zu runs stop here without writing (%s): %s\n", lost.size(),
               why.c_str(), names.c_str());
  for (auto& h : lost) {
    self->send(h.run, lost_atom::value, "run " + h.run_id + " " + why);
  }
}

// One renewal of every registered run, now; answers whoever asked for it (renew_now_atom).
// False when no run is registered (nothing to renew: the keeper goes idle).
bool renew(keeper_actor* self) {
  auto& st = self->state;
  auto held = st.runs->held_or_idle();
  if (held.empty()) {
    for (auto& w : st.waiters) {
      w.deliver(std::vector<std::string>{});
    }
    st.waiters.clear();
    return false;  // idle until a run registers and wakes it
  }
  lease_renewal r;
  r.owner = st.owner;
  r.lease_until_us = wall_us() + st.lease_ms * 1000;
  const auto until = r.lease_until_us;
  r.runs.reserve(held.size());
  for (const auto& h : held) {
    r.runs.push_back(lease_ref{h.run_id.str(), h.epoch});
  }
  st.renewing = true;
  auto waiters = std::move(st.waiters);
  st.waiters.clear();
  self->request(st.writer, std::chrono::milliseconds(std::max<std::int64_t>(1000, st.lease_ms)),
                renew_atom::value, std::move(r))
      .then(
          [self, until, waiters](const std::vector<std::string>& lost) mutable {
            self->state.renewing = false;
            tell_lost(self, lost, "lost its ownership: another engine claimed it");
            // Told first: an asker hears of its run's loss from the run itself, not only here.
            self->state.runs->confirmed(until);
            for (auto& w : waiters) {
              w.deliver(lost);
            }
            tick_later(self);
            if (!self->state.waiters.empty()) {
              renew(self);  // asked for during this renewal
            }
          },
          [self, waiters](caf::error& e) mutable {
            // Tried again at the next tick; the leases last three ticks.
            self->state.renewing = false;
            std::fprintf(stderr, "troupe: lease renewal failed: %s\n",
                         self->system().render(e).c_str());
            for (auto& w : waiters) {
              w.deliver(e);
            }
            tick_later(self);
          });
  return true;
}

caf::behavior keeper_behavior(keeper_actor* self, caf::actor writer, std::string owner,
                              std::int64_t lease_ms, std::shared_ptr<lease_registry> registry) {
  auto& st = self->state;
  st.writer = std::move(writer);
  st.owner = std::move(owner);
  st.lease_ms = lease_ms;
  st.runs = std::move(registry);
  return {
      [self](own_atom) { tick_later(self); },
      [self](lost_atom, const std::vector<std::string>& runs) {
        tell_lost(self, runs,
                  "lost its ownership: another engine claimed it, and this engine's rows were "
                  "refused");
      },
      [self](renew_now_atom) -> caf::result<std::vector<std::string>> {
        auto& st = self->state;
        auto rp = self->make_response_promise<std::vector<std::string>>();
        st.waiters.push_back(rp);
        if (!st.renewing) {
          renew(self);
        }
        return rp;
      },
      [self](renew_due_atom) {
        auto& st = self->state;
        st.ticking = false;
        if (st.renewing) {
          tick_later(self);
          return;
        }
        if (renew(self)) {
          tick_later(self);
        }
      },
  };
}

}  // namespace

bool lease_registry::own(const shared_text& run_id, std::int64_t epoch, caf::actor run,
                         std::int64_t lease_until_us) {
  std::lock_guard lock(mutex_);
  held h{run_id, epoch, std::move(run), lease_until_us};
  std::string_view key = h.run_id;
  runs_.erase(key);  // the old value's buffer may back the old key: replace both
  runs_.emplace(key, std::move(h));
  bool wake = keeper_idle_;
  keeper_idle_ = false;
  return wake;
}

void lease_registry::confirmed(std::int64_t lease_until_us) {
  auto seen = confirmed_until_us_.load();
  while (seen < lease_until_us &&
         !confirmed_until_us_.compare_exchange_weak(seen, lease_until_us)) {
  }
}

lease_registry::lease_state lease_registry::check(std::string_view run_id, std::int64_t now_us,
                                                 std::int64_t margin_us) const {
  std::int64_t until = confirmed_until_us_.load();
  std::lock_guard lock(mutex_);
  auto it = runs_.find(run_id);
  if (it == runs_.end()) {
    return lease_state::not_held;
  }
  until = std::max(until, it->second.lease_until_us);
  return until - margin_us > now_us ? lease_state::sure : lease_state::unsure;
}

void lease_registry::release(std::string_view run_id, std::int64_t epoch) {
  std::lock_guard lock(mutex_);
  if (auto it = runs_.find(run_id); it != runs_.end() && it->second.epoch == epoch) {
    runs_.erase(it);
  }
}

std::vector<lease_registry::held> lease_registry::held_or_idle() {
  std::lock_guard lock(mutex_);
  std::vector<held> out;
  out.reserve(runs_.size());
  for (const auto& [key, h] : runs_) {
    out.push_back(h);
  }
  keeper_idle_ = out.empty();
  return out;
}

std::vector<lease_registry::held> lease_registry::take(const std::vector<std::string>& run_ids) {
  std::lock_guard lock(mutex_);
  std::vector<held> out;
  for (const auto& id : run_ids) {
    if (auto it = runs_.find(std::string_view(id)); it != runs_.end()) {
      out.push_back(std::move(it->second));
      runs_.erase(it);
    }
  }
  return out;
}

std::size_t lease_registry::size() const {
  std::lock_guard lock(mutex_);
  return runs_.size();
}

caf::actor spawn_lease_keeper(caf::actor_system& sys, caf::actor writer, std::string owner,
                              std::int64_t lease_ms, std::shared_ptr<lease_registry> registry,
                              trace::tracer* trace) {
  if (trace != nullptr) {
    return trace::spawn_traced<keeper_actor>(sys, trace, keeper_behavior, std::move(writer),
                                             std::move(owner), lease_ms, std::move(registry));
  }
  return sys.spawn(keeper_behavior, std::move(writer), std::move(owner), lease_ms,
                   std::move(registry));
}

}  // namespace troupe
