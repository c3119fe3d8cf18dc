// The PostgreSQL store (raw libpq). One connection per store, guarded by a mutex.
//
// A batch is ONE round trip and ONE statement: a prepared statement whose four data-modifying
// CTEs each upsert one table from parallel arrays,
//   WITH r AS (INSERT INTO runs (...) SELECT * FROM unnest($1::text[], ...) ON CONFLICT ...),
//        n AS (...), w AS (...), c AS (...) SELECT 1
// A single statement is its own transaction, so the batch is atomic without BEGIN/COMMIT. (The
// async writer asks for slices, set_write_yield(): then the batch is several such statements of
// at most pg_slice_rows rows between BEGIN and COMMIT, so that the server never works on one
// for long; one round trip each.) The
// statement text never changes with the batch size (42 parameters whatever the row count), so it
// is parsed and planned once per connection, where multi-row VALUES would send and parse a new
// statement of up to thousands of placeholders for every batch; and unlike pipeline mode it needs
// no per-table statement and no BEGIN/COMMIT messages. Arrays travel as text array literals.
//
// A batch with rows that carry an epoch uses a second statement, the same with the fence
// (write_sql()): the runs upsert refuses a run row stored under another epoch, a CTE locks and
// reads the other runs the batch has rows of (two more arrays: their (run, epoch) pairs), and
// the node upsert skips every fenced run. Still one statement, one round trip; a batch without
// epochs pays nothing for it.
//
// Connection failures are transient: the connection is dropped and the next call reconnects
// (and prepares its statements again). Upserts are idempotent, so the writer may simply retry.

#include <libpq-fe.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <mutex>
#include <stdexcept>

#include "persistence/detail/common.hpp"

namespace troupe::detail {

namespace {

struct conn_deleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using conn_ptr = std::unique_ptr<PGconn, conn_deleter>;

struct result_deleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using result_ptr = std::unique_ptr<PGresult, result_deleter>;

// Rows per slice when the writer asks for slices: the server spends about five times SQLite's
// time on a row, so half of write_slice_rows keeps each statement near ~200 µs of its work.
// Measured (W3 async at 4,000 runs/s, 2 cores shared with the server): p99 2.0-2.2x memory
// mode's with 64-row slices, 1.6x with 32, 1.6-1.7x with 16, whose extra round trips cut the
// async writer to 52,000 rows/s, too close to the 44,000 that rate needs.
constexpr std::size_t pg_slice_rows = write_slice_rows / 2;

// Serializes concurrent migrations of one database (any schema): every opener takes this
// transaction-scoped advisory lock before looking at troupe_schema.
constexpr const char* migration_lock = "SELECT pg_advisory_xact_lock(7311365240519455077)";

constexpr const char* schema_v1[] = {
    R"(CREATE TABLE runs (
  run_id text COLLATE "C" NOT NULL PRIMARY KEY,
  workflow text COLLATE "C" NOT NULL,
  version text NOT NULL,
  plan_hash text NOT NULL,
  status text NOT NULL,
  inputs text,
  outputs text,
  error text NOT NULL,
  started_at bigint NOT NULL,
  finished_at bigint NOT NULL,
  parent_run_id text NOT NULL,
  parent_node_id text NOT NULL))",
    "CREATE INDEX runs_started ON runs (started_at, run_id)",
    "CREATE INDEX runs_unfinished ON runs (started_at, run_id) "
    "WHERE status IN ('pending', 'running')",
    // The primary key starts with run_id: its index serves node_rows(run_id).
    R"(CREATE TABLE node_executions (
  run_id text COLLATE "C" NOT NULL,
  node_id text COLLATE "C" NOT NULL,
  item bigint NOT NULL CHECK (item >= -1),
  attempt integer NOT NULL CHECK (attempt >= 0),
  status text NOT NULL,
  input text,
  output text,
  error text NOT NULL,
  cache text NOT NULL,
  started_at bigint NOT NULL,
  finished_at bigint NOT NULL,
  worker text NOT NULL,
  PRIMARY KEY (run_id, node_id, item, attempt)))",
    R"(CREATE TABLE workflows (
  name text COLLATE "C" NOT NULL,
  version text COLLATE "C" NOT NULL,
  hash text NOT NULL,
  document text NOT NULL,
  registered_at bigint NOT NULL,
  PRIMARY KEY (name, version)))",
    R"(CREATE TABLE cache_entries (
  key text COLLATE "C" NOT NULL PRIMARY KEY,
  workflow text COLLATE "C" NOT NULL,
  node_id text NOT NULL,
  value text,
  kind text NOT NULL,
  created_at bigint NOT NULL))",
    "CREATE INDEX cache_entries_workflow ON cache_entries (workflow)",
};

// Version 2: what `dynamic` and `workflow` node executions record, and a run's children by parent.
// The defaults keep version 1 rows valid; with a constant default, ADD COLUMN rewrites no table
// (PostgreSQL 11 and later).
constexpr const char* schema_v2[] = {
    "ALTER TABLE node_executions ADD COLUMN spec_cache text NOT NULL DEFAULT 'off'",
    "ALTER TABLE node_executions ADD COLUMN child_run_id text NOT NULL DEFAULT ''",
    // Partial: top-level runs (parent_run_id '') are most runs and never searched by parent, so
    // writing them costs no index entry. started_at, run_id serve the ORDER BY of list_runs.
    "CREATE INDEX runs_parent ON runs (parent_run_id, started_at, run_id) "
    "WHERE parent_run_id <> ''",
};

// Version 3: run ownership (DESIGN.md, "Ownership, leases and fencing") and dead letters. The
// defaults make every older run unowned, without a lease, at epoch 0: claimable, and fenced
// against any write that carries an epoch until claimed. Constant defaults: no table rewrite.
constexpr const char* schema_v3[] = {
    "ALTER TABLE runs ADD COLUMN owner text NOT NULL DEFAULT ''",
    "ALTER TABLE runs ADD COLUMN lease_until bigint NOT NULL DEFAULT 0",
    "ALTER TABLE runs ADD COLUMN epoch bigint NOT NULL DEFAULT 0",
    R"(CREATE TABLE dead_letters (
  id bigserial PRIMARY KEY,
  run_id text NOT NULL,
  tbl text NOT NULL,
  key text NOT NULL,
  "row" text NOT NULL,
  error text NOT NULL,
  at bigint NOT NULL))",
};

// Version 4, for the HTTP service (issue 15): the run's event sequence numbers of a node
// execution's events (0 for older rows: none recorded), and the requests the service has seen
// under an Idempotency-Key. Constant defaults: no table rewrite.
constexpr const char* schema_v4[] = {
    "ALTER TABLE node_executions ADD COLUMN started_seq bigint NOT NULL DEFAULT 0",
    "ALTER TABLE node_executions ADD COLUMN finished_seq bigint NOT NULL DEFAULT 0",
    R"(CREATE TABLE request_keys (
  key text COLLATE "C" NOT NULL,
  scope text COLLATE "C" NOT NULL,
  request_hash text NOT NULL,
  run_id text NOT NULL,
  created_at bigint NOT NULL,
  PRIMARY KEY (key, scope)))",
    // forget_requests() deletes by age.
    "CREATE INDEX request_keys_created ON request_keys (created_at)",
};

// Version 5, for the node cluster (issue 16): how many times an attempt's worker was lost and the
// attempt was dispatched again. Constant default: no table rewrite.
constexpr const char* schema_v5[] = {
    "ALTER TABLE node_executions ADD COLUMN lost integer NOT NULL DEFAULT 0",
};

constexpr migration migrations[] = {{1, schema_v1, std::size(schema_v1)},
                                    {2, schema_v2, std::size(schema_v2)},
                                    {3, schema_v3, std::size(schema_v3)},
                                    {4, schema_v4, std::size(schema_v4)},
                                    {5, schema_v5, std::size(schema_v5)}};
