#define BOOST_TEST_MODULE actors_writer
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "actors/writer_actor.hpp"
#include "messages/messages.hpp"
#include "persistence/forwarding_store.hpp"
#include "test/support/status_io.hpp"
#include "test/support/rows.hpp"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

// A memory store whose writes can be held at the door, and which tells the test about every
// write: the test steps the writer from outside without sleeping.
class gated_store final : public forwarding_store {
 public:
  gated_store() : forwarding_store(open_memory()) {}

  void hold() {
    std::lock_guard<std::mutex> lock(mutex_);
    held_ = true;
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      held_ = false;
    }
    cv_.notify_all();
  }
  // Waits until a write is blocked at the door.
  bool wait_blocked(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return blocked_; });
  }
  // Waits until `n` node rows have been committed in total.
  bool wait_rows(std::size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return rows_ >= n; });
  }

  // The next write fails (a transient error) without writing anything.
  void fail_next() {
    std::lock_guard<std::mutex> lock(mutex_);
    fail_next_ = true;
  }
  std::size_t rows() {
    std::lock_guard<std::mutex> lock(mutex_);
    return rows_;
  }
  // Every write fails (a transient error) until heal().
  void fail_all() {
    std::lock_guard<std::mutex> lock(mutex_);
    failing_ = true;
  }
  // A batch holding a node row of `run` is refused for good (as a CHECK constraint would).
  void refuse_run(std::string run) {
    std::lock_guard<std::mutex> lock(mutex_);
    refused_run_ = std::move(run);
  }
  std::vector<std::size_t> batch_sizes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return batches_;
  }

  // The committer installs its yield here; the memory store then calls it between slices.
  void set_write_yield(std::function<void()> yield) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      yield_installed_ = static_cast<bool>(yield);
    }
    if (!yield) {
      forwarding_store::set_write_yield(nullptr);
      return;
    }
    forwarding_store::set_write_yield([this, yield = std::move(yield)] {
      yields_.fetch_add(1);
      yield();
    });
  }
  bool yield_installed() {
    std::lock_guard<std::mutex> lock(mutex_);
    return yield_installed_;
  }
  std::size_t yields() const { return yields_.load(); }

  std::string describe() const override { return "gated"; }
  expected<write_outcome, store_error> write(const write_batch& b) override {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      blocked_ = held_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !held_; });
      blocked_ = false;
      if (fail_next_) {
        fail_next_ = false;
        return make_unexpected(store_error{"injected failure", true});
      }
      if (failing_) {
        return make_unexpected(store_error{"database is down", true});
      }
      if (!refused_run_.empty()) {
        for (const auto& n : b.nodes) {
          if (n.run_id == refused_run_) {
            return make_unexpected(store_error{"CHECK constraint failed: poison", false});
          }
        }
      }
    }
    auto r = forwarding_store::write(b);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      rows_ += b.nodes.size();
      batches_.push_back(b.size());
    }
    cv_.notify_all();
    return r;
  }

 private:
  static std::unique_ptr<store> open_memory() {
    auto opened = open_store("memory://");
    BOOST_REQUIRE(opened.has_value());
    return std::move(*opened);
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  bool held_ = false;
  bool blocked_ = false;
  bool fail_next_ = false;
  bool failing_ = false;
  std::string refused_run_;
  std::size_t rows_ = 0;
  std::vector<std::size_t> batches_;
  bool yield_installed_ = false;
  std::atomic<std::size_t> yields_{0};
};

persist rows(const std::string& run, int count, std::int64_t sent_us,
             node_status status = node_status::succeeded) {
  return test::node_rows_of(run, count, sent_us, status);
}

std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A writer over a gated store in an actor system of its own; told to exit at the end.
struct writer_rig {
  explicit writer_rig(const writer_config& wc) {
    auto owned = std::make_unique<gated_store>();
    db = owned.get();
    writer = spawn_writer(sys, std::move(owned), wc, metrics);
  }
  ~writer_rig() { caf::anon_send_exit(writer, caf::exit_reason::user_shutdown); }
  writer_rig(const writer_rig&) = delete;
  writer_rig& operator=(const writer_rig&) = delete;

