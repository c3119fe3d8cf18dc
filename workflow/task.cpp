#include "workflow/task.hpp"
