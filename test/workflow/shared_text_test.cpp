#define BOOST_TEST_MODULE shared_text
#include <boost/test/unit_test.hpp>

#include <sstream>
#include <string>
#include <string_view>

#include "workflow/shared_text.hpp"

using troupe::shared_text;

BOOST_AUTO_TEST_CASE(copies_share_one_buffer_and_assignment_replaces_it) {
  shared_text a(std::string("01jxq3v8k2m4n6p8r0t2w4y6z8"));
  shared_text b = a;
  BOOST_TEST(a.data() == b.data());  // the same characters, not a copy of them
  b = "another";
  BOOST_TEST(a == "01jxq3v8k2m4n6p8r0t2w4y6z8");  // the first is untouched
  BOOST_TEST(b == "another");
  BOOST_TEST(a != b);
}

BOOST_AUTO_TEST_CASE(behaves_as_its_text) {
  shared_text empty;
  BOOST_TEST(empty.empty());
  BOOST_TEST(empty.size() == 0u);
  BOOST_TEST(empty.str().empty());
  BOOST_TEST(std::string_view(empty).empty());
  shared_text t("run-1");
  BOOST_TEST(t.size() == 5u);
  BOOST_TEST(std::string(t.c_str()) == "run-1");
  BOOST_TEST((t == std::string("run-1")));
  BOOST_TEST((t < shared_text("run-2")));
  BOOST_TEST((t < std::string("run-2")));
  BOOST_TEST(t + "/a" == "run-1/a");
  BOOST_TEST("x/" + t == "x/run-1");
  std::ostringstream os;
  os << t;
  BOOST_TEST(os.str() == "run-1");
  shared_text from_empty_string(std::string{});
  BOOST_TEST(from_empty_string.empty());
  BOOST_TEST((from_empty_string == empty));
}
