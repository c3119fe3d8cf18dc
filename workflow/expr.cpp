#include "workflow/expr.hpp"
