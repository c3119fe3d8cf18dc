#define BOOST_TEST_MODULE scheduler
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "runtime/scheduler.hpp"

namespace {

// Two workers that block as soon as they run out of work and never look around by themselves
// (a one-hour recheck): whatever runs below ran because an enqueue woke a worker.
caf::actor_system_config& two_blocking_workers(caf::actor_system_config& config) {
  config.set("scheduler.max-threads", 2);
  troupe::scheduler_tuning tuning;
  tuning.spin_rounds = 0;
  tuning.blocked_recheck = std::chrono::hours(1);
  troupe::use_waking_scheduler(config, tuning);
  return config;
}

// A safety net that turns a lost wake-up into a failure instead of a hung suite.
constexpr auto lost_wakeup = std::chrono::seconds(60);

} // namespace

// An actor sends to two idle actors, which CAF queues on the sender's own worker, and then keeps
// that worker busy until both messages have been handled: only the other worker, blocked, can
// handle them, so queueing the second behind the first must wake it, and it must steal both.
// (Blocking a worker like this breaks the scheduler's contract for one job queued alone: it
// would wait for the busy job. Two queued are the case the contract covers.)
BOOST_AUTO_TEST_CASE(work_queued_behind_a_busy_worker_is_stolen_by_a_woken_one) {
  caf::actor_system_config config;
  caf::actor_system system{two_blocking_workers(config)};
  caf::scoped_actor caller{system};
  for (int round = 0; round < 1000; ++round) {
    auto first = std::make_shared<std::promise<void>>();
    auto second = std::make_shared<std::promise<void>>();
    auto helper = [&](std::shared_ptr<std::promise<void>> handled) {
      auto h = system.spawn([handled](caf::event_based_actor*) -> caf::behavior {
        return {[handled](int) { handled->set_value(); },
                [](const std::string& ping) { return ping; }};
      });
      // Answered: the helper has started and waits for messages, so a message to it
      // schedules it on the sender's worker.
      caller->request(h, caf::infinite, std::string("ping"))
          .receive([](const std::string&) {}, [&](caf::error& e) { BOOST_FAIL(system.render(e)); });
      return h;
    };
    auto one = helper(first);
    auto two = helper(second);
    auto busy = system.spawn([one, two, first, second](caf::event_based_actor* self) -> caf::behavior {
      return {[=](int x) {
        self->send(one, x);
        self->send(two, x);
        return first->get_future().wait_for(lost_wakeup) == std::future_status::ready &&
               second->get_future().wait_for(lost_wakeup) == std::future_status::ready;
      }};
    });
    bool released = false;
    caller->request(busy, caf::infinite, 1)
        .receive([&](bool r) { released = r; },
                 [&](caf::error& e) { BOOST_FAIL(system.render(e)); });
    BOOST_REQUIRE_MESSAGE(released, "round " << round << ": a queued message was never run");
  }
}

// Threads outside the scheduler start work at the same time; every job runs, each once, and
// the system shuts down (its workers are blocked, so shutdown itself needs the wake-ups).
BOOST_AUTO_TEST_CASE(jobs_from_outside_threads_all_run_once) {
  constexpr int threads = 4;
  constexpr int per_thread = 2000;
  std::atomic<int> handled{0};
  std::promise<void> all_handled;
  {
    caf::actor_system_config config;
    caf::actor_system system{two_blocking_workers(config)};
    std::vector<caf::actor> counters;
    for (int i = 0; i < 8; ++i) {
      counters.push_back(system.spawn([&](caf::event_based_actor*) -> caf::behavior {
        return {[&](int) {
          if (handled.fetch_add(1) + 1 == threads * per_thread)
            all_handled.set_value();
        }};
      }));
    }
    std::vector<std::thread> senders;
    for (int t = 0; t < threads; ++t) {
      senders.emplace_back([&, t] {
        for (int i = 0; i < per_thread; ++i)
          caf::anon_send(counters[static_cast<size_t>(t + i) % counters.size()], i);
      });
    }
    for (auto& s : senders)
      s.join();
    BOOST_REQUIRE(all_handled.get_future().wait_for(lost_wakeup) == std::future_status::ready);
    BOOST_TEST(handled.load() == threads * per_thread);
  }
  BOOST_TEST(handled.load() == threads * per_thread);
}

// A chain of actors each forwarding to the next: every hop is an internal enqueue while the
// other worker is blocked or spinning; the message reaches the end of the chain every time.
BOOST_AUTO_TEST_CASE(a_forwarding_chain_completes) {
  caf::actor_system_config config;
  caf::actor_system system{two_blocking_workers(config)};
  auto done = std::make_shared<std::promise<int>>();
  caf::actor next = system.spawn([done](caf::event_based_actor*) -> caf::behavior {
    return {[done](int hops) { done->set_value(hops); }};
  });
  constexpr int chain = 500;
  for (int i = 0; i < chain; ++i) {
    next = system.spawn([next](caf::event_based_actor* self) -> caf::behavior {
      return {[self, next](int hops) { self->send(next, hops + 1); }};
    });
  }
  caf::anon_send(next, 0);
  auto hops = done->get_future();
  BOOST_REQUIRE(hops.wait_for(lost_wakeup) == std::future_status::ready);
  BOOST_TEST(hops.get() == chain);
}
