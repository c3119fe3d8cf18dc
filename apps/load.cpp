#include "apps/load.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "apps/cli.hpp"
#include "apps/histogram.hpp"
#include "apps/http_target.hpp"
#include "apps/load_driver.hpp"
#include "apps/output.hpp"
#include "apps/signals.hpp"
#include "runtime/engine.hpp"
#include "workflow/scenarios.hpp"

namespace troupe::cli {
namespace {

using clk = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------
// What the command settled on after checking the flags.

struct load_plan {
  std::string scenario;  // "W3", or empty for a file
  std::string file;
  std::string workflow_text;
  json::object inputs;
  drive_options drive;
  std::uint64_t warmup = 0;
  std::vector<persistence_mode> modes;
  bool compare = false;
  engine_config base;
  std::optional<std::string> db;  // as given
  std::string target;             // http://HOST:PORT: drive the service there
  std::string api_key;
};

/// A usage error, said once, in the mode the user asked for.
int usage(const std::string& message, bool json_mode) {
  print_errors(one_error("troupe load: " + message), json_mode);
  if (!json_mode) {
    std::cerr << "(see troupe load --help)\n";
  }
  return exit_usage;
}

// Reads a workflow file up to `limit` bytes; an endless file (/dev/zero) fails, not hangs.
std::optional<std::string> read_text(const std::string& path, std::size_t limit,
                                     std::string& error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error = "cannot open '" + path + "': " + std::strerror(errno);
    return std::nullopt;
  }
  std::string text;
  char buffer[64 * 1024];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    text.append(buffer, static_cast<std::size_t>(in.gcount()));
    if (text.size() > limit) {
      error = "'" + path + "' holds more than the document size limit of " + std::to_string(limit) +
              " bytes";
      return std::nullopt;
    }
  }
  if (in.bad()) {
    error = "cannot read '" + path + "': " + std::strerror(errno);
    return std::nullopt;
  }
  return text;
}

// ---------------------------------------------------------------------------------------------
// Where each mode's log goes.

/// The default store: a temporary directory holding one fresh SQLite file per mode, removed at
/// the end. A load test writes thousands of runs; they must not land in the user's troupe.db.
class temp_store_dir {
 public:
  temp_store_dir() = default;
  ~temp_store_dir() {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  temp_store_dir(const temp_store_dir&) = delete;
  temp_store_dir& operator=(const temp_store_dir&) = delete;

  /// The directory, created on first use; empty when it cannot be created.
  const std::string& path(std::string& error) {
    if (path_.empty()) {
      const char* base = std::getenv("TMPDIR");
      std::string pattern =
          std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/troupe-load-XXXXXX";
      if (::mkdtemp(pattern.data()) == nullptr) {
        error = "cannot create a temporary directory for the store: " +
                std::string(std::strerror(errno));
      } else {
        path_ = pattern;
      }
    }
    return path_;
  }

 private:
  std::string path_;
};

void remove_sqlite_files(const std::string& path) {
  std::error_code ec;
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
    std::filesystem::remove(path + suffix, ec);
  }
}

/// The store URL for `mode`. With --compare, a `sqlite://PATH` becomes `PATH-MODE.EXT` per mode,
/// emptied first, so that no mode starts on a database the previous one filled (a bigger WAL
/// and index would make the later mode look slower).
std::string store_for(const load_plan& p, persistence_mode mode, temp_store_dir& temp,
                      std::string& error) {
  if (mode == persistence_mode::memory) {
    return "memory://";
  }
  const std::string mode_name(to_string(mode));
  if (!p.db) {
    const std::string& dir = temp.path(error);
    if (dir.empty()) {
      return {};
    }
    const std::string file = dir + "/" + mode_name + ".db";
    remove_sqlite_files(file);
    return "sqlite://" + file;
  }
  constexpr std::string_view sqlite = "sqlite://";
  if (!p.compare || p.db->rfind(sqlite, 0) != 0) {
    return *p.db;  // one mode: the database named; PostgreSQL: shared by the modes
  }
  std::string path = p.db->substr(sqlite.size());
  std::string query;
  if (const auto q = path.find('?'); q != std::string::npos) {
    query = path.substr(q);
    path.resize(q);
  }
  const std::filesystem::path fs_path(path);
  const std::string derived = (fs_path.parent_path() / (fs_path.stem().string() + "-" + mode_name +
                                                        fs_path.extension().string()))
                                  .string();
  remove_sqlite_files(derived);
  return std::string(sqlite) + derived + query;
}

// ---------------------------------------------------------------------------------------------
// Peak memory per mode.

