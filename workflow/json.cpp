#include "workflow/json.hpp"
