#include "apps/trace_cmd.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "apps/cli.hpp"
#include "apps/output.hpp"

namespace troupe::cli {
namespace {

// One handled message (or an actor's init) as the trace file holds it; times in µs.
struct slice {
  std::uint64_t tid = 0;
  std::string name;
  bool init = false;
  double ts = 0;
  double dur = 0;
  std::uint64_t from = 0;
  double sent = -1;    // -1: its send was not traced
  double queued = -1;  // -1: unknown
  bool outside = false;  // sent from outside the sender's handlers (timer, I/O, pool, caller)
  std::uint64_t mailbox = 0;
  std::string run;
  std::string node;
  std::string from_run;
  std::uint64_t rows = 0;
  std::uint64_t batches = 0;
  double end() const { return ts + dur; }
};

struct trace_data {
  std::vector<slice> slices;
  std::unordered_map<std::uint64_t, std::string> names;  // thread_name metadata
  std::size_t events = 0;
  double first = 0;
  double last = 0;
  // Per actor (track), the indices of its slices by start time.
  std::unordered_map<std::uint64_t, std::vector<std::size_t>> by_tid;

  std::string actor(std::uint64_t tid) const {
    if (tid == 0) {
      return "outside";
    }
    auto it = names.find(tid);
    return it != names.end() ? it->second : "actor #" + std::to_string(tid);
  }
};

struct load_error {
  std::string message;
};

double number(const json::value& v) {
  if (v.is_double()) {
    return v.as_double();
  }
  if (v.is_int64()) {
    return static_cast<double>(v.as_int64());
  }
  if (v.is_uint64()) {
    return static_cast<double>(v.as_uint64());
  }
  throw load_error{"not a number"};
}

std::string text_of(const json::object& o, const char* key) {
  const json::value* v = o.if_contains(key);
  return v && v->is_string() ? std::string(v->as_string()) : std::string();
}

// Reads and checks the file: a Chrome trace event document whose events have the fields the
// format requires. Anything else is a clear error.
std::optional<trace_data> load(const std::string& path, std::string& error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error = "cannot open trace file '" + path + "': " + std::strerror(errno);
    return std::nullopt;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  boost::system::error_code ec;
  json::value doc = boost::json::parse(buffer.str(), ec);
  if (ec) {
    error = "'" + path + "' is not JSON: " + ec.message();
    return std::nullopt;
  }
  const json::value* events = doc.is_object() ? doc.as_object().if_contains("traceEvents") : nullptr;
  if (events == nullptr || !events->is_array()) {
    error = "'" + path + "' is not a trace: no \"traceEvents\" array";
    return std::nullopt;
  }
  trace_data t;
  bool any = false;
  std::size_t index = 0;
  for (const json::value& ev : events->as_array()) {
    const std::string where = "'" + path + "': event " + std::to_string(index++);
    if (!ev.is_object()) {
      error = where + " is not an object";
      return std::nullopt;
    }
    const json::object& o = ev.as_object();
    const std::string ph = text_of(o, "ph");
    if (ph.empty()) {
      error = where + " has no \"ph\"";
      return std::nullopt;
    }
    ++t.events;
    try {
      if (ph == "M") {
        if (text_of(o, "name") == "thread_name" && o.contains("tid")) {
          const json::value* args = o.if_contains("args");
          if (args && args->is_object()) {
            t.names[static_cast<std::uint64_t>(number(o.at("tid")))] =
                text_of(args->as_object(), "name");
          }
        }
        continue;
      }
      if (ph != "X") {
        continue;
      }
      const std::string cat = text_of(o, "cat");
      if (cat != "handle" && cat != "init") {
        continue;  // the anchors of sends made outside actors
      }
      for (const char* key : {"ts", "dur", "tid"}) {
        if (!o.contains(key)) {
          error = where + " has no \"" + key + "\"";
          return std::nullopt;
        }
      }
      slice s;
      s.tid = static_cast<std::uint64_t>(number(o.at("tid")));
      s.name = text_of(o, "name");
      s.init = cat == "init";
      s.ts = number(o.at("ts"));
      s.dur = number(o.at("dur"));
      if (const json::value* a = o.if_contains("args"); a && a->is_object()) {
        const json::object& args = a->as_object();
        auto num = [&](const char* key, auto& out) {
          if (const json::value* v = args.if_contains(key)) {
            out = static_cast<std::remove_reference_t<decltype(out)>>(number(*v));
          }
        };
        num("from", s.from);
        num("sent", s.sent);
        num("queued_us", s.queued);
        num("mailbox", s.mailbox);
        num("rows", s.rows);
        num("batches", s.batches);
        s.run = text_of(args, "run");
        s.node = text_of(args, "node");
        s.from_run = text_of(args, "from_run");
        const json::value* outside = args.if_contains("from_outside");
        s.outside = outside && outside->is_bool() && outside->as_bool();
      }
      if (!any || s.ts < t.first) {
        t.first = s.ts;
      }
      if (!any || s.end() > t.last) {
        t.last = s.end();
      }
      any = true;
      t.slices.push_back(std::move(s));
    } catch (const load_error& e) {
      error = where + ": a field is " + e.message;
      return std::nullopt;
    } catch (const std::exception& e) {
      error = where + ": " + e.what();
      return std::nullopt;
    }
  }
  std::stable_sort(t.slices.begin(), t.slices.end(),
                   [](const slice& a, const slice& b) { return a.ts < b.ts; });
  for (std::size_t i = 0; i < t.slices.size(); ++i) {
    t.by_tid[t.slices[i].tid].push_back(i);
  }
  return t;
}

std::string ms_text(double us) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", us / 1e3);
  return buf;
}

void cell(std::ostream& out, const std::string& s, std::size_t width, bool right = false) {
  std::string v = s.size() > width ? s.substr(0, width - 1) + "~" : s;
  if (right) {
    out << std::string(width - v.size(), ' ') << v;
  } else {
    out << v << std::string(width - v.size(), ' ');
  }
  out << "  ";
}

std::string kind_of(const std::string& actor_name) {
  auto sp = actor_name.find(' ');
  return sp == std::string::npos ? actor_name : actor_name.substr(0, sp);
}

// ---- summary -------------------------------------------------------------------------------

struct actor_row {
  std::uint64_t tid = 0;
  std::size_t messages = 0;
  std::size_t inits = 0;
  double busy = 0;
  double max = 0;
};

std::vector<actor_row> busy_actors(const trace_data& t) {
  std::map<std::uint64_t, actor_row> rows;
  for (const slice& s : t.slices) {
    auto& r = rows[s.tid];
    r.tid = s.tid;
    (s.init ? r.inits : r.messages) += 1;
    r.busy += s.dur;
    r.max = std::max(r.max, s.dur);
  }
  std::vector<actor_row> out;
  for (auto& [tid, r] : rows) {
    out.push_back(r);
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const actor_row& a, const actor_row& b) { return a.busy > b.busy; });
  return out;
}