static_assert(std::size(migrations) == current_schema_version);

// SQLSTATE classes worth a retry: connection exceptions, serialization failures and deadlocks,
// insufficient resources (disk full, too many connections), operator intervention (shutdown,
// cannot connect now, statement canceled), system errors (I/O), lock not available.
bool transient_sqlstate(std::string_view s) {
  if (s.size() != 5) {
    return true;  // no SQLSTATE: a client-side (connection) failure
  }
  const std::string_view cls = s.substr(0, 2);
  return cls == "08" || cls == "40" || cls == "53" || cls == "57" || cls == "58" || s == "55P03";
}

std::string trimmed(const char* msg) {
  std::string s = msg != nullptr ? msg : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) {
    s.pop_back();
  }
  return s;
}

store_error pg_error(PGconn* c, const PGresult* r, std::string_view doing) {
  std::string msg = "postgres: " + std::string(doing) + ": ";
  if (c == nullptr || PQstatus(c) != CONNECTION_OK || r == nullptr) {
    msg += trimmed(c != nullptr ? PQerrorMessage(c) : "no connection");
    return store_error{std::move(msg), true};
  }
  const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  msg += trimmed(PQresultErrorMessage(r));
  const std::string_view sqlstate = state != nullptr ? state : "";
  if (!sqlstate.empty()) {
    msg += " (SQLSTATE " + std::string(sqlstate) + ")";
  }
  return store_error{std::move(msg), transient_sqlstate(sqlstate)};
}

// Appends values to a PostgreSQL array literal: {"a","b",NULL} or {1,2}.
class array_literal {
 public:
  array_literal() { s_ = "{"; }
  void text(std::string_view v) {
    sep();
    s_ += '"';
    // Whole runs between the characters to escape: the encoding runs for every value of every
    // batch on the committer's core.
    for (std::size_t at = 0;;) {
      const std::size_t special = v.find_first_of("\"\\", at);
      if (special == std::string_view::npos) {
        s_.append(v.substr(at));
        break;
      }
      s_.append(v.substr(at, special - at));
      s_ += '\\';
      s_ += v[special];
      at = special + 1;
    }
    s_ += '"';
  }
  void null() {
    sep();
    s_ += "NULL";
  }
  void integer(std::int64_t v) {
    sep();
    char buf[24];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    s_.append(buf, end);
  }
  // `scratch` holds the JSON text before it is escaped; reused, so no allocation per value.
  void json(const json_ptr& v, std::string& scratch) {
    if (v) {
      scratch.clear();
      append_json(scratch, *v);
      text(scratch);
    } else {
      null();
    }
  }
  std::string finish() && {
    s_ += '}';
    return std::move(s_);
  }

 private:
  void sep() {
    if (s_.size() > 1) {
      s_ += ',';
    }
  }
  std::string s_;
};

// `filter`: only the rows of runs not in the CTE of that name (see write_sql()).
std::string unnest_upsert(const table_spec& t, int& param, const char* filter = nullptr) {
  std::string sql = "INSERT INTO ";
  sql += t.name;
  sql += " (" + column_list(t) + ") SELECT * FROM unnest(";
  for (std::size_t i = 0; i < t.column_count; ++i) {
    if (i > 0) {
      sql += ", ";
    }
    sql += "$" + std::to_string(param++) + "::" + t.columns[i].pg_array_type + "[]";
  }
  sql += ") ";
  if (filter != nullptr) {
    sql += "AS u (" + column_list(t) + ") WHERE u.run_id NOT IN (SELECT run_id FROM ";
    sql += filter;
    sql += ") ";
  }
  sql += on_conflict_clause(t);
  return sql;
}

// The first parameter of each table's arrays in the write statement (0-based), in the order
// write_sql() numbers them, then the fence's two arrays.
constexpr int run_params = 0;
constexpr int run_epoch_param = run_params + 14;  // runs.epoch's array
constexpr int node_params = run_params + 15;
constexpr int workflow_params = node_params + 17;
constexpr int cache_params = workflow_params + 5;
constexpr int write_param_count = cache_params + 6;
constexpr int fence_params = write_param_count;  // run ids (text[]), epochs (bigint[])
constexpr int fenced_write_param_count = fence_params + 2;

// The batch statement; `fenced` adds the fence (write() uses it when a row carries an epoch):
//   WITH l AS MATERIALIZED (SELECT run_id, epoch FROM runs WHERE run_id = ANY($ids)
//                           ORDER BY run_id FOR NO KEY UPDATE),
//        f AS MATERIALIZED (the runs of l stored with another epoch than one of the pairs'),
//        r AS (INSERT INTO runs ... WHERE u.run_id NOT IN (SELECT run_id FROM f)
//              ON CONFLICT ... DO UPDATE SET ... WHERE runs.epoch = excluded.epoch
//              OR excluded.epoch = 0 RETURNING run_id),
//        g AS MATERIALIZED (f, and the runs whose row (epoch > 0) r did not write),
//        n AS (INSERT INTO node_executions ... WHERE u.run_id NOT IN (SELECT run_id FROM g) ...),
//        w AS (...), c AS (...)
//   SELECT run_id FROM g
// Two ways to fence a run, both taking its row lock before the run's rows are written, so that
// a claim (an UPDATE of the row) waits for this transaction, and both deciding on the newest
// version of the row: a claim that committed after the statement's snapshot is still seen.
//  - A run whose row is in the slice with the run's one epoch (the common case) is fenced by
//    the upsert itself: ON CONFLICT locks the stored row and checks its epoch (the WHERE), and
//    a refused row is missing from RETURNING. No lookup, no lock beyond the upsert's own.
//  - Every other run with an epoch in the slice (node rows without their run's row, several
//    epochs) is among the fence pairs ($ids, $epochs; encode() decides): l locks and reads it
//    (a locking read returns the newest version it waited for, READ COMMITTED), f keeps those
//    stored with another epoch. FOR NO KEY UPDATE rather than FOR SHARE: two writers of one
//    run (an old owner and the new) queue on the lock instead of both taking it and
//    deadlocking when each upserts the row; ORDER BY takes the locks in one order.
// n reads g, so r has run (and taken its locks) before any node row is written.
std::string write_sql(bool fenced) {
  // Parameters are numbered in call order, so the calls are sequenced one statement each. The
  // checks catch a column added to a table_spec but not to the offsets above (and so to
  // encode()): the open fails instead of every write.
  int param = 1;
  auto table = [&](const table_spec& t, int first, const char* filter) {
    if (param != first + 1) {
      throw std::logic_error(std::string("write statement: parameters of ") + t.name +
                             " start at $" + std::to_string(param) + ", encode() expects $" +
                             std::to_string(first + 1));
    }
    return unnest_upsert(t, param, filter);
  };
  const auto arg = [](int p, const char* type) {
    return "$" + std::to_string(p + 1) + "::" + type + "[]";
  };
  const std::string ids = arg(fence_params, "text");
  const std::string epochs = arg(fence_params + 1, "bigint");
  std::string sql = "WITH ";
  if (fenced) {
    sql += "l AS MATERIALIZED (SELECT run_id, epoch FROM runs WHERE run_id = ANY(" + ids +
           ") ORDER BY run_id FOR NO KEY UPDATE), f AS MATERIALIZED (SELECT DISTINCT l.run_id "
           "FROM l JOIN unnest(" +
           ids + ", " + epochs +
           ") AS p (run_id, epoch) ON p.run_id = l.run_id WHERE l.epoch <> p.epoch), ";
  }
  sql += "r AS (";
  sql += table(runs_table, run_params, fenced ? "f" : nullptr);
  if (fenced) {
    sql +=
        " WHERE runs.epoch = excluded.epoch OR excluded.epoch = 0 RETURNING run_id), g AS "
        "MATERIALIZED (SELECT run_id FROM f UNION SELECT x.run_id FROM unnest(" +
        arg(run_params, "text") + ", " + arg(run_epoch_param, "bigint") +
        ") AS x (run_id, epoch) WHERE x.epoch > 0 AND x.run_id NOT IN (SELECT run_id FROM "
        "r)";
  }
  sql += "), n AS (";
  sql += table(nodes_table, node_params, fenced ? "g" : nullptr);
  sql += "), w AS (";
  sql += table(workflows_table, workflow_params, nullptr);
  sql += "), c AS (";
  sql += table(cache_table, cache_params, nullptr);
  sql += fenced ? ") SELECT run_id FROM g" : ") SELECT 1";
  if (param != write_param_count + 1) {
    throw std::logic_error("write statement: " + std::to_string(param - 1) +
                           " parameters, encode() fills " + std::to_string(write_param_count));
  }
  return sql;
}

