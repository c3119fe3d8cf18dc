#pragma once

// Prometheus text exposition (version 0.0.4) of the service's counters, gauges and histograms.
// Thread-safe: each family has its own mutex, held only to find a series and bump it. A family
// holds at most `max_series` series (label values come from clients: workflow names): past
// that, new label combinations are counted in one series whose every label is "other".

#include <array>
#include <initializer_list>
#include <string_view>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace troupe::cli {

/// Label values in family order ("workflow", "status", ...). Views: a series is found without
/// allocating (only its first observation copies them).
using label_values = std::initializer_list<std::string_view>;

class counter_family {
 public:
  counter_family(std::string name, std::string help, std::vector<std::string> labels,
                 std::size_t max_series = 1000);
  void add(label_values values, double amount = 1);
  void render(std::string& out) const;

 private:
  std::string name_, help_;
  std::vector<std::string> labels_;
  std::size_t max_series_;
  std::string other_key_;
  mutable std::mutex mutex_;
  std::map<std::string, double, std::less<>> series_;  // by joined label values
};

class histogram_family {
 public:
  /// `bounds`: the upper bounds of the buckets, ascending (+Inf is added).
  histogram_family(std::string name, std::string help, std::vector<std::string> labels,
                   std::vector<double> bounds, std::size_t max_series = 1000);
  void observe(label_values values, double value);
  void render(std::string& out) const;

 private:
  struct series {
    std::vector<std::uint64_t> buckets;  // non-cumulative counts per bound, then +Inf
    double sum = 0;
    std::uint64_t count = 0;
  };
  std::string name_, help_;
  std::vector<std::string> labels_;
  std::vector<double> bounds_;
  std::size_t max_series_;
  std::string other_key_;
  mutable std::mutex mutex_;
  std::map<std::string, series, std::less<>> series_;  // by joined label values
};

/// One sample line of a gauge or counter without labels, with its HELP and TYPE lines.
void render_single(std::string& out, const std::string& name, const std::string& type,
                   const std::string& help, double value);

/// Durations in seconds from 100 µs to 60 s.
std::vector<double> latency_buckets();

}  // namespace troupe::cli