// The slice of `tid` that was running at `at` (a send made inside a handler), if any.
const slice* slice_at(const trace_data& t, std::uint64_t tid, double at) {
  auto it = t.by_tid.find(tid);
  if (it == t.by_tid.end()) {
    return nullptr;
  }
  const auto& idx = it->second;
  auto pos = std::upper_bound(idx.begin(), idx.end(), at,
                              [&](double v, std::size_t i) { return v < t.slices[i].ts; });
  if (pos == idx.begin()) {
    return nullptr;
  }
  const slice& s = t.slices[*(pos - 1)];
  // The file rounds to nanoseconds; a send at the very end of its handler still belongs to it.
  return at <= s.end() + 0.001 ? &s : nullptr;
}

// The latest slice of `tid` that ended by `at`.
const slice* slice_before(const trace_data& t, std::uint64_t tid, double at) {
  auto it = t.by_tid.find(tid);
  if (it == t.by_tid.end()) {
    return nullptr;
  }
  const slice* best = nullptr;
  for (std::size_t i : it->second) {
    const slice& s = t.slices[i];
    if (s.ts >= at) {
      break;
    }
    if (s.end() <= at + 0.001) {
      best = &s;
    }
  }
  return best;
}

struct hop {
  const slice* s;
  double outside_before = 0;  // time between the cause's end and this message's send
  bool via_outside = false;
};

