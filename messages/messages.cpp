#include "messages/messages.hpp"
