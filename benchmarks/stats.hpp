#pragma once

// Small statistics shared by the benchmark programs (noisy machines: medians, not means).

#include <algorithm>
#include <vector>

namespace troupe::bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace troupe::bench
