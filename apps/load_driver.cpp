#include "apps/load_driver.hpp"

#include <sys/prctl.h>

#include <algorithm>
#include <memory>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

namespace troupe::cli {

// ---------------------------------------------------------------------------------------------
// engine_target

namespace {

run_outcome outcome_of(const run_result& r) {
  run_outcome o;
  o.ok = r.status == run_status::succeeded;
  if (!o.ok) {
    o.error = std::string(to_string(r.status));
    if (!r.error.empty() && r.error != o.error) {
      o.error += ": " + r.error;
    }
  }
  return o;
}

}  // namespace

engine_target::engine_target(const engine_config& config)
    : engine_(std::make_unique<engine>(config)) {}

engine_target::~engine_target() {
  stop();
}

expected<plan_ptr, validation_errors> engine_target::use_workflow(std::string_view json_text,
                                                                  json::object inputs) {
  auto p = engine_->register_workflow(json_text);
  if (p) {
    plan_ = *p;
    inputs_ = std::move(inputs);
  }
  return p;
}

expected<run_outcome, validation_errors> engine_target::check() {
  auto h = engine_->start(plan_, inputs_);
  if (!h) {
    return make_unexpected(std::move(h.error()));
  }
  return outcome_of(h->wait());
}

bool engine_target::start_run(completion_callback done, std::string& error) {
  auto h = engine_->start(plan_, inputs_);
  if (!h) {
    error = h.error().empty() ? "the run was not started" : h.error().front().message;
    return false;
  }
  h->on_finished([done = std::move(done)](const run_result& r) { done(outcome_of(r)); });
  return true;
}

bool engine_target::drain(std::chrono::milliseconds timeout) {
  return engine_->flush(timeout);
}

target_counters engine_target::counters() const {
  return engine_->metrics().snapshot();
}

void engine_target::stop() {
  if (engine_) {
    engine_->shutdown();
  }
}

// ---------------------------------------------------------------------------------------------
// the driver

namespace {

using clk = std::chrono::steady_clock;

// How long before an arrival the open loop stops blocking and spins.
constexpr std::chrono::microseconds arrival_spin{50};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// A run that ends before its start call returns has its callback called inside that call, on
// the starting thread (run_handle::on_finished runs it at once). In the closed loop that callback
// starts the next run, which may end at once too: without care the stack would grow by a frame
// pair per run. So a start requested while this thread is already starting runs is only counted
// here, and the outermost start loop on the thread picks it up.
thread_local bool tl_starting = false;
thread_local std::uint64_t tl_deferred = 0;

class phase {
 public:
  phase(load_target& target, const drive_options& o, latency_histogram& h, live_counters& live,
        const std::atomic<bool>& stop)
      : target_(target), options_(o), latencies_(h), live_(live), stop_(stop) {}

  phase_result run() {
    start_ = clk::now();
    if (options_.duration) {
      deadline_ = start_ + *options_.duration;
    }
    if (options_.rate) {
      open_loop();
    } else {
      for (std::uint64_t i = 0; i < options_.in_flight; ++i) {
        start_closed();
      }
    }
    release();  // the driver's own hold: from here on, the last run to end ends the phase
    std::unique_lock<std::mutex> lock(mutex_);
    // Woken once, by the last run to end (or, in the open loop, while it waits for room).
    cv_.wait(lock, [this] { return done_; });
    phase_result r;
    r.runs = live_.finished.load();
    r.errors = live_.failed.load();
    r.first_error = first_error_;
    r.seconds = std::chrono::duration<double>(end_ - start_).count();
    r.peak_in_flight = peak_.load();
    r.max_lateness = max_lateness_;
    if (options_.rate) {
      r.lateness_p50 = std::chrono::nanoseconds(lateness_->percentile(0.50));
      r.lateness_p99 = std::chrono::nanoseconds(lateness_->percentile(0.99));
    }
    r.stopped_early = stop_.load();
    return r;
  }

 private:
  // Closed loop: whether one more run may start.
  bool claim() {
    if (stop_.load(std::memory_order_relaxed)) {
      return false;
    }
    if (options_.runs) {
      return claimed_.fetch_add(1, std::memory_order_relaxed) < *options_.runs;
    }
    return clk::now() < deadline_;
  }

  void start_closed() {
    if (tl_starting) {
      ++tl_deferred;
      return;
    }
    tl_starting = true;
    std::uint64_t wanted = 1;
    while (wanted > 0) {
      --wanted;
      while (claim()) {
        const auto t0 = clk::now();
        if (start_one([this, t0](const run_outcome& o) { ended(t0, o, true); })) {
          break;
        }
        // A failed start counts as a failed run; try the next one in this loop rather than
        // recursing through a callback.
      }
      wanted += std::exchange(tl_deferred, 0);
    }
    tl_starting = false;
  }

