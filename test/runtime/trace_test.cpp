#define BOOST_TEST_MODULE runtime_trace
#include <boost/test/unit_test.hpp>

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/engine.hpp"

namespace troupe {
std::ostream& operator<<(std::ostream& os, run_status s) {
  return os << to_string(s);
}
}  // namespace troupe

using namespace troupe;
using namespace std::chrono_literals;
namespace bj = boost::json;

namespace {

// A run actor, three node actors (sleep takes time, so each attempt gets a node actor; b and c
// run in parallel after a, and one of them reuses a's actor) and an inline echo at the end.
constexpr const char* diamond = R"({
  "name": "diamond",
  "nodes": [
    { "id": "a", "task": "sleep", "with": { "ms": 3 } },
    { "id": "b", "task": "sleep", "needs": ["a"], "with": { "ms": 6 } },
    { "id": "c", "task": "sleep", "needs": ["a"], "with": { "ms": 1 } },
    { "id": "d", "task": "echo", "needs": ["b", "c"], "with": "done" }
  ]
})";

struct temp_file {
  std::filesystem::path path;
  temp_file() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/troupe-trace-XXXXXX";
    const int fd = ::mkstemp(pattern.data());
    BOOST_REQUIRE(fd >= 0);
    ::close(fd);
    path = pattern;
  }
  ~temp_file() {
    std::error_code ec;
    std::filesystem::remove(path, ec);
  }
};

bj::value read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  boost::system::error_code ec;
  bj::value v = bj::parse(s.str(), ec);
  BOOST_TEST_REQUIRE(!ec, "the trace is not JSON: " << ec.message());
  return v;
}

double num(const bj::value& v) {
  return v.is_double() ? v.as_double()
         : v.is_int64() ? static_cast<double>(v.as_int64())
                        : static_cast<double>(v.as_uint64());
}

std::string str(const bj::object& o, const char* key) {
  const bj::value* v = o.if_contains(key);
  return v && v->is_string() ? std::string(v->as_string()) : std::string();
}

