#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/unordered/unordered_flat_map.hpp>
#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include "workflow/shared_text.hpp"

namespace troupe {

namespace trace {
class tracer;
}

/// The runs alive in one engine whose leases it renews. Run actors add themselves when they
/// start and remove themselves when they end, each on its own thread, with no message; the
/// lease keeper reads the set on each of its ticks. Thread-safe (one mutex, held for a map
/// operation). It also knows whether the keeper is idle: the first run registered after the keeper
/// found the set empty must wake it (`own()` says so) — nothing ticks while no run is alive.
class lease_registry {
 public:
  struct held {
    shared_text run_id;
    std::int64_t epoch = 0;
    caf::actor run;
    /// Wall-clock µs until which the run is known to be this engine's without any renewal: the
    /// lease it was started or claimed with (0: unknown).
    std::int64_t lease_until_us = 0;
  };

  /// Registers `run_id` under `epoch` (replacing an older registration of it), started or
  /// claimed with a lease up to `lease_until_us`. Returns true when the caller must wake the
  /// keeper (send it `own_atom`).
  bool own(const shared_text& run_id, std::int64_t epoch, caf::actor run,
           std::int64_t lease_until_us = 0);
  /// The keeper's renewal of every registered run succeeded up to `lease_until_us`.
  void confirmed(std::int64_t lease_until_us);
  /// Whether this engine may start an attempt of `run_id` at `now_us`: `sure` when the run's own
  /// lease or the last renewal reaches past now + `margin_us`; `unsure` when neither does (a
  /// process frozen past its leases, or cut off from its database: renew first, renew_now_atom,
  /// since another engine may have claimed the run meanwhile); `not_held` when the run is not
  /// registered here (it ended, or it was lost: never start anything of it).
  enum class lease_state { sure, unsure, not_held };
  lease_state check(std::string_view run_id, std::int64_t now_us, std::int64_t margin_us) const;
  /// Removes the registration of `run_id` made under `epoch` only: a resume may have registered
  /// the run anew under a later one.
  void release(std::string_view run_id, std::int64_t epoch);
  /// The keeper's tick: the runs registered now. Empty means the keeper goes idle, and the next
  /// own() asks for it to be woken.
  std::vector<held> held_or_idle();
  /// Removes the given runs and returns their registrations (those still registered).
  std::vector<held> take(const std::vector<std::string>& run_ids);
  std::size_t size() const;

 private:
  mutable std::mutex mutex_;
  // Keys view the run id's shared buffer, which the value holds: stable while it is stored.
  boost::unordered_flat_map<std::string_view, held> runs_;
  bool keeper_idle_ = true;
  std::atomic<std::int64_t> confirmed_until_us_{0};
};

/// Spawns the lease keeper of an engine: while `registry` holds runs, it renews their leases
/// every lease_ms / 3 in one request to the writer (`renew_atom`), off the callers' path. It
/// accepts `renew_now_atom` (renew at once; answers the runs no longer held, or an error: for an
/// actor that is not sure of its lease, lease_registry::check), `own_atom` (runs were
/// registered while it was idle: start ticking) and `lost_atom, std::vector<std::string>` (runs
/// whose rows the store fenced, from the writer's hook). A run
/// the store says this engine no longer holds (another engine claimed it) or whose rows were
/// fenced is removed from the registry and sent `lost_atom, why`. A renewal that fails (database
/// down) is tried again at the next tick; while it fails, leases run out and another engine may
/// claim the runs: their next writes are then fenced.
caf::actor spawn_lease_keeper(caf::actor_system& sys, caf::actor writer, std::string owner,
                              std::int64_t lease_ms, std::shared_ptr<lease_registry> registry,
                              trace::tracer* trace = nullptr);

}  // namespace troupe
