#pragma once

#include <string>
#include <utility>

#include "workflow/plan.hpp"

namespace troupe::detail {

/// An error of the engine's own (not the validator's) as the public API reports it: one
/// validation_error, pointer empty unless it names a part of the document or inputs.
inline validation_errors one_error(std::string pointer, std::string message) {
  return validation_errors{validation_error{std::move(pointer), std::move(message)}};
}

}  // namespace troupe::detail
