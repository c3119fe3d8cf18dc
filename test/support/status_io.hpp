#pragma once

// Lets Boost.Test print the status enums when a comparison fails. In namespace troupe so that
// argument-dependent lookup finds them from any suite.

#include <ostream>

#include "workflow/run_state.hpp"

namespace troupe {

inline std::ostream& operator<<(std::ostream& os, run_status s) {
  return os << to_string(s);
}
inline std::ostream& operator<<(std::ostream& os, node_status s) {
  return os << to_string(s);
}
inline std::ostream& operator<<(std::ostream& os, cache_status s) {
  return os << to_string(s);
}

}  // namespace troupe
