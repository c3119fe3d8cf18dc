#pragma once

#include <cstdint>
#include <string>

#include <caf/fwd.hpp>

namespace troupe {

namespace trace {
class tracer;
}

/// Spawns the lease keeper of an engine: it knows which runs are alive here (every run actor
/// sends `own_atom, run_id, epoch, actor` when it starts and `release_atom, run_id, epoch`
/// when it ends) and, while there are any, renews their leases every lease_ms / 3 in one request to the
/// writer (`renew_atom`), off the callers' path. A run the store says this engine no longer
/// holds (another engine claimed it), or whose rows the store fenced (`lost_atom,
/// std::vector<std::string>` from the writer's hook), is sent `lost_atom, why` and forgotten. A
/// renewal that fails (database down) is tried again at the next tick; while it fails, leases
/// run out and another engine may claim the runs: their next writes are then fenced.
/// Nothing ticks while no run is alive.
caf::actor spawn_lease_keeper(caf::actor_system& sys, caf::actor writer, std::string owner,
                              std::int64_t lease_ms, trace::tracer* trace = nullptr);

}  // namespace troupe
