// Durability under faults, with real processes on real SQLite and PostgreSQL: SIGKILL at random
// points of a for_each, resume of a live run, an owner stopped past its lease and continued,
// two engines on one database, a row the database refuses, a database down at shutdown.
#define BOOST_TEST_MODULE runtime_ownership
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "persistence/failing_store.hpp"
#include "test/support/engine.hpp"

namespace utf = boost::unit_test;
using namespace troupe;
using namespace troupe::test;

namespace {

// ---- processes ----------------------------------------------------------------------------

struct worker {
  pid_t pid = -1;
  FILE* out = nullptr;  // its stdout
  int in = -1;          // its stdin

  ~worker() { stop(); }
  void stop() {
    if (pid > 0) {
      ::kill(pid, SIGCONT);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      pid = -1;
    }
    if (out) {
      std::fclose(out);
      out = nullptr;
    }
    if (in >= 0) {
      ::close(in);
      in = -1;
    }
  }
  // Blocks reading its stdout (an event wait) until a line starting with `prefix`; empty at EOF.
  std::string read_until(const std::string& prefix) {
    char buf[4096];
    while (std::fgets(buf, sizeof buf, out)) {
      std::string line(buf);
      if (!line.empty() && line.back() == '\n') {
        line.pop_back();
      }
      if (line.rfind(prefix, 0) == 0) {
        return line;
      }
    }
    return {};
  }
  void kill_now() {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    pid = -1;
  }
  int wait_exit() {
    int status = 0;
    ::waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
};

std::unique_ptr<worker> spawn_worker(const std::vector<std::string>& args) {
  int out_pipe[2];
  int in_pipe[2];
  BOOST_REQUIRE(::pipe2(out_pipe, O_CLOEXEC) == 0);
  BOOST_REQUIRE(::pipe2(in_pipe, O_CLOEXEC) == 0);
  const pid_t pid = ::fork();
  BOOST_REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(out_pipe[1], 1);
    ::dup2(in_pipe[0], 0);
    std::vector<std::string> copy = args;
    std::string bin = TROUPE_OWNERSHIP_WORKER;
    std::vector<char*> argv{bin.data()};
    for (auto& a : copy) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  ::close(in_pipe[0]);
  auto w = std::make_unique<worker>();
  w->pid = pid;
  w->out = ::fdopen(out_pipe[0], "r");
  w->in = in_pipe[1];
  return w;
}

std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("troupe-ownership-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::unique_ptr<store> open_log(const std::string& url) {
  auto s = open_store(url);
  BOOST_REQUIRE_MESSAGE(s.has_value(), "open " << url << ": " << (s ? "" : s.error().message));
  return std::move(*s);
}

// ---- PostgreSQL ---------------------------------------------------------------------------

// A fresh schema on the test server; empty when there is no server.
std::string pg_schema_url(const std::string& name) {
  return test::pg_schema_url("own", name);
}

#define SKIP_WITHOUT_PG(url)                                                  \
  if ((url).empty()) {                                                        \
    BOOST_TEST_MESSAGE("SKIPPED: no PostgreSQL server (pgtest/url missing)"); \
    return;                                                                   \
  }

// ---- a for_each killed at random points ----------------------------------------------------

// The side effects file, cut into lives: the test writes "life K" before the K-th process
// starts; the processes append "item I".
struct effects_log {
  std::vector<std::map<int, int>> lives;  // per life: item -> times it ran
};

effects_log read_effects(const std::string& path) {
  effects_log log;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("life ", 0) == 0) {
      log.lives.emplace_back();
    } else if (line.rfind("item ", 0) == 0 && !log.lives.empty()) {
      ++log.lives.back()[std::stoi(line.substr(5))];
    }
  }
  return log;
}