/// Resets the kernel's high-water mark of this process's resident set (VmHWM) to the current
/// RSS, so each mode's peak is its own rather than the highest of all modes so far. Linux >= 4.0.
bool reset_peak_rss() {
  const int fd = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    return false;
  }
  const bool ok = ::write(fd, "5", 1) == 1;
  ::close(fd);
  return ok;
}

long peak_rss_kb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::strtol(line.c_str() + 6, nullptr, 10);
    }
  }
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;  // kilobytes on Linux
}

// ---------------------------------------------------------------------------------------------
// Formatting.

std::string fmt_latency(std::uint64_t ns) {
  return format_micros(static_cast<double>(ns) / 1000.0);
}

std::string fmt_count(double v) {
  auto n = static_cast<std::uint64_t>(std::llround(std::max(0.0, v)));
  std::string digits = std::to_string(n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) {
      out += ',';
    }
    out += digits[i];
  }
  return out;
}

std::string fmt_ratio(double r) {
  if (!std::isfinite(r)) {
    return "-";
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, r < 10 ? "%.2f" : (r < 100 ? "%.1f" : "%.0f"), r);
  return buf;
}

double ratio(double v, double first) {
  return first > 0 ? v / first : NAN;
}

json::value ratio_json(double r) {
  return std::isfinite(r) ? json::value(r) : json::value(nullptr);
}

double us_of(std::uint64_t ns) {
  return static_cast<double>(ns) / 1000.0;
}

// ---------------------------------------------------------------------------------------------
// One mode's measurement.

struct mode_result {
  persistence_mode mode = persistence_mode::async;
  std::string store;
  phase_result phase;
  std::uint64_t p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;  // ns
  double mean_ns = 0;
  long peak_rss_kb = 0;
  bool rss_reset = false;
  double drain_ms = 0;
  bool drained = true;
  target_counters writer;

  double throughput() const {
    return phase.seconds > 0 ? static_cast<double>(phase.runs) / phase.seconds : 0;
  }
};

/// The live line on a terminal: a clock (every 250 ms), not a watch on the load's state; it
/// exists only while stdout and stderr are terminals, so pipes and files never see a `\r`.
class progress_printer {
 public:
  progress_printer(std::string label, const live_counters& live, const latency_histogram& h,
                   const load_target& target)
      : label_(std::move(label)), live_(live), hist_(h), target_(target) {
    thread_ = std::thread([this] { loop(); });
  }
  ~progress_printer() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
    std::cerr << "\r\033[K" << std::flush;  // the report replaces the line
  }
  progress_printer(const progress_printer&) = delete;
  progress_printer& operator=(const progress_printer&) = delete;

  static bool wanted() { return ::isatty(STDOUT_FILENO) == 1 && ::isatty(STDERR_FILENO) == 1; }

 private:
  void loop() {
    const auto start = clk::now();
    std::uint64_t last_runs = 0;
    auto last_t = start;
    std::unique_lock<std::mutex> lock(mutex_);
    while (!cv_.wait_for(lock, std::chrono::milliseconds(250), [this] { return done_; })) {
      const auto now = clk::now();
      const std::uint64_t runs = live_.finished.load();
      const double dt = std::chrono::duration<double>(now - last_t).count();
      const double rate = dt > 0 ? static_cast<double>(runs - last_runs) / dt : 0;
      last_runs = runs;
      last_t = now;
      const target_counters w = target_.counters();
      char elapsed[32];
      std::snprintf(elapsed, sizeof elapsed, "%.1f s",
                    std::chrono::duration<double>(now - start).count());
      std::cerr << "\r\033[K" << label_ << ' ' << elapsed << "  "
                << fmt_count(static_cast<double>(runs)) << " runs  " << fmt_count(rate)
                << " runs/s  p50 " << fmt_latency(hist_.percentile(0.5)) << "  p99 "
                << fmt_latency(hist_.percentile(0.99)) << "  in flight " << live_.outstanding.load()
                << "  errors " << live_.failed.load();
      if (w.rows_received > 0) {
        std::cerr << "  writer pending " << w.pending;
      }
      std::cerr << std::flush;
    }
  }

  std::string label_;
  const live_counters& live_;
  const latency_histogram& hist_;
  const load_target& target_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

struct run_context {
  const load_plan& plan;
  temp_store_dir& temp;
  const std::atomic<bool>& stop;
  bool json = false;
};

/// What measure() found out about the workflow, for the report's header.
struct workflow_info {
  std::string name;
  std::size_t nodes = 0;
  std::string check_error;  // the checking run failed (the load still runs and counts errors)
};

