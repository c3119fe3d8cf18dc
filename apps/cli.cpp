#include "apps/cli.hpp"

#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apps/load.hpp"
#include "apps/output.hpp"
#include "apps/runs.hpp"
#include "apps/serve.hpp"
#include "apps/signals.hpp"
#include "apps/trace_cmd.hpp"
#include "runtime/engine.hpp"
#include "workflow/task.hpp"

namespace troupe::cli {
namespace {

struct run_options {
  std::string file;
  std::vector<std::string> inputs;  // NAME=VALUE
  std::string inputs_file;
  std::vector<std::string> registers;
  bool json = false;
  bool progress = false;
  int threads = 0;
  std::string db = default_db;
  persistence_mode mode = persistence_mode::async;
  std::optional<std::size_t> batch_max;
  std::optional<std::int64_t> flush_ms;
  std::string trace;  // actor trace file; empty: off
};

struct validate_options {
  std::string file;
  bool json = false;
};

/// Reads a whole file, refusing more than `limit` bytes before reading them: an oversized (or
/// endless, like /dev/zero) file must fail with a clear message, not exhaust memory first.
expected<std::string, std::string> read_file(const std::string& path, std::size_t limit) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return make_unexpected("cannot open '" + path + "': " + std::strerror(errno));
  }
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } close_fd{fd};
  const std::string limit_text = "the document size limit of " + std::to_string(limit) + " bytes";
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
      static_cast<std::uint64_t>(st.st_size) > limit) {
    return make_unexpected("'" + path + "' is " + std::to_string(st.st_size) + " bytes, over " +
                           limit_text);
  }
  std::string text;
  char buffer[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return make_unexpected("cannot read '" + path + "': " + std::strerror(errno));
    }
    if (n == 0) {
      return text;
    }
    text.append(buffer, static_cast<std::size_t>(n));
    if (text.size() > limit) {
      return make_unexpected("'" + path + "' holds more than " + limit_text);
    }
  }
}

/// Prints errors in the mode the user asked for and returns the usage exit code.
int report_errors(const located_errors& errors, bool json_mode) {
  print_errors(errors, json_mode);
  return exit_usage;
}

/// `--inputs FILE` first, then every `--input NAME=VALUE` over it, in command-line order.
expected<json::object, located_errors> gather_inputs(const run_options& o,
                                                     const json_limits& limits) {
  json::object inputs;
  if (!o.inputs_file.empty()) {
    auto text = read_file(o.inputs_file, limits.max_document_bytes);
    if (!text) {
      return make_unexpected(one_error(text.error(), "", o.inputs_file));
    }
    auto doc = parse_json(*text, limits);
    if (!doc) {
      return make_unexpected(
          one_error("malformed JSON in --inputs file: " + doc.error().message, "", o.inputs_file));
    }
    if (!doc->is_object()) {
      return make_unexpected(one_error("an --inputs file must hold a JSON object of inputs, not " +
                                           std::string(json_kind_name(*doc)),
                                       "", o.inputs_file));
    }
    inputs = std::move(doc->as_object());
  }
  located_errors errors;
  for (const auto& entry : o.inputs) {
    const auto eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) {
      errors.push_back(
          one_error("--input '" + entry + "' must be NAME=VALUE (VALUE: JSON, or else a string)")
              .front());
      continue;
    }
    const std::string name = entry.substr(0, eq);
    const std::string text = entry.substr(eq + 1);
    // JSON when it parses (3, true, ["a"], "quoted"), else the text itself: `s=abc` is "abc".
    auto value = parse_json(text, limits);
    inputs[name] = value ? std::move(*value) : json::value(json::string(text));
  }
  if (!errors.empty()) {
    return make_unexpected(std::move(errors));
  }
  return inputs;
}

std::string event_line(const run_event& e) {
  std::string line;
  switch (e.what) {
    case run_event::kind::run_started:
      return {};  // the CLI says so itself, once the run has its handle
    case run_event::kind::node_started:
    case run_event::kind::node_finished:
      line = "node " + e.node_id;
      if (e.item >= 0) {
        line += "[" + std::to_string(e.item) + "]";
      }
      line += e.what == run_event::kind::node_started ? " started" : " " + e.status;
      if (e.attempt > 1) {
        line += " (attempt " + std::to_string(e.attempt) + ")";
      }
      break;
    case run_event::kind::run_finished:
      line = "run " + e.run_id + " " + e.status;
      break;
  }
  if (!e.error.empty() && e.error != e.status) {
    line += ": " + e.error;
  }
  return line + '\n';
}

