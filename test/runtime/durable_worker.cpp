// A process for the crash test: runs workflows in durable mode on a SQLite log, and can be
// killed with SIGKILL at a known point.
//   durable_worker DB_URL EFFECTS_FILE NEW_RUNS block|pass
// It first resumes whatever the log holds unfinished, then starts NEW_RUNS runs. The `hold` task
// never completes with `block` (the process is killed there) and completes at once with `pass`.
// Once every new run is inside `hold` and everything before it is committed, it prints "ready"
// (the test may kill it from then on); at the end it prints "done <succeeded> <total>".
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/engine.hpp"

int main(int argc, char** argv) {
  using namespace troupe;
  if (argc != 5) {
    std::fprintf(stderr, "usage: durable_worker DB_URL EFFECTS_FILE NEW_RUNS block|pass\n");
    return 2;
  }
  std::string db = argv[1];
  std::string effects = argv[2];
  int new_runs = std::stoi(argv[3]);
  bool block = std::string(argv[4]) == "block";
  engine_config c;
  c.threads = 2;
  c.mode = persistence_mode::durable;
  c.store = db;
  c.writer.flush_ms = 2;
  engine e(c);
  std::mutex held_mutex;
  std::vector<completion> held;  // never called: the process dies with them
  task_def hold;
  hold.name = "hold";
  hold.kind = task_kind::async;
  hold.start = [&](const json::value&, const task_call&, completion done) {
    if (block) {
      std::lock_guard<std::mutex> lock(held_mutex);
      held.push_back(std::move(done));
    } else {
      done(task_result::success(nullptr));
    }
  };
  e.register_task(hold);
  // Each side effect appends one line: the test counts how often each node really ran.
  std::string wf = R"({"name":"effects","inputs":{"i":{"type":"integer"},"file":{"type":"string"}},
    "nodes":[
      {"id":"first","task":"shell","with":{"argv":["sh","-c","echo first {{ inputs.i }} >> \"$0\"","{{ inputs.file }}"]}},
      {"id":"hold","task":"hold","needs":["first"]},
      {"id":"second","task":"shell","needs":["hold"],"with":{"argv":["sh","-c","echo second {{ inputs.i }} >> \"$0\"","{{ inputs.file }}"]}}],
    "outputs":{"i":"{{ inputs.i }}"}})";
  auto p = e.register_workflow(wf);
  if (!p) {
    std::fprintf(stderr, "invalid: %s\n", p.error()[0].message.c_str());
    return 2;
  }
  std::mutex m;
  std::condition_variable cv;
  int holding = 0;
  start_options o;
  o.on_event = [&](const run_event& ev) {
    if (ev.what == run_event::kind::node_started && ev.node_id == "hold") {
      std::lock_guard<std::mutex> lock(m);
      ++holding;
      cv.notify_all();
    }
  };
  std::vector<run_handle> handles;
  for (auto& r : e.resume_unfinished()) {
    if (!r) {
      std::fprintf(stderr, "resume failed: %s\n", r.error()[0].message.c_str());
      return 1;
    }
    handles.push_back(*r);
  }
  std::fprintf(stdout, "resumed %zu\n", handles.size());
  std::fflush(stdout);
  for (int i = 0; i < new_runs; ++i) {
    auto h = e.start(*p, json::object{{"i", i}, {"file", effects}}, o);
    if (!h) {
      std::fprintf(stderr, "start failed: %s\n", h.error()[0].message.c_str());
      return 1;
    }
    handles.push_back(*h);
  }
  if (new_runs > 0) {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return holding >= new_runs; });
    lock.unlock();
    // Every `first` success was handed to the writer before its `hold` start was reported.
    if (!e.flush()) {
      std::fprintf(stderr, "flush failed\n");
      return 1;
    }
    std::fprintf(stdout, "ready\n");
    std::fflush(stdout);
  }
  int ok = 0;
  for (auto& h : handles) {
    auto r = h.wait();
    ok += r.status == run_status::succeeded;
    if (r.status != run_status::succeeded) {
      // On the test's stderr, so that a failed check says why the run did not succeed.
      std::fprintf(stderr, "run %s did not succeed: %s\n", r.run_id.c_str(), r.error.c_str());
    }
  }
  e.shutdown();
  std::fprintf(stdout, "done %d %zu\n", ok, handles.size());
  std::fflush(stdout);
  return ok == static_cast<int>(handles.size()) ? 0 : 1;
}
