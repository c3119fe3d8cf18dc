#include "workflow/shared_text.hpp"

#include <ostream>

namespace troupe {

const std::string& shared_text::empty_string() {
  static const std::string empty;
  return empty;
}

std::ostream& operator<<(std::ostream& os, const shared_text& t) { return os << t.str(); }

}  // namespace troupe