struct statement {
  const char* name;
  std::string sql;
};

const std::string run_cols = column_list(runs_table);
const std::string node_cols = column_list(nodes_table);
const std::string workflow_cols = column_list(workflows_table);
const std::string cache_cols = column_list(cache_table);

enum statement_id : std::size_t {
  s_write,
  s_write_fenced,
  s_claim,
  s_run_owner,
  s_renew,
  s_add_dead_letters,
  s_list_dead_letters,
  s_list_runs,
  s_list_runs_before,
  s_list_child_runs,
  s_list_child_runs_before,
  s_get_run,
  s_node_rows,
  s_unfinished,
  s_get_workflow,
  s_get_cache,
  s_list_cache,
  s_clear_cache,
  s_remember_request,
  s_find_request,
  s_forget_requests,
  s_count
};

// list_runs' filters: a disabled one (a NULL parameter, top level false) is `true`. CASE rather
// than "$1 IS NULL OR status = $1": a generic plan estimates each such OR to keep about 1% of the
// rows, so that on a table without statistics yet it expects a page to hold a row or two and
// prefers a bitmap scan and a sort of every row before the cursor to the ordered index walk that
// LIMIT stops early; a CASE is estimated at one half.
const std::string list_runs_filters =
    "CASE WHEN $1::text IS NULL THEN true ELSE status = $1::text END AND "
    "CASE WHEN $2::text IS NULL THEN true ELSE workflow = $2::text END ";

std::string list_runs_sql(bool before) {
  return "SELECT " + run_cols + " FROM runs WHERE " + list_runs_filters +
         "AND CASE WHEN $4::boolean THEN COALESCE(parent_run_id, '') = '' ELSE true END " +
         (before ? "AND (started_at, run_id) < ($5::bigint, $6::text) " : "") +
         "ORDER BY started_at DESC, run_id DESC LIMIT $3::bigint";
}

std::string list_child_runs_sql(bool before) {
  return "SELECT " + run_cols +
         " FROM runs WHERE parent_run_id = $4::text AND parent_run_id <> '' AND " +
         list_runs_filters + (before ? "AND (started_at, run_id) < ($5::bigint, $6::text) " : "") +
         "ORDER BY started_at DESC, run_id DESC LIMIT $3::bigint";
}

const std::array<statement, s_count>& statements() {
  static const std::array<statement, s_count> all = {{
      {"troupe_write", write_sql(false)},
      {"troupe_write_fenced", write_sql(true)},
      // Refused when the WHERE fails, also on the newest version of a row it waited for (a
      // write's fence, another claim): READ COMMITTED rechecks it there.
      {"troupe_claim",
       "UPDATE runs SET owner = $2::text, epoch = epoch + 1, lease_until = $4::bigint WHERE "
       "run_id = $1::text AND status <> 'succeeded' AND lease_until <= $3::bigint "
       "RETURNING owner, lease_until, epoch, status"},
      {"troupe_run_owner",
       "SELECT owner, lease_until, epoch, status FROM runs WHERE run_id = $1::text"},
      // l locks the runs (as the write's fence does) and reads their newest versions, so that
      // a claim committed meanwhile is reported lost rather than missed; u renews what l says
      // the owner still holds.
      {"troupe_renew",
       "WITH l AS MATERIALIZED (SELECT run_id, owner, epoch, status FROM runs WHERE run_id = "
       "ANY($2::text[]) ORDER BY run_id FOR NO KEY UPDATE), p AS (SELECT * FROM "
       "unnest($2::text[], $3::bigint[]) AS p (run_id, epoch)), u AS (UPDATE runs SET "
       "lease_until = $4::bigint FROM l JOIN p ON p.run_id = l.run_id WHERE runs.run_id = "
       "l.run_id AND l.owner = $1::text AND l.epoch = p.epoch AND l.status IN ('pending', "
       "'running')) SELECT DISTINCT l.run_id FROM l JOIN p ON p.run_id = l.run_id WHERE "
       "l.owner <> $1::text OR l.epoch <> p.epoch"},
      // In the arrays' order, so that ids (newest first) follow it.
      {"troupe_add_dead_letters",
       "INSERT INTO dead_letters (run_id, tbl, key, \"row\", error, at) SELECT run_id, tbl, "
       "key, \"row\", error, at FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
       "$5::text[], $6::bigint[]) WITH ORDINALITY AS d (run_id, tbl, key, \"row\", error, at, i) "
       "ORDER BY i"},
      {"troupe_list_dead_letters",
       "SELECT run_id, tbl, key, \"row\", error, at FROM dead_letters ORDER BY id DESC "
       "LIMIT $1::bigint"},
      // list_runs' four statements: $1 status, $2 workflow (NULL: any), $3 limit (NULL: none),
      // $4 top level only (boolean) or the parent run, $5 and $6 the cursor
      // (before_started_at, before_run_id). Each walks an index on (…, started_at, run_id)
      // backwards, which gives the order; the `_before` ones start the walk at the cursor (the
      // row comparison is an index condition). A single statement with "$6 = '' OR (…) < (…)"
      // would not: its generic plan only filters by the cursor, so that a page reads every row
      // before it. status, workflow and top level filter the rows the walk meets.
      {"troupe_list_runs", list_runs_sql(false)},
      {"troupe_list_runs_before", list_runs_sql(true)},
      // Statements of their own rather than "$4 IS NULL OR ...", which a generic plan cannot
      // serve from an index; the literal `<> ''` term lets the planner use the partial index
      // runs_parent.
      {"troupe_list_child_runs", list_child_runs_sql(false)},
      {"troupe_list_child_runs_before", list_child_runs_sql(true)},
      {"troupe_get_run", "SELECT " + run_cols + " FROM runs WHERE run_id = $1::text"},
      {"troupe_node_rows", "SELECT " + node_cols +
                               " FROM node_executions WHERE run_id = $1::text "
                               "ORDER BY started_at, node_id, item, attempt"},
      {"troupe_unfinished",
       "SELECT " + run_cols +
           " FROM runs WHERE status IN ('pending', 'running') ORDER BY started_at, run_id"},
      {"troupe_get_workflow",
       "SELECT " + workflow_cols + " FROM workflows WHERE name = $1::text AND version = $2::text"},
      {"troupe_get_cache", "SELECT " + cache_cols + " FROM cache_entries WHERE key = $1::text"},
      {"troupe_list_cache", "SELECT " + cache_cols +
                                " FROM cache_entries WHERE ($1::text IS NULL OR workflow = "
                                "$1::text) ORDER BY created_at, key"},
      {"troupe_clear_cache",
       "DELETE FROM cache_entries WHERE ($1::text IS NULL OR workflow = $1::text)"},
      // Inserts, or replaces an expired entry. ON CONFLICT waits for a concurrent insert of
      // the key to commit and decides on the newest version of the entry: an entry not expired
      // is left as it is, and the statement returns no row.
      {"troupe_remember_request",
       "INSERT INTO request_keys (key, scope, request_hash, run_id, created_at) VALUES "
       "($1::text, $2::text, $3::text, $4::text, $5::bigint) ON CONFLICT (key, scope) DO "
       "UPDATE SET request_hash = excluded.request_hash, run_id = excluded.run_id, created_at "
       "= excluded.created_at WHERE request_keys.created_at < $6::bigint "
       "RETURNING key, scope, request_hash, run_id, created_at"},
      {"troupe_find_request",
       "SELECT key, scope, request_hash, run_id, created_at FROM request_keys WHERE key = "
       "$1::text AND scope = $2::text"},
      {"troupe_forget_requests", "DELETE FROM request_keys WHERE created_at < $1::bigint"},
  }};
  return all;
}