std::vector<std::string> runs_in(const trace_data& t) {
  std::set<std::string> runs;
  for (const slice& s : t.slices) {
    if (!s.run.empty()) {
      runs.insert(s.run);
    }
  }
  return {runs.begin(), runs.end()};
}

std::string unknown_run(const trace_data& t, const std::string& run, const std::string& file) {
  auto runs = runs_in(t);
  std::string msg = "no run '" + run + "' in trace '" + file + "'";
  if (runs.empty()) {
    return msg + " (it holds no run events)";
  }
  msg += "; it holds " + std::to_string(runs.size()) + " run" + (runs.size() == 1 ? "" : "s") + ": ";
  for (std::size_t i = 0; i < runs.size() && i < 5; ++i) {
    msg += (i ? ", " : "") + runs[i];
  }
  return msg + (runs.size() > 5 ? ", ..." : "");
}

// The causal chain that ends the run: from its last handled message back through the handler
// that sent each message (or, for a message sent from outside actors, through the same actor's
// earlier handler that started that work), to the run's start.
std::optional<std::vector<hop>> critical_path(const trace_data& t, const std::string& run) {
  const slice* end = nullptr;
  for (const slice& s : t.slices) {
    if (s.run == run && s.node.empty() && (!end || s.end() > end->end())) {
      end = &s;
    }
  }
  if (!end) {
    for (const slice& s : t.slices) {
      if (s.run == run && (!end || s.end() > end->end())) {
        end = &s;
      }
    }
  }
  if (!end) {
    return std::nullopt;
  }
  std::vector<hop> chain{{end}};
  for (int guard = 0; guard < 100000; ++guard) {
    hop& cur = chain.back();
    const slice& c = *cur.s;
    const slice* pred = nullptr;
    if (c.from != 0 && !c.outside && c.sent >= 0) {
      pred = slice_at(t, c.from, c.sent);
    }
    if (!pred && !(c.init && c.from == 0)) {
      pred = slice_before(t, c.tid, c.sent >= 0 ? c.sent : c.ts);
      if (pred) {
        cur.via_outside = true;
        cur.outside_before = std::max(0.0, (c.sent >= 0 ? c.sent : c.ts) - pred->end());
      }
    }
    if (!pred || pred->ts >= c.ts || (!pred->run.empty() && pred->run != run)) {
      break;
    }
    chain.push_back({pred});
  }
  std::reverse(chain.begin(), chain.end());
  return chain;
}

json::value path_json(const trace_data& t, const std::vector<hop>& chain, const std::string& run) {
  json::array hops;
  double handling = 0, queued = 0, outside = 0;
  std::vector<std::string> nodes;
  for (const hop& h : chain) {
    const slice& s = *h.s;
    handling += s.dur;
    queued += std::max(0.0, s.queued);
    outside += h.outside_before;
    if (!s.node.empty() && (nodes.empty() || nodes.back() != s.node)) {
      nodes.push_back(s.node);
    }
    json::object o{{"ts_us", s.ts},
                   {"actor", t.actor(s.tid)},
                   {"tid", s.tid},
                   {"message", s.init ? "init" : s.name},
                   {"from", t.actor(s.from)},
                   {"queued_us", s.queued},
                   {"handling_us", s.dur},
                   {"outside_before_us", h.outside_before}};
    if (!s.node.empty()) {
      o["node"] = s.node;
    }
    hops.push_back(std::move(o));
  }
  json::array node_chain;
  for (auto& n : nodes) {
    node_chain.push_back(json::value(n));
  }
  const double total = chain.empty() ? 0 : chain.back().s->end() - chain.front().s->ts;
  return json::object{{"run", run},
                      {"total_us", total},
                      {"handling_us", handling},
                      {"queued_us", queued},
                      {"outside_us", outside},
                      {"nodes", std::move(node_chain)},
                      {"hops", std::move(hops)}};
}