  void open_loop() {
    // The arrivals are timed waits of this thread: Linux's default timer slack (50 us) would
    // make each one late by that much, and a run's latency counts from its scheduled arrival.
    ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    const double rate = *options_.rate;
    const auto period_ns = 1e9 / rate;
    for (std::uint64_t i = 0;; ++i) {
      if (options_.runs && i >= *options_.runs) {
        break;
      }
      // Computed from i, not accumulated, so the schedule does not drift with rounding.
      const auto scheduled =
          start_ +
          std::chrono::nanoseconds(static_cast<std::int64_t>(static_cast<double>(i) * period_ns));
      if (options_.duration && scheduled >= deadline_) {
        break;
      }
      if (stop_.load(std::memory_order_relaxed)) {
        break;
      }
      if (options_.in_flight > 0 && live_.outstanding.load() >= options_.in_flight) {
        // The limit is reached: wait for a run to end (the ending run wakes us only because we
        // said we wait). The time lost here shows as lateness and in the latencies.
        std::unique_lock<std::mutex> lock(mutex_);
        driver_waiting_.store(true);
        cv_.wait(lock, [this] { return live_.outstanding.load() < options_.in_flight; });
        driver_waiting_.store(false);
      }
      // Pacing: block until shortly before the scheduled arrival, then spin to it. A blocking
      // wait alone is late by tens of microseconds (the wake-up itself), and at high rates the
      // driver would spend its core going to sleep and waking up between arrivals.
      if (clk::now() + arrival_spin < scheduled) {
        // A stop request ends the wait early when a run's end happens to wake this condition
        // variable (otherwise at the next arrival).
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait_until(lock, scheduled - arrival_spin,
                       [this] { return stop_.load(std::memory_order_relaxed); });
      }
      while (clk::now() < scheduled && !stop_.load(std::memory_order_relaxed)) {
        cpu_relax();
      }
      const auto late = clk::now() - scheduled;
      if (late > max_lateness_) {
        max_lateness_ = std::chrono::duration_cast<std::chrono::nanoseconds>(late);
      }
      lateness_->record(static_cast<std::uint64_t>(
          std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(late).count())));
      start_one([this, scheduled](const run_outcome& o) { ended(scheduled, o, false); });
    }
  }

  // Takes a hold for the run and starts it; a start that fails is counted as a failed run.
  bool start_one(completion_callback done) {
    holds_.fetch_add(1);
    const std::uint64_t now_in_flight = live_.outstanding.fetch_add(1) + 1;
    std::uint64_t peak = peak_.load(std::memory_order_relaxed);
    while (now_in_flight > peak &&
           !peak_.compare_exchange_weak(peak, now_in_flight, std::memory_order_relaxed)) {
    }
    std::string error;
    if (target_.start_run(std::move(done), error)) {
      return true;
    }
    count(run_outcome{false, "not started: " + error});
    live_.outstanding.fetch_sub(1);
    release();
    return false;
  }

  void ended(clk::time_point from, const run_outcome& o, bool closed) {
    latencies_.record(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(clk::now() - from).count()));
    count(o);
    live_.outstanding.fetch_sub(1);
    if (closed) {
      start_closed();  // before releasing this run's hold, so the count cannot touch zero early
    }
    release();
  }

  void count(const run_outcome& o) {
    live_.finished.fetch_add(1, std::memory_order_relaxed);
    if (!o.ok) {
      if (live_.failed.fetch_add(1) == 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        first_error_ = o.error;
      }
    }
  }

  void release() {
    if (holds_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      end_ = clk::now();
      done_ = true;
      // Notified under the lock: once the driver sees done_, this thread no longer touches the
      // phase, which the driver is about to destroy.
      cv_.notify_all();
    } else if (driver_waiting_.load()) {
      std::lock_guard<std::mutex> lock(mutex_);
      cv_.notify_all();
    }
  }

  load_target& target_;
  const drive_options& options_;
  latency_histogram& latencies_;
  live_counters& live_;
  const std::atomic<bool>& stop_;

  clk::time_point start_;
  clk::time_point deadline_ = clk::time_point::max();
  std::atomic<std::uint64_t> claimed_{0};
  std::atomic<std::uint64_t> holds_{1};  // the driver's own, released once it stops starting
  std::atomic<std::uint64_t> peak_{0};
  std::atomic<bool> driver_waiting_{false};
  std::chrono::nanoseconds max_lateness_{0};  // driver thread only
  // Every arrival's lateness (driver thread only); on the heap: the histogram is ~60 KB.
  std::unique_ptr<latency_histogram> lateness_ = std::make_unique<latency_histogram>();

  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;        // guarded by mutex_
  clk::time_point end_;      // guarded by mutex_
  std::string first_error_;  // guarded by mutex_
};

}  // namespace

phase_result drive(load_target& target, const drive_options& options, latency_histogram& latencies,
                   live_counters& live, const std::atomic<bool>& stop) {
  phase p(target, options, latencies, live, stop);
  return p.run();
}

}  // namespace troupe::cli
