// The node cluster as operators run it: `troupe serve --cluster` coordinators and `troupe node`
// workers as real processes on loopback, a real PostgreSQL server (the `pg` fixture), and faults
// made with signals: SIGKILL (a process gone), SIGSTOP (a process frozen: only heartbeats tell).
//
// Every wait is an event: a line a process prints, an event of a run's stream, a line in a FIFO,
// a lock the test holds. The held items of the workflow record their side effect in a file, say
// so in a FIFO the test reads, then block on a shared flock(1) of a file the test holds
// exclusively: "in flight, effect done" is a state the test sees and controls.
#define BOOST_TEST_MODULE apps_cluster
#include <boost/test/unit_test.hpp>

#include <boost/json.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "test/apps/process.hpp"
#include "test/support/pg.hpp"

namespace utf = boost::unit_test;
namespace json = boost::json;

namespace troupe::test {
namespace {

// A fresh schema of the test server for one test's coordinators.
std::string fresh_database(const std::string& name) {
  const std::string url = pg_schema_url("cluster", name);
  BOOST_REQUIRE_MESSAGE(!url.empty(), "no PostgreSQL test server (pgtest/url)");
  return url;
}

// The test's hold on in-flight items: while it is held, every item that starts blocks after
// writing its side effect.
class gate {
 public:
  explicit gate(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    BOOST_REQUIRE(fd_ >= 0);
    BOOST_REQUIRE(::flock(fd_, LOCK_EX) == 0);
  }
  ~gate() { open(); }
  void open() {
    if (fd_ >= 0) {
      ::close(fd_);  // releases the lock: blocked items go on, later ones pass at once
      fd_ = -1;
    }
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// Where held items say they have started: a FIFO the test keeps open for reading all along (so
// no writer ever blocks), read when it waits for items.
class ready_fifo {
 public:
  explicit ready_fifo(const std::string& path) : path_(path) {
    BOOST_REQUIRE(::mkfifo(path.c_str(), 0644) == 0);
    fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);  // a reader that never blocks its writers
    BOOST_REQUIRE(fd_ >= 0);
  }
  ~ready_fifo() { ::close(fd_); }
  const std::string& path() const { return path_; }
  /// Blocks until `n` more lines have arrived.
  void wait_lines(int n) {
    while (n > 0) {
      char c = 0;
      const ssize_t got = ::read(fd_, &c, 1);
      BOOST_REQUIRE(got == 1 || (got < 0 && errno == EINTR));
      n -= got == 1 && c == '\n' ? 1 : 0;
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// Two nodes: `a`, `n` quick items; `b`, `n` items held at the gate. Each item appends
// "<execution key> <attempt>" to the effects file first; b's items then say so in the FIFO.
std::string effect_workflow(const std::string& effects, const std::string& gate_file,
                            const std::string& ready) {
  const std::string a_cmd = "echo \"$TROUPE_EXECUTION_KEY $TROUPE_ATTEMPT\" >> " + effects;
  const std::string b_cmd = a_cmd + " && echo \"$TROUPE_EXECUTION_KEY\" >> " + ready +
                            " && flock -s " + gate_file + " true";
  json::object doc;
  doc["name"] = "fx";
  doc["inputs"] = json::parse(R"({"n":{"type":"integer","default":4}})");
  json::array nodes;
  nodes.push_back(json::object{{"id", "a"},
                               {"task", "shell"},
                               {"for_each", "{{ range(inputs.n) }}"},
                               {"with", json::object{{"command", a_cmd}}}});
  nodes.push_back(json::object{{"id", "b"},
                               {"task", "shell"},
                               {"needs", json::array{"a"}},
                               {"for_each", "{{ range(inputs.n) }}"},
                               {"with", json::object{{"command", b_cmd}}}});
  doc["nodes"] = std::move(nodes);
  return json::serialize(doc);
}

// Lines of the effects file: execution key -> times it ran.
std::map<std::string, int> effects_by_key(const std::string& path) {
  std::map<std::string, int> out;
  std::ifstream in(path);
  std::string key;
  int attempt = 0;
  while (in >> key >> attempt) {
    ++out[key];
  }
  return out;
}

const std::string heartbeat_ms = "100";
const std::string connection_timeout_ms = "800";

class coordinator {
 public:
  coordinator(const temp_dir& dir, const std::string& db, const std::string& lease_ms,
              std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"serve",
                                      "--listen",
                                      "127.0.0.1:0",
                                      "--cluster",
                                      "127.0.0.1:0",
                                      "--db",
                                      db,
                                      "--workflows",
                                      (dir.path() / "wf").string(),
                                      "--lease-ms",
                                      lease_ms,
                                      "--heartbeat-ms",
                                      heartbeat_ms,
                                      "--connection-timeout-ms",
                                      connection_timeout_ms};
    args.insert(args.end(), extra.begin(), extra.end());
    proc = std::make_unique<child>(args, dir.path());
    BOOST_REQUIRE_MESSAGE(proc->wait_for_stdout("listening on http://"),
                          "troupe serve did not start: " << proc->err_so_far());
    std::smatch m;
    const std::string out = proc->out_so_far();
    BOOST_REQUIRE(std::regex_search(out, m, std::regex("cluster listening on ([0-9.:]+)")));
    cluster = m[1].str();
    BOOST_REQUIRE(std::regex_search(out, m, std::regex("http://(127\\.0\\.0\\.1:[0-9]+)")));
    http = "http://" + m[1].str();
  }
  std::unique_ptr<child> proc;
  std::string cluster;  // host:port for --join
  std::string http;
};

std::unique_ptr<child> start_worker(const temp_dir& dir, const std::string& name,
                                    const std::string& join, int capacity) {
  return std::make_unique<child>(
      std::vector<std::string>{"node", "--join", join, "--name", name, "--capacity",
                               std::to_string(capacity), "--heartbeat-ms", heartbeat_ms,
                               "--connection-timeout-ms", connection_timeout_ms},
      dir.path());
}

// A worker joined to each of `to`: it has said hello and each logged it.
std::unique_ptr<child> joined_worker(const temp_dir& dir, const std::string& name,
                                     const std::vector<const coordinator*>& to, int capacity) {
  std::string join;
  for (const auto* c : to) {
    join += (join.empty() ? "" : ",") + c->cluster;
  }
  auto w = start_worker(dir, name, join, capacity);
  for (const auto* c : to) {
    BOOST_REQUIRE_MESSAGE(c->proc->wait_for_stderr("worker " + name + " joined"),
                          name << " did not join: " << w->out_so_far());
  }
  return w;
}

// A run started in stream mode: curl prints the run's events as they happen.
std::unique_ptr<child> stream_run(const temp_dir& dir, const std::string& http,
                                  const std::string& body) {
  return std::make_unique<child>(
      "curl",
      std::vector<std::string>{"-s", "-N", "-H", "Content-Type: application/json",
                               "--data-binary", body, http + "/v1/runs"},
      dir.path());
}

// The run id of a stream's first frame.
std::string run_id_of(child& stream) {
  BOOST_REQUIRE(stream.wait_for_stdout("\"run_id\":\""));
  std::smatch m;
  const std::string out = stream.out_so_far();
  BOOST_REQUIRE(std::regex_search(out, m, std::regex("\"run_id\":\"([0-9a-z]+)\"")));
  return m[1].str();
}

// A run's events read from the log and then live, to its end (run_finished), from `http`.
std::string events_to_end(const temp_dir& dir, const std::string& http, const std::string& run) {
  child c("curl", {"-s", "-N", http + "/v1/runs/" + run + "/events"}, dir.path());
  auto r = c.finish();
  return r.out;
}

json::value show_run(const temp_dir& dir, const std::string& db, const std::string& run) {
  auto r = run_troupe({"runs", "show", run, "--db", db, "--json"}, dir.path());
  BOOST_REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  return json::parse(r.out);
}

// Node executions of node `id` with an item, by item.
std::map<std::int64_t, std::vector<json::object>> item_rows(const json::value& shown,
                                                            const std::string& id) {
  std::map<std::int64_t, std::vector<json::object>> out;
  for (const auto& n : shown.at("nodes").as_array()) {
    const auto& o = n.as_object();
    if (o.at("node_id").as_string() == id && !o.at("item").is_null()) {
      out[o.at("item").as_int64()].push_back(o);
    }
  }
  return out;
}

std::int64_t int_or_zero(const json::object& o, const char* key) {
  auto* v = o.if_contains(key);
  return v ? v->as_int64() : 0;
}

struct cluster_dir {
  temp_dir dir;
  std::string effects;
  std::unique_ptr<gate> hold;
  std::unique_ptr<ready_fifo> ready;
  cluster_dir() {
    std::filesystem::create_directories(dir.path() / "wf");
    effects = (dir.path() / "effects.log").string();
    hold = std::make_unique<gate>((dir.path() / "gate").string());
    ready = std::make_unique<ready_fifo>((dir.path() / "ready").string());
    dir.write_file("wf/fx.json", effect_workflow(effects, hold->path(), ready->path()));
  }

  // A run of fx started through `http` (its events streamed), once b's 4 items have done their
  // side effect and are held at the gate.
  struct held_run {
    std::unique_ptr<child> stream;
    std::string id;
  };
  held_run start_held_run(const std::string& http) {
    held_run r;
    r.stream = stream_run(dir, http, R"({"workflow":"fx","response":"stream"})");
    r.id = run_id_of(*r.stream);
    ready->wait_lines(4);
    return r;
  }
};

// The a items the log holds as succeeded now.
std::vector<std::string> succeeded_items(const json::value& shown, const std::string& run) {
  std::vector<std::string> keys;
  for (const auto& [item, rows] : item_rows(shown, "a")) {
    for (const auto& r : rows) {
      if (r.at("status").as_string() == "succeeded") {
        keys.push_back(run + "/a/" + std::to_string(item));
      }
    }
  }
  return keys;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cluster_processes)

BOOST_AUTO_TEST_CASE(a_worker_killed_with_attempts_in_flight_has_them_run_again_elsewhere,
                     *utf::timeout(120)) {
  cluster_dir cd;
  const std::string db = fresh_database("killed");
  coordinator c(cd.dir, db, "5000");
  auto w1 = joined_worker(cd.dir, "w1", {&c}, 2);
  auto w2 = joined_worker(cd.dir, "w2", {&c}, 2);

  // b's 4 items have done their effect and are held, two on each worker (capacity 2 each).
  auto [stream, run] = cd.start_held_run(c.http);
  w1->send(SIGKILL);
  w1->finish();
  BOOST_REQUIRE(c.proc->wait_for_stderr("worker w1 lost"));
  cd.hold->open();
  BOOST_REQUIRE(stream->wait_for_stdout("event: run_finished"));
  stream->finish();
  BOOST_TEST(contains(events_to_end(cd.dir, c.http, run), "\"status\":\"succeeded\""));

  const auto shown = show_run(cd.dir, db, run);
  BOOST_TEST(shown.at("run").at("status").as_string() == "succeeded");
  const auto b = item_rows(shown, "b");
  BOOST_REQUIRE(b.size() == 4u);
  int moved = 0;
  for (const auto& [item, rows] : b) {
    BOOST_REQUIRE_MESSAGE(rows.size() == 1u, "item " << item << ": one attempt, not a retry");
    const auto& row = rows.front();
    BOOST_TEST(row.at("attempt").as_int64() == 1);
    BOOST_TEST(row.at("status").as_string() == "succeeded");
    BOOST_TEST(row.at("worker").as_string() == "w2", "item " << item);
    moved += int_or_zero(row, "lost") == 1 ? 1 : 0;
  }
  BOOST_TEST(moved == 2);  // the two w1 held when it died
  // Side effects: every key of a once; of b, once, or twice for the two moved.
  const auto effects = effects_by_key(cd.effects);
  int twice = 0;
  for (const auto& [key, times] : effects) {
    BOOST_TEST(times <= (key.find("/b/") != std::string::npos ? 2 : 1), key << " ran " << times);
    twice += times == 2 ? 1 : 0;
  }
  BOOST_TEST(effects.size() == 8u);
  BOOST_TEST(twice == 2);
  c.proc->send(SIGTERM);
  w2->send(SIGTERM);
  BOOST_TEST(c.proc->finish().exit_code == 0);
  BOOST_TEST(w2->finish().exit_code == 0);
}

BOOST_AUTO_TEST_CASE(a_frozen_worker_is_noticed_through_heartbeats_and_rejoins_when_it_wakes,
                     *utf::timeout(120)) {
  cluster_dir cd;
  const std::string db = fresh_database("frozen");
  coordinator c(cd.dir, db, "5000");
  auto w1 = joined_worker(cd.dir, "w1", {&c}, 2);
  auto w2 = joined_worker(cd.dir, "w2", {&c}, 2);
  auto [stream, run] = cd.start_held_run(c.http);
  // Frozen, its TCP connection stays open: only the missing heartbeats can tell.
  const auto frozen_at = std::chrono::steady_clock::now();
  w1->send(SIGSTOP);
  BOOST_REQUIRE(c.proc->wait_for_stderr("worker w1 lost"));
  const auto noticed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::steady_clock::now() - frozen_at)
                              .count();
  BOOST_TEST_MESSAGE("frozen worker noticed after " << noticed_ms << " ms (connection timeout "
                                                    << connection_timeout_ms << " ms)");
  cd.hold->open();
  BOOST_REQUIRE(stream->wait_for_stdout("event: run_finished"));
  BOOST_TEST(contains(stream->finish().out, "\"status\":\"succeeded\""));
  const auto b = item_rows(show_run(cd.dir, db, run), "b");
  for (const auto& [item, rows] : b) {
    BOOST_REQUIRE(rows.size() == 1u);
    BOOST_TEST(rows.front().at("worker").as_string() == "w2");
  }
  // Woken, it finds its link gone, cancels what it held, and joins again.
  w1->send(SIGCONT);
  BOOST_REQUIRE(w1->wait_for_stdout("troupe node: lost " + c.cluster));
  BOOST_REQUIRE(w1->wait_for_stdout_count("troupe node: joined " + c.cluster, 2));
  BOOST_REQUIRE(c.proc->wait_for_stderr_count("worker w1 joined", 2));
  c.proc->send(SIGTERM);
  w1->send(SIGTERM);
  w2->send(SIGTERM);
  BOOST_TEST(c.proc->finish().exit_code == 0);
  BOOST_TEST(w1->finish().exit_code == 0);
  BOOST_TEST(w2->finish().exit_code == 0);
}

BOOST_AUTO_TEST_CASE(a_killed_coordinator_s_runs_are_resumed_by_another_without_rerunning_successes,
                     *utf::timeout(120)) {
  cluster_dir cd;
  const std::string db = fresh_database("coordinator_killed");
  coordinator a(cd.dir, db, "1500");
  coordinator b(cd.dir, db, "1500");
  auto w1 = joined_worker(cd.dir, "w1", {&a, &b}, 4);
  auto w2 = joined_worker(cd.dir, "w2", {&a, &b}, 4);

  auto [stream, run] = cd.start_held_run(a.http);
  const auto killed_at = std::chrono::steady_clock::now();
  a.proc->send(SIGKILL);
  a.proc->finish();
  stream->finish();
  // What the log held at the kill is what must not run again.
  const auto done_at_kill = succeeded_items(show_run(cd.dir, db, run), run);
  // The workers notice and keep serving b.
  BOOST_REQUIRE(w1->wait_for_stdout("troupe node: lost " + a.cluster));
  BOOST_REQUIRE(b.proc->wait_for_stderr("adopted run " + run));
  const auto adopted_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::steady_clock::now() - killed_at)
                              .count();
  BOOST_TEST_MESSAGE("run adopted " << adopted_ms << " ms after the SIGKILL (lease 1500 ms)");
  cd.hold->open();
  const std::string events = events_to_end(cd.dir, b.http, run);
  BOOST_TEST(contains(events, "\"status\":\"succeeded\""), events);

  const auto shown = show_run(cd.dir, db, run);
  BOOST_TEST(shown.at("run").at("status").as_string() == "succeeded");
  // b's items were in flight (their effect done): closed as interrupted when the log had
  // their start, and run again on the workers, which moved on to b.
  for (const auto& [item, rows] : item_rows(shown, "b")) {
    BOOST_REQUIRE(!rows.empty());
    BOOST_TEST(rows.back().at("status").as_string() == "succeeded");
    BOOST_TEST(rows.back().at("attempt").as_int64() == static_cast<std::int64_t>(rows.size()));
    if (rows.size() == 2u) {
      BOOST_TEST(rows.front().at("status").as_string() == "interrupted");
    }
    const std::string w(rows.back().at("worker").as_string());
    BOOST_TEST((w == "w1" || w == "w2"), w);
  }
  const auto effects = effects_by_key(cd.effects);
  BOOST_TEST(!done_at_kill.empty());
  for (const auto& key : done_at_kill) {
    BOOST_TEST(effects.at(key) == 1, key << ": succeeded before the kill, ran again");
  }
  for (const auto& [key, times] : effects) {
    if (key.find("/b/") != std::string::npos) {
      BOOST_TEST(times == 2, key << " ran " << times);  // in flight at the kill, then resumed
    }
  }
  // The resumed attempt knows it is not the first: TROUPE_ATTEMPT is the log's number.
  std::ifstream lines(cd.effects);
  std::string key;
  int attempt = 0;
  std::map<std::string, std::set<int>> attempts;
  while (lines >> key >> attempt) {
    attempts[key].insert(attempt);
  }
  for (const auto& [item, rows] : item_rows(shown, "b")) {
    const std::string k = run + "/b/" + std::to_string(item);
    std::set<int> logged;
    for (const auto& r : rows) {
      logged.insert(static_cast<int>(r.at("attempt").as_int64()));
    }
    BOOST_TEST((attempts[k] == logged), k);
  }
  b.proc->send(SIGTERM);
  w1->send(SIGTERM);
  w2->send(SIGTERM);
  BOOST_TEST(b.proc->finish().exit_code == 0);
  w1->finish();
  w2->finish();
}

BOOST_AUTO_TEST_CASE(a_coordinator_frozen_past_its_lease_is_fenced_and_lets_its_runs_go,
                     *utf::timeout(120)) {
  cluster_dir cd;
  const std::string db = fresh_database("coordinator_frozen");
  coordinator a(cd.dir, db, "1500");
  coordinator b(cd.dir, db, "1500");
  auto w1 = joined_worker(cd.dir, "w1", {&a, &b}, 4);
  auto [stream, run] = cd.start_held_run(a.http);
  a.proc->send(SIGSTOP);
  // The worker drops the silent coordinator (its held items are cancelled), b adopts the run.
  BOOST_REQUIRE(w1->wait_for_stdout("troupe node: lost " + a.cluster));
  BOOST_REQUIRE(b.proc->wait_for_stderr("adopted run " + run));
  cd.hold->open();
  BOOST_TEST(contains(events_to_end(cd.dir, b.http, run), "\"status\":\"succeeded\""));
  const auto before = show_run(cd.dir, db, run);
  const auto effects_before = effects_by_key(cd.effects);

  a.proc->send(SIGCONT);
  BOOST_REQUIRE(a.proc->wait_for_stderr("stop here without writing"));
  // a's stream ends with the run's loss; nothing a did after waking reached the log or ran.
  stream->finish();
  const auto after = show_run(cd.dir, db, run);
  BOOST_TEST(json::serialize(after) == json::serialize(before));
  BOOST_TEST(after.at("run").at("owner").as_string() != "");
  const auto effects_after = effects_by_key(cd.effects);
  for (const auto& [key, times] : effects_after) {
    BOOST_TEST(times == (effects_before.count(key) ? effects_before.at(key) : 0),
               key << " ran after the frozen coordinator woke");
  }
  a.proc->send(SIGTERM);
  b.proc->send(SIGTERM);
  w1->send(SIGTERM);
  a.proc->finish();
  BOOST_TEST(b.proc->finish().exit_code == 0);
  w1->finish();
}

BOOST_AUTO_TEST_CASE(a_worker_of_another_version_is_refused_with_a_clear_error,
                     *utf::timeout(120)) {
  cluster_dir cd;
  coordinator c(cd.dir, "memory://", "5000", {"--mode", "memory"});
  ::setenv("TROUPE_CLUSTER_APP_ID", "troupe/9.9.9/p1", 1);
  auto stranger = start_worker(cd.dir, "stranger", c.cluster, 1);
  ::unsetenv("TROUPE_CLUSTER_APP_ID");
  auto r = stranger->finish();
  BOOST_TEST(r.exit_code == 2);
  BOOST_TEST(contains(r.err, "refused by " + c.cluster), r.err);
  BOOST_TEST(contains(r.err, "another troupe version"), r.err);
  BOOST_TEST(!contains(c.proc->err_so_far(), "worker stranger joined"));
  c.proc->send(SIGTERM);
  BOOST_TEST(c.proc->finish().exit_code == 0);
}

BOOST_AUTO_TEST_SUITE_END()

// Where its coordinators are is the one thing a worker cannot guess.
BOOST_AUTO_TEST_CASE(a_join_address_without_a_host_or_a_port_is_refused,
                     *utf::timeout(60)) {
  temp_dir dir;
  for (const char* join : {"127.0.0.1", ":7100", "127.0.0.1:0", "127.0.0.1:x", "h:70000"}) {
    auto r = run_troupe({"node", "--join", join}, dir.path());
    BOOST_TEST(r.exit_code == 2, join);
    BOOST_TEST(contains(r.err, "is not HOST:PORT"), join << ": " << r.err);
  }
}

}  // namespace troupe::test