json::value summary_json(const trace_data& t, const trace_options& o,
                         const std::vector<hop>* chain) {
  json::object doc;
  doc["file"] = o.file;
  doc["events"] = t.events;
  std::size_t messages = 0;
  for (const slice& s : t.slices) {
    messages += s.init ? 0 : 1;
  }
  doc["messages"] = messages;
  doc["span_us"] = t.slices.empty() ? 0.0 : t.last - t.first;

  auto rows = busy_actors(t);
  doc["actors"] = rows.size();
  json::array actors;
  std::map<std::string, actor_row> kinds;
  std::map<std::string, std::size_t> kind_count;
  for (const auto& r : rows) {
    const std::string name = t.actor(r.tid);
    auto& k = kinds[kind_of(name)];
    k.messages += r.messages;
    k.inits += r.inits;
    k.busy += r.busy;
    k.max = std::max(k.max, r.max);
    ++kind_count[kind_of(name)];
    if (actors.size() < o.top) {
      const double n = static_cast<double>(r.messages + r.inits);
      actors.push_back(json::object{{"tid", r.tid},
                                    {"actor", name},
                                    {"messages", r.messages},
                                    {"inits", r.inits},
                                    {"busy_us", r.busy},
                                    {"mean_us", n > 0 ? r.busy / n : 0.0},
                                    {"max_us", r.max}});
    }
  }
  doc["busy_actors"] = std::move(actors);
  json::array by_kind;
  for (auto& [kind, k] : kinds) {
    by_kind.push_back(json::object{{"kind", kind},
                                   {"actors", kind_count[kind]},
                                   {"messages", k.messages},
                                   {"inits", k.inits},
                                   {"busy_us", k.busy},
                                   {"max_us", k.max}});
  }
  doc["by_kind"] = std::move(by_kind);

  std::vector<const slice*> waits;
  for (const slice& s : t.slices) {
    if (s.queued >= 0) {
      waits.push_back(&s);
    }
  }
  std::stable_sort(waits.begin(), waits.end(),
                   [](const slice* a, const slice* b) { return a->queued > b->queued; });
  json::array queueing;
  for (std::size_t i = 0; i < waits.size() && i < o.top; ++i) {
    const slice& s = *waits[i];
    queueing.push_back(json::object{{"ts_us", s.ts},
                                    {"actor", t.actor(s.tid)},
                                    {"message", s.init ? "init" : s.name},
                                    {"from", t.actor(s.from)},
                                    {"queued_us", s.queued},
                                    {"mailbox", s.mailbox}});
  }
  doc["longest_queueing"] = std::move(queueing);

  json::array batches;
  std::uint64_t commits = 0, rows_total = 0;
  double commit_busy = 0;
  for (const slice& s : t.slices) {
    if (s.batches == 0 && s.rows == 0) {
      continue;
    }
    commits += s.batches;
    rows_total += s.rows;
    commit_busy += s.dur;
    batches.push_back(json::object{{"ts_us", s.ts},
                                   {"actor", t.actor(s.tid)},
                                   {"message", s.name},
                                   {"duration_us", s.dur},
                                   {"batches", s.batches},
                                   {"rows", s.rows},
                                   {"mailbox", s.mailbox}});
  }
  doc["writer"] = json::object{{"commits", commits},
                               {"rows", rows_total},
                               {"busy_us", commit_busy},
                               {"timeline", std::move(batches)}};
  if (chain) {
    doc["critical_path"] = path_json(t, *chain, o.run);
  }
  return doc;
}

double num_of(const json::value& v) {
  return number(v);
}