/// Runs one mode on a fresh engine: one checking run, the warm-up, the measured phase, then
/// the writer's drain. Returns nullopt after printing a usage error (exit 2).
void drive_phases(const run_context& c, load_target& target, mode_result& r);

// One run first, waited for: bad inputs are a usage error with their pointers (printed; false),
// before any load is generated. A run that fails is noted and the load goes on.
template <class Target>
bool check_first(const run_context& c, Target& target, workflow_info& info) {
  auto checked = target.check();
  if (!checked) {
    print_errors(locate(checked.error()), c.json);
    return false;
  }
  if (!checked->ok && info.check_error.empty()) {
    info.check_error = checked->error;
  }
  return true;
}

std::optional<mode_result> measure(const run_context& c, persistence_mode mode,
                                   workflow_info& info) {
  const load_plan& p = c.plan;
  mode_result r;
  r.mode = mode;
  std::string error;
  r.store = store_for(p, mode, c.temp, error);
  if (r.store.empty()) {
    usage(error, c.json);
    return std::nullopt;
  }
  engine_config config = p.base;
  config.mode = mode;
  config.writer.mode = mode;
  config.store = r.store;
  if (!config.trace_file.empty() && p.modes.size() > 1) {
    // One trace per mode, named as --db names its per-mode files: PATH-MODE.EXT.
    const std::string& f = config.trace_file;
    const auto dot = f.find_last_of('.');
    const bool ext = dot != std::string::npos && f.find('/', dot) == std::string::npos;
    config.trace_file = ext ? f.substr(0, dot) + "-" + std::string(to_string(mode)) + f.substr(dot)
                            : f + "-" + std::string(to_string(mode));
  }

  // The previous mode's engine is gone: what is resident now is the baseline this mode grows.
  r.rss_reset = reset_peak_rss();
  std::unique_ptr<engine_target> target;
  try {
    target = std::make_unique<engine_target>(config);
  } catch (const engine_error& e) {
    // The engine names the store by its URL; a PostgreSQL password must not be printed.
    std::string message = e.what();
    const std::string shown = display_url(r.store);
    if (const auto pos = message.find(r.store); pos != std::string::npos && shown != r.store) {
      message.replace(pos, r.store.size(), shown);
    }
    usage(message, c.json);
    return std::nullopt;
  }
  auto plan = target->use_workflow(p.workflow_text, p.inputs);
  if (!plan) {
    print_errors(locate(plan.error()), c.json);
    return std::nullopt;
  }
  info.name = (*plan)->name;
  info.nodes = (*plan)->nodes.size();
  if (!check_first(c, *target, info)) {
    return std::nullopt;
  }
  drive_phases(c, *target, r);
  return r;
}

// The warm-up, the measured phase and the drain, against either target.
void drive_phases(const run_context& c, load_target& target, mode_result& r) {
  const load_plan& p = c.plan;
  const bool progress = progress_printer::wanted();
  const std::string mode_name(to_string(r.mode));
  if (p.warmup > 0 && !c.stop.load()) {
    // Same loop, own counters and histogram: warm-up runs are not in the figures.
    drive_options warm = p.drive;
    warm.runs = p.warmup;
    warm.duration.reset();
    auto h = std::make_unique<latency_histogram>();
    live_counters live;
    std::optional<progress_printer> printer;
    if (progress) {
      printer.emplace("[" + mode_name + " warm-up]", live, *h, target);
    }
    drive(target, warm, *h, live, c.stop);
  }

  auto hist = std::make_unique<latency_histogram>();
  live_counters live;
  {
    std::optional<progress_printer> printer;
    if (progress) {
      printer.emplace("[" + mode_name + "]", live, *hist, target);
    }
    r.phase = drive(target, p.drive, *hist, live, c.stop);
  }
  r.p50 = hist->percentile(0.50);
  r.p90 = hist->percentile(0.90);
  r.p99 = hist->percentile(0.99);
  r.p999 = hist->percentile(0.999);
  r.max = hist->max();
  r.mean_ns = hist->mean();

  // Async callers never waited for the log; how long it takes to catch up is part of the cost.
  const auto drain_start = clk::now();
  r.drained = target.drain(std::chrono::seconds(120));
  r.drain_ms = std::chrono::duration<double, std::milli>(clk::now() - drain_start).count();
  r.writer = target.counters();
  r.peak_rss_kb = peak_rss_kb();
  target.stop();
}

