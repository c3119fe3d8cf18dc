// A process for the ownership tests (test/runtime/ownership_test.cpp): one durable engine on a
// shared log, killed, stopped and continued by the test.
//
//   ownership_worker items DB EFFECTS N CONCURRENCY
//     Resumes the unfinished `items` run in the log (claiming it), or starts one: a for_each of
//     N items whose task appends "item <i>" to EFFECTS (the side effect). Prints "ok <i>" as each
//     item succeeds, then "done <status>".
//   ownership_worker hold DB LEASE_MS
//     Starts a run whose `gate` node waits until a line arrives on stdin. Prints
//     "ready <run_id>" once the run's first rows are committed; after the line, prints
//     "result <status> <persistence error or ->".
//   ownership_worker adopt DB LEASE_MS
//     Adopts expired runs (their `gate` passes at once); prints "adopted <run_id>" for each and
//     "result <status> <persistence error or ->" when the first adopted run ends.
//   ownership_worker many DB TAG N
//     Starts N tiny runs with inputs {"tag": TAG, "i": i}, async mode; prints "done <ok> <N>".
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/engine.hpp"

using namespace troupe;

namespace {

void say(const std::string& line) {
  std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
}

std::string verdict(const run_result& r) {
  return std::string(to_string(r.status)) + " " +
         (r.persistence_error.empty() ? std::string("-") : r.persistence_error);
}

int items(const std::string& db, const std::string& effects, int n, int concurrency) {
  engine_config c;
  c.threads = 2;
  c.mode = persistence_mode::durable;
  c.store = db;
  c.writer.flush_ms = 2;
  engine e(c);
  const int fd = ::open(effects.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::perror("open effects");
    return 2;
  }
  task_def effect;
  effect.name = "effect";
  effect.kind = task_kind::blocking;
  effect.run = [fd](const json::value& input, const task_call&) {
    const std::string line = "item " + std::to_string(input.as_int64()) + "\n";
    if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
      return task_result::failure("cannot record the side effect");
    }
    return task_result::success(input);
  };
  e.register_task(effect);
  auto p = e.register_workflow(
      R"({"name":"items","inputs":{"n":{"type":"integer"}},"nodes":[
          {"id":"each","task":"effect","for_each":"{{ range(inputs.n) }}",
           "concurrency":)" +
      std::to_string(concurrency) + R"(,"with":"{{ item }}"}],
        "outputs":{"count":"{{ len(nodes.each.output) }}"}})");
  if (!p) {
    std::fprintf(stderr, "invalid: %s\n", p.error()[0].message.c_str());
    return 2;
  }
  start_options o;
  o.on_event = [](const run_event& ev) {
    if (ev.what == run_event::kind::node_finished && ev.item >= 0 && ev.status == "succeeded") {
      say("ok " + std::to_string(ev.item));
    }
  };
  std::vector<run_handle> handles;
  for (auto& r : e.resume_unfinished(o)) {
    if (!r) {
      std::fprintf(stderr, "resume refused: %s\n", r.error()[0].message.c_str());
      return 1;
    }
    handles.push_back(*r);
  }
  if (handles.empty()) {
    auto h = e.start(*p, json::object{{"n", n}}, o);
    if (!h) {
      std::fprintf(stderr, "start failed: %s\n", h.error()[0].message.c_str());
      return 1;
    }
    handles.push_back(*h);
  }
  auto r = handles.front().wait();
  e.shutdown();
  say("done " + verdict(r));
  return r.status == run_status::succeeded && r.persistence_error.empty() ? 0 : 1;
}

const char* gate_workflow = R"({"name":"gated","nodes":[
    {"id":"before","task":"echo","with":"before"},
    {"id":"gate","task":"gate","needs":["before"]},
    {"id":"after","task":"echo","needs":["gate"],"with":"after"}],
  "outputs":{"after":"{{ nodes.after.output }}"}})";