void print_summary(std::ostream& out, const trace_data& t, const json::object& doc,
                   const trace_options& o) {
  out << "trace " << o.file << ": " << doc.at("events").as_uint64() << " events, "
      << doc.at("messages").as_uint64() << " handled messages, " << doc.at("actors").as_uint64()
      << " actors, " << format_micros(num_of(doc.at("span_us"))) << " from first to last\n\n";

  out << "busiest actors (time handling messages, init included)\n";
  cell(out, "ACTOR", 40);
  cell(out, "MESSAGES", 8, true);
  cell(out, "INITS", 5, true);
  cell(out, "BUSY", 10, true);
  cell(out, "MEAN", 10, true);
  cell(out, "MAX", 10, true);
  out << '\n';
  for (const auto& v : doc.at("busy_actors").as_array()) {
    const auto& a = v.as_object();
    cell(out, std::string(a.at("actor").as_string()), 40);
    cell(out, std::to_string(a.at("messages").as_uint64()), 8, true);
    cell(out, std::to_string(a.at("inits").as_uint64()), 5, true);
    cell(out, format_micros(num_of(a.at("busy_us"))), 10, true);
    cell(out, format_micros(num_of(a.at("mean_us"))), 10, true);
    cell(out, format_micros(num_of(a.at("max_us"))), 10, true);
    out << '\n';
  }
  out << "by kind:";
  for (const auto& v : doc.at("by_kind").as_array()) {
    const auto& k = v.as_object();
    out << "  " << std::string(k.at("kind").as_string()) << " x" << k.at("actors").as_uint64()
        << ": " << k.at("messages").as_uint64() << " messages, "
        << format_micros(num_of(k.at("busy_us"))) << ";";
  }
  out << "\n\nlongest queueing delays (from send to the start of handling)\n";
  cell(out, "AT (ms)", 10, true);
  cell(out, "ACTOR", 32);
  cell(out, "MESSAGE", 14);
  cell(out, "FROM", 32);
  cell(out, "QUEUED", 10, true);
  cell(out, "MAILBOX", 7, true);
  out << '\n';
  for (const auto& v : doc.at("longest_queueing").as_array()) {
    const auto& q = v.as_object();
    cell(out, ms_text(num_of(q.at("ts_us")) - t.first), 10, true);
    cell(out, std::string(q.at("actor").as_string()), 32);
    cell(out, std::string(q.at("message").as_string()), 14);
    cell(out, std::string(q.at("from").as_string()), 32);
    cell(out, format_micros(num_of(q.at("queued_us"))), 10, true);
    cell(out, std::to_string(q.at("mailbox").as_uint64()), 7, true);
    out << '\n';
  }

  const auto& w = doc.at("writer").as_object();
  const auto& timeline = w.at("timeline").as_array();
  out << "\nwriter batches: " << w.at("commits").as_uint64() << " commits, "
      << w.at("rows").as_uint64() << " rows, " << format_micros(num_of(w.at("busy_us")))
      << " in the handlers that committed\n";
  if (!timeline.empty()) {
    cell(out, "AT (ms)", 10, true);
    cell(out, "MESSAGE", 10);
    cell(out, "DURATION", 10, true);
    cell(out, "COMMITS", 7, true);
    cell(out, "ROWS", 7, true);
    cell(out, "QUEUED AFTER", 12, true);
    out << '\n';
    const std::size_t limit = std::max<std::size_t>(o.top * 2, 1);
    for (std::size_t i = 0; i < timeline.size(); ++i) {
      if (timeline.size() > limit && i == limit / 2) {
        out << "  ... " << timeline.size() - limit << " more ...\n";
        i = timeline.size() - limit / 2;
      }
      const auto& b = timeline[i].as_object();
      cell(out, ms_text(num_of(b.at("ts_us")) - t.first), 10, true);
      cell(out, std::string(b.at("message").as_string()), 10);
      cell(out, format_micros(num_of(b.at("duration_us"))), 10, true);
      cell(out, std::to_string(b.at("batches").as_uint64()), 7, true);
      cell(out, std::to_string(b.at("rows").as_uint64()), 7, true);
      cell(out, std::to_string(b.at("mailbox").as_uint64()), 12, true);
      out << '\n';
    }
  }

  if (const json::value* cp = doc.if_contains("critical_path")) {
    const auto& c = cp->as_object();
    const auto& hops = c.at("hops").as_array();
    out << "\ncritical path of run " << std::string(c.at("run").as_string()) << ": "
        << format_micros(num_of(c.at("total_us"))) << " over " << hops.size() << " steps ("
        << format_micros(num_of(c.at("handling_us"))) << " handling, "
        << format_micros(num_of(c.at("queued_us"))) << " queued, "
        << format_micros(num_of(c.at("outside_us"))) << " outside actors: tasks, timers, I/O)\n";
    out << "node chain:";
    const auto& nodes = c.at("nodes").as_array();
    if (nodes.empty()) {
      out << " (no node actors: every node ran inline in the run actor)";
    }
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      out << (i ? " -> " : " ") << std::string(nodes[i].as_string());
    }
    out << '\n';
    cell(out, "AT (ms)", 10, true);
    cell(out, "ACTOR", 36);
    cell(out, "MESSAGE", 14);
    cell(out, "OUTSIDE BEFORE", 14, true);
    cell(out, "QUEUED", 10, true);
    cell(out, "HANDLING", 10, true);
    out << '\n';
    const double t0 = hops.empty() ? 0 : num_of(hops.front().at("ts_us"));
    for (const auto& v : hops) {
      const auto& h = v.as_object();
      cell(out, ms_text(num_of(h.at("ts_us")) - t0), 10, true);
      cell(out, std::string(h.at("actor").as_string()), 36);
      cell(out, std::string(h.at("message").as_string()), 14);
      const double ob = num_of(h.at("outside_before_us"));
      cell(out, ob > 0 ? format_micros(ob) : "-", 14, true);
      cell(out, format_micros(num_of(h.at("queued_us"))), 10, true);
      cell(out, format_micros(num_of(h.at("handling_us"))), 10, true);
      out << '\n';
    }
  }
}

