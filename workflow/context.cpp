#include "workflow/context.hpp"
