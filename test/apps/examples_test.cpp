#define BOOST_TEST_MODULE apps_examples
#include <boost/test/unit_test.hpp>
// placeholder: replaced by the real suite
BOOST_AUTO_TEST_CASE(placeholder) { BOOST_TEST(true); }