void killed_for_each_runs_no_success_twice(const std::string& url, unsigned seed) {
  constexpr int items = 1000;
  constexpr int concurrency = 4;
  constexpr int kills = 4;
  auto dir = temp_dir("items-" + std::to_string(seed));
  const std::string effects = (dir / "effects.txt").string();
  std::mt19937 rng(seed);
  // Each life is killed after a random number of item successes it has seen.
  std::uniform_int_distribution<int> after(20, items / kills);
  std::vector<std::set<int>> succeeded_at_kill;  // what the log said had succeeded, per kill
  std::string run_id;
  for (int life = 0; life <= kills; ++life) {
    { std::ofstream(effects, std::ios::app) << "life " << life << "\n"; }
    auto w =
        spawn_worker({"items", url, effects, std::to_string(items), std::to_string(concurrency)});
    if (life == kills) {
      const std::string done = w->read_until("done");
      BOOST_TEST(done == "done succeeded -");
      BOOST_TEST(w->wait_exit() == 0);
      break;
    }
    const int threshold = after(rng);
    for (int seen = 0; seen < threshold; ++seen) {
      BOOST_REQUIRE_MESSAGE(!w->read_until("ok ").empty(), "the worker ended early");
    }
    w->kill_now();
    auto log = open_log(url);
    if (run_id.empty()) {
      auto runs = log->list_runs(run_query{});
      BOOST_REQUIRE(runs.has_value());
      BOOST_REQUIRE_EQUAL(runs->size(), 1u);
      run_id = runs->front().run_id;
    }
    auto rows = log->node_rows(run_id);
    BOOST_REQUIRE(rows.has_value());
    std::set<int> done;
    for (const auto& r : *rows) {
      if (r.item >= 0 && r.status == node_status::succeeded) {
        done.insert(static_cast<int>(r.item));
      }
    }
    BOOST_TEST_MESSAGE("kill " << life << ": " << done.size() << " items succeeded in the log");
    succeeded_at_kill.push_back(std::move(done));
  }

  const auto log = read_effects(effects);
  BOOST_REQUIRE_EQUAL(log.lives.size(), static_cast<std::size_t>(kills + 1));
  std::map<int, int> total;
  for (const auto& life : log.lives) {
    for (const auto& [item, n] : life) {
      total[item] += n;
    }
  }
  BOOST_TEST(total.size() == static_cast<std::size_t>(items));  // every item ran
  int reruns = 0;
  for (const auto& [item, n] : total) {
    reruns += n - 1;
  }
  // Nothing the log had recorded as succeeded at a kill ran in any later life.
  for (int k = 0; k < kills; ++k) {
    for (int later = k + 1; later <= kills; ++later) {
      for (const auto& [item, n] : log.lives[static_cast<std::size_t>(later)]) {
        BOOST_TEST_CONTEXT("item " << item << ", succeeded before kill " << k) {
          BOOST_TEST(succeeded_at_kill[static_cast<std::size_t>(k)].count(item) == 0u);
        }
      }
    }
  }
  BOOST_TEST_MESSAGE("items run again after a kill (in flight at the kill): " << reruns);
  // Durable runs hold an item's slot until its success is committed: at most `concurrency`
  // items per kill can have run without their success in the log.
  BOOST_TEST(reruns <= kills * concurrency);

  auto store = open_log(url);
  auto run = store->get_run(run_id);
  BOOST_REQUIRE(run.has_value() && run->has_value());
  BOOST_TEST((**run).status == run_status::succeeded);
  BOOST_TEST((**run).epoch == kills + 1);  // claimed once per life after the first
  BOOST_TEST((**run).lease_until == 0);    // released at the end
  auto rows = store->node_rows(run_id);
  BOOST_REQUIRE(rows.has_value());
  std::map<std::int64_t, int> succeeded_rows;
  for (const auto& r : *rows) {
    BOOST_TEST(r.status != node_status::running, "a row still running: item " << r.item);
    if (r.item >= 0 && r.status == node_status::succeeded) {
      ++succeeded_rows[r.item];
    }
  }
  BOOST_TEST(succeeded_rows.size() == static_cast<std::size_t>(items));
  for (const auto& [item, n] : succeeded_rows) {
    BOOST_TEST(n == 1, "item " << item << " has " << n << " succeeded attempts");
  }
  std::filesystem::remove_all(dir);
}

// ---- the gate workflow in this process ------------------------------------------------------