  // Sends `m` as a durable caller does; true once the writer says it is committed.
  bool commit(persist m) {
    caf::scoped_actor self{sys};
    bool ok = false;
    self->request(writer, caf::timespan{30s}, commit_atom::value, std::move(m))
        .receive([&](caf::ok_atom) { ok = true; }, [](caf::error&) {});
    return ok;
  }

  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  gated_store* db = nullptr;  // owned by the writer's committer
  std::shared_ptr<writer_metrics> metrics = std::make_shared<writer_metrics>();
  caf::actor writer;
};

}  // namespace

// Rows that are already due when they arrive behind other messages must still be committed
// when the next message is not more rows (here a stale flush timer): the writer queues a flush
// of its own behind them instead of waiting for traffic that may never come. This hung durable
// runs about 1 time in 10 under load before.
BOOST_AUTO_TEST_CASE(overdue_rows_behind_a_stale_timer_are_committed,
                     *boost::unit_test::timeout(60)) {
  writer_config wc;
  wc.batch_max = 2;
  wc.flush_ms = 60000;  // only batch_max or an overdue batch can make it commit
  writer_rig rig(wc);
  gated_store& db = *rig.db;
  const caf::actor& writer = rig.writer;

  db.hold();
  caf::anon_send(writer, rows("a", 2, now_us()));  // batch_max: a commit, held at the door
  BOOST_REQUIRE(db.wait_blocked(30s));
  // While that batch is being written: rows sent long ago (overdue), then a stale timer.
  // Sent at the steady clock's first microsecond: overdue on any machine, however long it has
  // been up (a stamp of 0 or less means "unknown" to the writer).
  caf::anon_send(writer, rows("b", 1, 1));
  caf::anon_send(writer, flush_due_atom::value, std::uint64_t{0});
  db.release();
  BOOST_TEST(db.wait_rows(3, 30s), "rows " << db.rows());
}

// A durable caller's commit request behind other messages is answered once they are absorbed,
// without waiting for flush_ms.
BOOST_AUTO_TEST_CASE(a_waiting_caller_gets_a_commit_without_waiting_for_flush_ms,
                     *boost::unit_test::timeout(60)) {
  writer_config wc;
  wc.batch_max = 1000;
  wc.flush_ms = 60000;
  writer_rig rig(wc);
  BOOST_TEST(rig.commit(rows("c", 3, now_us())));
  BOOST_TEST(rig.db->wait_rows(3, 1s));
}

// A writer that fell behind catches up in transactions of at most 4 x batch_max rows, and a
// durable caller is answered only by the commit that includes its own rows, not by an earlier
// one that merely finished while it waited.
BOOST_AUTO_TEST_CASE(a_backlog_is_committed_in_bounded_batches_each_caller_after_its_rows,
                     *boost::unit_test::timeout(60)) {
  writer_config wc;
  wc.batch_max = 2;  // so a job holds at most 8 rows
  wc.flush_ms = 60000;
  writer_rig rig(wc);
  gated_store& db = *rig.db;
  const caf::actor& writer = rig.writer;

  db.hold();
  caf::anon_send(writer, rows("first", 2, now_us()));  // batch_max: a commit, held at the door
  BOOST_REQUIRE(db.wait_blocked(30s));
  for (int i = 0; i < 10; ++i) {
    caf::anon_send(writer, rows("backlog" + std::to_string(i), 2, now_us()));
  }
  caf::scoped_actor self{rig.sys};
  auto answer =
      self->request(writer, caf::timespan{30s}, commit_atom::value, rows("last", 2, now_us()));
  db.release();
  std::size_t committed_when_answered = 0;
  answer.receive([&](caf::ok_atom) { committed_when_answered = db.rows(); },
                 [](caf::error& e) { BOOST_FAIL("no answer: " << caf::to_string(e)); });
  BOOST_TEST(committed_when_answered == 24u);
  auto sizes = db.batch_sizes();
  BOOST_TEST(sizes.size() >= 4u);  // 2, then 22 rows in jobs of at most 8
  for (auto n : sizes) {
    BOOST_TEST(n <= 8u);
  }
}

