#define BOOST_TEST_MODULE actors_writer
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "actors/writer_actor.hpp"
#include "messages/messages.hpp"
#include "persistence/forwarding_store.hpp"

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

  std::string describe() const override { return "gated"; }
  expected<bool, store_error> write(const write_batch& b) override {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      blocked_ = held_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !held_; });
      blocked_ = false;
    }
    auto r = forwarding_store::write(b);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      rows_ += b.nodes.size();
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
  std::size_t rows_ = 0;
};

persist rows(const std::string& run, int count, std::int64_t sent_us) {
  persist m;
  m.sent_us = sent_us;
  for (int i = 0; i < count; ++i) {
    node_row r;
    r.run_id = run;
    r.node_id = "n" + std::to_string(i);
    r.attempt = 1;
    r.status = node_status::succeeded;
    m.nodes.push_back(std::move(r));
  }
  return m;
}

std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// Rows that are already due when they arrive behind other messages must still be committed
// when the next message is not more rows (here a stale flush timer): the writer queues a flush
// of its own behind them instead of waiting for traffic that may never come. This hung durable
// runs about 1 time in 10 under load before.
BOOST_AUTO_TEST_CASE(overdue_rows_behind_a_stale_timer_are_committed, *boost::unit_test::timeout(60)) {
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto owned = std::make_unique<gated_store>();
  gated_store& db = *owned;
  writer_config wc;
  wc.batch_max = 2;
  wc.flush_ms = 60000;  // only batch_max or an overdue batch can make it commit
  wc.nice = 0;
  auto metrics = std::make_shared<writer_metrics>();
  auto writer = spawn_writer(sys, std::move(owned), wc, metrics);

  db.hold();
  caf::anon_send(writer, rows("a", 2, now_us()));  // batch_max: a commit, held at the door
  BOOST_REQUIRE(db.wait_blocked(30s));
  // While the writer is busy: rows sent long ago (overdue), then a timer of an old generation.
  caf::anon_send(writer, rows("b", 1, now_us() - 3600ll * 1000 * 1000));
  caf::anon_send(writer, flush_due_atom::value, std::uint64_t{0});
  db.release();
  BOOST_TEST(db.wait_rows(3, 30s));
  caf::anon_send_exit(writer, caf::exit_reason::user_shutdown);
}

// A durable caller's commit request behind other messages is answered once they are absorbed,
// without waiting for flush_ms.
BOOST_AUTO_TEST_CASE(a_waiting_caller_gets_a_commit_without_waiting_for_flush_ms,
                     *boost::unit_test::timeout(60)) {
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto owned = std::make_unique<gated_store>();
  gated_store& db = *owned;
  writer_config wc;
  wc.batch_max = 1000;
  wc.flush_ms = 60000;
  wc.nice = 0;
  auto metrics = std::make_shared<writer_metrics>();
  auto writer = spawn_writer(sys, std::move(owned), wc, metrics);
  caf::scoped_actor self{sys};
  bool ok = false;
  self->request(writer, caf::timespan{30s}, commit_atom::value, rows("c", 3, now_us()))
      .receive([&](caf::ok_atom) { ok = true; }, [](caf::error&) {});
  BOOST_TEST(ok);
  BOOST_TEST(db.wait_rows(3, 1s));
  caf::anon_send_exit(writer, caf::exit_reason::user_shutdown);
}
