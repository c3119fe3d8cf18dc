#pragma once

// A log-linear latency histogram in the manner of HdrHistogram, with lock-free recording.
//
// Why not a sorted vector of every sample: a load test of millions of runs would keep (and sort)
// millions of doubles, and the finish callbacks that record would contend on one vector's
// mutex. Why not Boost.Histogram: its thread-safe counters would do, but the bucket layout
// below is twenty lines, and owning it keeps the precision (and the index arithmetic that a
// percentile depends on) in plain sight.
//
// Layout: values below 2 * sub_buckets (256) have a bucket each; above, every power of two is
// split into `sub_buckets` (128) equal buckets, so a bucket is never wider than 1/128 of the
// values it holds: better than two significant digits (< 0.8% error) from 1 ns to 2^63 ns.
// Recording is one relaxed atomic increment (and, rarely, a CAS for the max), so any number of
// engine threads can record from their finish callbacks without a lock.

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace troupe::cli {

class latency_histogram {
 public:
  static constexpr unsigned sub_bits = 7;
  static constexpr std::uint64_t sub_buckets = std::uint64_t{1} << sub_bits;  // 128
  static constexpr std::uint64_t linear_limit = 2 * sub_buckets;              // 256
  // The largest shift is for values with bit 63 set: 64 - (sub_bits + 1) = 56.
  static constexpr std::size_t bucket_count =
      linear_limit + (64 - (sub_bits + 1)) * sub_buckets;  // 256 + 56 * 128

  latency_histogram() = default;
  latency_histogram(const latency_histogram&) = delete;
  latency_histogram& operator=(const latency_histogram&) = delete;

  /// Thread-safe; `value` in any unit (the load command records nanoseconds).
  void record(std::uint64_t value) {
    counts_[index_of(value)].fetch_add(1, std::memory_order_relaxed);
    total_.fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(value, std::memory_order_relaxed);
    std::uint64_t seen = max_.load(std::memory_order_relaxed);
    while (value > seen && !max_.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
    }
  }

  std::uint64_t count() const { return total_.load(std::memory_order_relaxed); }
  std::uint64_t max() const { return max_.load(std::memory_order_relaxed); }
  /// Exact (not bucketed): with the runs in flight it checks Little's law, in flight = rate x mean.
  double mean() const {
    const std::uint64_t n = count();
    return n == 0
               ? 0.0
               : static_cast<double>(sum_.load(std::memory_order_relaxed)) / static_cast<double>(n);
  }

  /// The value at quantile `q` (0..1): the highest value of the bucket holding the
  /// ceil(q * count)-th smallest sample, capped at the exact maximum (so p100 == max, and no
  /// percentile exceeds it). Reporting the bucket's top errs on the pessimistic side, as HDR
  /// does. 0 when empty. Safe to call while others record (the answer is then approximate).
  std::uint64_t percentile(double q) const {
    const std::uint64_t n = count();
    if (n == 0) {
      return 0;
    }
    q = std::clamp(q, 0.0, 1.0);
    auto rank = static_cast<std::uint64_t>(q * static_cast<double>(n) + 0.999999999);
    rank = std::clamp<std::uint64_t>(rank, 1, n);
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bucket_count; ++i) {
      seen += counts_[i].load(std::memory_order_relaxed);
      if (seen >= rank) {
        return std::min(highest_in(i), max());
      }
    }
    return max();  // counts and total are read apart while others record
  }

  /// Exposed for tests: the bucket a value falls in, and the range that bucket covers.
  static std::size_t index_of(std::uint64_t v) {
    if (v < linear_limit) {
      return static_cast<std::size_t>(v);
    }
    // shift >= 1 such that v >> shift lies in [sub_buckets, 2 * sub_buckets).
    const unsigned shift = static_cast<unsigned>(std::bit_width(v)) - (sub_bits + 1);
    return static_cast<std::size_t>(linear_limit + (shift - 1) * sub_buckets +
                                    ((v >> shift) - sub_buckets));
  }
  static std::uint64_t lowest_in(std::size_t i) {
    if (i < linear_limit) {
      return i;
    }
    const std::uint64_t k = i - linear_limit;
    const unsigned shift = static_cast<unsigned>(k / sub_buckets) + 1;
    return (sub_buckets + k % sub_buckets) << shift;
  }
  static std::uint64_t highest_in(std::size_t i) {
    if (i < linear_limit) {
      return i;
    }
    const unsigned shift = static_cast<unsigned>((i - linear_limit) / sub_buckets) + 1;
    return lowest_in(i) + ((std::uint64_t{1} << shift) - 1);
  }

 private:
  std::array<std::atomic<std::uint64_t>, bucket_count> counts_{};
  std::atomic<std::uint64_t> total_{0};
  std::atomic<std::uint64_t> max_{0};
  std::atomic<std::uint64_t> sum_{0};  // 2^64 ns is 584 years of summed latency
};

}  // namespace troupe::cli
