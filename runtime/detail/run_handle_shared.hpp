#pragma once

// The state behind a run_handle: shared by the handle's copies, the engine's live-run index and
// the run actor (as its sink). Included by the engine's parts only; it needs CAF for the run
// actor's handle, which engine.hpp must not.

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <caf/actor.hpp>

#include "actors/run_actor.hpp"
#include "runtime/engine.hpp"

namespace troupe {

// The result is written once, by the run actor (finished(), on its thread); waiters block on
// the condition variable, so nothing polls. `id`, `on_event` and `on_end` are set before the
// run actor is spawned and never change after.
struct run_handle::shared final : run_sink {
  std::string id;
  std::function<void(const run_event&)> on_event;
  std::function<void()> on_end;  // engine bookkeeping, called before waiters are released

  mutable std::mutex mutex;  // guards result, callbacks, actor
  mutable std::condition_variable cv;
  std::shared_ptr<const run_result> result;  // set once; a pointer keeps open runs small
  std::vector<std::function<void(const run_result&)>> callbacks;
  caf::actor actor;  // the run actor while the run is open; cleared when it ends

  bool wants_events() const override { return static_cast<bool>(on_event); }
  void event(const run_event& e) override { on_event(e); }
  void finished(const run_result& r) override;
};

}  // namespace troupe
