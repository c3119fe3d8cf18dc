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

// Ownership: a write inserts owner, lease and epoch with a new run and keeps them afterwards
// (claim_run() and renew_leases() move them), except that a final status releases the lease.
constexpr column_spec run_columns[] = {
    {"run_id", "text"},
    {"workflow", "text"},
    {"version", "text"},
    {"plan_hash", "text"},
    {"status", "text"},
    {"inputs", "text"},
    {"outputs", "text"},
    {"error", "text"},
    {"started_at", "bigint"},
    {"finished_at", "bigint"},
    {"parent_run_id", "text"},
    {"parent_node_id", "text"},
    {"owner", "text", ""},
    // A simple CASE rather than `status IN (...)`: SQLite builds an ephemeral index for an IN
    // list of more than two values in every statement execution.
    {"lease_until", "bigint",
     "CASE excluded.status WHEN 'succeeded' THEN 0 WHEN 'failed' THEN 0 WHEN 'cancelled' THEN 0 "
     "WHEN 'timed_out' THEN 0 ELSE runs.lease_until END"},
    {"epoch", "bigint", ""},
};
constexpr column_spec node_columns[] = {
    {"run_id", "text"},         {"node_id", "text"},       {"item", "bigint"},
    {"attempt", "integer"},     {"status", "text"},        {"input", "text"},
    {"output", "text"},         {"error", "text"},         {"cache", "text"},
    {"started_at", "bigint"},   {"finished_at", "bigint"}, {"worker", "text"},
    {"spec_cache", "text"},     {"child_run_id", "text"},  {"started_seq", "bigint"},
    {"finished_seq", "bigint"},  {"lost", "integer"},
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
  static constexpr std::array all = {node_status::pending,   node_status::running,
                                     node_status::succeeded, node_status::failed,
                                     node_status::skipped,   node_status::cancelled,
                                     node_status::timed_out, node_status::interrupted};
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

expected<bool, store_error> check_rows(const write_batch& batch) {
  // This runs over every row of every batch on the committer's core: a plain test per value, the
  // error (status_name()'s) built only for a bad row.
  const auto known = [](auto e) { return to_string(e) != "unknown"; };
  // PostgreSQL text ends at a NUL byte, and the fences look runs up by id: such an id would
  // name another run there, or none.
  const auto bad_run_id = [](std::string_view id) -> expected<bool, store_error> {
    return make_unexpected(store_error{
        "run id '" + std::string(id.substr(0, id.find('\0'))) + "...' holds a NUL byte", false});
  };
  for (const auto& r : batch.runs) {
    if (!known(r.status)) {
      return make_unexpected(status_name(r.status).error());
    }
    if (r.run_id.str().find('\0') != std::string::npos) {
      return bad_run_id(r.run_id);
    }
  }
  for (const auto& n : batch.nodes) {
    if (n.run_id.str().find('\0') != std::string::npos) {
      return bad_run_id(n.run_id);
    }
    if (!valid_node_key(n)) {
      return make_unexpected(
          store_error{"node row " + n.run_id + "/" + n.node_id +
                          ": item must be >= -1 and attempt >= 0 (constraint violated)",
                      false});
    }
    if (!known(n.status)) {
      return make_unexpected(status_name(n.status).error());
    }
    if (!known(n.cache)) {
      return make_unexpected(status_name(n.cache).error());
    }
    if (!known(n.spec_cache)) {
      return make_unexpected(status_name(n.spec_cache).error());
    }
  }
  return true;
}

bool is_final(run_status s) {
  switch (s) {
    case run_status::succeeded:
    case run_status::failed:
    case run_status::cancelled:
    case run_status::timed_out:
      return true;
    case run_status::pending:
    case run_status::running:
      return false;
  }
  return false;
}

void sort_ids(std::vector<std::string>& runs) {
  std::sort(runs.begin(), runs.end());
  runs.erase(std::unique(runs.begin(), runs.end()), runs.end());
}

namespace {

// The length of the valid UTF-8 sequence at the start of `s` (1-4), or 0 when it is not one
// (overlong forms, surrogates and code points past U+10FFFF are invalid, as PostgreSQL holds).
std::size_t utf8_sequence(std::string_view s) {
  const auto b = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(0);
  if (c < 0x80) {
    return 1;
  }
  std::size_t n = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    lo = c == 0xe0 ? 0xa0 : 0x80;
    hi = c == 0xed ? 0x9f : 0xbf;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    lo = c == 0xf0 ? 0x90 : 0x80;
    hi = c == 0xf4 ? 0x8f : 0xbf;
  } else {
    return 0;
  }
  if (s.size() < n || b(1) < lo || b(1) > hi) {
    return 0;
  }
  for (std::size_t i = 2; i < n; ++i) {
    if (b(i) < 0x80 || b(i) > 0xbf) {
      return 0;
    }
  }
  return n;
}

}  // namespace

