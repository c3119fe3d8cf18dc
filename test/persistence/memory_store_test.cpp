#define BOOST_TEST_MODULE persistence memory store
#include <boost/test/unit_test.hpp>

#include "test/persistence/conformance.hpp"

namespace utf = boost::unit_test;

namespace troupe::test {

std::unique_ptr<store> make_test_store() {
  auto s = open_store("memory://");
  BOOST_REQUIRE_MESSAGE(s.has_value(), "memory:// failed to open: " << error_of(s));
  return std::move(*s);
}

boost::test_tools::assertion_result backend_available(utf::test_unit_id) {
  return true;
}

BOOST_AUTO_TEST_SUITE(memory_store_slices)

BOOST_AUTO_TEST_CASE(yields_between_slices_and_keeps_every_row, *utf::timeout(30)) {
  auto s = make_test_store();
  write_batch b;
  b.runs = {sample_run("r1")};
  for (int i = 0; i < 300; ++i) {
    b.nodes.push_back(sample_node("r1", "n", i));
  }
  int yields = 0;
  s->set_write_yield([&] { ++yields; });
  auto r = s->write(b);
  BOOST_REQUIRE_MESSAGE(r.has_value(), error_of(r));
  BOOST_TEST(yields == static_cast<int>(301 / write_slice_rows));
  auto nodes = s->node_rows("r1");
  BOOST_REQUIRE(nodes.has_value());
  BOOST_TEST(nodes->size() == 300u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(open_store_urls)

BOOST_AUTO_TEST_CASE(an_unknown_scheme_is_refused_with_the_accepted_ones_listed,
                     *utf::timeout(30)) {
  auto s = open_store("mysql://localhost/db");
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient);
  const std::string& m = s.error().message;
  BOOST_TEST(m.find("mysql://localhost/db") != std::string::npos, m);
  for (const char* scheme : {"memory://", "sqlite://", "postgres://", "postgresql://"}) {
    BOOST_TEST(m.find(scheme) != std::string::npos, "missing " << scheme << " in: " << m);
  }
}

BOOST_AUTO_TEST_CASE(a_sqlite_url_without_a_path_is_refused, *utf::timeout(30)) {
  auto s = open_store("sqlite://");
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient);
  BOOST_TEST(s.error().message.find("path") != std::string::npos, s.error().message);
}

BOOST_AUTO_TEST_CASE(a_memory_store_describes_itself_by_its_url, *utf::timeout(30)) {
  BOOST_TEST(make_test_store()->describe() == "memory://");
}

BOOST_AUTO_TEST_CASE(a_postgres_password_never_appears_in_an_error, *utf::timeout(30)) {
  // Port 1 on loopback refuses at once: the open fails, transiently (the server may come up).
  auto s = open_store("postgresql://troupe:s3cret@127.0.0.1:1/db?connect_timeout=5");
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(s.error().transient, s.error().message);
  BOOST_TEST(s.error().message.find("s3cret") == std::string::npos, s.error().message);
  BOOST_TEST(s.error().message.find("***") != std::string::npos, s.error().message);
}

BOOST_AUTO_TEST_CASE(a_malformed_postgres_url_is_refused_as_not_transient, *utf::timeout(30)) {
  auto s = open_store("postgresql://host/db?no_such_option=1");
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient, s.error().message);
}

BOOST_AUTO_TEST_CASE(the_schema_version_is_two, *utf::timeout(30)) {
  BOOST_TEST(schema_version() == 2);
}

BOOST_AUTO_TEST_SUITE_END()

}  // namespace troupe::test