// The fields the trace event format requires of every event, by phase.
void check_event(const bj::value& v) {
  BOOST_TEST_REQUIRE(v.is_object());
  const bj::object& e = v.as_object();
  BOOST_TEST_REQUIRE(e.contains("ph"));
  BOOST_TEST_REQUIRE(e.at("ph").is_string());
  const std::string ph = str(e, "ph");
  BOOST_TEST(e.contains("name"));
  BOOST_TEST(e.at("name").is_string());
  BOOST_TEST(e.contains("pid"));
  BOOST_TEST(e.contains("tid"));
  BOOST_TEST((ph == "M" || ph == "X" || ph == "s" || ph == "f" || ph == "i"), "phase " << ph);
  if (ph != "M") {
    BOOST_TEST_REQUIRE(e.contains("ts"));
    BOOST_TEST(num(e.at("ts")) >= 0);
  }
  if (ph == "X") {
    BOOST_TEST_REQUIRE(e.contains("dur"));
    BOOST_TEST(num(e.at("dur")) >= 0);
  }
  if (ph == "s" || ph == "f") {
    BOOST_TEST(e.contains("id"));
    BOOST_TEST(e.contains("cat"));
  }
  if (ph == "f") {
    BOOST_TEST(str(e, "bp") == "e");
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_traced_run_records_every_message_in_causal_order) {
  temp_file file;
  std::string run_id;
  {
    engine_config c;
    c.threads = 2;
    c.mode = persistence_mode::async;
    c.store = "memory://";
    c.trace_file = file.path.string();
    engine e(c);
    auto plan = e.register_workflow(diamond);
    BOOST_REQUIRE(plan.has_value());
    auto run = e.start(*plan, {});
    BOOST_REQUIRE(run.has_value());
    auto result = run->wait_for(30s);
    BOOST_REQUIRE(result.has_value());
    BOOST_TEST(result->status == run_status::succeeded);
    run_id = run->id();
    e.shutdown();  // the trace is complete once the engine is down
  }

  const bj::value doc = read_json(file.path);
  BOOST_TEST_REQUIRE(doc.is_object());
  BOOST_TEST_REQUIRE(doc.as_object().contains("traceEvents"));
  const bj::array& events = doc.at("traceEvents").as_array();
  BOOST_TEST(!events.empty());

  std::map<std::uint64_t, std::string> tracks;
  std::map<std::uint64_t, double> flow_start;
  std::map<std::uint64_t, double> flow_end;
  std::vector<bj::object> slices;
  for (const auto& v : events) {
    check_event(v);
    const bj::object& e = v.as_object();
    const std::string ph = str(e, "ph");
    if (ph == "M" && str(e, "name") == "thread_name") {
      tracks[static_cast<std::uint64_t>(num(e.at("tid")))] = str(e.at("args").as_object(), "name");
    } else if (ph == "s") {
      BOOST_TEST(flow_start.emplace(static_cast<std::uint64_t>(num(e.at("id"))), num(e.at("ts")))
                     .second);
    } else if (ph == "f") {
      BOOST_TEST(flow_end.emplace(static_cast<std::uint64_t>(num(e.at("id"))), num(e.at("ts")))
                     .second);
    } else if (ph == "X" && (str(e, "cat") == "handle" || str(e, "cat") == "init")) {
      slices.push_back(e);
    }
  }
  // Every arrow starts at a send and ends at the handling that came after it.
  BOOST_TEST(flow_start.size() == flow_end.size());
  for (const auto& [id, ts] : flow_end) {
    BOOST_TEST_REQUIRE(flow_start.contains(id), "flow " << id << " has no start");
    BOOST_TEST(flow_start[id] <= ts, "flow " << id);
  }
  for (const auto& s : slices) {
    const bj::object& a = s.at("args").as_object();
    if (a.contains("sent")) {
      BOOST_TEST(num(a.at("sent")) <= num(s.at("ts")));
      BOOST_TEST(num(a.at("queued_us")) >= 0);
    }
  }

  // Tracks are named after what they run.
  int runs = 0, writers = 0;
  std::set<std::string> node_tracks;
  for (const auto& [tid, name] : tracks) {
    runs += name.rfind("run " + run_id, 0) == 0;
    writers += name.rfind("writer", 0) == 0;
    if (name.rfind("node ", 0) == 0) {
      node_tracks.insert(name);
      BOOST_TEST(name.find("(run " + run_id + ")") != std::string::npos, name);
    }
  }
  BOOST_TEST(runs == 1);
  BOOST_TEST(writers == 1);
  BOOST_TEST(node_tracks.size() >= 2u);

  // Each node: dispatched to a node actor (its spawn or a reused actor's node_spawn_args),
  // then its result (attempt_done from that node) handled by the run actor, later.
  std::map<std::string, double> dispatched, answered;
  std::map<std::string, double> answer_sent;
  bool committed = false;
  for (const auto& s : slices) {
    const bj::object& a = s.at("args").as_object();
    const std::string name = str(s, "name");
    const std::string node = str(a, "node");
    const double ts = num(s.at("ts"));
    if (str(a, "run") == run_id && !node.empty() &&
        (name == "init" || name == "node_spawn_args") && !dispatched.contains(node)) {
      dispatched[node] = ts;
    }
    if (name == "attempt_done" && str(a, "run") == run_id && str(a, "node").empty() &&
        !str(a, "from_node").empty()) {
      answered[str(a, "from_node")] = ts;
      answer_sent[str(a, "from_node")] = num(a.at("sent"));
    }
    committed = committed || (a.contains("rows") && num(a.at("rows")) > 0);
  }
  for (const char* n : {"a", "b", "c"}) {
    BOOST_TEST_REQUIRE(dispatched.contains(n), "no dispatch of " << n);
    BOOST_TEST_REQUIRE(answered.contains(n), "no result of " << n);
    BOOST_TEST(dispatched[n] < answer_sent[n], n);
    BOOST_TEST(answer_sent[n] <= answered[n], n);
  }
  // The DAG's order: b and c are dispatched after a's result was handled.
  BOOST_TEST(answered["a"] < dispatched["b"]);
  BOOST_TEST(answered["a"] < dispatched["c"]);
  // The writer's commits are visible (async mode on memory://).
  BOOST_TEST(committed);
}

BOOST_AUTO_TEST_CASE(an_untraced_engine_writes_nothing_and_a_bad_path_is_an_engine_error) {
  engine_config c;
  c.trace_file = "/nonexistent-dir/x/trace.json";
  BOOST_CHECK_EXCEPTION(engine{c}, engine_error, [](const engine_error& e) {
    return std::string(e.what()).find("cannot open trace file '/nonexistent-dir/x/trace.json'") !=
           std::string::npos;
  });
}

BOOST_AUTO_TEST_CASE(a_trace_of_many_runs_pairs_every_send) {
  temp_file file;
  {
    engine_config c;
    c.threads = 2;
    c.trace_file = file.path.string();
    engine e(c);
    auto plan = e.register_workflow(diamond);
    BOOST_REQUIRE(plan.has_value());
    std::vector<run_handle> handles;
    for (int i = 0; i < 40; ++i) {
      auto run = e.start(*plan, {});
      BOOST_REQUIRE(run.has_value());
      handles.push_back(*run);
    }
    for (auto& h : handles) {
      auto r = h.wait_for(60s);
      BOOST_REQUIRE(r.has_value());
      BOOST_TEST(r->status == run_status::succeeded);
    }
    e.shutdown();
  }
  const bj::value doc = read_json(file.path);
  std::size_t handled = 0, paired = 0;
  std::set<std::string> runs;
  std::map<std::uint64_t, double> last_start;  // per actor, when it began its last message
  std::vector<bj::object> lost;
  for (const auto& v : doc.at("traceEvents").as_array()) {
    check_event(v);
    const bj::object& e = v.as_object();
    if (str(e, "ph") == "i") {
      lost.push_back(e);
    }
    if (str(e, "ph") == "X" && str(e, "cat") != "send") {
      auto& start = last_start[static_cast<std::uint64_t>(num(e.at("tid")))];
      start = std::max(start, num(e.at("ts")));
    }
    if (str(e, "ph") == "X" && str(e, "cat") == "handle") {
      ++handled;
      const bj::object& a = e.at("args").as_object();
      paired += a.contains("flow");
      if (!str(a, "run").empty()) {
        runs.insert(str(a, "run"));
      }
    }
  }
  BOOST_TEST(runs.size() == 40u);
  BOOST_TEST(handled > 40u * 5);
  // Every handled message was matched with its send (all senders enqueue through traced hooks).
  BOOST_TEST(paired == handled);
  // A message is lost only when it reached its receiver during or after the receiver's last
  // handler, which quit (a node's @down while its run ends, say).
  for (const auto& e : lost) {
    const auto to = static_cast<std::uint64_t>(num(e.at("args").at("to")));
    BOOST_TEST(last_start[to] <= num(e.at("ts")), str(e, "name") << " to " << to);
  }
}
