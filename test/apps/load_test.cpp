#define BOOST_TEST_MODULE apps_load
#include <boost/test/unit_test.hpp>
BOOST_AUTO_TEST_CASE(stub) {}