std::int64_t int_value(const PGresult* r, int row, int col) {
  const char* p = PQgetvalue(r, row, col);
  std::int64_t v = 0;
  std::from_chars(p, p + PQgetlength(r, row, col), v);
  return v;
}

std::string_view text_value(const PGresult* r, int row, int col) {
  return {PQgetvalue(r, row, col), static_cast<std::size_t>(PQgetlength(r, row, col))};
}

expected<json_ptr, store_error> json_value(const PGresult* r, int row, int col,
                                           std::string_view what) {
  if (PQgetisnull(r, row, col) != 0) {
    return json_ptr();
  }
  return json_from_text(text_value(r, row, col), what);
}

expected<run_row, store_error> read_run(const PGresult* res, int i) {
  run_row r;
  r.run_id = text_value(res, i, 0);
  r.workflow = text_value(res, i, 1);
  r.version = text_value(res, i, 2);
  r.plan_hash = text_value(res, i, 3);
  auto status = parse_run_status(text_value(res, i, 4));
  if (!status) {
    return make_unexpected(store_error{
        "run " + r.run_id + ": unknown status '" + std::string(text_value(res, i, 4)) + "'",
        false});
  }
  r.status = *status;
  auto inputs = json_value(res, i, 5, "inputs of run " + r.run_id);
  if (!inputs) {
    return make_unexpected(inputs.error());
  }
  r.inputs = std::move(*inputs);
  auto outputs = json_value(res, i, 6, "outputs of run " + r.run_id);
  if (!outputs) {
    return make_unexpected(outputs.error());
  }
  r.outputs = std::move(*outputs);
  r.error = text_value(res, i, 7);
  r.started_at = int_value(res, i, 8);
  r.finished_at = int_value(res, i, 9);
  r.parent_run_id = text_value(res, i, 10);
  r.parent_node_id = text_value(res, i, 11);
  r.owner = text_value(res, i, 12);
  r.lease_until = int_value(res, i, 13);
  r.epoch = int_value(res, i, 14);
  return r;
}

expected<node_row, store_error> read_node(const PGresult* res, int i) {
  node_row r;
  r.run_id = text_value(res, i, 0);
  r.node_id = text_value(res, i, 1);
  r.item = int_value(res, i, 2);
  r.attempt = static_cast<int>(int_value(res, i, 3));
  const std::string where = "node " + r.run_id + "/" + r.node_id;
  auto status = parse_node_status(text_value(res, i, 4));
  if (!status) {
    return make_unexpected(store_error{
        where + ": unknown status '" + std::string(text_value(res, i, 4)) + "'", false});
  }
  r.status = *status;
  auto input = json_value(res, i, 5, "input of " + where);
  if (!input) {
    return make_unexpected(input.error());
  }
  r.input = std::move(*input);
  auto output = json_value(res, i, 6, "output of " + where);
  if (!output) {
    return make_unexpected(output.error());
  }
  r.output = std::move(*output);
  r.error = text_value(res, i, 7);
  auto cache = parse_cache_status(text_value(res, i, 8));
  if (!cache) {
    return make_unexpected(store_error{
        where + ": unknown cache status '" + std::string(text_value(res, i, 8)) + "'", false});
  }
  r.cache = *cache;
  r.started_at = int_value(res, i, 9);
  r.finished_at = int_value(res, i, 10);
  r.worker = text_value(res, i, 11);
  auto spec_cache = parse_cache_status(text_value(res, i, 12));
  if (!spec_cache) {
    return make_unexpected(store_error{
        where + ": unknown spec cache status '" + std::string(text_value(res, i, 12)) + "'",
        false});
  }
  r.spec_cache = *spec_cache;
  r.child_run_id = text_value(res, i, 13);
  r.started_seq = int_value(res, i, 14);
  r.finished_seq = int_value(res, i, 15);
  r.lost = static_cast<std::int32_t>(int_value(res, i, 16));
  return r;
}

expected<workflow_row, store_error> read_workflow(const PGresult* res, int i) {
  workflow_row r;
  r.name = text_value(res, i, 0);
  r.version = text_value(res, i, 1);
  r.hash = text_value(res, i, 2);
  r.document = text_value(res, i, 3);
  r.registered_at = int_value(res, i, 4);
  return r;
}

expected<cache_row, store_error> read_cache(const PGresult* res, int i) {
  cache_row r;
  r.key = text_value(res, i, 0);
  r.workflow = text_value(res, i, 1);
  r.node_id = text_value(res, i, 2);
  auto value = json_value(res, i, 3, "value of cache entry " + r.key);
  if (!value) {
    return make_unexpected(value.error());
  }
  r.value = std::move(*value);
  r.kind = text_value(res, i, 4);
  r.created_at = int_value(res, i, 5);
  return r;
}

expected<request_key_row, store_error> read_request(const PGresult* res, int i) {
  request_key_row r;
  r.key = text_value(res, i, 0);
  r.scope = text_value(res, i, 1);
  r.request_hash = text_value(res, i, 2);
  r.run_id = text_value(res, i, 3);
  r.created_at = int_value(res, i, 4);
  return r;
}

expected<dead_letter_row, store_error> read_dead_letter(const PGresult* res, int i) {
  dead_letter_row r;
  r.run_id = text_value(res, i, 0);
  r.table = text_value(res, i, 1);
  r.key = text_value(res, i, 2);
  r.row = text_value(res, i, 3);
  r.error = text_value(res, i, 4);
  r.at = int_value(res, i, 5);
  return r;
}

template <class Row>
using reader = expected<Row, store_error> (*)(const PGresult*, int);

template <class Row>
expected<std::vector<Row>, store_error> read_rows(const PGresult* res, reader<Row> read) {
  std::vector<Row> out;
  const int n = PQntuples(res);
  out.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    auto row = read(res, i);
    if (!row) {
      return make_unexpected(row.error());
    }
    out.push_back(std::move(*row));
  }
  return out;
}

template <class Row>
expected<std::optional<Row>, store_error> read_first(const PGresult* res, reader<Row> read) {
  if (PQntuples(res) == 0) {
    return std::optional<Row>();
  }
  auto row = read(res, 0);
  if (!row) {
    return make_unexpected(row.error());
  }
  return std::optional<Row>(std::move(*row));
}

void ignore_notice(void*, const char*) {}