/// What the signal thread and the main thread share: the run to cancel, once there is one.
struct cancel_state {
  std::mutex mutex;
  std::condition_variable changed;  // a signal came, or the run ended
  std::optional<run_handle> handle;
  bool requested = false;
  bool ended = false;
};

/// How long a one-shot command lets the writer retry a failing database at the end (or after
/// Ctrl-C) before it gives up, names the rows it could not commit, and exits 1.
constexpr std::chrono::seconds cli_drain_deadline{10};

/// Says whether the run's log is complete; false (after saying why on stderr) when it is not:
/// the exit status is then 1 whatever the run did.
bool log_complete(const run_result& result, const engine& eng, const std::string& db) {
  bool complete = true;
  if (!result.persistence_error.empty()) {
    std::cerr << "troupe: error: the log of run " << result.run_id
              << " is incomplete: " << result.persistence_error << '\n';
    complete = false;
  }
  if (eng.mode() != persistence_mode::memory) {
    const auto lost = eng.metrics().lost_rows.load();
    if (lost > 0) {
      std::cerr << "troupe: error: " << lost << " log rows were not committed to "
                << display_url(db) << '\n';
      complete = false;
    }
    if (const auto dead = eng.metrics().dead_letters.load(); dead > 0) {
      std::cerr << "troupe: error: the database refused " << dead
                << " log rows for good (troupe runs dead-letters --db " << display_url(db) << ")\n";
      complete = false;
    }
  }
  return complete;
}

/// The engine's message names the store by the URL it was given; a PostgreSQL password in it
/// must not reach the terminal (or a CI log).
std::string masked_store_error(std::string message, const std::string& url) {
  const std::string shown = display_url(url);
  if (shown != url) {
    for (auto pos = message.find(url); pos != std::string::npos;
         pos = message.find(url, pos + shown.size())) {
      message.replace(pos, url.size(), shown);
    }
  }
  return message;
}

int run_command(const run_options& o) {
  engine_config config;
  config.threads = o.threads;
  config.store = o.db;
  config.mode = o.mode;
  config.writer.mode = o.mode;
  config.trace_file = o.trace;
  config.drain_deadline = cli_drain_deadline;
  if (o.batch_max) {
    config.writer.batch_max = *o.batch_max;
  }
  if (o.flush_ms) {
    config.writer.flush_ms = *o.flush_ms;
  }
  const json_limits& limits = config.limits.json;

  auto text = read_file(o.file, limits.max_document_bytes);
  if (!text) {
    return report_errors(one_error(text.error()), o.json);
  }

  std::optional<engine> eng_storage;
  try {
    eng_storage.emplace(config);
  } catch (const engine_error& e) {
    return report_errors(one_error(masked_store_error(e.what(), o.db)), o.json);
  }
  engine& eng = *eng_storage;

  cancel_state cancel;
  signal_waiter signals([&](int signal, int count) {
    if (count > 1) {
      // The user insists: the first request is still unwinding (a task that ignores its
      // cancellation, say), so leave without waiting for it.
      std::cerr << "troupe: interrupted again, exiting without waiting for the run\n";
      std::_Exit(exit_run_failed);
    }
    std::lock_guard<std::mutex> lock(cancel.mutex);
    cancel.requested = true;
    if (!o.json || o.progress) {
      std::cerr << "troupe: " << (signal == SIGINT ? "interrupted" : "terminated")
                << ", cancelling the run\n";
    }
    if (cancel.handle) {
      cancel.handle->cancel();
    }
    cancel.changed.notify_all();
  });

  for (const auto& path : o.registers) {
    auto child = read_file(path, limits.max_document_bytes);
    if (!child) {
      return report_errors(one_error(child.error(), "", path), o.json);
    }
    auto registered = eng.register_workflow(std::string_view(*child));
    if (!registered) {
      return report_errors(locate(registered.error(), path), o.json);
    }
  }
  auto plan = eng.register_workflow(std::string_view(*text));
  if (!plan) {
    return report_errors(locate(plan.error()), o.json);
  }

  auto inputs = gather_inputs(o, limits);
  if (!inputs) {
    return report_errors(inputs.error(), o.json);
  }

  start_options start;
  if (o.progress) {
    start.on_event = [](const run_event& e) { std::cerr << event_line(e); };
  }
  auto started = eng.start(*plan, std::move(*inputs), std::move(start));
  if (!started) {
    return report_errors(locate(started.error()), o.json);
  }
  const run_handle handle = *started;
  {
    std::lock_guard<std::mutex> lock(cancel.mutex);
    cancel.handle = handle;
    if (cancel.requested) {
      handle.cancel();  // interrupted while the run was being set up
    }
  }
  if (!o.json || o.progress) {
    // Tests (and people) wait for this line before they interrupt: once it is out, a signal
    // reaches this run's cancel() directly.
    std::cerr << "run " << handle.id() << " started\n" << std::flush;
  }

  handle.on_finished([&cancel](const run_result&) {
    std::lock_guard<std::mutex> lock(cancel.mutex);
    cancel.ended = true;
    cancel.changed.notify_all();
  });
  {
    std::unique_lock<std::mutex> lock(cancel.mutex);
    cancel.changed.wait(lock, [&] { return cancel.ended || cancel.requested; });
    if (!cancel.ended) {
      // Cancelled: the run stops, or it had ended and waits for its log's commit (a database
      // that is down or full). Shutdown ends both by their deadlines.
      lock.unlock();
      std::cerr << "troupe: waiting up to " << cli_drain_deadline.count()
                << " s for the run to stop and its log to be committed\n";
      eng.shutdown(std::chrono::seconds(2));
    }
  }
  const run_result result = handle.wait();
  // A one-shot process must not exit with log rows still queued in the writer (async mode):
  // shutdown drains it, so `troupe runs show` finds the whole run afterwards.
  eng.shutdown();
  signals.stop();
  if (!o.trace.empty() && (!o.json || o.progress)) {
    std::cerr << "trace: " << o.trace << " (troupe trace summary " << o.trace << ")\n";
  }

  if (o.json) {
    std::cout << compact_json(to_json(result)) << '\n';
  } else {
    print_run_text(std::cout, result);
    if (result.status != run_status::succeeded) {
      std::cerr << "error: run " << to_string(result.status);
      if (!result.error.empty() && result.error != to_string(result.status)) {
        std::cerr << ": " << result.error;
      }
      std::cerr << '\n';
    }
    if (o.mode != persistence_mode::memory) {
      std::cout << "\nlog: " << display_url(o.db) << " (run " << result.run_id << ")\n";
    }
  }
  const bool complete = log_complete(result, eng, o.db);
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "troupe: cannot write the result to stdout\n";
    return exit_run_failed;
  }
  return result.status == run_status::succeeded && complete ? exit_ok : exit_run_failed;
}

