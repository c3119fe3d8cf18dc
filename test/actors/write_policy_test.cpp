// The writer's batching policy on a virtual clock: no actors, no threads, no wall clock. Every
// time below is a number the test chooses.
#define BOOST_TEST_MODULE write_policy
#include <boost/test/unit_test.hpp>

#include <string>

#include "actors/write_policy.hpp"
#include "test/support/rows.hpp"

using namespace troupe;
using kind = write_policy::step::kind;

namespace {

persist rows(const std::string& run, int count, std::int64_t sent_us,
             node_status status = node_status::succeeded) {
  return test::node_rows_of(run, count, sent_us, status);
}

writer_config config(persistence_mode mode = persistence_mode::durable) {
  writer_config c;
  c.mode = mode;
  c.batch_max = 10;
  c.flush_ms = 5;
  c.commit_delay_us = 500;
  c.retry_initial_ms = 10;
  c.retry_max_ms = 40;
  return c;
}

// A successful commit of a whole job.
commit_outcome committed(const commit_job& job) {
  commit_outcome o;
  o.commits = 1;
  for (const auto& p : job.parts) {
    o.rows += p.size();
  }
  o.largest = o.rows;
  return o;
}

std::size_t rows_in(const commit_job& job) {
  std::size_t n = 0;
  for (const auto& p : job.parts) {
    n += p.size();
  }
  return n;
}

}  // namespace

BOOST_AUTO_TEST_CASE(rows_wait_for_flush_ms_from_when_they_were_sent,
                     *boost::unit_test::timeout(10)) {
  write_policy p(config(persistence_mode::async));
  p.absorb(rows("a", 2, 1000), 1200);
  auto s = p.next(1200, true);
  BOOST_TEST(static_cast<int>(s.what) == static_cast<int>(kind::arm_timer));
  BOOST_TEST(s.at_us == 1000 + 5000);  // flush_ms after it was sent, not after it arrived
  // Nothing changes: no second timer.
  BOOST_TEST(static_cast<int>(p.next(1300, true).what) == static_cast<int>(kind::idle));
  BOOST_TEST(p.flush(s.generation));
  auto job = p.take_job();
  BOOST_TEST(rows_in(job) == 2u);
  BOOST_TEST(p.uncommitted() == 2u);
  auto o = committed(job);
  BOOST_TEST(p.settle(o, 6500).empty());
  BOOST_TEST(p.uncommitted() == 0u);
  BOOST_TEST(p.last_lag_us() == 5500);
}

BOOST_AUTO_TEST_CASE(a_full_batch_commits_at_once, *boost::unit_test::timeout(10)) {
  write_policy p(config(persistence_mode::async));
  p.absorb(rows("a", 6, 100), 100);
  auto timer = p.next(100, true);
  BOOST_TEST(static_cast<int>(timer.what) == static_cast<int>(kind::arm_timer));
  p.absorb(rows("b", 4, 150), 150);  // batch_max = 10 reached
  auto s = p.next(150, false);
  BOOST_TEST(static_cast<int>(s.what) == static_cast<int>(kind::commit));
  auto job = p.take_job();
  BOOST_TEST(rows_in(job) == 10u);
  // The timer armed for these rows is stale now.
  BOOST_TEST(!p.flush(timer.generation));
}

BOOST_AUTO_TEST_CASE(a_stale_timer_is_ignored_after_its_rows_were_committed,
                     *boost::unit_test::timeout(10)) {
  write_policy p(config(persistence_mode::async));
  p.absorb(rows("a", 2, 0), 0);
  auto timer = p.next(0, true);
  BOOST_REQUIRE(static_cast<int>(timer.what) == static_cast<int>(kind::arm_timer));
  p.absorb(rows("b", 8, 10), 10);
  BOOST_REQUIRE(static_cast<int>(p.next(10, true).what) == static_cast<int>(kind::commit));
  auto job = p.take_job();
  auto o = committed(job);
  p.settle(o, 20);
  BOOST_TEST(!p.flush(timer.generation));  // its rows went with the full batch
}

BOOST_AUTO_TEST_CASE(overdue_rows_behind_other_messages_get_a_flush_queued_behind_them,
                     *boost::unit_test::timeout(10)) {
  write_policy p(config(persistence_mode::async));
  p.absorb(rows("old", 1, 1), 100000);  // sent 100 ms before it was read: overdue
  auto s = p.next(100000, false);       // more is queued in the mailbox
  BOOST_TEST(static_cast<int>(s.what) == static_cast<int>(kind::flush_behind_queue));
  // Asked again before the queued flush arrives: no second one.
  BOOST_TEST(static_cast<int>(p.next(100001, false).what) == static_cast<int>(kind::idle));
  BOOST_TEST(p.flush(s.generation));
  BOOST_TEST(rows_in(p.take_job()) == 1u);
}

