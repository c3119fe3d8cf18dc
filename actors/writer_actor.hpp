#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <vector>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include <caf/fwd.hpp>

#include "actors/writer_config.hpp"
#include "persistence/store.hpp"

namespace troupe {

namespace trace {
class tracer;
}

/// What the writer tells its engine. Called on the writer's thread: must not block.
struct writer_hooks {
  /// Runs whose rows the store refused because another engine owns them now (fenced).
  std::function<void(const std::vector<std::string>& runs)> lost_runs;
  /// The backlog fell below writer_config::pending_max after being at or above it: runs queued
  /// for admission may start.
  std::function<void()> room;
  std::size_t pending_max = 0;  // set by spawn_writer from the config
};

/// Spawns the writer (a scheduled actor, the one run actors talk to) and its committer (a
/// detached actor that owns `store`, since store calls block; it ends with the writer). With a
/// tracer, both are traced actors (actors/trace.hpp). The batching policy is write_policy.
///
/// Messages: `persist` (rows, no answer); `commit_atom, persist` (answered `ok_atom` once a
/// commit holds these rows and everything sent before, or with an error when rows of the run
/// they belong to were refused: dead letters, or fenced); `renew_atom, lease_renewal`;
/// `drain_atom, deadline_ms` (see messages/messages.hpp).
caf::actor spawn_writer(caf::actor_system& sys, std::unique_ptr<store> st, writer_config config,
                        std::shared_ptr<writer_metrics> metrics, trace::tracer* trace = nullptr,
                        writer_hooks hooks = {});

}  // namespace troupe