const char* gate_workflow = R"({"name":"gated","nodes":[
    {"id":"before","task":"echo","with":"before"},
    {"id":"gate","task":"gate","needs":["before"]},
    {"id":"after","task":"echo","needs":["gate"],"with":"after"}],
  "outputs":{"after":"{{ nodes.after.output }}"}})";

struct held_gate {
  std::mutex m;
  std::condition_variable cv;
  std::vector<completion> held;

  task_def task() {
    task_def t;
    t.name = "gate";
    t.kind = task_kind::async;
    t.start = [this](const json::value&, const task_call&, completion done) {
      std::lock_guard<std::mutex> lock(m);
      held.push_back(std::move(done));
      cv.notify_all();
    };
    return t;
  }
  void wait_held() {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return !held.empty(); });
  }
  void open() {
    std::lock_guard<std::mutex> lock(m);
    for (auto& d : held) {
      d(task_result::success(nullptr));
    }
    held.clear();
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(kill_resume, *utf::timeout(600))

BOOST_AUTO_TEST_CASE(a_for_each_killed_at_random_points_on_sqlite_runs_no_success_twice) {
  auto dir = temp_dir("sqlite-items");
  killed_for_each_runs_no_success_twice("sqlite://" + (dir / "log.db").string(), 20261207);
}

BOOST_AUTO_TEST_CASE(a_for_each_killed_at_random_points_on_postgres_runs_no_success_twice) {
  const std::string url = pg_schema_url("items");
  SKIP_WITHOUT_PG(url);
  killed_for_each_runs_no_success_twice(url, 777);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(leases, *utf::timeout(300))

BOOST_AUTO_TEST_CASE(a_run_whose_lease_is_live_cannot_be_resumed_elsewhere) {
  const std::string url = temp_db("ownership", "live.db");
  held_gate gate;
  engine a(config(persistence_mode::durable, url));
  a.register_task(gate.task());
  auto p = a.register_workflow(gate_workflow);
  BOOST_REQUIRE(p.has_value());
  auto h = a.start(*p, json::object{});
  BOOST_REQUIRE(h.has_value());
  gate.wait_held();
  BOOST_REQUIRE(a.flush());

  engine b(config(persistence_mode::durable, url));
  b.register_task(gate.task());
  auto refused = b.resume(h->id());
  BOOST_REQUIRE(!refused.has_value());
  const std::string why = refused.error().front().message;
  BOOST_TEST(why.find("is owned by") != std::string::npos, why);
  BOOST_TEST(why.find(std::to_string(::getpid())) != std::string::npos, why);  // names the owner
  BOOST_TEST(why.find("lease") != std::string::npos, why);
  auto all = b.resume_unfinished();
  BOOST_TEST(all.empty());  // nothing claimable: the only unfinished run is alive

  gate.open();
  auto r = h->wait_for(std::chrono::seconds(60));
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(r->status == run_status::succeeded);
  BOOST_TEST(r->persistence_error.empty());
  b.shutdown();
  a.shutdown();
}

void a_stopped_owner_is_fenced(const std::string& url) {
  auto a = spawn_worker({"hold", url, "1000"});
  const std::string ready = a->read_until("ready ");
  BOOST_REQUIRE(!ready.empty());
  const std::string run_id = ready.substr(6);
  ::kill(a->pid, SIGSTOP);

  // Another engine takes the run over once the lease has run out, and finishes it.
  auto b = spawn_worker({"adopt", url, "1000"});
  BOOST_TEST(b->read_until("adopted ") == "adopted " + run_id);
  BOOST_TEST(b->read_until("result ") == "result succeeded -");
  BOOST_TEST(b->wait_exit() == 0);

  auto log = open_log(url);
  auto before_run = log->get_run(run_id);
  auto before_rows = log->node_rows(run_id);
  BOOST_REQUIRE(before_run.has_value() && before_run->has_value() && before_rows.has_value());
  BOOST_TEST((**before_run).status == run_status::succeeded);
  BOOST_TEST((**before_run).epoch == 2);

  // The old owner wakes up and finishes its copy: none of its writes may land.
  ::kill(a->pid, SIGCONT);
  BOOST_REQUIRE(::write(a->in, "go\n", 3) == 3);
  const std::string result = a->read_until("result ");
  BOOST_TEST(result.find("ownership") != std::string::npos, result);
  BOOST_TEST(a->wait_exit() == 0);

  auto after_run = log->get_run(run_id);
  auto after_rows = log->node_rows(run_id);
  BOOST_REQUIRE(after_run.has_value() && after_run->has_value() && after_rows.has_value());
  BOOST_TEST((**after_run).owner == (**before_run).owner);
  BOOST_TEST((**after_run).epoch == 2);
  BOOST_TEST((**after_run).finished_at == (**before_run).finished_at);
  BOOST_REQUIRE_EQUAL(after_rows->size(), before_rows->size());
  for (std::size_t i = 0; i < after_rows->size(); ++i) {
    const auto& x = (*before_rows)[i];
    const auto& y = (*after_rows)[i];
    BOOST_TEST_CONTEXT(x.node_id << " attempt " << x.attempt) {
      BOOST_TEST(y.node_id == x.node_id);
      BOOST_TEST(y.attempt == x.attempt);
      BOOST_TEST((y.status == x.status));
      BOOST_TEST(y.finished_at == x.finished_at);
    }
  }
}

BOOST_AUTO_TEST_CASE(an_owner_stopped_past_its_lease_is_fenced_on_sqlite) {
  auto dir = temp_dir("fence-sqlite");
  a_stopped_owner_is_fenced("sqlite://" + (dir / "log.db").string());
}

BOOST_AUTO_TEST_CASE(an_owner_stopped_past_its_lease_is_fenced_on_postgres) {
  const std::string url = pg_schema_url("fence");
  SKIP_WITHOUT_PG(url);
  a_stopped_owner_is_fenced(url);
}

BOOST_AUTO_TEST_CASE(two_engines_on_one_postgres_database_overwrite_no_run) {
  const std::string url = pg_schema_url("two");
  SKIP_WITHOUT_PG(url);
  constexpr int runs = 10000;
  auto a = spawn_worker({"many", url, "a", std::to_string(runs)});
  auto b = spawn_worker({"many", url, "b", std::to_string(runs)});
  BOOST_TEST(a->read_until("done ") == "done 10000 10000 lost 0");
  BOOST_TEST(b->read_until("done ") == "done 10000 10000 lost 0");
  BOOST_TEST(a->wait_exit() == 0);
  BOOST_TEST(b->wait_exit() == 0);
  auto log = open_log(url);
  run_query q;
  q.limit = 0;
  auto all = log->list_runs(q);
  BOOST_REQUIRE(all.has_value());
  BOOST_TEST(all->size() == static_cast<std::size_t>(2 * runs));
  std::set<std::string> seen;  // (tag, i) of every stored run: each exactly once
  for (const auto& r : *all) {
    BOOST_REQUIRE(r.inputs);
    const auto& in = r.inputs->as_object();
    seen.insert(std::string(in.at("tag").as_string()) + "/" +
                std::to_string(in.at("i").as_int64()));
    BOOST_TEST((r.status == run_status::succeeded));
  }
  BOOST_TEST(seen.size() == static_cast<std::size_t>(2 * runs));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(honest_failures, *utf::timeout(300))

void a_refused_row_is_a_dead_letter(const std::string& url) {
  engine e(config(persistence_mode::durable, url));
  auto p = e.register_workflow(R"({"name":"poisoned","nodes":[
      {"id":"ok1","task":"echo","with":1},
      {"id":"poison","task":"echo","needs":["ok1"],"with":2},
      {"id":"ok2","task":"echo","needs":["poison"],"with":3}],
    "outputs":{"ok2":"{{ nodes.ok2.output }}"}})");
  BOOST_REQUIRE(p.has_value());
  auto h = e.start(*p, json::object{});
  BOOST_REQUIRE(h.has_value());
  auto r = h->wait_for(std::chrono::seconds(60));
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(r->status == run_status::succeeded);  // what the run did
  BOOST_TEST(r->persistence_error.find("refused") != std::string::npos, r->persistence_error);
  BOOST_TEST(e.metrics().dead_letters.load() >= 1u);
  e.shutdown();
  auto log = open_log(url);
  auto rows = log->node_rows(h->id());
  BOOST_REQUIRE(rows.has_value());
  std::set<std::string> stored;
  for (const auto& row : *rows) {
    stored.insert(row.node_id);
  }
  BOOST_TEST((stored == std::set<std::string>{"ok1", "ok2"}));  // the rest was committed
  auto letters = log->list_dead_letters(0);
  BOOST_REQUIRE_MESSAGE(letters.has_value(), (letters ? "" : letters.error().message));
  BOOST_REQUIRE(!letters->empty());
  for (const auto& d : *letters) {
    BOOST_TEST(d.run_id == h->id());
    BOOST_TEST(d.table == "node_executions");
    BOOST_TEST(d.key.find("/poison/") != std::string::npos, d.key);
    BOOST_TEST(d.error.find("poison") != std::string::npos, d.error);
  }
}

BOOST_AUTO_TEST_CASE(a_row_sqlite_refuses_is_a_dead_letter_and_the_durable_caller_is_told) {
  const std::string url = temp_db("ownership", "poison.db");
  open_log(url);  // creates the schema
  sqlite3* db = nullptr;
  BOOST_REQUIRE(sqlite3_open(url.substr(9).c_str(), &db) == SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(db,
                              "CREATE TRIGGER poison BEFORE INSERT ON node_executions "
                              "WHEN NEW.node_id = 'poison' BEGIN "
                              "SELECT RAISE(ABORT, 'poison rows are refused'); END;",
                              nullptr, nullptr, &err);
  BOOST_REQUIRE_MESSAGE(rc == SQLITE_OK, (err ? err : "?"));
  sqlite3_close(db);
  a_refused_row_is_a_dead_letter(url);
}

BOOST_AUTO_TEST_CASE(a_row_postgres_refuses_is_a_dead_letter_and_the_durable_caller_is_told) {
  const std::string url = pg_schema_url("poison");
  SKIP_WITHOUT_PG(url);
  open_log(url);
  pg_exec(url,
          "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
          "IF NEW.node_id = 'poison' THEN RAISE EXCEPTION 'poison rows are refused'; END IF; "
          "RETURN NEW; END $$; "
          "CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON node_executions "
          "FOR EACH ROW EXECUTE FUNCTION poison()");
  a_refused_row_is_a_dead_letter(url);
}

BOOST_AUTO_TEST_CASE(a_durable_engine_whose_database_stays_down_shuts_down_by_its_deadline) {
  auto inner = open_store("memory://");
  BOOST_REQUIRE(inner.has_value());
  auto failing = std::make_shared<failing_store>(std::move(*inner));
  engine_config c = config(persistence_mode::durable, "memory://");
  c.store_object = failing;
  c.writer.retry_initial_ms = 1;
  c.writer.retry_max_ms = 10;
  c.drain_deadline = std::chrono::milliseconds(200);
  engine e(c);
  auto p = e.register_workflow(R"({"name":"down","nodes":[{"id":"a","task":"echo","with":1}]})");
  BOOST_REQUIRE(p.has_value());
  failing->set_failing(true, store_error{"database is down", true});
  auto h = e.start(*p, json::object{});
  BOOST_REQUIRE(h.has_value());
  BOOST_REQUIRE(e.metrics().wait_errors(3, std::chrono::seconds(60)));
  BOOST_TEST(!h->try_result().has_value());    // its end waits for a commit that cannot happen
  e.shutdown(std::chrono::milliseconds(100));  // returns: the test's timeout is the bound
  auto r = h->try_result();
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(r->status == run_status::succeeded);
  BOOST_TEST(r->persistence_error.find("not committed") != std::string::npos, r->persistence_error);
  BOOST_TEST(e.metrics().lost_rows.load() > 0u);
}

BOOST_AUTO_TEST_SUITE_END()