// ---- sequence ------------------------------------------------------------------------------

void print_sequence(std::ostream& out, const trace_data& t, const std::string& run) {
  std::vector<const slice*> msgs;
  for (const slice& s : t.slices) {
    if (s.run == run || s.from_run == run) {
      msgs.push_back(&s);
    }
  }
  auto sent_at = [](const slice* s) { return s->sent >= 0 ? s->sent : s->ts; };
  std::stable_sort(msgs.begin(), msgs.end(),
                   [&](const slice* a, const slice* b) { return sent_at(a) < sent_at(b); });
  // Participants in order of appearance; messages sent from outside actors come from "outside".
  std::vector<std::uint64_t> order;
  std::unordered_map<std::uint64_t, std::size_t> column;
  auto add = [&](std::uint64_t tid) {
    if (!column.contains(tid)) {
      column[tid] = order.size();
      order.push_back(tid);
    }
  };
  auto source = [](const slice* s) { return s->outside || s->from == 0 ? 0 : s->from; };
  for (const slice* s : msgs) {
    add(s->tid);
  }
  for (const slice* s : msgs) {
    add(source(s));
  }
  const double t0 = msgs.empty() ? 0 : sent_at(msgs.front());
  const std::size_t width = 12;
  const std::size_t left = 11;
  out << "sequence of run " << run << ": " << msgs.size()
      << " messages, times in ms from the first; an arrow goes from the sender's lifeline to the "
         "receiver's\n";
  for (std::size_t i = 0; i < order.size(); ++i) {
    out << "  " << static_cast<char>('A' + i % 26) << (i >= 26 ? std::to_string(i / 26) : "")
        << " = " << t.actor(order[i]) << '\n';
  }
  std::string header(left + order.size() * width, ' ');
  for (std::size_t i = 0; i < order.size(); ++i) {
    header[left + i * width] = static_cast<char>('A' + i % 26);
  }
  out << '\n' << header << '\n';
  for (const slice* s : msgs) {
    std::string line(left + order.size() * width, ' ');
    for (std::size_t i = 0; i < order.size(); ++i) {
      line[left + i * width] = '|';
    }
    const std::string at = ms_text(sent_at(s) - t0);
    line.replace(left - 2 - std::min(at.size(), left - 2), std::min(at.size(), left - 2), at);
    const std::size_t a = left + column[source(s)] * width;
    const std::size_t b = left + column[s->tid] * width;
    if (a == b) {
      line[a] = '@';
    } else {
      const std::size_t lo = std::min(a, b);
      const std::size_t hi = std::max(a, b);
      for (std::size_t p = lo + 1; p < hi; ++p) {
        line[p] = '-';
      }
      if (b > a) {
        line[hi - 1] = '>';
      } else {
        line[lo + 1] = '<';
      }
    }
    while (!line.empty() && line.back() == ' ') {
      line.pop_back();
    }
    out << line << "  " << (s->init ? "spawn + init" : s->name);
    if (!s->node.empty()) {
      out << " [" << s->node << "]";
    }
    out << "  (queued " << format_micros(s->queued) << ", handled " << format_micros(s->dur);
    if (s->outside && s->from != 0) {
      out << ", sent outside " << t.actor(s->from) << "'s handlers";
    }
    out << ")\n";
  }
}

