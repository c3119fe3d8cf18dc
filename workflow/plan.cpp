#include "workflow/plan.hpp"
