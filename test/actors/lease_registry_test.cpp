// The lease registry shared by an engine's run actors and its lease keeper: registrations by
// epoch, and when the keeper must be woken. No actor system: handles stay invalid.
#define BOOST_TEST_MODULE lease_registry
#include <boost/test/unit_test.hpp>

#include <string>
#include <thread>
#include <vector>

#include "actors/lease_keeper.hpp"

using namespace troupe;

BOOST_AUTO_TEST_CASE(first_registration_wakes_an_idle_keeper_once) {
  lease_registry r;
  BOOST_TEST(r.own(shared_text("run-a"), 1, caf::actor()));   // idle at first
  BOOST_TEST(!r.own(shared_text("run-b"), 1, caf::actor()));  // already woken
  BOOST_TEST(r.size() == 2u);
  BOOST_TEST(r.held_or_idle().size() == 2u);  // a tick that finds runs keeps it awake
  BOOST_TEST(!r.own(shared_text("run-c"), 1, caf::actor()));
  r.release("run-a", 1);
  r.release("run-b", 1);
  r.release("run-c", 1);
  BOOST_TEST(r.held_or_idle().empty());  // the tick finds none: the keeper goes idle
  BOOST_TEST(r.own(shared_text("run-d"), 1, caf::actor()));  // and the next run wakes it
}

BOOST_AUTO_TEST_CASE(release_removes_only_the_epoch_it_names) {
  lease_registry r;
  r.own(shared_text("run-a"), 1, caf::actor());
  r.own(shared_text("run-a"), 2, caf::actor());  // resumed here under a later epoch
  r.release("run-a", 1);                          // the first actor's late release
  auto held = r.held_or_idle();
  BOOST_REQUIRE(held.size() == 1u);
  BOOST_TEST(held[0].run_id == "run-a");
  BOOST_TEST(held[0].epoch == 2);
  r.release("run-a", 2);
  BOOST_TEST(r.size() == 0u);
}

BOOST_AUTO_TEST_CASE(take_returns_and_forgets_the_runs_still_registered) {
  lease_registry r;
  r.own(shared_text("run-a"), 3, caf::actor());
  r.own(shared_text("run-b"), 1, caf::actor());
  auto lost = r.take({"run-a", "run-unknown"});
  BOOST_REQUIRE(lost.size() == 1u);
  BOOST_TEST(lost[0].run_id == "run-a");
  BOOST_TEST(lost[0].epoch == 3);
  BOOST_TEST(r.size() == 1u);
  BOOST_TEST(r.take({"run-a"}).empty());
}

BOOST_AUTO_TEST_CASE(keys_stay_valid_when_the_map_grows) {
  lease_registry r;
  std::vector<std::string> ids;
  for (int i = 0; i < 2000; ++i) {
    ids.push_back("01jexample" + std::to_string(i) + "-a-run-id-longer-than-sso");
    r.own(shared_text(ids.back()), i + 1, caf::actor());
  }
  for (int i = 0; i < 2000; i += 2) {
    r.release(ids[i], i + 1);
  }
  auto held = r.held_or_idle();
  BOOST_TEST(held.size() == 1000u);
  for (const auto& h : held) {
    BOOST_TEST(h.run_id.str().find("-a-run-id-longer-than-sso") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(run_actors_on_several_threads_register_and_release) {
  lease_registry r;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&r, t] {
      for (int i = 0; i < 5000; ++i) {
        shared_text id("thread-" + std::to_string(t) + "-run-" + std::to_string(i) + "-padding");
        r.own(id, 1, caf::actor());
        if (i % 10 != 0) {
          r.release(id, 1);
        }
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  BOOST_TEST(r.size() == 4u * 500u);
}

// What a coordinator frozen past its leases relies on: times are passed in, no clock is read.
BOOST_AUTO_TEST_CASE(an_engine_is_sure_of_a_run_only_within_its_lease_or_last_renewal) {
  lease_registry r;
  r.own(shared_text("run-a"), 1, caf::actor(), /*lease_until_us=*/10'000);
  using state = lease_registry::lease_state;
  auto check = [&](std::string_view run, std::int64_t now) { return r.check(run, now, 1'000); };
  BOOST_TEST((check("run-a", 5'000) == state::sure));     // its own lease, with margin to spare
  BOOST_TEST((check("run-a", 9'500) == state::unsure));   // within the margin of its end
  BOOST_TEST((check("run-a", 20'000) == state::unsure));  // frozen past it
  r.confirmed(30'000);                                    // a renewal of every run went through
  BOOST_TEST((check("run-a", 20'000) == state::sure));
  r.confirmed(25'000);  // an older renewal's answer arriving late takes nothing back
  BOOST_TEST((check("run-a", 28'000) == state::sure));
  BOOST_TEST((check("run-a", 29'500) == state::unsure));
  // Lost (taken by the keeper) or never here: nothing of it may start, whatever the renewals say.
  r.take({"run-a"});
  BOOST_TEST((check("run-a", 20'000) == state::not_held));
  BOOST_TEST((check("not-here", 20'000) == state::not_held));
}
