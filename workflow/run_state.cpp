#include "workflow/run_state.hpp"
