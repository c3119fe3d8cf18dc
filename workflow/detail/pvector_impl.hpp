#pragma once
// Implementation of troupe::pvector (included from workflow/pvector.hpp only).
