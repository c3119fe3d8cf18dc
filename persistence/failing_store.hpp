#pragma once

// A store that fails on demand, for fault tests (in the spirit of leveldb's fault-injection
// Env): it wraps a real store and makes writes fail for the next N calls, for as long as a
// switch is on, or whenever a batch holds rows of a refused run, with a chosen error. Every
// switch and counter is atomic (or set under a mutex), so a test thread may flip them while the
// writer thread writes. Reads, claims, renewals, dead letters and request keys always pass
// through.

#include <atomic>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "persistence/forwarding_store.hpp"

namespace troupe {

class failing_store final : public forwarding_store {
 public:
  /// When an injected failure happens relative to the real write.
  enum class fail_point {
    before,  // nothing is written (a refused or lost request)
    after,   // the batch is written, then the error is reported (a lost acknowledgement)
  };

  explicit failing_store(std::unique_ptr<store> inner);

  /// The next `n` writes fail with `error` (added to any count still pending).
  void fail_next_writes(std::size_t n, store_error error = {"injected failure", true},
                        fail_point when = fail_point::before);
  /// While on, every write fails with `error`.
  void set_failing(bool on, store_error error = {"injected failure", true},
                   fail_point when = fail_point::before);
  /// Until heal(): every write whose batch holds a run or node row of `run_id` fails with
  /// `error` before anything is written, as a database refusing that run's rows for good would
  /// (a permanent error: the writer isolates such rows by splitting its batch). Several runs may
  /// be refused at once, each with its own error; the first refused run in the batch's order
  /// (runs, then nodes) names the error. Checked before the other injections, and consumes none
  /// of fail_next_writes()'s count.
  void refuse_rows_of(std::string run_id, store_error error = {"row refused", false});
  /// Stops every injected failure (pending counts, the switch and refused runs).
  void heal();

  /// Calls to write(), failed or not.
  std::size_t write_attempts() const { return attempts_.load(); }
  /// Writes reported as successful to the caller.
  std::size_t successful_writes() const { return successes_.load(); }
  /// Writes that failed because of an injection.
  std::size_t injected_failures() const { return injected_.load(); }
  /// Rows in the successful writes (write_batch::size()).
  std::size_t rows_written() const { return rows_.load(); }

  std::string describe() const override;
  expected<write_outcome, store_error> write(const write_batch& batch) override;

 private:
  // Which failure applies to this write, if any: taken under mu_ so the error and the fail
  // point read together are the ones set together.
  std::optional<std::pair<store_error, fail_point>> take_failure();
  // The error of the first refused run with a row in `batch`, if any.
  std::optional<store_error> refusal(const write_batch& batch) const;

  mutable std::mutex mu_;
  std::atomic<std::size_t> fail_next_{0};
  std::atomic<bool> failing_{false};
  std::atomic<bool> refusing_{false};                        // refused_ is not empty
  std::map<std::string, store_error, std::less<>> refused_;  // guarded by mu_
  store_error next_error_;
  fail_point next_point_ = fail_point::before;
  store_error switch_error_;
  fail_point switch_point_ = fail_point::before;
  std::atomic<std::size_t> attempts_{0};
  std::atomic<std::size_t> successes_{0};
  std::atomic<std::size_t> injected_{0};
  std::atomic<std::size_t> rows_{0};
};

}  // namespace troupe
