#include "apps/output.hpp"

#include "persistence/store.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <ostream>
#include <string_view>
#include <vector>

namespace troupe::cli {
namespace {

// A node error can be a multi-line shell stderr; the table keeps one line per node.
constexpr std::size_t max_error_chars = 100;

std::string one_line(std::string_view text) {
  std::string out;
  out.reserve(std::min(text.size(), max_error_chars + 3));
  bool space = false;
  for (char c : text) {
    if (c == '\n' || c == '\r' || c == '\t') {
      space = !out.empty();
      continue;
    }
    if (space) {
      out.push_back(' ');
      space = false;
    }
    out.push_back(c);
  }
  if (out.size() > max_error_chars) {
    out.resize(max_error_chars);
    out += "...";
  }
  return out;
}

struct column {
  std::string title;
  bool right_aligned = false;
};

// Fixed columns as wide as their widest cell, two spaces apart, no trailing blanks.
void print_table(std::ostream& out, const std::vector<column>& columns,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths(columns.size());
  for (std::size_t c = 0; c < columns.size(); ++c) {
    widths[c] = columns[c].title.size();
    for (const auto& row : rows) {
      widths[c] = std::max(widths[c], row[c].size());
    }
  }
  const auto print_row = [&](const std::vector<std::string>& cells) {
    std::string line;
    for (std::size_t c = 0; c < cells.size(); ++c) {
      const bool last = c + 1 == cells.size();
      const std::size_t pad = widths[c] - cells[c].size();
      if (columns[c].right_aligned) {
        line.append(pad, ' ');
        line += cells[c];
      } else {
        line += cells[c];
        if (!last) {
          line.append(pad, ' ');
        }
      }
      if (!last) {
        line += "  ";
      }
    }
    while (!line.empty() && line.back() == ' ') {
      line.pop_back();  // the error column is usually empty
    }
    out << line << '\n';
  };
  std::vector<std::string> titles;
  for (const auto& c : columns) {
    titles.push_back(c.title);
  }
  print_row(titles);
  for (const auto& row : rows) {
    print_row(row);
  }
}

std::string duration_between(std::int64_t started_us, std::int64_t finished_us) {
  if (started_us == 0 || finished_us == 0 || finished_us < started_us) {
    return "-";  // not finished (or never started): no duration to claim
  }
  return format_duration(static_cast<double>(finished_us - started_us) / 1000.0);
}

json::value duration_json(std::int64_t started_us, std::int64_t finished_us) {
  if (started_us == 0 || finished_us == 0 || finished_us < started_us) {
    return nullptr;
  }
  return static_cast<double>(finished_us - started_us) / 1000.0;
}

json::value text_or_null(const std::string& text) {
  return text.empty() ? json::value(nullptr) : json::value(text);
}

json::value value_or_null(const json_ptr& v) {
  return v ? *v : json::value(nullptr);
}

json::object run_object(const run_row& r) {
  json::object o;
  o["run_id"] = r.run_id.str();
  o["workflow"] = r.workflow;
  o["version"] = r.version;
  o["status"] = to_string(r.status);
  o["started_at"] = utc_time_json(r.started_at);
  o["finished_at"] = utc_time_json(r.finished_at);
  o["duration_ms"] = duration_json(r.started_at, r.finished_at);
  o["error"] = text_or_null(r.error);
  return o;
}

}  // namespace

located_errors locate(const validation_errors& errors, const std::string& file) {
  located_errors out;
  out.reserve(errors.size());
  for (const auto& e : errors) {
    out.push_back({file, e});
  }
  return out;
}

located_errors one_error(std::string message, std::string pointer, std::string file) {
  return {located_error{std::move(file), validation_error{std::move(pointer), std::move(message)}}};
}

void print_errors(const located_errors& errors, bool json_mode) {
  if (json_mode) {
    std::cout << compact_json(errors_document(errors)) << '\n' << std::flush;
  } else {
    print_errors_text(std::cerr, errors);
  }
}

std::string format_duration(double ms) {
  char buf[32];
  if (ms < 1.0) {
    std::snprintf(buf, sizeof buf, "%.2f ms", ms);  // quick tasks take microseconds
  } else if (ms < 10000.0) {
    std::snprintf(buf, sizeof buf, "%.1f ms", ms);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f s", ms / 1000.0);
  }
  return buf;
}

std::string format_micros(double us) {
  if (us < 0) {
    return "-";
  }
  char buf[32];
  if (us < 100.0) {
    std::snprintf(buf, sizeof buf, "%.1f us", us);
  } else if (us < 1000.0) {
    std::snprintf(buf, sizeof buf, "%.0f us", us);
  } else if (us < 1e6) {
    std::snprintf(buf, sizeof buf, "%.2f ms", us / 1e3);
  } else {
    std::snprintf(buf, sizeof buf, "%.2f s", us / 1e6);
  }
  return buf;
}

std::string pretty_json(const json::value& v) {
  std::string out;
  json_style style;
  style.pretty = true;
  append_json(out, v, style);
  return out;
}

std::string compact_json(const json::value& v) {
  return to_json_text(v);
}

void print_node_table(std::ostream& out, const run_result& r) {
  const bool any_items = std::any_of(r.nodes.begin(), r.nodes.end(),
                                     [](const node_report& n) { return n.items >= 0; });
  std::vector<column> columns = {{"NODE"}, {"STATUS"}, {"ATTEMPTS", true}};
  if (any_items) {
    columns.push_back({"ITEMS", true});
  }
  columns.push_back({"CACHE"});
  const bool any_dynamic = std::any_of(r.nodes.begin(), r.nodes.end(),
                                       [](const node_report& n) { return n.dynamic; });
  if (any_dynamic) {
    columns.push_back({"SPEC"});
    columns.push_back({"CHILD RUN"});
  }
  columns.push_back({"DURATION", true});
  columns.push_back({"ERROR"});

  std::vector<std::vector<std::string>> rows;
  rows.reserve(r.nodes.size());
  for (const auto& n : r.nodes) {
    std::vector<std::string> row = {n.id, std::string(to_string(n.status)),
                                    std::to_string(n.attempts)};
    if (any_items) {
      row.push_back(n.items >= 0 ? std::to_string(n.items) : "-");
    }
    row.push_back(std::string(to_string(n.cache)));
    if (any_dynamic) {
      row.push_back(n.dynamic ? std::string(to_string(n.spec_cache)) : "-");
      row.push_back(n.child_run.empty() ? "-" : n.child_run);
    }
    // A node that never ran has no duration worth showing; "0.0 ms" would claim it ran.
    row.push_back(n.attempts > 0 ? format_duration(n.duration_ms) : "-");
    row.push_back(n.error.empty() ? "" : one_line(n.error));
    rows.push_back(std::move(row));
  }

  print_table(out, columns, rows);
}

void print_run_text(std::ostream& out, const run_result& r) {
  out << "run " << r.run_id << " (" << r.workflow << ") " << to_string(r.status) << " in "
      << format_duration(r.duration_ms) << "\n\n";
  print_node_table(out, r);
  if (r.status == run_status::succeeded) {
    out << "\noutputs:\n" << pretty_json(r.outputs) << '\n';
  }
}

json::value errors_document(const located_errors& errors) {
  json::array list;
  list.reserve(errors.size());
  for (const auto& e : errors) {
    json::object o;
    if (!e.file.empty()) {
      o["file"] = e.file;
    }
    o["pointer"] = e.error.pointer;
    o["message"] = e.error.message;
    list.push_back(std::move(o));
  }
  json::object doc;
  doc["errors"] = std::move(list);
  return doc;
}

void print_errors_text(std::ostream& err, const located_errors& errors) {
  for (const auto& e : errors) {
    err << "error: ";
    if (!e.file.empty()) {
      err << e.file << ": ";
    }
    if (!e.error.pointer.empty()) {
      err << e.error.pointer << ": ";
    }
    err << e.error.message << '\n';
  }
}

std::string display_url(std::string_view url) {
  // The same masking the stores use for describe(): one rule for every URL troupe prints.
  return masked_store_url(url);
}

std::string local_time(std::int64_t epoch_us) {
  if (epoch_us <= 0) {
    return "-";
  }
  const std::time_t seconds = static_cast<std::time_t>(epoch_us / 1000000);
  std::tm tm{};
  if (::localtime_r(&seconds, &tm) == nullptr) {
    return "-";
  }
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return buf;
}

json::value utc_time_json(std::int64_t epoch_us) {
  if (epoch_us <= 0) {
    return nullptr;
  }
  const std::time_t seconds = static_cast<std::time_t>(epoch_us / 1000000);
  std::tm tm{};
  if (::gmtime_r(&seconds, &tm) == nullptr) {
    return nullptr;
  }
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%s.%06lldZ", date, static_cast<long long>(epoch_us % 1000000));
  return json::value(buf);
}

json::value runs_document(const std::vector<run_row>& runs) {
  json::array list;
  list.reserve(runs.size());
  for (const auto& r : runs) {
    list.push_back(run_object(r));
  }
  json::object doc;
  doc["runs"] = std::move(list);
  return doc;
}

json::value run_detail_document(const run_row& run, const std::vector<node_row>& nodes) {
  json::object header = run_object(run);
  header["plan_hash"] = run.plan_hash;
  header["inputs"] = value_or_null(run.inputs);
  header["outputs"] = value_or_null(run.outputs);
  header["parent_run_id"] = text_or_null(run.parent_run_id);
  header["parent_node_id"] = text_or_null(run.parent_node_id);
  header["owner"] = text_or_null(run.owner);
  header["lease_until"] = utc_time_json(run.lease_until);
  header["epoch"] = run.epoch;
  json::array list;
  list.reserve(nodes.size());
  for (const auto& n : nodes) {
    json::object o;
    o["node_id"] = n.node_id;
    o["item"] = n.item >= 0 ? json::value(n.item) : json::value(nullptr);
    o["attempt"] = n.attempt;
    o["status"] = to_string(n.status);
    o["started_at"] = utc_time_json(n.started_at);
    o["finished_at"] = utc_time_json(n.finished_at);
    o["duration_ms"] = duration_json(n.started_at, n.finished_at);
    o["error"] = text_or_null(n.error);
    o["cache"] = to_string(n.cache);
    o["spec_cache"] = to_string(n.spec_cache);
    o["child_run_id"] = text_or_null(n.child_run_id);
    o["input"] = value_or_null(n.input);
    o["output"] = value_or_null(n.output);
    if (!n.worker.empty()) {
      o["worker"] = n.worker;  // cluster: the worker that ran it
    }
    if (n.lost > 0) {
      o["lost"] = n.lost;  // cluster: workers lost under it (it was dispatched again)
    }
    list.push_back(std::move(o));
  }
  json::object doc;
  doc["run"] = std::move(header);
  doc["nodes"] = std::move(list);
  return doc;
}

void print_runs_table(std::ostream& out, const std::vector<run_row>& runs) {
  const std::vector<column> columns = {{"RUN"},     {"WORKFLOW"},       {"VERSION"}, {"STATUS"},
                                       {"STARTED"}, {"DURATION", true}, {"ERROR"}};
  std::vector<std::vector<std::string>> rows;
  rows.reserve(runs.size());
  for (const auto& r : runs) {
    rows.push_back({r.run_id, r.workflow, r.version, std::string(to_string(r.status)),
                    local_time(r.started_at), duration_between(r.started_at, r.finished_at),
                    one_line(r.error)});
  }
  print_table(out, columns, rows);
}

void print_run_detail(std::ostream& out, const run_row& run, const std::vector<node_row>& nodes) {
  out << "run " << run.run_id << " (" << run.workflow << " version " << run.version << ") "
      << to_string(run.status) << '\n';
  if (!run.parent_run_id.empty()) {
    out << "parent:   run " << run.parent_run_id << ", node " << run.parent_node_id << '\n';
  }
  if (!run.owner.empty()) {
    out << "owner:    " << run.owner << " (epoch " << run.epoch << ")";
    if (run.lease_until > 0) {
      out << ", lease until " << local_time(run.lease_until);
    }
    out << '\n';
  }
  out << "started:  " << local_time(run.started_at) << '\n'
      << "finished: " << local_time(run.finished_at) << '\n'
      << "duration: " << duration_between(run.started_at, run.finished_at) << '\n';
  if (!run.error.empty()) {
    out << "error:    " << run.error << '\n';
  }
  out << "\ninputs:\n" << pretty_json(value_or_null(run.inputs)) << '\n';
  if (run.outputs) {
    out << "\noutputs:\n" << pretty_json(*run.outputs) << '\n';
  }
  out << '\n';
  const bool any_items =
      std::any_of(nodes.begin(), nodes.end(), [](const node_row& n) { return n.item >= 0; });
  std::vector<column> columns = {{"NODE"}};
  if (any_items) {
    columns.push_back({"ITEM", true});
  }
  for (column c : std::vector<column>{{"ATTEMPT", true}, {"STATUS"}, {"CACHE"}}) {
    columns.push_back(std::move(c));
  }
  const bool any_child = std::any_of(nodes.begin(), nodes.end(), [](const node_row& n) {
    return !n.child_run_id.empty() || n.spec_cache != cache_status::off;
  });
  if (any_child) {
    columns.push_back({"SPEC"});
    columns.push_back({"CHILD RUN"});
  }
  const bool any_worker = std::any_of(nodes.begin(), nodes.end(), [](const node_row& n) {
    return !n.worker.empty() || n.lost > 0;
  });
  if (any_worker) {
    columns.push_back({"WORKER"});
    columns.push_back({"LOST", true});
  }
  columns.push_back({"DURATION", true});
  columns.push_back({"ERROR"});
  std::vector<std::vector<std::string>> rows;
  rows.reserve(nodes.size());
  for (const auto& n : nodes) {
    std::vector<std::string> row = {n.node_id};
    if (any_items) {
      row.push_back(n.item >= 0 ? std::to_string(n.item) : "-");
    }
    // Attempt 0 is the node as a whole (a for_each aggregate, or a node that never ran).
    row.push_back(n.attempt > 0 ? std::to_string(n.attempt) : "-");
    row.push_back(std::string(to_string(n.status)));
    row.push_back(std::string(to_string(n.cache)));
    if (any_child) {
      row.push_back(std::string(to_string(n.spec_cache)));
      row.push_back(n.child_run_id.empty() ? "-" : n.child_run_id);
    }
    if (any_worker) {
      row.push_back(n.worker.empty() ? "-" : n.worker);
      row.push_back(std::to_string(n.lost));
    }
    row.push_back(duration_between(n.started_at, n.finished_at));
    row.push_back(one_line(n.error));
    rows.push_back(std::move(row));
  }
  print_table(out, columns, rows);
}

}  // namespace troupe::cli
