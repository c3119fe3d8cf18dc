#pragma once

// The load driver of `troupe load`, kept apart from what it drives: the driver knows only
// `load_target` (start one run, be told when it ends), so the same closed and open loops can
// later drive the HTTP service (an `http_target` posting runs) instead of the embedded engine.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "apps/histogram.hpp"
#include "runtime/engine.hpp"

namespace troupe::cli {

/// How one run ended, as far as a load test cares.
struct run_outcome {
  bool ok = true;
  std::string error;  // empty when ok
};

/// Called once per started run, on whatever thread the target finishes it on. Must not block.
using completion_callback = std::function<void(const run_outcome&)>;

/// The writer's figures (all zero where there is no writer, e.g. memory mode).
using target_counters = writer_counts;  // what a target reports of its log writer

/// Something that runs workflows on request.
class load_target {
 public:
  virtual ~load_target() = default;
  /// Starts one run; `done` is called exactly once when it ends. Returns false, without calling
  /// `done`, when the run could not even be started (`error` then says why).
  virtual bool start_run(completion_callback done, std::string& error) = 0;
  /// After the load: waits until the work the runs left behind (log rows queued in the writer)
  /// is settled. False when that did not happen within `timeout`.
  virtual bool drain(std::chrono::milliseconds timeout) = 0;
  /// Figures of the target's own machinery, read at any time.
  virtual target_counters counters() const = 0;
  /// Stops the target (engine shutdown); idempotent.
  virtual void stop() = 0;
};

/// The embedded engine as a target: each run starts `plan` with a copy of `inputs`.
class engine_target final : public load_target {
 public:
  /// Throws engine_error when the store cannot be opened.
  explicit engine_target(const engine_config& config);
  ~engine_target() override;

  /// Registers the workflow the load runs; every error when it is invalid.
  expected<plan_ptr, validation_errors> use_workflow(std::string_view json_text,
                                                     json::object inputs);
  /// Starts one run and waits for it: whether the inputs are accepted at all (errors with
  /// pointers, for the usage message) and whether the workflow succeeds.
  expected<run_outcome, validation_errors> check();

  bool start_run(completion_callback done, std::string& error) override;
  bool drain(std::chrono::milliseconds timeout) override;
  target_counters counters() const override;
  void stop() override;

 private:
  std::unique_ptr<engine> engine_;
  plan_ptr plan_;
  json::object inputs_;
};

/// What the driver is asked to do. Exactly one of `runs` and `duration` is set.
struct drive_options {
  std::optional<std::uint64_t> runs;
  std::optional<std::chrono::nanoseconds> duration;
  /// Closed loop: runs kept in flight. Open loop: the most allowed in flight (0: no limit).
  std::uint64_t in_flight = 64;
  /// Open loop arrivals per second; nullopt: closed loop.
  std::optional<double> rate;
};

/// Live counters of a phase, read by the progress printer while the phase runs.
struct live_counters {
  std::atomic<std::uint64_t> finished{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> outstanding{0};
};

struct phase_result {
  std::uint64_t runs = 0;    // finished, successfully or not
  std::uint64_t errors = 0;  // runs that failed, or could not be started
  std::string first_error;
  double seconds = 0;  // from the first start to the last end
  std::uint64_t peak_in_flight = 0;
  /// Open loop: how late the latest arrival was started after its scheduled time; the
  /// engine (or the start call itself) fell behind when this is large.
  std::chrono::nanoseconds max_lateness{0};
  /// Open loop: the median and 99th percentile of that lateness over all arrivals. A run's
  /// latency counts from its scheduled arrival, so the driver's own late wake-ups are in the
  /// runs' latencies too: these say how much.
  std::chrono::nanoseconds lateness_p50{0};
  std::chrono::nanoseconds lateness_p99{0};
  bool stopped_early = false;  // interrupted (Ctrl-C)
};

/// Drives one phase of load against `target`, recording each run's latency (nanoseconds) into
/// `latencies`: in the closed loop from the start call, in the open loop from the run's
/// scheduled arrival, so that a target falling behind shows in the latencies instead of
/// silently lowering the arrival rate (coordinated omission). Blocks the calling thread until
/// every started run has ended; `stop` (set from a signal thread) ends the phase early: nothing
/// new starts, the runs in flight are waited for.
phase_result drive(load_target& target, const drive_options& options, latency_histogram& latencies,
                   live_counters& live, const std::atomic<bool>& stop);

}  // namespace troupe::cli