// A commit fails while newer rows for the same keys arrive: the failed batch goes back behind
// them, so the retry stores the newest state, once, and the caller of the failed batch is
// answered only by that successful retry.
BOOST_AUTO_TEST_CASE(a_failed_batch_does_not_overwrite_rows_that_arrived_during_it,
                     *boost::unit_test::timeout(60)) {
  writer_config wc;
  wc.batch_max = 3;
  wc.flush_ms = 60000;
  wc.retry_initial_ms = 1;
  writer_rig rig(wc);
  gated_store& db = *rig.db;
  const caf::actor& writer = rig.writer;

  db.hold();
  db.fail_next();
  caf::scoped_actor self{rig.sys};
  auto answer = self->request(writer, caf::timespan{30s}, commit_atom::value,
                              rows("r", 3, now_us(), node_status::running));
  BOOST_REQUIRE(db.wait_blocked(30s));
  caf::anon_send(writer, rows("r", 3, now_us(), node_status::succeeded));
  db.release();
  bool answered = false;
  answer.receive([&](caf::ok_atom) { answered = true; },
                 [](caf::error& e) { BOOST_FAIL("no answer: " << caf::to_string(e)); });
  BOOST_TEST(answered);
  BOOST_TEST(rig.metrics->errors.load() == 1u);
  BOOST_TEST(rig.metrics->retries.load() >= 1u);
  auto stored = db.node_rows("r");
  BOOST_REQUIRE(stored.has_value());
  BOOST_REQUIRE_EQUAL(stored->size(), 3u);
  for (const auto& r : *stored) {
    BOOST_TEST(r.status == node_status::succeeded);
  }
}

// Async callers never wait for a commit, so its committer writes in slices and gives its core
// back between them; durable callers wait for the commit itself, so it never does for them.
BOOST_AUTO_TEST_CASE(only_the_async_committer_yields_between_slices,
                     *boost::unit_test::timeout(60)) {
  const int rows_sent = 3 * static_cast<int>(write_slice_rows);
  for (auto mode : {persistence_mode::async, persistence_mode::durable, persistence_mode::sync}) {
    for (bool slices : {true, false}) {
      BOOST_TEST_CONTEXT("mode " << to_string(mode) << ", yield_slices " << slices) {
        writer_config wc;
        wc.mode = mode;
        wc.yield_slices = slices;
        wc.batch_max = 1000;
        wc.flush_ms = 60000;
        writer_rig rig(wc);
        BOOST_REQUIRE(rig.commit(rows("y", rows_sent, now_us())));
        BOOST_TEST(rig.db->rows() == static_cast<std::size_t>(rows_sent));
        const bool expected = slices && mode == persistence_mode::async;
        BOOST_TEST(rig.db->yield_installed() == expected);
        if (expected) {
          BOOST_TEST(rig.db->yields() >= 2u);  // 192 rows: between three slices of 64
        } else {
          BOOST_TEST(rig.db->yields() == 0u);
        }
      }
    }
  }
}

// A writer that is behind (a job at its cap of 4 x batch_max rows) catches up without giving
// its core away, in the store's largest statements; once caught up it slices again.
BOOST_AUTO_TEST_CASE(a_committer_yields_only_while_it_keeps_up, *boost::unit_test::timeout(60)) {
  writer_config wc;
  wc.mode = persistence_mode::async;
  wc.batch_max = write_slice_rows / 4;  // a job of write_slice_rows rows is at the cap
  wc.flush_ms = 60000;
  writer_rig rig(wc);
  const int rows_sent = 3 * static_cast<int>(write_slice_rows);
  BOOST_REQUIRE(rig.commit(rows("behind", rows_sent, now_us())));
  BOOST_TEST(rig.db->rows() == static_cast<std::size_t>(rows_sent));
  BOOST_TEST(!rig.db->yield_installed());  // and so written unsliced
  BOOST_TEST(rig.db->yields() == 0u);

  // Caught up: the next job, below the cap, is sliced again.
  BOOST_REQUIRE(rig.commit(rows("caught-up", static_cast<int>(wc.batch_max), now_us())));
  BOOST_TEST(rig.db->yield_installed());
}