// Connects without touching the schema. A refused or dropped connection is transient; a URL
// libpq cannot parse, or a failed login, is not.
expected<conn_ptr, store_error> connect(const std::string& url) {
  // Earlier keywords are defaults the URL may override; client_encoding comes last because
  // the store always sends and expects UTF-8.
  const char* const keys[] = {"connect_timeout", "fallback_application_name", "dbname",
                              "client_encoding", nullptr};
  const char* const values[] = {"10", "troupe", url.c_str(), "UTF8", nullptr};
  conn_ptr c(PQconnectdbParams(keys, values, 1));
  if (!c) {
    return make_unexpected(store_error{"postgres: connect: out of memory", true});
  }
  if (PQstatus(c.get()) != CONNECTION_OK) {
    const std::string msg = trimmed(PQerrorMessage(c.get()));
    const bool permanent = msg.find("authentication failed") != std::string::npos ||
                           msg.find("does not exist") != std::string::npos ||
                           msg.find("no password supplied") != std::string::npos;
    return make_unexpected(
        store_error{"postgres: connect to " + mask_url(url) + ": " + msg, !permanent});
  }
  PQsetNoticeProcessor(c.get(), ignore_notice, nullptr);
  // Every statement of the store has an index to read through, or none at all (a sequential
  // scan then still runs). A prepared statement's generic plan is made once, after its first
  // executions: on a new database, while runs is a page or two, the fence and the renewal would
  // get a sequential scan of runs and keep it (the plan stays until an ANALYZE invalidates it)
  // while the table grows to any size, an O(table) read in every batch.
  result_ptr set(PQexec(c.get(), "SET enable_seqscan = off"));
  if (!set || PQresultStatus(set.get()) != PGRES_COMMAND_OK) {
    return make_unexpected(store_error{
        "postgres: connect to " + mask_url(url) + ": " + trimmed(PQerrorMessage(c.get())),
        PQstatus(c.get()) != CONNECTION_OK});
  }
  return c;
}

class postgres_store final : public store {
 public:
  explicit postgres_store(std::string url) : url_(std::move(url)) {}

  // Connects, migrates and prepares; the store keeps the connection.
  expected<bool, store_error> init() {
    auto c = connect(url_);
    if (!c) {
      return make_unexpected(c.error());
    }
    conn_ = std::move(*c);
    if (auto r = migrate(); !r) {
      conn_.reset();
      return r;
    }
    if (auto r = prepare_all(); !r) {
      conn_.reset();
      return r;
    }
    return true;
  }

  std::string describe() const override { return mask_url(url_); }

  expected<write_outcome, store_error> write(const write_batch& batch) override {
    return guarded("postgres write", [&]() -> expected<write_outcome, store_error> {
      write_outcome out;
      if (batch.empty()) {
        return out;
      }
      if (auto r = check_rows(batch); !r) {
        return make_unexpected(r.error());
      }
      auto encoded = encode(batch, slices_writes() ? pg_slice_rows : 0);
      if (!encoded) {
        return make_unexpected(encoded.error());
      }
      const bool fenced = encoded->fenced;
      const std::vector<write_params>& slices = encoded->slices;
      // The fenced statement answers the runs it fenced, one row each.
      auto collect = [&](const result_ptr& res) {
        if (fenced) {
          for (int i = 0; i < PQntuples(res.get()); ++i) {
            out.fenced_runs.emplace_back(text_value(res.get(), i, 0));
          }
        }
      };
      std::lock_guard lock(mu_);
      if (slices.size() == 1) {
        auto res = write_slice(slices.front(), fenced);
        if (!res) {
          return make_unexpected(res.error());
        }
        collect(*res);
        sort_ids(out.fenced_runs);
        return out;
      }
      // In slices, the server works on one statement of a few dozen rows at a time and waits
      // for the next between them, rather than holding a core for the whole batch; BEGIN and
      // COMMIT keep the batch all or nothing. Each slice fences the runs it has rows of (see
      // encode()); the locks of one slice hold through the later ones, so every slice of a
      // run sees the same stored epoch. (Locks are then taken in order within a slice only:
      // two sliced writers of the same runs, an old owner and a new one, may deadlock; the
      // server breaks it with SQLSTATE 40P01, a transient error, and the retry goes on.)
      if (auto r = ensure_connected(); !r) {
        return make_unexpected(r.error());
      }
      // Whatever way this ends (an error, an exception from the yield), no transaction stays
      // open: the next single-statement write would run inside it and never be committed.
      struct rollback_unless_done {
        conn_ptr& conn;
        ~rollback_unless_done() {
          if (conn && PQtransactionStatus(conn.get()) != PQTRANS_IDLE) {
            result_ptr r(PQexec(conn.get(), "ROLLBACK"));
            if (!r || PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
              conn.reset();  // a connection in an unknown state is not reused
            }
          }
          if (conn && PQstatus(conn.get()) != CONNECTION_OK) {
            conn.reset();  // reconnect on the next call
          }
        }
      } guard{conn_};
      auto r = exec("BEGIN", PGRES_COMMAND_OK, "begin batch");
      for (std::size_t i = 0; r && i < slices.size(); ++i) {
        if (i > 0) {
          yield_between_slices();
        }
        r = in_transaction("write batch");
        if (r) {
          auto res = write_slice(slices[i], fenced);
          if (res) {
            collect(*res);
          } else {
            r = make_unexpected(res.error());
          }
        }
      }
      if (r) {
        r = in_transaction("commit batch");
      }
      if (r) {
        r = exec("COMMIT", PGRES_COMMAND_OK, "commit batch");
      }
      if (!r) {
        return make_unexpected(r.error());
      }
      sort_ids(out.fenced_runs);
      return out;
    });
  }

  expected<claim_result, store_error> claim_run(std::string_view run_id, std::string_view owner,
                                                std::int64_t now_us,
                                                std::int64_t lease_until_us) override {
    return guarded("postgres claim_run", [&]() -> expected<claim_result, store_error> {
      const std::string id(run_id);
      const std::string who(owner);
      const std::string now = std::to_string(now_us);
      const std::string until = std::to_string(lease_until_us);
      const char* values[] = {id.c_str(), who.c_str(), now.c_str(), until.c_str()};
      claim_result out;
      std::lock_guard lock(mu_);
      auto res = run(s_claim, values, 4, PGRES_TUPLES_OK, "claim run");
      if (!res) {
        return make_unexpected(res.error());
      }
      if (PQntuples(res->get()) == 1) {
        out.found = true;
        out.claimed = true;
        return read_holder(res->get(), out);
      }
      // Refused or missing: who holds it now (a statement of its own, so that it reads what
      // committed up to now, such as the claim that won a race with this one).
      res = run(s_run_owner, values, 1, PGRES_TUPLES_OK, "read run owner");
      if (!res) {
        return make_unexpected(res.error());
      }
      if (PQntuples(res->get()) == 0) {
        return out;
      }
      out.found = true;
      return read_holder(res->get(), out);
    });
  }

  expected<std::vector<std::string>, store_error> renew_leases(
      std::string_view owner, const std::vector<lease_ref>& runs,
      std::int64_t lease_until_us) override {
    return guarded("postgres renew_leases",
                   [&]() -> expected<std::vector<std::string>, store_error> {
                     std::vector<std::string> lost;
                     if (runs.empty()) {
                       return lost;
                     }
                     array_literal ids;
                     array_literal epochs;
                     for (const lease_ref& ref : runs) {
                       ids.text(ref.run_id);
                       epochs.integer(ref.epoch);
                     }
                     const std::string who(owner);
                     const std::string id_array = std::move(ids).finish();
                     const std::string epoch_array = std::move(epochs).finish();
                     const std::string until = std::to_string(lease_until_us);
                     const char* values[] = {who.c_str(), id_array.c_str(), epoch_array.c_str(),
                                             until.c_str()};
                     std::lock_guard lock(mu_);
                     auto res = run(s_renew, values, 4, PGRES_TUPLES_OK, "renew leases");
                     if (!res) {
                       return make_unexpected(res.error());
                     }
                     for (int i = 0; i < PQntuples(res->get()); ++i) {
                       lost.emplace_back(text_value(res->get(), i, 0));
                     }
                     sort_ids(lost);
                     return lost;
                   });
  }

