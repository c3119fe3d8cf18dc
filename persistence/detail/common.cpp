#include "persistence/detail/common.hpp"

#include <boost/json/parse.hpp>

#include <array>

namespace troupe::detail {

namespace {

template <class E, std::size_t N>
std::optional<E> parse_enum(std::string_view s, const std::array<E, N>& all) {
  for (E e : all) {
    if (to_string(e) == s) {
      return e;
    }
  }
  return std::nullopt;
}

template <class E>
expected<std::string_view, store_error> checked_name(E e, std::string_view kind) {
  const std::string_view name = to_string(e);
  if (name == "unknown") {
    return make_unexpected(store_error{"cannot store " + std::string(kind) + " value " +
                                           std::to_string(static_cast<int>(e)) +
                                           ": not a known status",
                                       false});
  }
  return name;
}

constexpr column_spec run_columns[] = {
    {"run_id", "text"},        {"workflow", "text"},      {"version", "text"},
    {"plan_hash", "text"},     {"status", "text"},        {"inputs", "text"},
    {"outputs", "text"},       {"error", "text"},         {"started_at", "bigint"},
    {"finished_at", "bigint"}, {"parent_run_id", "text"}, {"parent_node_id", "text"},
};
constexpr column_spec node_columns[] = {
    {"run_id", "text"},       {"node_id", "text"},       {"item", "bigint"},
    {"attempt", "integer"},   {"status", "text"},        {"input", "text"},
    {"output", "text"},       {"error", "text"},         {"cache", "text"},
    {"started_at", "bigint"}, {"finished_at", "bigint"}, {"worker", "text"},
    {"spec_cache", "text"},   {"child_run_id", "text"},
};
constexpr column_spec workflow_columns[] = {
    {"name", "text"},     {"version", "text"},         {"hash", "text"},
    {"document", "text"}, {"registered_at", "bigint"},
};
constexpr column_spec cache_columns[] = {
    {"key", "text"},   {"workflow", "text"}, {"node_id", "text"},
    {"value", "text"}, {"kind", "text"},     {"created_at", "bigint"},
};

}  // namespace

const table_spec runs_table{"runs", run_columns, std::size(run_columns), 1};
const table_spec nodes_table{"node_executions", node_columns, std::size(node_columns), 4};
const table_spec workflows_table{"workflows", workflow_columns, std::size(workflow_columns), 2};
const table_spec cache_table{"cache_entries", cache_columns, std::size(cache_columns), 1};

std::string schema_too_new_message(long long found) {
  return "database schema version " + std::to_string(found) +
         " is newer than this troupe supports (" + std::to_string(current_schema_version) +
         "); upgrade troupe";
}

std::optional<run_status> parse_run_status(std::string_view s) {
  static constexpr std::array all = {run_status::pending,   run_status::running,
                                     run_status::succeeded, run_status::failed,
                                     run_status::cancelled, run_status::timed_out};
  return parse_enum(s, all);
}

std::optional<node_status> parse_node_status(std::string_view s) {
  static constexpr std::array all = {
      node_status::pending, node_status::running,   node_status::succeeded, node_status::failed,
      node_status::skipped, node_status::cancelled, node_status::timed_out,
      node_status::interrupted};
  return parse_enum(s, all);
}

std::optional<cache_status> parse_cache_status(std::string_view s) {
  static constexpr std::array all = {cache_status::off, cache_status::hit, cache_status::miss};
  return parse_enum(s, all);
}

expected<std::string_view, store_error> status_name(run_status s) {
  return checked_name(s, "run status");
}
expected<std::string_view, store_error> status_name(node_status s) {
  return checked_name(s, "node status");
}
expected<std::string_view, store_error> status_name(cache_status s) {
  return checked_name(s, "cache status");
}

expected<json_ptr, store_error> json_from_text(std::string_view text, std::string_view what) {
  json::parse_options opts;
  opts.max_depth = 4096;
  json::error_code ec;
  json::value v = json::parse(text, ec, json::storage_ptr(), opts);
  if (ec) {
    return make_unexpected(
        store_error{"stored " + std::string(what) + " is not valid JSON: " + ec.message(), false});
  }
  return make_json(std::move(v));
}

std::string mask_url(std::string_view url) {
  std::string out(url);
  // userinfo: scheme://user:password@host
  const auto scheme_end = out.find("://");
  if (scheme_end != std::string::npos) {
    const auto start = scheme_end + 3;
    const auto at = out.find('@', start);
    const auto slash = out.find('/', start);
    if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
      const auto colon = out.find(':', start);
      if (colon != std::string::npos && colon < at) {
        out.replace(colon + 1, at - colon - 1, "***");
      }
    }
  }
  // query parameter: ...?password=secret&...
  for (std::size_t pos = out.find("password="); pos != std::string::npos;
       pos = out.find("password=", pos + 1)) {
    if (pos > 0 && out[pos - 1] != '?' && out[pos - 1] != '&' && out[pos - 1] != ' ') {
      continue;
    }
    const auto value = pos + 9;
    auto end = out.find_first_of("& ", value);
    if (end == std::string::npos) {
      end = out.size();
    }
    out.replace(value, end - value, "***");
  }
  return out;
}

bool valid_node_key(const node_row& r) {
  return r.item >= -1 && r.attempt >= 0;
}

std::string column_list(const table_spec& t) {
  std::string s;
  for (std::size_t i = 0; i < t.column_count; ++i) {
    if (i > 0) {
      s += ", ";
    }
    s += t.columns[i].name;
  }
  return s;
}

std::string on_conflict_clause(const table_spec& t) {
  std::string s = "ON CONFLICT (";
  for (std::size_t i = 0; i < t.key_count; ++i) {
    if (i > 0) {
      s += ", ";
    }
    s += t.columns[i].name;
  }
  s += ") DO UPDATE SET ";
  for (std::size_t i = t.key_count; i < t.column_count; ++i) {
    if (i > t.key_count) {
      s += ", ";
    }
    s += t.columns[i].name;
    s += " = excluded.";
    s += t.columns[i].name;
  }
  return s;
}

}  // namespace troupe::detail