BOOST_AUTO_TEST_CASE(overdue_rows_with_an_empty_mailbox_commit_at_once,
                     *boost::unit_test::timeout(10)) {
  write_policy p(config(persistence_mode::async));
  p.absorb(rows("old", 1, 1), 100000);
  BOOST_TEST(static_cast<int>(p.next(100000, true).what) == static_cast<int>(kind::commit));
}

BOOST_AUTO_TEST_CASE(a_waiter_makes_the_batch_due_after_the_commit_window,
                     *boost::unit_test::timeout(10)) {
  write_policy p(config());
  p.absorb(rows("a", 1, 1000), 1000);
  auto first = p.next(1000, true);
  BOOST_REQUIRE(static_cast<int>(first.what) == static_cast<int>(kind::arm_timer));
  BOOST_TEST(first.at_us == 6000);
  p.absorb(rows("b", 1, 1100), 1100);
  auto id = p.add_waiter("b", 1100);
  auto sooner = p.next(1100, true);
  BOOST_TEST(static_cast<int>(sooner.what) == static_cast<int>(kind::arm_timer));
  BOOST_TEST(sooner.at_us == 1600);  // commit_delay_us after the waiter asked
  BOOST_TEST(p.flush(sooner.generation));
  auto job = p.take_job();
  BOOST_TEST(rows_in(job) == 2u);
  auto o = committed(job);
  auto answers = p.settle(o, 1700);
  BOOST_REQUIRE_EQUAL(answers.size(), 1u);
  BOOST_TEST(answers[0].id == id);
  BOOST_TEST(answers[0].error.empty());
}

BOOST_AUTO_TEST_CASE(a_backlog_is_taken_in_jobs_of_at_most_four_batches,
                     *boost::unit_test::timeout(10)) {
  write_policy p(config(persistence_mode::async));  // batch_max 10: jobs of <= 40 rows
  for (int i = 0; i < 25; ++i) {
    p.absorb(rows("r" + std::to_string(i), 4, i), i);
  }
  auto last = p.add_waiter("r24", 30);
  std::size_t jobs = 0;
  bool answered = false;
  while (p.uncommitted() > 0) {
    auto s = p.next(100, true);
    BOOST_REQUIRE(static_cast<int>(s.what) == static_cast<int>(kind::commit));
    auto job = p.take_job();
    BOOST_TEST(rows_in(job) <= 40u);
    ++jobs;
    auto o = committed(job);
    for (auto& a : p.settle(o, 100)) {
      BOOST_TEST(a.id == last);
      BOOST_TEST(p.uncommitted() == 0u);  // answered only by the job with its own rows
      answered = true;
    }
  }
  BOOST_TEST(jobs == 3u);  // 100 rows: 40 + 40 + 20
  BOOST_TEST(answered);
}

BOOST_AUTO_TEST_CASE(a_failed_job_goes_back_in_front_and_is_retried_with_backoff,
                     *boost::unit_test::timeout(10)) {
  write_policy p(config());
  p.absorb(rows("r", 3, 0, node_status::running), 0);
  auto id = p.add_waiter("r", 0);
  auto due = p.next(0, true);
  BOOST_REQUIRE(static_cast<int>(due.what) == static_cast<int>(kind::arm_timer));
  BOOST_REQUIRE(p.flush(due.generation));
  auto job = p.take_job();
  // Newer rows for the same keys arrive while the job is out.
  p.absorb(rows("r", 3, 700, node_status::succeeded), 700);
  commit_outcome failed;
  failed.error = store_error{"database is locked", true};
  for (auto& part : job.parts) {
    for (auto& n : part.nodes) {
      failed.retry.nodes.push_back(n);
    }
  }
  BOOST_TEST(p.settle(failed, 800).empty());  // the waiter keeps waiting
  BOOST_TEST(p.retrying());
  BOOST_TEST(p.retry_after_ms() == 10);
  BOOST_TEST(static_cast<int>(p.next(900, true).what) == static_cast<int>(kind::idle));
  p.retry_due();
  auto retry = p.take_job();
  // The failed rows first, the newer ones after them: coalescing lets the newer ones win.
  BOOST_REQUIRE_EQUAL(retry.parts.size(), 2u);
  BOOST_TEST((retry.parts[0].nodes[0].status == node_status::running));
  BOOST_TEST((retry.parts[1].nodes[0].status == node_status::succeeded));
  // A second failure doubles the backoff, up to the cap.
  commit_outcome again;
  again.error = store_error{"database is locked", true};
  again.retry.nodes = retry.parts[1].nodes;
  p.settle(again, 1000);
  BOOST_TEST(p.retry_after_ms() == 20);
  p.retry_due();
  auto third = p.take_job();
  auto o = committed(third);
  auto answers = p.settle(o, 2000);
  BOOST_REQUIRE_EQUAL(answers.size(), 1u);
  BOOST_TEST(answers[0].id == id);
  BOOST_TEST(answers[0].error.empty());
  BOOST_TEST(!p.retrying());
}