int resume_command(const runs_resume_options& o) {
  if (o.all == !o.run_id.empty()) {
    return report_errors(one_error("runs resume takes a run id or --all (one of them)"), o.json);
  }
  engine_config config;
  config.threads = o.threads;
  config.store = o.db;
  config.drain_deadline = cli_drain_deadline;
  // Resuming is about not losing work: the answer waits for the commit of the run's end.
  config.mode = persistence_mode::durable;
  config.writer.mode = persistence_mode::durable;
  std::optional<engine> eng_storage;
  try {
    eng_storage.emplace(config);
  } catch (const engine_error& e) {
    return report_errors(one_error(masked_store_error(e.what(), o.db)), o.json);
  }
  engine& eng = *eng_storage;
  const json_limits& limits = config.limits.json;
  for (const auto& path : o.registers) {
    auto child = read_file(path, limits.max_document_bytes);
    if (!child) {
      return report_errors(one_error(child.error(), "", path), o.json);
    }
    auto registered = eng.register_workflow(std::string_view(*child));
    if (!registered) {
      return report_errors(locate(registered.error(), path), o.json);
    }
  }
  std::vector<run_handle> handles;
  bool refused = false;
  if (o.all) {
    for (auto& r : eng.resume_unfinished()) {
      if (r) {
        handles.push_back(*r);
      } else {
        report_errors(locate(r.error()), o.json);
        refused = true;
      }
    }
  } else {
    auto resumed = eng.resume(o.run_id);
    if (!resumed) {
      // An unknown run, one that already succeeded, or one another engine holds: a failed
      // request, not bad usage.
      report_errors(locate(resumed.error()), o.json);
      return exit_run_failed;
    }
    handles.push_back(*resumed);
  }
  if (!o.json) {
    for (const auto& h : handles) {
      std::cerr << "run " << h.id() << " resumed\n";
    }
    if (o.all && handles.empty()) {
      std::cerr << "no run to resume in " << display_url(o.db) << '\n';
    }
    std::cerr << std::flush;
  }
  std::vector<run_result> results;
  for (const auto& h : handles) {
    results.push_back(h.wait());
  }
  eng.shutdown();
  bool ok = !refused;
  json::array docs;
  for (const auto& result : results) {
    if (o.json) {
      docs.push_back(to_json(result));
    } else {
      print_run_text(std::cout, result);
      if (result.status != run_status::succeeded) {
        std::cerr << "error: run " << to_string(result.status) << ": " << result.error << '\n';
      }
      std::cout << "\nlog: " << display_url(o.db) << " (run " << result.run_id << ")\n";
    }
    ok = ok && result.status == run_status::succeeded;
    ok = log_complete(result, eng, o.db) && ok;
  }
  if (o.json) {
    if (o.all) {
      std::cout << compact_json(json::object{{"runs", std::move(docs)}}) << '\n';
    } else if (!docs.empty()) {
      std::cout << compact_json(docs.front()) << '\n';
    }
  }
  std::cout.flush();
  return ok ? exit_ok : exit_run_failed;
}