// `--target`: the same phases against `troupe serve` over HTTP. The service's mode names the
// row of the report; peak RSS is this client's.
std::optional<mode_result> measure_service(const run_context& c, workflow_info& info) {
  const load_plan& p = c.plan;
  mode_result r;
  r.store = p.target;
  r.rss_reset = reset_peak_rss();
  std::size_t connections = p.drive.in_flight > 0 ? p.drive.in_flight : 1024;
  std::unique_ptr<http_target> target;
  try {
    target = std::make_unique<http_target>(p.target, p.api_key, connections);
  } catch (const std::exception& e) {
    usage(e.what(), c.json);
    return std::nullopt;
  }
  auto mode = target->service_mode();
  if (!mode) {
    usage("cannot reach " + p.target + ": " + mode.error(), c.json);
    return std::nullopt;
  }
  r.mode = *mode;
  auto name = target->use_workflow(p.workflow_text, p.inputs);
  if (!name) {
    print_errors(locate(name.error()), c.json);
    return std::nullopt;
  }
  info.name = *name;
  if (auto local = compile_workflow(std::string_view(p.workflow_text))) {
    info.nodes = (*local)->nodes.size();  // the server compiled the same document
  }
  if (!check_first(c, *target, info)) {
    return std::nullopt;
  }
  drive_phases(c, *target, r);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Reports.

std::string loop_text(const load_plan& p) {
  std::string text;
  if (p.drive.rate) {
    text = "open loop at " + fmt_count(*p.drive.rate) + " runs/s";
    text += p.drive.in_flight > 0 ? ", at most " + std::to_string(p.drive.in_flight) + " in flight"
                                  : "";
  } else {
    text = "closed loop, " + std::to_string(p.drive.in_flight) + " in flight";
  }
  if (p.drive.runs) {
    text += ", " + fmt_count(static_cast<double>(*p.drive.runs)) + " runs";
  } else {
    char buf[48];
    std::snprintf(buf, sizeof buf, ", %g s",
                  std::chrono::duration<double>(*p.drive.duration).count());
    text += buf;
  }
  if (p.warmup > 0) {
    text += " after " + fmt_count(static_cast<double>(p.warmup)) + " warm-up runs";
  }
  return text;
}

void pad(std::ostream& out, const std::string& s, std::size_t width, bool right = true) {
  if (right && s.size() < width) {
    out << std::string(width - s.size(), ' ');
  }
  out << s;
  if (!right && s.size() < width) {
    out << std::string(width - s.size(), ' ');
  }
}

void print_text(const load_plan& p, const workflow_info& info,
                const std::vector<mode_result>& results) {
  std::ostream& out = std::cout;
  out << "troupe load: " << (p.scenario.empty() ? p.file : "scenario " + p.scenario) << " ("
      << info.name << ", " << info.nodes << (info.nodes == 1 ? " node" : " nodes") << "), "
      << loop_text(p) << ", "
      << (p.base.threads == 0 ? std::string("one scheduler thread per core")
                              : std::to_string(p.base.threads) + " scheduler threads")
      << "\n\n";

  const bool open = p.drive.rate.has_value();
  const mode_result& first = results.front();
  const std::vector<std::pair<std::string, std::size_t>> head = {
      {"MODE", 8},  {"RUNS", 10}, {"ERRORS", 7}, {"RUNS/S", 10},  {"x", 6},
      {"P50", 9},   {"x", 6},     {"P90", 9},    {"P99", 9},      {"x", 6},
      {"P99.9", 9}, {"MAX", 9},   {"MEAN", 9},   {"PEAK RSS", 11}};
  auto row = [&](const std::vector<std::string>& cells, bool with_late, const std::string& late) {
    for (std::size_t i = 0; i < cells.size(); ++i) {
      if (i > 0) {
        out << "  ";
      }
      pad(out, cells[i], head[i].second, i != 0);
    }
    if (with_late) {
      out << "  ";
      pad(out, late, 9);
    }
    out << '\n';
  };
  {
    std::vector<std::string> cells;
    for (const auto& [name, width] : head) {
      cells.push_back(name);
    }
    row(cells, open, "MAX LATE");
  }
  for (const auto& r : results) {
    row({std::string(to_string(r.mode)), fmt_count(static_cast<double>(r.phase.runs)),
         fmt_count(static_cast<double>(r.phase.errors)), fmt_count(r.throughput()),
         fmt_ratio(ratio(r.throughput(), first.throughput())), fmt_latency(r.p50),
         fmt_ratio(ratio(static_cast<double>(r.p50), static_cast<double>(first.p50))),
         fmt_latency(r.p90), fmt_latency(r.p99),
         fmt_ratio(ratio(static_cast<double>(r.p99), static_cast<double>(first.p99))),
         fmt_latency(r.p999), fmt_latency(r.max),
         fmt_latency(static_cast<std::uint64_t>(r.mean_ns)),
         fmt_count(static_cast<double>(r.peak_rss_kb)) + " KB"},
        open, fmt_latency(static_cast<std::uint64_t>(r.phase.max_lateness.count())));
  }
  out << "(x: ratio to " << to_string(first.mode) << "; latency of a run from "
      << (open ? "its scheduled arrival" : "its start call") << " to its end)\n";

  bool any_writer = false;
  for (const auto& r : results) {
    any_writer = any_writer || r.mode != persistence_mode::memory;
  }
  if (any_writer) {
    out << "\nWRITER     BATCHES        ROWS    RECEIVED  AVG BATCH  AVG COMMIT  ERRORS  RETRIES"
           "      DRAIN  STORE\n";
    for (const auto& r : results) {
      if (r.mode == persistence_mode::memory) {
        continue;
      }
      const auto& w = r.writer;
      const double batches = static_cast<double>(w.batches);
      char line[256];
      std::snprintf(
          line, sizeof line, "%-8s %9s %11s %11s %10.1f %11s %7s %8s %10s  ",
          std::string(to_string(r.mode)).c_str(), fmt_count(batches).c_str(),
          fmt_count(static_cast<double>(w.rows)).c_str(),
          fmt_count(static_cast<double>(w.rows_received)).c_str(),
          batches > 0 ? static_cast<double>(w.rows) / batches : 0.0,
          batches > 0 ? fmt_latency(static_cast<std::uint64_t>(
                                        static_cast<double>(w.commit_us_total) * 1000.0 / batches))
                            .c_str()
                      : "-",
          fmt_count(static_cast<double>(w.errors)).c_str(),
          fmt_count(static_cast<double>(w.retries)).c_str(),
          (format_duration(r.drain_ms) + (r.drained ? "" : "!")).c_str());
      out << line << display_url(r.store) << '\n';
    }
  }

  for (const auto& r : results) {
    if (open) {
      out << "\nlateness of the arrivals (the driver's own wake-ups, inside the latencies): "
          << to_string(r.mode) << " p50 "
          << fmt_latency(static_cast<std::uint64_t>(r.phase.lateness_p50.count())) << ", p99 "
          << fmt_latency(static_cast<std::uint64_t>(r.phase.lateness_p99.count()));
    }
    if (open && r.phase.max_lateness > std::chrono::milliseconds(1)) {
      out << "\nnote: " << to_string(r.mode) << " fell behind the schedule (an arrival started "
          << fmt_latency(static_cast<std::uint64_t>(r.phase.max_lateness.count()))
          << " late); its latencies include the wait";
    }
    if (!r.drained) {
      out << "\nnote: " << to_string(r.mode) << ": the writer had not drained after "
          << format_duration(r.drain_ms) << " (" << r.writer.pending << " rows pending)";
    }
    if (!r.rss_reset) {
      out << "\nnote: peak RSS is the process's peak so far (cannot reset VmHWM here)";
    }
  }
  out << '\n';
}

json::value result_json(const mode_result& r, const mode_result& first, bool open) {
  json::object o;
  o["mode"] = to_string(r.mode);
  o["store"] = display_url(r.store);
  o["runs"] = r.phase.runs;
  o["errors"] = r.phase.errors;
  o["first_error"] =
      r.phase.first_error.empty() ? json::value(nullptr) : json::value(r.phase.first_error);
  o["stopped_early"] = r.phase.stopped_early;
  o["seconds"] = r.phase.seconds;
  o["throughput"] = r.throughput();
  o["latency_us"] =
      json::object{{"p50", us_of(r.p50)},    {"p90", us_of(r.p90)}, {"p99", us_of(r.p99)},
                   {"p99.9", us_of(r.p999)}, {"max", us_of(r.max)}, {"mean", r.mean_ns / 1000.0}};
  o["ratio"] = json::object{
      {"throughput", ratio_json(ratio(r.throughput(), first.throughput()))},
      {"p50", ratio_json(ratio(static_cast<double>(r.p50), static_cast<double>(first.p50)))},
      {"p99", ratio_json(ratio(static_cast<double>(r.p99), static_cast<double>(first.p99)))}};
  o["peak_in_flight"] = r.phase.peak_in_flight;
  o["lateness_p50_us"] =
      open ? json::value(us_of(static_cast<std::uint64_t>(r.phase.lateness_p50.count())))
           : json::value(nullptr);
  o["lateness_p99_us"] =
      open ? json::value(us_of(static_cast<std::uint64_t>(r.phase.lateness_p99.count())))
           : json::value(nullptr);
  o["max_lateness_us"] =
      open ? json::value(us_of(static_cast<std::uint64_t>(r.phase.max_lateness.count())))
           : json::value(nullptr);
  o["peak_rss_kb"] = r.peak_rss_kb;
  o["peak_rss_per_mode"] = r.rss_reset;
  o["drain_ms"] = r.drain_ms;
  o["drained"] = r.drained;
  const auto& w = r.writer;
  o["writer"] =
      json::object{{"batches", w.batches},
                   {"rows", w.rows},
                   {"rows_received", w.rows_received},
                   {"max_batch", w.max_batch},
                   {"errors", w.errors},
                   {"retries", w.retries},
                   {"pending", w.pending},
                   {"avg_commit_us", w.batches > 0 ? static_cast<double>(w.commit_us_total) /
                                                         static_cast<double>(w.batches)
                                                   : 0.0}};
  return o;
}

void print_json(const load_plan& p, const workflow_info& info,
                const std::vector<mode_result>& results) {
  json::object doc;
  doc["scenario"] = p.scenario.empty() ? json::value(nullptr) : json::value(p.scenario);
  doc["file"] = p.file.empty() ? json::value(nullptr) : json::value(p.file);
  doc["workflow"] = info.name;
  doc["nodes"] = info.nodes;
  doc["loop"] = p.drive.rate ? "open" : "closed";
  doc["rate"] = p.drive.rate ? json::value(*p.drive.rate) : json::value(nullptr);
  // 0 means no cap (open loop only): null, rather than a number that reads as "nothing in flight".
  doc["in_flight"] = p.drive.in_flight > 0 ? json::value(p.drive.in_flight) : json::value(nullptr);
  doc["runs"] = p.drive.runs ? json::value(*p.drive.runs) : json::value(nullptr);
  doc["duration_s"] = p.drive.duration
                          ? json::value(std::chrono::duration<double>(*p.drive.duration).count())
                          : json::value(nullptr);
  doc["warmup"] = p.warmup;
  doc["threads"] = p.base.threads;
  json::array results_json;
  for (const auto& r : results) {
    results_json.push_back(result_json(r, results.front(), p.drive.rate.has_value()));
  }
  doc["results"] = std::move(results_json);
  std::cout << compact_json(doc) << '\n';
}

// ---------------------------------------------------------------------------------------------
// Checking the flags.

/// Fills `p` from the flags, or returns the message of the first thing wrong with them.
std::optional<std::string> settle(const load_options& o, load_plan& p) {
  if (!o.file.empty() && !o.scenario.empty()) {
    return "give a workflow FILE or --scenario, not both";
  }
  if (o.file.empty() && o.scenario.empty()) {
    return "give a workflow FILE or --scenario W1|W2|W3|W4";
  }
  if (o.runs && o.duration_s) {
    return "give --runs or --duration, not both";
  }
  if (o.runs && *o.runs <= 0) {
    return "--runs must be at least 1, not " + std::to_string(*o.runs);
  }
  if (o.duration_s && !(*o.duration_s > 0 && *o.duration_s <= 86400)) {
    return "--duration must be more than 0 and at most 86400 seconds";
  }
  if (o.rate && !(*o.rate > 0 && *o.rate <= 1e7)) {
    return "--rate must be more than 0 and at most 10,000,000 runs per second";
  }
  if (o.in_flight && (*o.in_flight <= 0 || *o.in_flight > 10'000'000)) {
    return "--in-flight must be between 1 and 10,000,000, not " + std::to_string(*o.in_flight);
  }
  if (o.warmup < 0) {
    return "--warmup must be 0 or more";
  }
  if (o.mode && o.compare) {
    return "give --mode or --compare, not both";
  }
  if (!o.target.empty()) {
    // The service's own flags decide these; saying them here would mislead.
    if (o.mode || o.compare || o.db || !o.trace.empty() || o.batch_max || o.flush_ms ||
        o.threads != 0) {
      return "--target drives a running `troupe serve`: --mode, --compare, --db, --trace, "
             "--batch-max, --flush-ms and --threads are the server's (give them to serve)";
    }
    p.target = o.target;
    p.api_key = o.api_key;
    if (p.api_key.empty()) {
      if (const char* k = std::getenv("TROUPE_API_KEY")) {
        p.api_key = k;
      }
    }
  }

  if (o.compare) {
    const auto names = split(*o.compare, ',');
    if (names.empty()) {
      return "--compare needs a list of modes, e.g. memory,async,durable,sync";
    }
    for (const auto& name : names) {
      persistence_mode m{};
      if (!parse_persistence_mode(name, m)) {
        return "--compare: '" + name +
               "' is not a persistence mode; expected memory, async, durable or sync";
      }
      for (const auto seen : p.modes) {
        if (seen == m) {
          return "--compare names '" + name + "' twice";
        }
      }
      p.modes.push_back(m);
    }
    p.compare = true;
  } else {
    persistence_mode m = persistence_mode::async;
    if (o.mode && !parse_persistence_mode(*o.mode, m)) {
      return "--mode: '" + *o.mode +
             "' is not a persistence mode; expected memory, async, durable or sync";
    }
    if (o.target.empty()) {
      p.modes.push_back(m);
    }
  }

  p.drive.rate = o.rate;
  if (o.runs) {
    p.drive.runs = static_cast<std::uint64_t>(*o.runs);
  } else {
    // Neither given: ten seconds, long enough to see a tail, short enough to try things.
    p.drive.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::duration<double>(o.duration_s.value_or(10.0)));
  }
  // Open loop: no limit unless asked, so a target that falls behind builds a backlog (which is
  // what an open loop is for) instead of silently lowering the arrival rate.
  p.drive.in_flight = o.in_flight ? static_cast<std::uint64_t>(*o.in_flight) : (o.rate ? 0 : 64);
  p.warmup = static_cast<std::uint64_t>(o.warmup);
  p.base.threads = o.threads;
  if (o.batch_max) {
    p.base.writer.batch_max = *o.batch_max;
  }
  if (o.flush_ms) {
    p.base.writer.flush_ms = *o.flush_ms;
  }
  p.db = o.db;
  p.base.trace_file = o.trace;

  // The workflow.
  const json_limits& limits = p.base.limits.json;
  if (!o.scenario.empty()) {
    std::string s = o.scenario;
    for (auto& ch : s) {
      ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    }
    json::value doc;
    if (s == "W1") {
      doc = scenarios::chain("load-w1-chain", 1000, "noop");
    } else if (s == "W2") {
      doc = scenarios::fan("load-w2-fan", 10000);
    } else if (s == "W3") {
      doc = scenarios::w3("load-w3");
    } else if (s == "W4") {
      doc = scenarios::w4("load-w4-for-each");
      p.inputs["blob"] = std::string(10 * 1024, 'x');
    } else {
      return "unknown scenario '" + o.scenario + "'; expected W1, W2, W3 or W4";
    }
    p.scenario = s;
    p.workflow_text = to_json_text(doc);
  } else {
    std::string error;
    auto text = read_text(o.file, limits.max_document_bytes, error);
    if (!text) {
      return error;
    }
    p.file = o.file;
    p.workflow_text = std::move(*text);
  }

  // Inputs: NAME=VALUE, the VALUE read as JSON when it parses, else as a string (as `run` does).
  for (const auto& entry : o.inputs) {
    const auto eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) {
      return "--input '" + entry + "' must be NAME=VALUE (VALUE: JSON, or else a string)";
    }
    const std::string text = entry.substr(eq + 1);
    auto value = parse_json(text, limits);
    p.inputs[entry.substr(0, eq)] = value ? std::move(*value) : json::value(json::string(text));
  }
  return std::nullopt;
}

}  // namespace