BOOST_AUTO_TEST_CASE(a_waiter_whose_rows_were_refused_is_told, *boost::unit_test::timeout(10)) {
  write_policy p(config());
  p.absorb(rows("bad", 2, 0), 0);
  p.absorb(rows("good", 2, 0), 0);
  auto bad = p.add_waiter("bad", 0);
  auto good = p.add_waiter("good", 0);
  auto job = p.take_job();
  auto o = committed(job);
  o.dead_letters = 1;
  o.refused_runs = {"bad"};
  o.refused_error = "CHECK constraint failed";
  auto answers = p.settle(o, 10);
  BOOST_REQUIRE_EQUAL(answers.size(), 2u);
  for (const auto& a : answers) {
    if (a.id == bad) {
      BOOST_TEST(a.error.find("CHECK constraint failed") != std::string::npos);
      BOOST_TEST(a.error.find("bad") != std::string::npos);
    } else {
      BOOST_TEST(a.id == good);
      BOOST_TEST(a.error.empty());
    }
  }
}

BOOST_AUTO_TEST_CASE(a_waiter_of_a_fenced_run_is_told_it_lost_the_run,
                     *boost::unit_test::timeout(10)) {
  write_policy p(config());
  p.absorb(rows("taken", 1, 0), 0);
  auto job = p.take_job();
  auto o = committed(job);
  o.fenced_runs = {"taken"};
  p.settle(o, 10);
  // The run's final commit request comes later: it still hears of it.
  p.absorb(rows("taken", 1, 20), 20);
  auto id = p.add_waiter("taken", 20);
  auto job2 = p.take_job();
  auto o2 = committed(job2);
  auto answers = p.settle(o2, 30);
  BOOST_REQUIRE_EQUAL(answers.size(), 1u);
  BOOST_TEST(answers[0].id == id);
  BOOST_TEST(answers[0].error.find("lost its ownership") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(giving_up_at_the_deadline_answers_every_waiter_and_counts_the_rows,
                     *boost::unit_test::timeout(10)) {
  write_policy p(config());
  p.absorb(rows("a", 3, 0), 0);
  auto w1 = p.add_waiter("a", 0);
  auto job = p.take_job();  // in flight, never settled (the database hangs)
  p.absorb(rows("b", 2, 10), 10);
  auto w2 = p.add_waiter("b", 10);
  p.drain();
  BOOST_TEST(!p.drained());
  std::size_t dropped = 0;
  auto answers = p.give_up("deadline passed", dropped);
  BOOST_TEST(dropped == 5u);
  BOOST_REQUIRE_EQUAL(answers.size(), 2u);
  BOOST_TEST(answers[0].id == w1);
  BOOST_TEST(answers[1].id == w2);
  BOOST_TEST(answers[0].error == "deadline passed");
  BOOST_TEST(p.uncommitted() == 0u);
  (void)job;
}

BOOST_AUTO_TEST_CASE(draining_commits_without_waiting_for_timers, *boost::unit_test::timeout(10)) {
  write_policy p(config(persistence_mode::async));
  p.absorb(rows("a", 1, 0), 0);
  p.drain();
  BOOST_TEST(static_cast<int>(p.next(0, false).what) == static_cast<int>(kind::commit));
  auto job = p.take_job();
  BOOST_TEST(!job.yield);  // a drain is written in one piece
  auto o = committed(job);
  p.settle(o, 1);
  BOOST_TEST(p.drained());
}

BOOST_AUTO_TEST_CASE(sync_mode_commits_every_change_alone, *boost::unit_test::timeout(10)) {
  write_policy p(config(persistence_mode::sync));
  p.absorb(rows("a", 1, 0), 0);
  BOOST_TEST(static_cast<int>(p.next(0, false).what) == static_cast<int>(kind::commit));
  BOOST_TEST(p.take_job().each);
}

BOOST_AUTO_TEST_CASE(only_an_async_job_that_keeps_up_yields, *boost::unit_test::timeout(10)) {
  {
    write_policy p(config(persistence_mode::async));
    p.absorb(rows("a", 5, 0), 0);
    BOOST_TEST(p.take_job().yield);
  }
  {
    write_policy p(config(persistence_mode::async));
    p.absorb(rows("a", 40, 0), 0);  // at the cap of 4 x batch_max: behind
    BOOST_TEST(!p.take_job().yield);
  }
  {
    write_policy p(config(persistence_mode::durable));
    p.absorb(rows("a", 5, 0), 0);
    BOOST_TEST(!p.take_job().yield);
  }
}

BOOST_AUTO_TEST_CASE(a_flush_request_with_nothing_pending_is_answered_without_a_job,
                     *boost::unit_test::timeout(10)) {
  write_policy p(config());
  auto id = p.add_waiter("", 0);
  auto s = p.next(0, true);
  BOOST_REQUIRE(static_cast<int>(s.what) == static_cast<int>(kind::arm_timer));
  BOOST_TEST(s.at_us == 500);
  BOOST_TEST(p.flush(s.generation));
  BOOST_TEST(p.nothing_to_write());
  auto answers = p.answer_idle();
  BOOST_REQUIRE_EQUAL(answers.size(), 1u);
  BOOST_TEST(answers[0].id == id);
}