std::string storable_text(std::string_view text, std::size_t max_bytes) {
  constexpr std::string_view replacement = "\xef\xbf\xbd";  // U+FFFD
  std::string out;
  out.reserve(std::min(text.size(), max_bytes));
  for (std::size_t at = 0; at < text.size();) {
    std::size_t n = utf8_sequence(text.substr(at));
    const bool bad = n == 0 || text[at] == '\0';
    const std::size_t add = bad ? replacement.size() : n;
    if (out.size() + add > max_bytes) {
      break;
    }
    if (bad) {
      out += replacement;
      n = 1;
    } else {
      out.append(text.substr(at, n));
    }
    at += n;
  }
  return out;
}

dead_letter_row storable(const dead_letter_row& row) {
  constexpr std::size_t name_max = 1024;
  dead_letter_row out;
  out.run_id = storable_text(row.run_id, name_max);
  out.table = storable_text(row.table, name_max);
  out.key = storable_text(row.key, name_max);
  out.row = storable_text(row.row);
  out.error = storable_text(row.error);
  out.at = row.at;
  return out;
}

namespace {

// Why `text` cannot be stored as a request key's `what`, or nothing.
std::optional<std::string> unstorable_text(std::string_view text, std::string_view what) {
  for (std::size_t at = 0; at < text.size();) {
    if (text[at] == '\0') {
      return std::string(what) + " holds a NUL byte";
    }
    const std::size_t n = utf8_sequence(text.substr(at));
    if (n == 0) {
      return std::string(what) + " is not valid UTF-8";
    }
    at += n;
  }
  return std::nullopt;
}

expected<bool, store_error> refused_request(std::string message) {
  return make_unexpected(store_error{"request key refused: " + std::move(message), false});
}

}  // namespace

expected<bool, store_error> check_request_key(std::string_view key, std::string_view scope) {
  if (key.empty()) {
    return refused_request("the idempotency key is empty");
  }
  if (key.size() > request_key_max_bytes) {
    return refused_request("the idempotency key is " + std::to_string(key.size()) +
                           " bytes long, more than the " + std::to_string(request_key_max_bytes) +
                           " allowed");
  }
  if (auto why = unstorable_text(key, "the idempotency key")) {
    return refused_request(std::move(*why));
  }
  if (auto why = unstorable_text(scope, "the scope")) {
    return refused_request(std::move(*why));
  }
  return true;
}

expected<bool, store_error> check_request_row(const request_key_row& row) {
  if (auto r = check_request_key(row.key, row.scope); !r) {
    return r;
  }
  if (auto why = unstorable_text(row.request_hash, "the request hash")) {
    return refused_request(std::move(*why));
  }
  if (auto why = unstorable_text(row.run_id, "the run id")) {
    return refused_request(std::move(*why));
  }
  return true;
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
  bool first = true;
  for (std::size_t i = t.key_count; i < t.column_count; ++i) {
    const column_spec& c = t.columns[i];
    if (c.on_update != nullptr && *c.on_update == '\0') {
      continue;  // keeps the stored value
    }
    if (!first) {
      s += ", ";
    }
    first = false;
    s += c.name;
    if (c.on_update != nullptr) {
      s += " = ";
      s += c.on_update;
    } else {
      s += " = excluded.";
      s += c.name;
    }
  }
  return s;
}

}  // namespace troupe::detail