// A row the database refuses for good, in the middle of a batch: the batch is split until that
// row is alone, the rest is committed, the row is counted as a dead letter, and the durable
// caller of that run is told its log is incomplete; the other caller is answered as usual.
BOOST_AUTO_TEST_CASE(a_refused_row_is_isolated_and_its_durable_caller_told,
                     *boost::unit_test::timeout(60)) {
  writer_config wc;
  wc.mode = persistence_mode::durable;
  wc.batch_max = 1000;
  wc.flush_ms = 60000;
  writer_rig rig(wc);
  gated_store& db = *rig.db;
  db.refuse_run("poisoned");
  db.hold();
  caf::scoped_actor self{rig.sys};
  // One job: 20 good rows, 1 refused row, 20 more good rows; the callers ask last.
  caf::anon_send(rig.writer, rows("good-1", 20, now_us()));
  persist bad = rows("poisoned", 1, now_us());
  bad.nodes[0].node_id = "poison";
  caf::anon_send(rig.writer, std::move(bad));
  caf::anon_send(rig.writer, rows("good-2", 20, now_us()));
  auto good_answer = self->request(rig.writer, caf::timespan{30s}, commit_atom::value, [] {
    persist m;
    run_row r;
    r.run_id = "good-2";
    r.status = run_status::succeeded;
    m.runs.push_back(r);
    return m;
  }());
  db.release();
  bool good_ok = false;
  good_answer.receive(
      [&](caf::ok_atom) { good_ok = true; },
      [](caf::error& e) { BOOST_FAIL("good run not committed: " << to_string(e)); });
  BOOST_TEST(good_ok);
  persist final_row;
  run_row r;
  r.run_id = "poisoned";
  r.status = run_status::succeeded;
  final_row.runs.push_back(r);
  std::string told;
  self->request(rig.writer, caf::timespan{30s}, commit_atom::value, std::move(final_row))
      .receive([](caf::ok_atom) {}, [&](caf::error& e) { told = to_string(e); });
  BOOST_TEST(told.find("poisoned") != std::string::npos, told);
  BOOST_TEST(told.find("CHECK constraint failed") != std::string::npos, told);
  BOOST_TEST(db.rows() == 40u);
  BOOST_TEST(rig.metrics->dead_letters.load() == 1u);
  BOOST_TEST(rig.metrics->errors.load() == 0u);  // a refused row is not a failed commit
}

// A database that stays down at shutdown: the drain gives up at its deadline, answers the
// durable caller that is still waiting with an error, and reports how many rows it dropped.
BOOST_AUTO_TEST_CASE(a_drain_with_the_database_down_ends_at_its_deadline,
                     *boost::unit_test::timeout(60)) {
  writer_config wc;
  wc.mode = persistence_mode::durable;
  wc.batch_max = 1000;
  wc.flush_ms = 1;
  wc.retry_initial_ms = 1;
  wc.retry_max_ms = 5;
  writer_rig rig(wc);
  rig.db->fail_all();
  caf::scoped_actor self{rig.sys};
  auto waiting =
      self->request(rig.writer, caf::infinite, commit_atom::value, rows("stuck", 3, now_us()));
  BOOST_REQUIRE(rig.metrics->wait_errors(2, 30s));  // it is retrying
  std::uint64_t dropped = 0;
  self->request(rig.writer, caf::timespan{30s}, drain_atom::value, std::int64_t{50})
      .receive([&](caf::ok_atom, std::uint64_t n) { dropped = n; },
               [](caf::error& e) { BOOST_FAIL("drain not answered: " << to_string(e)); });
  BOOST_TEST(dropped == 3u);
  BOOST_TEST(rig.metrics->lost_rows.load() == 3u);
  std::string told;
  waiting.receive([](caf::ok_atom) {}, [&](caf::error& e) { told = to_string(e); });
  BOOST_TEST(told.find("not committed") != std::string::npos, told);
}