  expected<bool, store_error> write_dead_letters(
      const std::vector<dead_letter_row>& rows) override {
    return guarded("postgres write_dead_letters", [&]() -> expected<bool, store_error> {
      if (rows.empty()) {
        return true;
      }
      std::array<array_literal, 6> a;
      for (const auto& row : rows) {
        const dead_letter_row d = storable(row);
        a[0].text(d.run_id);
        a[1].text(d.table);
        a[2].text(d.key);
        a[3].text(d.row);
        a[4].text(d.error);
        a[5].integer(d.at);
      }
      std::array<std::string, 6> params;
      std::array<const char*, 6> values{};
      for (std::size_t i = 0; i < a.size(); ++i) {
        params[i] = std::move(a[i]).finish();
        values[i] = params[i].c_str();
      }
      std::lock_guard lock(mu_);
      auto res = run(s_add_dead_letters, values.data(), 6, PGRES_COMMAND_OK, "write dead letters");
      if (!res) {
        return make_unexpected(res.error());
      }
      return true;
    });
  }

  expected<std::vector<dead_letter_row>, store_error> list_dead_letters(
      std::size_t limit) override {
    return guarded(
        "postgres list_dead_letters", [&]() -> expected<std::vector<dead_letter_row>, store_error> {
          const std::string n = std::to_string(limit);
          const char* values[] = {limit == 0 ? nullptr : n.c_str()};
          std::lock_guard lock(mu_);
          auto res = run(s_list_dead_letters, values, 1, PGRES_TUPLES_OK, "list dead letters");
          if (!res) {
            return make_unexpected(res.error());
          }
          return read_rows<dead_letter_row>(res->get(), read_dead_letter);
        });
  }

  expected<request_key_row, store_error> remember_request(const request_key_row& row,
                                                          std::int64_t expired_before_us) override {
    return guarded("postgres remember_request", [&]() -> expected<request_key_row, store_error> {
      if (auto r = check_request_row(row); !r) {
        return make_unexpected(r.error());
      }
      const std::string created = std::to_string(row.created_at);
      const std::string expired = std::to_string(expired_before_us);
      const char* values[] = {row.key.c_str(),    row.scope.c_str(), row.request_hash.c_str(),
                              row.run_id.c_str(), created.c_str(),   expired.c_str()};
      std::lock_guard lock(mu_);
      // An entry that is not expired makes the upsert return nothing: it is read by a statement
      // of its own, which sees what committed up to now (the insert that won a race with this
      // call: the upsert waited for it). Forgotten in between, the key is free again: retry.
      constexpr int attempts = 100;
      for (int i = 0; i < attempts; ++i) {
        auto res = run(s_remember_request, values, 6, PGRES_TUPLES_OK, "remember request");
        if (!res) {
          return make_unexpected(res.error());
        }
        if (PQntuples(res->get()) == 1) {
          return read_request(res->get(), 0);
        }
        res = run(s_find_request, values, 2, PGRES_TUPLES_OK, "read request key");
        if (!res) {
          return make_unexpected(res.error());
        }
        if (PQntuples(res->get()) == 1) {
          return read_request(res->get(), 0);
        }
      }
      return make_unexpected(
          store_error{"postgres: remember request: the entry holding the key vanished " +
                          std::to_string(attempts) + " times in a row",
                      true});
    });
  }

  expected<std::optional<request_key_row>, store_error> find_request(
      std::string_view key, std::string_view scope) override {
    return guarded("postgres find_request",
                   [&]() -> expected<std::optional<request_key_row>, store_error> {
                     if (auto r = check_request_key(key, scope); !r) {
                       return make_unexpected(r.error());
                     }
                     const std::string k(key);
                     const std::string sc(scope);
                     const char* values[] = {k.c_str(), sc.c_str()};
                     std::lock_guard lock(mu_);
                     auto res = run(s_find_request, values, 2, PGRES_TUPLES_OK, "find request key");
                     if (!res) {
                       return make_unexpected(res.error());
                     }
                     return read_first<request_key_row>(res->get(), read_request);
                   });
  }

  expected<std::size_t, store_error> forget_requests(std::int64_t before_us) override {
    return guarded("postgres forget_requests", [&]() -> expected<std::size_t, store_error> {
      const std::string before = std::to_string(before_us);
      const char* values[] = {before.c_str()};
      std::lock_guard lock(mu_);
      auto res = run(s_forget_requests, values, 1, PGRES_COMMAND_OK, "forget requests");
      if (!res) {
        return make_unexpected(res.error());
      }
      const char* n = PQcmdTuples(res->get());
      std::size_t count = 0;
      std::from_chars(n, n + std::char_traits<char>::length(n), count);
      return count;
    });
  }

  expected<std::vector<run_row>, store_error> list_runs(const run_query& q) override {
    return guarded("postgres list_runs", [&]() -> expected<std::vector<run_row>, store_error> {
      const bool children = !q.parent_run_id.empty();
      if (q.top_level && children) {
        return std::vector<run_row>();  // a child run is never top-level
      }
      const bool paged = !q.before_run_id.empty();
      const std::string status = q.status ? std::string(to_string(*q.status)) : std::string();
      const std::string limit = std::to_string(q.limit);
      const std::string before_at = std::to_string(q.before_started_at);
      const char* values[] = {q.status ? status.c_str() : nullptr,
                              q.workflow.empty() ? nullptr : q.workflow.c_str(),
                              q.limit == 0 ? nullptr : limit.c_str(),
                              children ? q.parent_run_id.c_str() : (q.top_level ? "t" : "f"),
                              before_at.c_str(),
                              q.before_run_id.c_str()};
      const statement_id id = children ? (paged ? s_list_child_runs_before : s_list_child_runs)
                                       : (paged ? s_list_runs_before : s_list_runs);
      std::lock_guard lock(mu_);
      auto res = run(id, values, paged ? 6 : 4, PGRES_TUPLES_OK, "list runs");
      if (!res) {
        return make_unexpected(res.error());
      }
      return read_rows<run_row>(res->get(), read_run);
    });
  }

  expected<std::optional<run_row>, store_error> get_run(std::string_view run_id) override {
    return guarded("postgres get_run", [&]() -> expected<std::optional<run_row>, store_error> {
      const std::string id(run_id);
      const char* values[] = {id.c_str()};
      std::lock_guard lock(mu_);
      auto res = run(s_get_run, values, 1, PGRES_TUPLES_OK, "get run");
      if (!res) {
        return make_unexpected(res.error());
      }
      return read_first<run_row>(res->get(), read_run);
    });
  }

  expected<std::vector<node_row>, store_error> node_rows(std::string_view run_id) override {
    return guarded("postgres node_rows", [&]() -> expected<std::vector<node_row>, store_error> {
      const std::string id(run_id);
      const char* values[] = {id.c_str()};
      std::lock_guard lock(mu_);
      auto res = run(s_node_rows, values, 1, PGRES_TUPLES_OK, "node rows");
      if (!res) {
        return make_unexpected(res.error());
      }
      return read_rows<node_row>(res->get(), read_node);
    });
  }

  expected<std::vector<run_row>, store_error> unfinished_runs() override {
    return guarded("postgres unfinished_runs",
                   [&]() -> expected<std::vector<run_row>, store_error> {
                     std::lock_guard lock(mu_);
                     auto res = run(s_unfinished, nullptr, 0, PGRES_TUPLES_OK, "unfinished runs");
                     if (!res) {
                       return make_unexpected(res.error());
                     }
                     return read_rows<run_row>(res->get(), read_run);
                   });
  }