CLI::App* add_load_command(CLI::App& app, load_options& o) {
  CLI::App* load = app.add_subcommand(
      "load", "Load-test the engine with many runs of a workflow or a built-in scenario.");
  load->add_option("file", o.file, "The workflow file (JSON); or use --scenario.")
      ->type_name("FILE");
  load->add_option("--scenario", o.scenario,
                   "A built-in workflow: W1 (chain of 1000 noop), W2 (1 -> 10,000 -> 1 fan-out), "
                   "W3 (A -> B1..B8 -> C), W4 (for_each over 1000 items, 100 x 10 KB context).")
      ->type_name("W1|W2|W3|W4");
  load->add_option("--input", o.inputs,
                   "An input of every run as NAME=VALUE (VALUE: JSON, else a string). Repeatable.")
      ->allow_extra_args(false)
      ->type_name("NAME=VALUE");
  load->add_option_function<std::int64_t>(
          "--runs", [&o](std::int64_t n) { o.runs = n; }, "Runs to measure (excludes --duration).")
      ->type_name("N");
  load->add_option_function<double>(
          "--duration", [&o](double s) { o.duration_s = s; },
          "Seconds to generate load for (default 10 when --runs is not given).")
      ->type_name("S");
  load->add_option_function<std::int64_t>(
          "--in-flight", [&o](std::int64_t n) { o.in_flight = n; },
          "Closed loop: runs kept in flight (default 64). Open loop: the most allowed in flight "
          "(default: no limit).")
      ->type_name("N");
  load->add_option_function<double>(
          "--rate", [&o](double r) { o.rate = r; },
          "Open loop: runs started per second on a fixed schedule; latency counts from the "
          "scheduled time. Omit for a closed loop (as fast as the runs end).")
      ->type_name("R");
  load->add_option("--warmup", o.warmup, "Runs before the measurement, not counted (default 0).")
      ->type_name("N");
  load->add_option("--threads", o.threads, "Actor scheduler threads (0: one per core).")
      ->check(CLI::Range(0, 1024))
      ->type_name("N");
  load->add_option_function<std::string>(
          "--db", [&o](const std::string& url) { o.db = url; },
          "Where the log goes: sqlite://PATH, postgres://..., memory://. Default: a temporary "
          "SQLite file per mode, removed afterwards.")
      ->type_name("URL");
  load->add_option_function<std::string>(
          "--mode", [&o](const std::string& m) { o.mode = m; },
          "Persistence mode: memory, async (default), durable, sync.")
      ->type_name("MODE");
  load->add_option_function<std::string>(
          "--compare", [&o](const std::string& m) { o.compare = m; },
          "Measure these modes in turn, each on a fresh engine (and, for sqlite://, a fresh "
          "database file PATH-MODE), with ratios to the first: e.g. memory,async,durable,sync.")
      ->type_name("M1,M2,...");
  load->add_option_function<std::size_t>(
          "--batch-max", [&o](std::size_t n) { o.batch_max = n; },
          "The writer commits once this many rows are pending (default 512).")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1'000'000}))
      ->type_name("N");
  load->add_option_function<std::int64_t>(
          "--flush-ms", [&o](std::int64_t n) { o.flush_ms = n; },
          "...or this many milliseconds after the first of them (default 5).")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{60'000}))
      ->type_name("N");
  load->add_option("--trace", o.trace,
                   "Write every actor message as Chrome trace JSON to FILE (with --compare, "
                   "FILE-MODE.EXT per mode); see `troupe trace`. Traces grow fast: use few runs.")
      ->type_name("FILE");
  load->add_flag("--json", o.json, "Print the results as one JSON document.");
  load->add_option("--target", o.target,
                   "Drive `troupe serve` at http://HOST:PORT instead of an embedded engine: each "
                   "run is a POST /v1/runs waiting for its end, on up to --in-flight kept-alive "
                   "connections; the report's mode is the server's.")
      ->type_name("URL");
  load->add_option("--api-key", o.api_key,
                   "The service's API key (default: the TROUPE_API_KEY environment variable).")
      ->type_name("KEY");
  return load;
}