int validate_command(const validate_options& o) {
  const workflow_limits limits;
  auto text = read_file(o.file, limits.json.max_document_bytes);
  if (!text) {
    return report_errors(one_error(text.error()), o.json);
  }
  // No engine: validating needs the task names only, not an actor system.
  const task_registry tasks = task_registry::with_builtins();
  compile_options options;
  options.tasks = &tasks;
  options.limits = limits;
  auto plan = compile_workflow(std::string_view(*text), options);
  if (!plan) {
    return report_errors(locate(plan.error()), o.json);
  }
  const troupe::plan& p = **plan;
  if (o.json) {
    json::object doc;
    doc["valid"] = true;
    doc["name"] = p.name;
    doc["version"] = p.version;
    doc["nodes"] = p.nodes.size();
    doc["hash"] = p.hash;
    std::cout << compact_json(doc) << '\n';
  } else {
    std::cout << "ok: " << p.name << " version " << p.version << ", " << p.nodes.size()
              << (p.nodes.size() == 1 ? " node" : " nodes") << '\n';
  }
  return exit_ok;
}

CLI::Option* add_db_option(CLI::App* command, std::string& db) {
  return command
      ->add_option("--db", db,
                   "Where the execution log is: sqlite://PATH, postgres://..., or memory://.")
      ->capture_default_str()
      ->type_name("URL");
}

// CLI11's IsMember would say "memory2 not in {memory,async,durable,sync}"; these checks name the
// option's meaning and every accepted value.
CLI::Validator mode_check() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        persistence_mode m{};
        return parse_persistence_mode(text, m)
                   ? std::string()
                   : "'" + text +
                         "' is not a persistence mode; expected memory, async, durable "
                         "or sync";
      },
      "");
}

CLI::Validator status_check() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        run_status s{};
        return parse_run_status(text, s)
                   ? std::string()
                   : "'" + text + "' is not a run status; expected one of " + run_status_names();
      },
      "");
}

}  // namespace

int runs_resume_command(const runs_resume_options& o) {
  return resume_command(o);
}

