#include "apps/output.hpp"

#include <boost/json/serialize.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
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

// Boost.JSON writes doubles as `7.4E-2`; people read `0.074`. The shortest round-trip form keeps
// the value exact, and a `.0` keeps an integral double a double for whoever parses it back.
void append_double(std::string& out, double d) {
  if (!std::isfinite(d)) {
    out += "null";  // JSON has no infinities; Boost.JSON would write an out-of-range literal
    return;
  }
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d);
  const std::string_view text(buf, ec == std::errc() ? static_cast<std::size_t>(end - buf) : 0);
  out += text;
  if (text.find_first_of(".eE") == std::string_view::npos) {
    out += ".0";
  }
}

// indent < 0: compact, on one line.
void write(std::string& out, const json::value& v, int indent) {
  const bool pretty = indent >= 0;
  const auto newline = [&](int level) {
    if (pretty) {
      out.push_back('\n');
      out.append(static_cast<std::size_t>(level) * 2, ' ');
    }
  };
  const int inner = pretty ? indent + 1 : -1;
  if (const json::object* o = v.if_object(); o != nullptr && !o->empty()) {
    out.push_back('{');
    bool first = true;
    for (const auto& member : *o) {
      if (!first) {
        out.push_back(',');
      }
      first = false;
      newline(inner);
      out += json::serialize(json::string_view(member.key()));
      out += pretty ? ": " : ":";
      write(out, member.value(), inner);
    }
    newline(indent);
    out.push_back('}');
    return;
  }
  if (const json::array* a = v.if_array(); a != nullptr && !a->empty()) {
    out.push_back('[');
    bool first = true;
    for (const auto& element : *a) {
      if (!first) {
        out.push_back(',');
      }
      first = false;
      newline(inner);
      write(out, element, inner);
    }
    newline(indent);
    out.push_back(']');
    return;
  }
  if (const double* d = v.if_double()) {
    append_double(out, *d);
    return;
  }
  out += json::serialize(v);
}

struct column {
  std::string title;
  bool right_aligned = false;
};

}  // namespace

located_errors locate(const validation_errors& errors, const std::string& file) {
  located_errors out;
  out.reserve(errors.size());
  for (const auto& e : errors) {
    out.push_back({file, e});
  }
  return out;
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

std::string pretty_json(const json::value& v) {
  std::string out;
  write(out, v, 0);
  return out;
}

std::string compact_json(const json::value& v) {
  std::string out;
  write(out, v, -1);
  return out;
}

void print_node_table(std::ostream& out, const run_result& r) {
  const bool any_items = std::any_of(r.nodes.begin(), r.nodes.end(),
                                     [](const node_report& n) { return n.items >= 0; });
  std::vector<column> columns = {{"NODE"}, {"STATUS"}, {"ATTEMPTS", true}};
  if (any_items) {
    columns.push_back({"ITEMS", true});
  }
  columns.push_back({"CACHE"});
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
    // A node that never ran has no duration worth showing; "0.0 ms" would claim it ran.
    row.push_back(n.attempts > 0 ? format_duration(n.duration_ms) : "-");
    row.push_back(n.error.empty() ? "" : one_line(n.error));
    rows.push_back(std::move(row));
  }

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

}  // namespace troupe::cli
