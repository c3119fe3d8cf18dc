#pragma once

// Run ownership for the engine (DESIGN.md, "Ownership, leases and fencing"): who this engine
// is, whether the owner of a stored run is provably gone, and claiming a run before it is
// resumed. No CAF here; blocking (store calls).

#include <cstdint>
#include <string>
#include <string_view>

#include "persistence/store.hpp"
#include "runtime/detail/query_store.hpp"
#include "workflow/expected.hpp"
#include "workflow/ownership.hpp"
#include "workflow/plan.hpp"

namespace troupe {

/// This process as an engine identity: host name (with the boot id and pid namespace, so that
/// pids compare only where they mean the same process: "name~bootid~pidns"), pid, and the
/// process's start time after boot in µs (/proc, fixed for the life of a process), so that
/// another process of the same host can tell whether it still runs.
engine_identity this_process_identity();

/// Whether the engine named by `owner` ("host/pid/start_us") is known to be gone: it ran on
/// this host and that process no longer exists (or the pid now belongs to a process started at
/// another time). False for other hosts and for text that is not an identity: only their
/// leases can tell.
bool owner_gone(std::string_view owner);

/// Wall-clock microseconds.
std::int64_t wall_now_us();

/// Takes `run` over for this engine (`me`): when its lease has expired or its owner is gone,
/// claims it in the store (a new epoch); otherwise an error that names the holder and when its
/// lease ends. `run` is the row as read just before.
expected<claim_result, std::string> claim_for_resume(detail::query_store& store,
                                                     const run_row& run, const std::string& me,
                                                     const lease_terms& terms);

/// "2026-12-07T18:30:00.123Z"
std::string utc_text(std::int64_t wall_us);

}  // namespace troupe
