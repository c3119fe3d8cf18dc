#pragma once

// A store that fails on demand, for fault tests (in the spirit of leveldb's fault-injection
// Env): it wraps a real store and makes writes fail for the next N calls, or for as long as a
// switch is on, with a chosen error. Every switch and counter is atomic, so a test thread may
// flip them while the writer thread writes. Reads always pass through.

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>

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
  /// Stops every injected failure (pending counts and the switch).
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

  mutable std::mutex mu_;
  std::atomic<std::size_t> fail_next_{0};
  std::atomic<bool> failing_{false};
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