  expected<std::optional<workflow_row>, store_error> get_workflow(
      std::string_view name, std::string_view version) override {
    return guarded("postgres get_workflow",
                   [&]() -> expected<std::optional<workflow_row>, store_error> {
                     const std::string n(name);
                     const std::string v(version);
                     const char* values[] = {n.c_str(), v.c_str()};
                     std::lock_guard lock(mu_);
                     auto res = run(s_get_workflow, values, 2, PGRES_TUPLES_OK, "get workflow");
                     if (!res) {
                       return make_unexpected(res.error());
                     }
                     return read_first<workflow_row>(res->get(), read_workflow);
                   });
  }

  expected<std::optional<cache_row>, store_error> get_cache(std::string_view key) override {
    return guarded("postgres get_cache", [&]() -> expected<std::optional<cache_row>, store_error> {
      const std::string k(key);
      const char* values[] = {k.c_str()};
      std::lock_guard lock(mu_);
      auto res = run(s_get_cache, values, 1, PGRES_TUPLES_OK, "get cache entry");
      if (!res) {
        return make_unexpected(res.error());
      }
      return read_first<cache_row>(res->get(), read_cache);
    });
  }

  expected<std::vector<cache_row>, store_error> list_cache(std::string_view workflow) override {
    return guarded("postgres list_cache", [&]() -> expected<std::vector<cache_row>, store_error> {
      const std::string w(workflow);
      const char* values[] = {w.empty() ? nullptr : w.c_str()};
      std::lock_guard lock(mu_);
      auto res = run(s_list_cache, values, 1, PGRES_TUPLES_OK, "list cache");
      if (!res) {
        return make_unexpected(res.error());
      }
      return read_rows<cache_row>(res->get(), read_cache);
    });
  }

  expected<std::size_t, store_error> clear_cache(std::string_view workflow) override {
    return guarded("postgres clear_cache", [&]() -> expected<std::size_t, store_error> {
      const std::string w(workflow);
      const char* values[] = {w.empty() ? nullptr : w.c_str()};
      std::lock_guard lock(mu_);
      auto res = run(s_clear_cache, values, 1, PGRES_COMMAND_OK, "clear cache");
      if (!res) {
        return make_unexpected(res.error());
      }
      const char* n = PQcmdTuples(res->get());
      std::size_t count = 0;
      std::from_chars(n, n + std::char_traits<char>::length(n), count);
      return count;
    });
  }

 private:
  // One statement of the simple protocol on the current connection (no reconnect: inside a
  // transaction, a new connection would silently run the rest outside it).
  expected<bool, store_error> exec(const char* sql, ExecStatusType want, std::string_view doing,
                                   result_ptr* out = nullptr) {
    result_ptr r(PQexec(conn_.get(), sql));
    if (!r || PQresultStatus(r.get()) != want) {
      return make_unexpected(pg_error(conn_.get(), r.get(), doing));
    }
    if (out != nullptr) {
      *out = std::move(r);
    }
    return true;
  }

  expected<bool, store_error> migrate() {
    if (auto r = exec("BEGIN", PGRES_COMMAND_OK, "begin migration"); !r) {
      return r;
    }
    auto r = migrate_in_transaction();
    if (r) {
      r = exec("COMMIT", PGRES_COMMAND_OK, "commit migration");
    } else if (PQstatus(conn_.get()) == CONNECTION_OK) {
      result_ptr ignored(PQexec(conn_.get(), "ROLLBACK"));
    }
    return r;
  }

  expected<bool, store_error> migrate_in_transaction() {
    if (auto r = exec(migration_lock, PGRES_TUPLES_OK, "lock for migration"); !r) {
      return r;
    }
    if (auto r = exec("CREATE TABLE IF NOT EXISTS troupe_schema (version integer NOT NULL)",
                      PGRES_COMMAND_OK, "create troupe_schema");
        !r) {
      return r;
    }
    result_ptr res;
    if (auto r = exec("SELECT coalesce(max(version), 0) FROM troupe_schema", PGRES_TUPLES_OK,
                      "read schema version", &res);
        !r) {
      return r;
    }
    const std::int64_t found = int_value(res.get(), 0, 0);
    if (found > current_schema_version) {
      return make_unexpected(store_error{schema_too_new_message(found), false});
    }
    for (const migration& m : migrations) {
      if (m.version <= found) {
        continue;
      }
      const std::string doing = "migrate to schema version " + std::to_string(m.version);
      for (std::size_t i = 0; i < m.count; ++i) {
        if (auto r = exec(m.statements[i], PGRES_COMMAND_OK, doing); !r) {
          r.error().transient = r.error().transient && PQstatus(conn_.get()) != CONNECTION_OK;
          return r;
        }
      }
      const std::string stamp =
          "INSERT INTO troupe_schema (version) VALUES (" + std::to_string(m.version) + ")";
      if (auto r = exec(stamp.c_str(), PGRES_COMMAND_OK, "stamp schema version"); !r) {
        return r;
      }
    }
    return true;
  }

  // Prepared statements live in the session, so every new connection prepares them again. A
  // failure other than a lost connection means the tables do not match: not transient.
  expected<bool, store_error> prepare_all() {
    for (const statement& s : statements()) {
      result_ptr r(PQprepare(conn_.get(), s.name, s.sql.c_str(), 0, nullptr));
      if (!r || PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
        store_error e = pg_error(conn_.get(), r.get(), std::string("prepare ") + s.name);
        if (PQstatus(conn_.get()) == CONNECTION_OK) {
          e.transient = false;
          e.message += "; the database's tables do not match the schema this troupe expects";
        }
        return make_unexpected(std::move(e));
      }
    }
    return true;
  }

  // A sliced batch goes on only on the connection that began it: run() would reconnect, and
  // the slices after that would commit on their own while the earlier ones were lost.
  expected<bool, store_error> in_transaction(std::string_view doing) {
    if (!conn_ || PQtransactionStatus(conn_.get()) != PQTRANS_INTRANS) {
      return make_unexpected(store_error{
          "postgres: " + std::string(doing) + ": the batch's transaction was lost", true});
    }
    return true;
  }

  expected<bool, store_error> ensure_connected() {
    if (conn_ && PQstatus(conn_.get()) == CONNECTION_OK) {
      return true;
    }
    conn_.reset();
    auto c = connect(url_);
    if (!c) {
      return make_unexpected(c.error());
    }
    conn_ = std::move(*c);
    if (auto r = prepare_all(); !r) {
      conn_.reset();
      return r;
    }
    return true;
  }

  expected<result_ptr, store_error> run(statement_id id, const char* const* values, int n,
                                        ExecStatusType want, std::string_view doing) {
    if (auto r = ensure_connected(); !r) {
      return make_unexpected(r.error());
    }
    result_ptr res(
        PQexecPrepared(conn_.get(), statements()[id].name, n, values, nullptr, nullptr, 0));
    if (!res || PQresultStatus(res.get()) != want) {
      store_error e = pg_error(conn_.get(), res.get(), doing);
      if (PQstatus(conn_.get()) != CONNECTION_OK) {
        conn_.reset();  // reconnect on the next call
      }
      return make_unexpected(std::move(e));
    }
    return res;
  }

  // One slice's parameters: the tables' arrays, then the fence's (empty when unfenced).
  using write_params = std::array<std::string, fenced_write_param_count>;

  struct encoded_batch {
    std::vector<write_params> slices;
    bool fenced = false;  // some row carries an epoch: the fenced statement, for every slice
  };

  expected<result_ptr, store_error> write_slice(const write_params& params, bool fenced) {
    std::array<const char*, fenced_write_param_count> values{};
    for (std::size_t i = 0; i < values.size(); ++i) {
      values[i] = params[i].c_str();
    }
    return fenced ? run(s_write_fenced, values.data(), fenced_write_param_count, PGRES_TUPLES_OK,
                        "write batch")
                  : run(s_write, values.data(), write_param_count, PGRES_TUPLES_OK, "write batch");
  }

