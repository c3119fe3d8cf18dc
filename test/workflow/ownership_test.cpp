#define BOOST_TEST_MODULE ownership
#include <boost/test/unit_test.hpp>

#include <set>
#include <string>
#include <vector>

#include "workflow/ownership.hpp"

using namespace troupe;

BOOST_AUTO_TEST_CASE(run_ids_are_26_base32_characters_and_sort_in_the_order_they_were_made,
                     *boost::unit_test::timeout(30)) {
  run_id_generator gen(1, 2);
  std::vector<std::string> ids;
  // Many ids in one millisecond, then later milliseconds, then a clock that went back.
  for (int i = 0; i < 5000; ++i) {
    ids.push_back(gen.next(1'700'000'000'000));
  }
  for (int ms = 1; ms <= 100; ++ms) {
    ids.push_back(gen.next(1'700'000'000'000 + ms));
  }
  ids.push_back(gen.next(1'700'000'000'000));  // the clock stepped back
  for (const auto& id : ids) {
    BOOST_TEST(id.size() == 26u);
    BOOST_TEST(id.find_first_not_of("0123456789abcdefghjkmnpqrstvwxyz") == std::string::npos);
  }
  for (std::size_t i = 1; i < ids.size(); ++i) {
    BOOST_TEST_REQUIRE(ids[i - 1] < ids[i], "id " << i);
  }
}

BOOST_AUTO_TEST_CASE(run_ids_of_two_generators_in_the_same_millisecond_differ,
                     *boost::unit_test::timeout(30)) {
  run_id_generator a(1, 2);
  run_id_generator b(3, 4);
  std::set<std::string> seen;
  for (int i = 0; i < 20000; ++i) {
    const std::int64_t ms = 1'700'000'000'000 + i / 1000;
    BOOST_TEST_REQUIRE(seen.insert(a.next(ms)).second);
    BOOST_TEST_REQUIRE(seen.insert(b.next(ms)).second);
  }
  // Seeded from the system: two engines started together still differ.
  run_id_generator c;
  run_id_generator d;
  BOOST_TEST(c.next(5) != d.next(5));
}

BOOST_AUTO_TEST_CASE(a_run_id_starts_with_its_time, *boost::unit_test::timeout(30)) {
  run_id_generator gen(7, 7);
  // Ids of a later millisecond sort after any id of an earlier one, whatever the random bits.
  for (int i = 0; i < 1000; ++i) {
    run_id_generator other(static_cast<std::uint64_t>(i), 9);
    BOOST_TEST_REQUIRE(other.next(1000) < gen.next(1001 + i));
  }
}

BOOST_AUTO_TEST_CASE(engine_identities_round_trip_and_reject_malformed_text,
                     *boost::unit_test::timeout(30)) {
  engine_identity id{"build-7.example", 4242, 1'733'600'000'123'456};
  BOOST_TEST(id.to_string() == "build-7.example/4242/1733600000123456");
  auto back = engine_identity::parse(id.to_string());
  BOOST_REQUIRE(back.has_value());
  BOOST_TEST((*back == id));
  for (const char* bad :
       {"", "host", "host/1", "/1/2", "host/x/2", "host/1/", "host//1/2", "host/1/2x"}) {
    BOOST_TEST(!engine_identity::parse(bad).has_value(), bad);
  }
}

BOOST_AUTO_TEST_CASE(a_lease_is_claimable_when_expired_or_its_owner_is_gone,
                     *boost::unit_test::timeout(30)) {
  lease_terms t(15000);
  BOOST_TEST(t.until(1'000'000) == 16'000'000);
  BOOST_TEST(t.renew_every_ms() == 5000);
  BOOST_TEST(!lease_terms::claimable(16'000'000, 15'999'999, false));
  BOOST_TEST(lease_terms::claimable(16'000'000, 16'000'000, false));
  BOOST_TEST(lease_terms::claimable(16'000'000, 1'000'000, true));
  // A claim for a gone owner presents the lease's end: it fails if the run was renewed since.
  BOOST_TEST(lease_terms::claim_time(16'000'000, 1'000'000, true) == 16'000'000);
  BOOST_TEST(lease_terms::claim_time(16'000'000, 1'000'000, false) == 1'000'000);
  BOOST_TEST(lease_terms::claim_time(0, 1'000'000, true) == 1'000'000);
}
