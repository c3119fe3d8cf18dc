#pragma once

// Reading runs back from the store to continue them: engine::resume, resume_unfinished, and a
// `dynamic` node's attempt continuing its child run. No CAF here: resume_point is defined in
// actors/run_actor.hpp, which the callers include.

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "persistence/store.hpp"
#include "runtime/detail/query_store.hpp"
#include "runtime/plans.hpp"
#include "workflow/expected.hpp"
#include "workflow/ownership.hpp"
#include "workflow/plan.hpp"

namespace troupe {

struct resume_point;  // actors/run_actor.hpp

/// One run as the store has it, read in one hold of the query lock.
struct stored_run {
  run_row run;
  std::vector<node_row> nodes;
  /// The workflow document stored with the run; read only when `plans` (given to load_run) has
  /// no registered plan of the run's name and version.
  std::optional<workflow_row> workflow;
};

/// Reads run `run_id` back: its row, its node rows and maybe its workflow document (see
/// stored_run::workflow). Errors (one validation_error, empty pointer): a store that cannot
/// answer, no such run. Blocking (store reads).
expected<stored_run, validation_errors> load_run(detail::query_store& store,
                                                 const plan_registry& plans,
                                                 std::string_view run_id);

/// The plan a stored run resumes with: the registered workflow of its name and version, else
/// its stored document, compiled and registered through `register_document` (the engine's
/// register_workflow, which stores it again). Errors: a document that no longer compiles, a
/// workflow neither registered nor stored.
expected<plan_ptr, validation_errors> plan_to_resume(
    const stored_run& r, const plan_registry& plans,
    const std::function<expected<plan_ptr, validation_errors>(std::string_view document)>&
        register_document);

/// Where a run picks up, from its rows as the store has them: succeeded nodes keep their
/// outputs, succeeded items of for_each nodes keep theirs (only the other items run), attempts
/// are numbered after those recorded, and attempts recorded as running (their process died)
/// are closed as `interrupted` at `now_us`. Rows of nodes the plan does not have are ignored.
resume_point resume_point_of(const plan& p, std::string run_id, const std::vector<node_row>& rows,
                             std::int64_t now_us);

/// The child run an attempt of a `dynamic` or `workflow` node continues: the newest child of
/// (parent run, parent node label) with the child plan's hash, claimed for `me` (its own
/// epoch), and where it picks up. nullopt (start a fresh child, always correct, only slower):
/// none, a child another live engine holds, or a store that cannot answer. Blocking.
std::optional<resume_point> prior_child(detail::query_store& store, const std::string& parent_run,
                                        const std::string& parent_node, const plan& child,
                                        const std::string& me, const lease_terms& terms);

/// The runs resume_unfinished() resumes: those the store records as pending or running, except
/// child runs (a child continues when its parent's node runs again). Blocking.
expected<std::vector<run_row>, validation_errors> unfinished_top_level_runs(
    detail::query_store& store);

}  // namespace troupe