engine_config gate_config(const std::string& db, int lease_ms) {
  engine_config c;
  c.threads = 2;
  c.mode = persistence_mode::durable;
  c.store = db;
  c.writer.flush_ms = 2;
  c.lease = std::chrono::milliseconds(lease_ms);
  return c;
}

int hold(const std::string& db, int lease_ms) {
  engine e(gate_config(db, lease_ms));
  std::mutex m;
  std::condition_variable cv;
  std::vector<completion> held;
  task_def gate;
  gate.name = "gate";
  gate.kind = task_kind::async;
  gate.start = [&](const json::value&, const task_call&, completion done) {
    std::lock_guard<std::mutex> lock(m);
    held.push_back(std::move(done));
    cv.notify_all();
  };
  e.register_task(gate);
  auto p = e.register_workflow(gate_workflow);
  auto h = e.start(*p, json::object{});
  if (!h) {
    return 2;
  }
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return !held.empty(); });
  }
  if (!e.flush()) {
    return 1;
  }
  say("ready " + h->id());
  std::string line;
  std::getline(std::cin, line);  // the test has stopped and continued this process meanwhile
  {
    std::lock_guard<std::mutex> lock(m);
    for (auto& done : held) {
      done(task_result::success(nullptr));
    }
  }
  auto r = h->wait();
  e.shutdown();
  say("result " + verdict(r));
  return 0;
}

int adopt(const std::string& db, int lease_ms) {
  engine e(gate_config(db, lease_ms));
  task_def gate;
  gate.name = "gate";
  gate.kind = task_kind::quick;
  gate.run = [](const json::value&, const task_call&) { return task_result::success(nullptr); };
  e.register_task(gate);
  e.register_workflow(gate_workflow);
  std::mutex m;
  std::condition_variable cv;
  std::vector<run_handle> adopted;
  e.adopt_expired_runs([&](const run_handle& h) {
    say("adopted " + h.id());
    std::lock_guard<std::mutex> lock(m);
    adopted.push_back(h);
    cv.notify_all();
  });
  run_handle first = [&] {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return !adopted.empty(); });
    return adopted.front();
  }();
  auto r = first.wait();
  e.shutdown();
  say("result " + verdict(r));
  return 0;
}

int many(const std::string& db, const std::string& tag, int n) {
  engine_config c;
  c.threads = 2;
  c.mode = persistence_mode::async;
  c.store = db;
  engine e(c);
  auto p = e.register_workflow(R"({"name":"tiny","inputs":{"tag":{"type":"string"},
      "i":{"type":"integer"}},"nodes":[{"id":"a","task":"echo","with":"{{ inputs.i }}"}],
      "outputs":{"a":"{{ nodes.a.output }}"}})");
  if (!p) {
    return 2;
  }
  std::vector<run_handle> handles;
  handles.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    auto h = e.start(*p, json::object{{"tag", tag}, {"i", i}});
    if (!h) {
      return 1;
    }
    handles.push_back(*h);
  }
  int ok = 0;
  for (auto& h : handles) {
    ok += h.wait().status == run_status::succeeded;
  }
  e.shutdown();
  say("done " + std::to_string(ok) + " " + std::to_string(n) + " lost " +
      std::to_string(e.metrics().lost_rows.load()));
  return ok == n ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.size() == 5 && a[0] == "items") {
    return items(a[1], a[2], std::stoi(a[3]), std::stoi(a[4]));
  }
  if (a.size() == 3 && a[0] == "hold") {
    return hold(a[1], std::stoi(a[2]));
  }
  if (a.size() == 3 && a[0] == "adopt") {
    return adopt(a[1], std::stoi(a[2]));
  }
  if (a.size() == 4 && a[0] == "many") {
    return many(a[1], a[2], std::stoi(a[3]));
  }
  std::fprintf(stderr, "usage: see the comment at the top of ownership_worker.cpp\n");
  return 2;
}