int load_command(const load_options& o) {
  load_plan p;
  if (auto problem = settle(o, p)) {
    return usage(*problem, o.json);
  }

  std::atomic<bool> stop{false};
  signal_waiter signals([&](int signal, int count) {
    if (count > 1) {
      std::cerr << "\ntroupe: interrupted again, exiting without a report\n";
      std::_Exit(exit_run_failed);
    }
    stop.store(true);
    std::cerr << "\ntroupe: " << (signal == SIGINT ? "interrupted" : "terminated")
              << ", waiting for the runs in flight, then reporting\n";
  });

  temp_store_dir temp;
  const run_context context{p, temp, stop, o.json};
  workflow_info info;
  std::vector<mode_result> results;
  if (!p.target.empty()) {
    auto r = measure_service(context, info);
    if (!r) {
      return exit_usage;
    }
    results.push_back(std::move(*r));
  }
  for (const persistence_mode mode : p.modes) {
    if (stop.load() && !results.empty()) {
      break;
    }
    auto r = measure(context, mode, info);
    if (!r) {
      return exit_usage;
    }
    results.push_back(std::move(*r));
  }
  signals.stop();

  if (o.json) {
    print_json(p, info, results);
  } else {
    print_text(p, info, results);
  }
  std::uint64_t errors = 0;
  for (const auto& r : results) {
    errors += r.phase.errors;
    if (!r.phase.first_error.empty()) {
      std::cerr << "troupe load: " << to_string(r.mode) << ": " << r.phase.errors
                << " runs failed; the first: " << r.phase.first_error << '\n';
    }
  }
  if (!info.check_error.empty() && errors == 0) {
    std::cerr << "troupe load: the checking run failed: " << info.check_error << '\n';
  }
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "troupe: cannot write the report to stdout\n";
    return exit_run_failed;
  }
  return errors > 0 || stop.load() ? exit_run_failed : exit_ok;
}

}  // namespace troupe::cli
