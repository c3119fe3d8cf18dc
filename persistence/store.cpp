#include "persistence/store.hpp"