int fail(const std::string& message, bool json_mode) {
  print_errors(one_error("troupe trace: " + message), json_mode);
  return exit_usage;
}

}  // namespace

CLI::App* add_trace_command(CLI::App& app, trace_options& o) {
  CLI::App* trace =
      app.add_subcommand("trace", "Summarise an actor trace written with --trace FILE.");
  trace->require_subcommand(1);
  o.summary = trace->add_subcommand(
      "summary",
      "Per actor busy time and message counts, the longest queueing delays, the writer's "
      "batches and, with --run, the run's critical path.");
  o.summary->add_option("file", o.file, "The trace file (Chrome trace event JSON).")
      ->required()
      ->type_name("FILE");
  o.summary->add_option("--run", o.run, "Also show this run's critical path.")->type_name("RUN");
  o.summary->add_option("--top", o.top, "Rows per table (default 10).")
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000}))
      ->type_name("N");
  o.summary->add_flag("--json", o.json, "Print the summary as one JSON document.");
  o.sequence = trace->add_subcommand("sequence", "A text sequence diagram of one run's messages.");
  o.sequence->add_option("file", o.file, "The trace file (Chrome trace event JSON).")
      ->required()
      ->type_name("FILE");
  o.sequence->add_option("--run", o.run, "The run.")->required()->type_name("RUN");
  return trace;
}

int trace_command(const trace_options& o) {
  std::string error;
  auto t = load(o.file, error);
  if (!t) {
    return fail(error, o.json);
  }
  if (!o.run.empty()) {
    const bool known = std::any_of(t->slices.begin(), t->slices.end(),
                                   [&](const slice& s) { return s.run == o.run; });
    if (!known) {
      return fail(unknown_run(*t, o.run, o.file), o.json);
    }
  }
  if (o.sequence && o.sequence->parsed()) {
    print_sequence(std::cout, *t, o.run);
  } else {
    std::optional<std::vector<hop>> chain;
    if (!o.run.empty()) {
      chain = critical_path(*t, o.run);
    }
    json::value doc = summary_json(*t, o, chain ? &*chain : nullptr);
    if (o.json) {
      std::cout << pretty_json(doc) << '\n';
    } else {
      print_summary(std::cout, *t, doc.as_object(), o);
    }
  }
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "troupe: cannot write to stdout\n";
    return exit_run_failed;
  }
  return exit_ok;
}

}  // namespace troupe::cli
