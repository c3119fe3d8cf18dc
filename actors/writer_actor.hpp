#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
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

/// Spawns the writer (a scheduled actor, the one run actors talk to) and its committer (a
/// detached actor that owns `store`, since store calls block; it ends with the writer). With a
/// tracer, both are traced actors (actors/trace.hpp).
caf::actor spawn_writer(caf::actor_system& sys, std::unique_ptr<store> st, writer_config config,
                        std::shared_ptr<writer_metrics> metrics, trace::tracer* trace = nullptr);

}  // namespace troupe