  // The batch as the write statement's parameters: one set, or (slice_rows > 0) one set per
  // slice of at most slice_rows rows, tables in the order runs, nodes, workflows, cache. When
  // rows carry epochs, each slice fences the runs it has rows of (write_sql()): those whose row
  // is in the slice with their one epoch by the runs upsert; the others through the fence
  // pairs, every (run, epoch) pair of the whole batch for them (superseded rows included, as
  // the other stores count them), so that a run is fenced alike in every slice.
  static expected<encoded_batch, store_error> encode(const write_batch& batch,
                                                     std::size_t slice_rows) {
    encoded_batch out;
    fence_pairs all;
    for (const auto& r : batch.runs) {
      all.add(r.run_id, r.epoch);
    }
    for (const auto& n : batch.nodes) {
      all.add(n.run_id, n.epoch);
    }
    out.fenced = !all.empty();
    const auto& pairs = all.pairs();
    const bool unique = batch.unique_keys;
    auto runs = rows_to_write(batch.runs, run_key, unique);
    if (out.fenced) {
      // The upserts lock the rows they meet in this order: run id order, like l's.
      std::sort(runs.begin(), runs.end(),
                [](const run_row* a, const run_row* b) { return a->run_id < b->run_id; });
    }
    // The slice being built: the runs it has rows of, and the epochs of its run rows.
    std::vector<std::string_view> slice_runs;
    std::vector<std::pair<std::string_view, std::int64_t>> slice_run_rows;
    std::array<array_literal, fenced_write_param_count> a;
    std::string scratch;
    std::size_t in_slice = 0;
    auto finish_slice = [&] {
      if (out.fenced) {
        std::sort(slice_runs.begin(), slice_runs.end());
        slice_runs.erase(std::unique(slice_runs.begin(), slice_runs.end()), slice_runs.end());
        std::sort(slice_run_rows.begin(), slice_run_rows.end());
        auto it = pairs.begin();
        for (std::string_view run : slice_runs) {
          it = std::lower_bound(it, pairs.end(), run,
                                [](const auto& p, std::string_view id) { return p.first < id; });
          auto end = it;
          while (end != pairs.end() && end->first == run) {
            ++end;
          }
          auto row =
              std::lower_bound(slice_run_rows.begin(), slice_run_rows.end(), run,
                               [](const auto& p, std::string_view id) { return p.first < id; });
          const bool fenced_by_upsert = end - it == 1 && row != slice_run_rows.end() &&
                                        row->first == run && row->second == it->second;
          for (; !fenced_by_upsert && it != end; ++it) {
            a[fence_params].text(it->first);
            a[fence_params + 1].integer(it->second);
          }
          it = end;
        }
        slice_runs.clear();
        slice_run_rows.clear();
      }
      write_params& params = out.slices.emplace_back();
      for (std::size_t i = 0; i < params.size(); ++i) {
        params[i] = std::move(a[i]).finish();
        a[i] = array_literal();
      }
      in_slice = 0;
    };
    // A full slice is closed only when a row for the next one comes: no slice is ever empty.
    auto next_row = [&] {
      if (slice_rows > 0 && in_slice == slice_rows) {
        finish_slice();
      }
      ++in_slice;
    };
    auto note_run = [&](std::string_view run) {
      if (out.fenced && (slice_runs.empty() || slice_runs.back() != run)) {
        slice_runs.push_back(run);
      }
    };
    for (const run_row* r : runs) {
      next_row();
      note_run(r->run_id);
      if (out.fenced) {
        slice_run_rows.emplace_back(r->run_id, r->epoch);
      }
      auto status = status_name(r->status);
      if (!status) {
        return make_unexpected(status.error());
      }
      array_literal* p = &a[run_params];
      p[0].text(r->run_id);
      p[1].text(r->workflow);
      p[2].text(r->version);
      p[3].text(r->plan_hash);
      p[4].text(*status);
      p[5].json(r->inputs, scratch);
      p[6].json(r->outputs, scratch);
      p[7].text(r->error);
      p[8].integer(r->started_at);
      p[9].integer(r->finished_at);
      p[10].text(r->parent_run_id);
      p[11].text(r->parent_node_id);
      p[12].text(r->owner);
      p[13].integer(is_final(r->status) ? 0 : r->lease_until);  // a finished run holds no lease
      p[14].integer(r->epoch);
    }
    for (const node_row* r : rows_to_write(batch.nodes, node_key, unique)) {
      next_row();
      note_run(r->run_id);
      auto status = status_name(r->status);
      if (!status) {
        return make_unexpected(status.error());
      }
      auto cache = status_name(r->cache);
      if (!cache) {
        return make_unexpected(cache.error());
      }
      auto spec_cache = status_name(r->spec_cache);
      if (!spec_cache) {
        return make_unexpected(spec_cache.error());
      }
      array_literal* p = &a[node_params];
      p[0].text(r->run_id);
      p[1].text(r->node_id);
      p[2].integer(r->item);
      p[3].integer(r->attempt);
      p[4].text(*status);
      p[5].json(r->input, scratch);
      p[6].json(r->output, scratch);
      p[7].text(r->error);
      p[8].text(*cache);
      p[9].integer(r->started_at);
      p[10].integer(r->finished_at);
      p[11].text(r->worker);
      p[12].text(*spec_cache);
      p[13].text(r->child_run_id);
      p[14].integer(r->started_seq);
      p[15].integer(r->finished_seq);
      p[16].integer(r->lost);
    }
    for (const workflow_row* r : rows_to_write(batch.workflows, workflow_key, unique)) {
      next_row();
      array_literal* p = &a[workflow_params];
      p[0].text(r->name);
      p[1].text(r->version);
      p[2].text(r->hash);
      p[3].text(r->document);
      p[4].integer(r->registered_at);
    }
    for (const cache_row* r : rows_to_write(batch.cache, cache_key, unique)) {
      next_row();
      array_literal* p = &a[cache_params];
      p[0].text(r->key);
      p[1].text(r->workflow);
      p[2].text(r->node_id);
      p[3].json(r->value, scratch);
      p[4].text(r->kind);
      p[5].integer(r->created_at);
    }
    finish_slice();
    return out;
  }

  // Reads owner, lease_until, epoch and status (the first four columns of row 0) into `out`.
  static expected<claim_result, store_error> read_holder(const PGresult* res, claim_result& out) {
    out.owner = text_value(res, 0, 0);
    out.lease_until = int_value(res, 0, 1);
    out.epoch = int_value(res, 0, 2);
    auto status = parse_run_status(text_value(res, 0, 3));
    if (!status) {
      return make_unexpected(
          store_error{"unknown run status '" + std::string(text_value(res, 0, 3)) + "'", false});
    }
    out.status = *status;
    return out;
  }

  mutable std::mutex mu_;
  std::string url_;
  conn_ptr conn_;
};

}  // namespace

expected<std::unique_ptr<store>, store_error> open_postgres_store(std::string url) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(url.c_str(), &err);
  if (opts == nullptr) {
    std::string msg = trimmed(err != nullptr ? err : "out of memory");
    PQfreemem(err);
    return make_unexpected(
        store_error{"postgres: invalid URL '" + mask_url(url) + "': " + msg, false});
  }
  PQconninfoFree(opts);
  auto s = std::make_unique<postgres_store>(std::move(url));
  if (auto r = s->init(); !r) {
    return make_unexpected(r.error());
  }
  return std::unique_ptr<store>(std::move(s));
}

}  // namespace troupe::detail