int run_cli(int argc, char** argv) {
  CLI::App app{"troupe: runs workflows of tasks on an embedded actor engine.", "troupe"};
  app.require_subcommand(1);

  run_options run_opts;
  CLI::App* run = app.add_subcommand("run", "Run a workflow and print its nodes and outputs.");
  run->add_option("file", run_opts.file, "The workflow file (JSON).")
      ->required()
      ->type_name("FILE");
  run->add_option("--input", run_opts.inputs,
                  "An input as NAME=VALUE; VALUE is read as JSON when it parses, else as a "
                  "string. Repeatable; overrides --inputs.")
      ->allow_extra_args(false)
      ->type_name("NAME=VALUE");
  run->add_option("--inputs", run_opts.inputs_file, "A JSON file holding an object of inputs.")
      ->type_name("FILE");
  run->add_option("--register", run_opts.registers,
                  "Register another workflow file first, for `workflow` tasks. Repeatable.")
      ->allow_extra_args(false)
      ->type_name("FILE");
  run->add_flag("--json", run_opts.json, "Print the result as one JSON document.");
  run->add_flag("--progress", run_opts.progress, "Print node events on stderr as they happen.");
  run->add_option("--trace", run_opts.trace,
                  "Write every actor message as Chrome trace JSON (Perfetto) to FILE; see "
                  "`troupe trace`.")
      ->type_name("FILE");
  run->add_option("--threads", run_opts.threads, "Actor scheduler threads (0: one per core).")
      ->check(CLI::Range(0, 1024))
      ->type_name("N");
  add_db_option(run, run_opts.db);
  run->add_option_function<std::string>(
         "--mode",
         [&run_opts](const std::string& text) { parse_persistence_mode(text, run_opts.mode); },
         "What the log costs: memory (no database), async (default; the writer catches up, "
         "and is drained before exit), durable (each run's end is committed), sync (a commit "
         "per change).")
      ->check(mode_check())
      ->type_name("MODE");
  run->add_option_function<std::size_t>(
         "--batch-max", [&run_opts](std::size_t n) { run_opts.batch_max = n; },
         "The writer commits once this many rows are pending (default 512).")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1'000'000}))
      ->type_name("N");
  run->add_option_function<std::int64_t>(
         "--flush-ms", [&run_opts](std::int64_t n) { run_opts.flush_ms = n; },
         "...or this many milliseconds after the first of them (default 5).")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{60'000}))
      ->type_name("N");

  validate_options validate_opts;
  CLI::App* validate =
      app.add_subcommand("validate", "Check a workflow file and report every error.");
  validate->add_option("file", validate_opts.file, "The workflow file (JSON).")
      ->required()
      ->type_name("FILE");
  validate->add_flag("--json", validate_opts.json, "Print the verdict as one JSON document.");

  CLI::App* runs =
      app.add_subcommand("runs", "The execution log: list runs, show one, resume one.");
  runs->require_subcommand(1);
  runs_list_options list_opts;
  CLI::App* list = runs->add_subcommand("list", "List runs, newest first.");
  list->add_option("--status", list_opts.status, "Only runs with this status.")
      ->check(status_check())
      ->type_name("STATUS");
  list->add_option("--workflow", list_opts.workflow, "Only runs of this workflow.")
      ->type_name("NAME");
  list->add_option("--parent", list_opts.parent,
                   "Only the child runs of this run (dynamic and workflow nodes).")
      ->type_name("RUN");
  list->add_option("--limit", list_opts.limit, "At most this many runs (0: all; default 50).")
      ->check(CLI::Range(std::size_t{0}, std::size_t{1'000'000'000}))
      ->type_name("N");
  add_db_option(list, list_opts.db);
  list->add_flag("--json", list_opts.json, "Print the runs as one JSON document.");

  runs_show_options show_opts;
  CLI::App* show = runs->add_subcommand("show", "Show a run and every node execution of it.");
  show->add_option("run", show_opts.run_id, "The run id.")->required()->type_name("RUN");
  add_db_option(show, show_opts.db);
  show->add_flag("--json", show_opts.json, "Print the run as one JSON document.");

  dead_letters_options dead_opts;
  CLI::App* dead = runs->add_subcommand(
      "dead-letters", "Rows the database refused for good (kept aside, newest first).");
  dead->add_option("--limit", dead_opts.limit, "At most this many (0: all; default 50).")
      ->check(CLI::Range(std::size_t{0}, std::size_t{1'000'000'000}))
      ->type_name("N");
  add_db_option(dead, dead_opts.db);
  dead->add_flag("--json", dead_opts.json, "Print them as one JSON document.");

  runs_resume_options resume_opts;
  CLI::App* resume = runs->add_subcommand(
      "resume", "Run again what did not succeed in a failed or interrupted run.");
  resume->add_option("run", resume_opts.run_id, "The run id.")->type_name("RUN");
  resume->add_flag("--all", resume_opts.all,
                   "Every unfinished run whose engine is gone or whose lease has expired.");
  add_db_option(resume, resume_opts.db);
  resume
      ->add_option("--register", resume_opts.registers,
                   "Also register this workflow (for `workflow` tasks); repeatable.")
      ->type_name("FILE");
  resume->add_option("--threads", resume_opts.threads, "Scheduler threads (0: one per core).")
      ->check(CLI::Range(0, 1024))
      ->type_name("N");
  resume->add_flag("--json", resume_opts.json, "Print the result as one JSON document.");

  load_options load_opts;
  CLI::App* load = add_load_command(app, load_opts);
  trace_options trace_opts;
  CLI::App* trace = add_trace_command(app, trace_opts);

  CLI::App* cache = app.add_subcommand("cache", "Memoized node outputs: list or clear them.");
  cache->require_subcommand(1);
  cache_options cache_list_opts;
  CLI::App* cache_list = cache->add_subcommand("list", "List cache entries.");
  cache_list->add_option("--workflow", cache_list_opts.workflow, "Only this workflow's entries.")
      ->type_name("NAME");
  add_db_option(cache_list, cache_list_opts.db);
  cache_list->add_flag("--json", cache_list_opts.json, "Print the entries as one JSON document.");
  cache_options cache_clear_opts;
  CLI::App* cache_clear = cache->add_subcommand("clear", "Remove cache entries.");
  cache_clear->add_option("--workflow", cache_clear_opts.workflow, "Only this workflow's entries.")
      ->type_name("NAME");
  add_db_option(cache_clear, cache_clear_opts.db);
  cache_clear->add_flag("--json", cache_clear_opts.json, "Print the count as JSON.");

  serve_options serve_opts;
  CLI::App* serve = app.add_subcommand(
      "serve",
      "Serve the engine over HTTP: register workflows, start runs (async, wait or streamed as "
      "Server-Sent Events), query the log, /metrics. Every option can also come from the "
      "environment variable named in its help. Stops on SIGTERM: no new runs, running ones get "
      "--drain-ms to finish, the rest are cancelled, the log is drained.");
  serve->add_option("--listen", serve_opts.listen, "HOST:PORT to listen on (port 0: any free).")
      ->envname("TROUPE_LISTEN")
      ->capture_default_str()
      ->type_name("HOST:PORT");
  add_db_option(serve, serve_opts.db)->envname("TROUPE_DB");
  serve
      ->add_option_function<std::string>(
          "--mode",
          [&serve_opts](const std::string& text) { parse_persistence_mode(text, serve_opts.mode); },
          "What the log costs (default durable: a run's end is committed before it is "
          "reported).")
      ->check(mode_check())
      ->envname("TROUPE_MODE")
      ->type_name("MODE");
  serve->add_option("--workflows", serve_opts.workflows_dir,
                    "Register every *.json file of DIR at start (the operator's workflows: any "
                    "task allowed).")
      ->envname("TROUPE_WORKFLOWS")
      ->type_name("DIR");
  serve->add_option("--api-keys", serve_opts.api_keys_file,
                    "A file of API keys, one per line; requests need `Authorization: Bearer "
                    "KEY`. TROUPE_API_KEYS may hold more, comma-separated. Without keys the "
                    "server listens on loopback only.")
      ->envname("TROUPE_API_KEYS_FILE")
      ->type_name("FILE");
  if (const char* env = std::getenv("TROUPE_API_KEYS")) {
    serve_opts.api_keys_env = env;
  }
  serve->add_option("--threads", serve_opts.threads, "Actor scheduler threads (0: one per core).")
      ->envname("TROUPE_THREADS")
      ->check(CLI::Range(0, 1024))
      ->type_name("N");
  serve->add_option("--http-threads", serve_opts.http_threads, "Threads serving HTTP.")
      ->envname("TROUPE_HTTP_THREADS")
      ->check(CLI::Range(1, 64))
      ->capture_default_str()
      ->type_name("N");
  serve->add_option("--allow-tasks", serve_opts.allow_tasks,
                    "Tasks that workflows registered through the API may use, comma-separated, "
                    "or `all` (default: every task but shell).")
      ->envname("TROUPE_ALLOW_TASKS")
      ->type_name("LIST");
  serve->add_option("--allow-http-hosts", serve_opts.allow_http_hosts,
                    "Hosts (names as written in URLs, or addresses) that `http` tasks of API "
                    "workflows may reach although they are loopback or private, comma-separated; "
                    "`*`: any address. By default only public addresses.")
      ->envname("TROUPE_ALLOW_HTTP_HOSTS")
      ->type_name("LIST");
  serve->add_option("--max-body", serve_opts.max_body, "Largest request body, in bytes (413).")
      ->envname("TROUPE_MAX_BODY")
      ->check(CLI::Range(std::size_t{1024}, std::size_t{1} << 30))
      ->capture_default_str()
      ->type_name("BYTES");
  serve->add_option("--max-connections", serve_opts.max_connections,
                    "Open connections at most; more are answered 503 and closed.")
      ->envname("TROUPE_MAX_CONNECTIONS")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1000000}))
      ->capture_default_str()
      ->type_name("N");
  serve->add_option("--rate-limit", serve_opts.rate_limit,
                    "Requests per second per API key (429 with Retry-After past it); 0: none.")
      ->envname("TROUPE_RATE_LIMIT")
      ->check(CLI::Range(0.0, 1e9))
      ->type_name("R");
  serve->add_option("--runs-per-key", serve_opts.runs_per_key,
                    "Runs in flight per API key (429 past it); 0: no limit.")
      ->envname("TROUPE_RUNS_PER_KEY")
      ->type_name("N");
  serve->add_option("--read-timeout-ms", serve_opts.read_timeout_ms,
                    "A request must arrive within this long (slow clients are cut off); also "
                    "how long an idle connection stays open.")
      ->envname("TROUPE_READ_TIMEOUT_MS")
      ->check(CLI::Range(std::int64_t{10}, std::int64_t{3600000}))
      ->capture_default_str()
      ->type_name("MS");
  serve->add_option("--drain-ms", serve_opts.drain_ms,
                    "On SIGTERM, how long running runs get to finish before they are "
                    "cancelled.")
      ->envname("TROUPE_DRAIN_MS")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{3600000}))
      ->capture_default_str()
      ->type_name("MS");
  serve->add_option("--sse-keepalive-ms", serve_opts.sse_keepalive_ms,
                    "A comment is written to every open event stream this often.")
      ->envname("TROUPE_SSE_KEEPALIVE_MS")
      ->check(CLI::Range(std::int64_t{10}, std::int64_t{3600000}))
      ->capture_default_str()
      ->type_name("MS");
  serve->add_option("--max-stream-buffer", serve_opts.max_stream_buffer,
                    "An event stream whose client lets this many bytes pile up is closed (the "
                    "client reconnects with Last-Event-ID).")
      ->envname("TROUPE_MAX_STREAM_BUFFER")
      ->check(CLI::Range(std::size_t{1024}, std::size_t{1} << 32))
      ->capture_default_str()
      ->type_name("BYTES");

  serve->add_option("--max-in-flight", serve_opts.max_in_flight,
                    "Tasks in flight over all runs, remote attempts included (0: no limit); "
                    "further dispatches wait for a slot.")
      ->envname("TROUPE_MAX_IN_FLIGHT")
      ->check(CLI::Range(0, 10000000))
      ->type_name("N");
  serve->add_option("--lease-ms", serve_opts.lease_ms,
                    "How long a run stays this process's without a renewal (renewed every third "
                    "of it); past it another process on the same database may adopt the run.")
      ->envname("TROUPE_LEASE_MS")
      ->check(CLI::Range(std::int64_t{300}, std::int64_t{86400000}))
      ->capture_default_str()
      ->type_name("MS");
  serve->add_option("--cluster", serve_opts.cluster_listen,
                    "Coordinate a node cluster: HOST:PORT where workers (`troupe node --join`) "
                    "connect (port 0: any free). Needs a PostgreSQL --db (or --mode memory).")
      ->envname("TROUPE_CLUSTER")
      ->type_name("HOST:PORT");
  serve->add_option("--heartbeat-ms", serve_opts.heartbeat_ms,
                    "Cluster: heartbeat between nodes (the same on every node).")
      ->envname("TROUPE_HEARTBEAT_MS")
      ->check(CLI::Range(std::int64_t{10}, std::int64_t{600000}))
      ->capture_default_str()
      ->type_name("MS");
  serve->add_option("--connection-timeout-ms", serve_opts.connection_timeout_ms,
                    "Cluster: a node silent this long is lost (the same on every node).")
      ->envname("TROUPE_CONNECTION_TIMEOUT_MS")
      ->check(CLI::Range(std::int64_t{50}, std::int64_t{3600000}))
      ->capture_default_str()
      ->type_name("MS");
  serve->add_option("--remote-tasks", serve_opts.remote_tasks,
                    "Cluster: tasks only workers implement (C++ tasks of embedding workers), "
                    "comma-separated, so that workflows naming them validate here.")
      ->envname("TROUPE_REMOTE_TASKS")
      ->type_name("LIST");
  serve->add_flag("--wait-for-workers", serve_opts.wait_for_workers,
                  "Cluster: an attempt of a task no connected worker offers waits for one "
                  "(default: the coordinator runs it).")
      ->envname("TROUPE_WAIT_FOR_WORKERS");

  node_options node_opts;
  CLI::App* node = app.add_subcommand(
      "node",
      "Run a cluster worker: join coordinators (`troupe serve --cluster`) and run the attempts "
      "of the builtin tasks (shell, http, sleep) they send. Stops on SIGTERM.");
  node->add_option("--join", node_opts.join,
                   "The coordinators' cluster addresses, HOST:PORT, comma-separated.")
      ->envname("TROUPE_JOIN")
      ->required()
      ->type_name("LIST");
  node->add_option("--name", node_opts.name,
                   "How coordinators name this worker in logs and node executions (default: "
                   "host/pid/start).")
      ->envname("TROUPE_NODE_NAME")
      ->type_name("NAME");
  node->add_option("--offer", node_opts.offer,
                   "The tasks it runs, comma-separated (default: all but quick ones).")
      ->envname("TROUPE_OFFER")
      ->type_name("LIST");
  node->add_option("--capacity", node_opts.capacity,
                   "Attempts it runs at once over all coordinators (0: --blocking-threads).")
      ->envname("TROUPE_CAPACITY")
      ->check(CLI::Range(0, 100000))
      ->type_name("N");
  node->add_option("--threads", node_opts.threads, "Actor scheduler threads (0: one per core).")
      ->envname("TROUPE_THREADS")
      ->check(CLI::Range(0, 1024))
      ->type_name("N");
  node->add_option("--blocking-threads", node_opts.blocking_threads,
                   "Threads for blocking C++ tasks.")
      ->envname("TROUPE_BLOCKING_THREADS")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str()
      ->type_name("N");
  node->add_option("--heartbeat-ms", node_opts.heartbeat_ms,
                   "Heartbeat between nodes (the same on every node).")
      ->envname("TROUPE_HEARTBEAT_MS")
      ->check(CLI::Range(std::int64_t{10}, std::int64_t{600000}))
      ->capture_default_str()
      ->type_name("MS");
  node->add_option("--connection-timeout-ms", node_opts.connection_timeout_ms,
                   "A node silent this long is lost (the same on every node).")
      ->envname("TROUPE_CONNECTION_TIMEOUT_MS")
      ->check(CLI::Range(std::int64_t{50}, std::int64_t{3600000}))
      ->capture_default_str()
      ->type_name("MS");

  // CLI11 would call `troupe bogus` a missing subcommand; say what is actually wrong.
  if (argc > 1 && argv[1][0] != '-' && std::string_view(argv[1]) != "run" &&
      std::string_view(argv[1]) != "validate" && std::string_view(argv[1]) != "runs" &&
      std::string_view(argv[1]) != "cache" && std::string_view(argv[1]) != "load" &&
      std::string_view(argv[1]) != "trace" && std::string_view(argv[1]) != "serve" &&
      std::string_view(argv[1]) != "node") {
    std::cerr << "troupe: unknown subcommand '" << argv[1] << "'\n\n" << app.help();
    return exit_usage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cerr << app.help();
    return exit_usage;
  } catch (const CLI::CallForAllHelp&) {
    std::cerr << app.help("", CLI::AppFormatMode::All);
    return exit_usage;
  } catch (const CLI::ParseError& e) {
    // The help of the subcommand the user was typing, not the top level's.
    const CLI::App* context = &app;
    for (CLI::App* sub : {run, validate, runs, list, show, dead, resume, load, cache, cache_list,
                          cache_clear, trace, trace_opts.summary, trace_opts.sequence, serve, node}) {
      if (sub->parsed()) {
        context = sub;
      }
    }
    std::cerr << "troupe: " << e.what() << "\n\n" << context->help();
    return exit_usage;
  }

  // The leaf subcommands and what each runs; a bare `troupe FILE` validates.
  const std::pair<CLI::App*, std::function<int()>> commands[] = {
      {run, [&] { return run_command(run_opts); }},
      {list, [&] { return runs_list_command(list_opts); }},
      {show, [&] { return runs_show_command(show_opts); }},
      {dead, [&] { return dead_letters_command(dead_opts); }},
      {resume, [&] { return runs_resume_command(resume_opts); }},
      {cache_list, [&] { return cache_list_command(cache_list_opts); }},
      {cache_clear, [&] { return cache_clear_command(cache_clear_opts); }},
      {load, [&] { return load_command(load_opts); }},
      {trace, [&] { return trace_command(trace_opts); }},
      {serve, [&] { return serve_command(serve_opts); }},
      {node, [&] { return node_command(node_opts); }},
  };
  try {
    for (const auto& [sub, command] : commands) {
      if (sub->parsed()) {
        return command();
      }
    }
    return validate_command(validate_opts);
  } catch (const std::exception& e) {
    std::cerr << "troupe: unexpected error: " << e.what() << '\n';
    return exit_run_failed;
  }
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (!text.empty()) {
    const auto at = text.find(sep, start);
    parts.push_back(text.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) {
      break;
    }
    start = at + 1;
  }
  return parts;
}

bool split_host_port(const std::string& text, std::string& host, std::uint16_t& port) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) {
    return false;
  }
  host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  try {
    std::size_t used = 0;
    const int p = std::stoi(text.substr(colon + 1), &used);
    if (used != text.size() - colon - 1 || p < 0 || p > 65535) {
      return false;
    }
    port = static_cast<std::uint16_t>(p);
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

}  // namespace troupe::cli
