// The SQLite store (raw C API). One connection per store, guarded by a mutex so any thread may
// call it. WAL mode lets readers (the CLI, other processes) run beside the writer; synchronous=
// NORMAL in WAL makes a commit survive a process crash, and only the last commits before a power
// loss may be lost. The busy timeout is short on purpose: the writer actor retries transient
// errors with its own backoff, so the store reports a held lock instead of blocking in it.

#include <sqlite3.h>

#include <array>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "persistence/detail/common.hpp"

namespace troupe::detail {

namespace {

constexpr int write_busy_timeout_ms = 10;
// Opening (journal mode switch, migrations) is rare and may meet another process doing the
// same, so it waits longer before giving up.
constexpr int open_busy_timeout_ms = 5000;
// A claim is rare and its caller (a resume) would fail without it: it waits for the writer's
// transaction like an open does, instead of failing after 10 ms.
constexpr int claim_busy_timeout_ms = 5000;
// remember_request() and forget_requests() too: the service answers a request with them, and
// a commit of the writer's (another connection) may hold the write lock for a while.
constexpr int request_busy_timeout_ms = 5000;

bool transient_code(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:      // another connection holds the write lock
    case SQLITE_LOCKED:    // a conflict inside this process (shared cache)
    case SQLITE_FULL:      // disk full: may clear up
    case SQLITE_IOERR:     // I/O error: may be passing (NFS, a full disk)
    case SQLITE_PROTOCOL:  // a WAL lock race
    case SQLITE_NOMEM:
      return true;
    default:
      return false;
  }
}

store_error sqlite_error(sqlite3* db, int rc, std::string_view doing) {
  std::string msg = "sqlite: " + std::string(doing) + ": ";
  msg += db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  msg += " (code " + std::to_string(rc) + ")";
  return store_error{std::move(msg), transient_code(rc)};
}

struct stmt_deleter {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using stmt_ptr = std::unique_ptr<sqlite3_stmt, stmt_deleter>;

struct db_deleter {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using db_ptr = std::unique_ptr<sqlite3, db_deleter>;

// Version 1. The node_executions primary key starts with run_id, so its index is the run_id
// index node_rows() searches; a second index on run_id alone would only slow every write.
// CHECK constraints hold the key domains every backend enforces (see valid_node_key).
constexpr const char* schema_v1[] = {
    R"(CREATE TABLE runs (
  run_id TEXT NOT NULL PRIMARY KEY,
  workflow TEXT NOT NULL,
  version TEXT NOT NULL,
  plan_hash TEXT NOT NULL,
  status TEXT NOT NULL,
  inputs TEXT,
  outputs TEXT,
  error TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  finished_at INTEGER NOT NULL,
  parent_run_id TEXT NOT NULL,
  parent_node_id TEXT NOT NULL))",
    "CREATE INDEX runs_started ON runs (started_at, run_id)",
    // Small: only runs not finished yet, read at startup to resume them.
    "CREATE INDEX runs_unfinished ON runs (started_at, run_id) "
    "WHERE status IN ('pending', 'running')",
    R"(CREATE TABLE node_executions (
  run_id TEXT NOT NULL,
  node_id TEXT NOT NULL,
  item INTEGER NOT NULL CHECK (item >= -1),
  attempt INTEGER NOT NULL CHECK (attempt >= 0),
  status TEXT NOT NULL,
  input TEXT,
  output TEXT,
  error TEXT NOT NULL,
  cache TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  finished_at INTEGER NOT NULL,
  worker TEXT NOT NULL,
  PRIMARY KEY (run_id, node_id, item, attempt)))",
    R"(CREATE TABLE workflows (
  name TEXT NOT NULL,
  version TEXT NOT NULL,
  hash TEXT NOT NULL,
  document TEXT NOT NULL,
  registered_at INTEGER NOT NULL,
  PRIMARY KEY (name, version)))",
    R"(CREATE TABLE cache_entries (
  key TEXT NOT NULL PRIMARY KEY,
  workflow TEXT NOT NULL,
  node_id TEXT NOT NULL,
  value TEXT,
  kind TEXT NOT NULL,
  created_at INTEGER NOT NULL))",
    "CREATE INDEX cache_entries_workflow ON cache_entries (workflow)",
};

// Version 2: what `dynamic` and `workflow` node executions record, and a run's children by parent.
// The defaults keep version 1 rows valid, and ADD COLUMN with a constant default only changes
// the schema: no table is rewritten however many rows it holds.
constexpr const char* schema_v2[] = {
    "ALTER TABLE node_executions ADD COLUMN spec_cache TEXT NOT NULL DEFAULT 'off'",
    "ALTER TABLE node_executions ADD COLUMN child_run_id TEXT NOT NULL DEFAULT ''",
    // Partial: top-level runs (parent_run_id '') are most runs and never searched by parent, so
    // writing them costs no index entry. started_at, run_id serve the ORDER BY of list_runs.
    "CREATE INDEX runs_parent ON runs (parent_run_id, started_at, run_id) "
    "WHERE parent_run_id <> ''",
};

// Version 3: run ownership (DESIGN.md, "Ownership, leases and fencing") and dead letters. The
// defaults make every older run unowned, without a lease, at epoch 0: claimable, and fenced
// against any write that carries an epoch until claimed. Constant defaults: no table rewrite.
constexpr const char* schema_v3[] = {
    "ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE runs ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
    // AUTOINCREMENT: ids never reused, so "newest first" is "highest id first" for good.
    R"(CREATE TABLE dead_letters (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  run_id TEXT NOT NULL,
  tbl TEXT NOT NULL,
  key TEXT NOT NULL,
  "row" TEXT NOT NULL,
  error TEXT NOT NULL,
  at INTEGER NOT NULL))",
};

// Version 4, for the HTTP service (issue 15): the run's event sequence numbers of a node
// execution's events (0 for older rows: none recorded), and the requests the service has seen
// under an Idempotency-Key. Constant defaults: no table rewrite.
constexpr const char* schema_v4[] = {
    "ALTER TABLE node_executions ADD COLUMN started_seq INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE node_executions ADD COLUMN finished_seq INTEGER NOT NULL DEFAULT 0",
    R"(CREATE TABLE request_keys (
  key TEXT NOT NULL,
  scope TEXT NOT NULL,
  request_hash TEXT NOT NULL,
  run_id TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (key, scope)))",
    // forget_requests() deletes by age.
    "CREATE INDEX request_keys_created ON request_keys (created_at)",
};

// Version 5, for the node cluster (issue 16): how many times an attempt's worker was lost and the
// attempt was dispatched again. Constant default: no table rewrite.
constexpr const char* schema_v5[] = {
    "ALTER TABLE node_executions ADD COLUMN lost INTEGER NOT NULL DEFAULT 0",
};

constexpr migration migrations[] = {{1, schema_v1, std::size(schema_v1)},
                                    {2, schema_v2, std::size(schema_v2)},
                                    {3, schema_v3, std::size(schema_v3)},
                                    {4, schema_v4, std::size(schema_v4)},
                                    {5, schema_v5, std::size(schema_v5)}};
static_assert(std::size(migrations) == current_schema_version);

enum query_id : std::size_t {
  q_begin,
  q_commit,
  q_rollback,
  q_list_runs,
  q_list_runs_before,
  q_list_child_runs,
  q_list_child_runs_before,
  q_get_run,
  q_node_rows,
  q_unfinished,
  q_get_workflow,
  q_get_cache,
  q_list_cache,
  q_clear_cache,
  q_claim,
  q_run_owner,
  q_renew,
  q_add_dead_letter,
  q_list_dead_letters,
  q_remember_request,
  q_find_request,
  q_forget_requests,
  q_count
};

const std::string run_cols = column_list(runs_table);
const std::string node_cols = column_list(nodes_table);
const std::string workflow_cols = column_list(workflows_table);
const std::string cache_cols = column_list(cache_table);

std::string query_sql(query_id q) {
  switch (q) {
    case q_begin:
      return "BEGIN IMMEDIATE";
    case q_commit:
      return "COMMIT";
    case q_rollback:
      return "ROLLBACK";
    // list_runs' four statements share their parameters: ?1 status, ?2 workflow (NULL: any),
    // ?3 limit (-1: none), ?4 parent run, ?5 top level only (0 or 1), ?6 and ?7 the cursor
    // (before_started_at, before_run_id). All walk an index on (…, started_at, run_id)
    // backwards, which gives the order; the `_before` ones start it at the cursor (the row
    // value is a range constraint on the index), since a "?7 IS NULL OR (…) < (…)" term would
    // only filter, each page reading every row before it. status, workflow and top level
    // filter the rows the walk meets.
    case q_list_runs:
    case q_list_runs_before:
      return "SELECT " + run_cols +
             " FROM runs WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR workflow = ?2) "
             "AND (NOT ?5 OR ifnull(parent_run_id, '') = '') " +
             (q == q_list_runs_before ? "AND (started_at, run_id) < (?6, ?7) " : "") +
             "ORDER BY started_at DESC, run_id DESC LIMIT ?3";
    case q_list_child_runs:
    case q_list_child_runs_before:
      // Statements of their own rather than "?4 IS NULL OR ...", which no index can serve; the
      // literal `<> ''` term is what lets SQLite use the partial index runs_parent.
      return "SELECT " + run_cols +
             " FROM runs WHERE parent_run_id = ?4 AND parent_run_id <> '' AND "
             "(?1 IS NULL OR status = ?1) AND (?2 IS NULL OR workflow = ?2) " +
             (q == q_list_child_runs_before ? "AND (started_at, run_id) < (?6, ?7) " : "") +
             "ORDER BY started_at DESC, run_id DESC LIMIT ?3";
    case q_get_run:
      return "SELECT " + run_cols + " FROM runs WHERE run_id = ?1";
    case q_node_rows:
      return "SELECT " + node_cols +
             " FROM node_executions WHERE run_id = ?1 "
             "ORDER BY started_at, node_id, item, attempt";
    case q_unfinished:
      return "SELECT " + run_cols +
             " FROM runs WHERE status IN ('pending', 'running') ORDER BY started_at, run_id";
    case q_get_workflow:
      return "SELECT " + workflow_cols + " FROM workflows WHERE name = ?1 AND version = ?2";
    case q_get_cache:
      return "SELECT " + cache_cols + " FROM cache_entries WHERE key = ?1";
    case q_list_cache:
      return "SELECT " + cache_cols +
             " FROM cache_entries WHERE (?1 IS NULL OR workflow = ?1) ORDER BY created_at, key";
    case q_clear_cache:
      return "DELETE FROM cache_entries WHERE (?1 IS NULL OR workflow = ?1)";
    case q_claim:
      return "UPDATE runs SET owner = ?2, epoch = epoch + 1, lease_until = ?4 WHERE run_id = ?1 "
             "AND status <> 'succeeded' AND lease_until <= ?3 "
             "RETURNING owner, lease_until, epoch, status";
    case q_run_owner:
      return "SELECT owner, lease_until, epoch, status FROM runs WHERE run_id = ?1";
    case q_renew:
      return "UPDATE runs SET lease_until = ?3 WHERE run_id = ?1 AND owner = ?2 AND epoch = ?4 "
             "AND status IN ('pending', 'running')";
    case q_add_dead_letter:
      return "INSERT INTO dead_letters (run_id, tbl, key, \"row\", error, at) "
             "VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    case q_list_dead_letters:
      return "SELECT run_id, tbl, key, \"row\", error, at FROM dead_letters ORDER BY id DESC "
             "LIMIT ?1";
    case q_remember_request:
      // Inserts, or replaces an expired entry; an entry not expired is left as it is and the
      // statement changes no row.
      return "INSERT INTO request_keys (key, scope, request_hash, run_id, created_at) "
             "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (key, scope) DO UPDATE SET "
             "request_hash = excluded.request_hash, run_id = excluded.run_id, "
             "created_at = excluded.created_at WHERE request_keys.created_at < ?6";
    case q_find_request:
      return "SELECT key, scope, request_hash, run_id, created_at FROM request_keys "
             "WHERE key = ?1 AND scope = ?2";
    case q_forget_requests:
      return "DELETE FROM request_keys WHERE created_at < ?1";
    case q_count:
      break;
  }
  return {};
}

// Multi-row statements are cached for a few row counts; a batch is cut greedily into chunks of
// these sizes, so at most a handful of statements per table exist, whatever the batch sizes.
constexpr std::array<int, 4> chunk_sizes = {512, 64, 8, 1};

// The fence's read of stored epochs: the runs' ids as one JSON array, one cursor on runs that
// seeks each. (`run_id IN (?, ...)` builds an ephemeral index of the values in every batch,
// whose page cache SQLite allocates and frees each time: 19 page faults and ~200 µs more per
// batch of 52 runs on this VM; a UNION ALL of one lookup per run opens two cursors per run,
// ~8,000 instructions a run.)
constexpr const char* fence_sql =
    "SELECT r.run_id, r.epoch FROM json_each(?1) AS j JOIN runs AS r ON r.run_id = j.value";

std::string upsert_sql(const table_spec& t, int rows) {
  std::string row = "(";
  for (std::size_t i = 0; i < t.column_count; ++i) {
    row += i == 0 ? "?" : ",?";
  }
  row += ")";
  std::string sql = "INSERT INTO ";
  sql += t.name;
  sql += " (" + column_list(t) + ") VALUES ";
  sql.reserve(sql.size() + static_cast<std::size_t>(rows) * (row.size() + 1) + 200);
  for (int r = 0; r < rows; ++r) {
    if (r > 0) {
      sql += ',';
    }
    sql += row;
  }
  sql += ' ';
  sql += on_conflict_clause(t);
  if (&t == &runs_table) {
    // The fence, for runs whose row carries their batch's one epoch (see write_rows()): an
    // existing run stored under another epoch is left as it is, and the statement's change
    // count comes out short.
    sql += " WHERE runs.epoch = excluded.epoch OR excluded.epoch = 0";
  }
  return sql;
}

// The JSON text of a statement's values, alive until the statement has run (SQLite binds it
// without copying). The strings are reused from statement to statement, so that a write
// allocates nothing per value once the store has warmed up; a deque, because growing it never
// moves the strings SQLite points at (a short string lives inside its std::string).
class json_texts {
 public:
  std::string_view add(const json::value& v) {
    if (used_ == texts_.size()) {
      texts_.emplace_back();
    }
    std::string& s = texts_[used_++];
    s.clear();
    append_json(s, v);
    return s;
  }
  // The statement has run: every text may be overwritten.
  void reuse() { used_ = 0; }
  // After a write. Every buffer keeps the largest text it ever held: without this, one batch
  // of megabyte outputs would stay resident for the store's lifetime (a buffer per bound value,
  // up to two per row of the largest statement).
  void release_large(std::size_t max_bytes = 64 * 1024) {
    for (auto& s : texts_) {
      if (s.capacity() > max_bytes) {
        std::string().swap(s);
      }
    }
  }

 private:
  std::deque<std::string> texts_;
  std::size_t used_ = 0;
};

// Binds one row's columns from `base` (1-based).
class binder {
 public:
  binder(sqlite3_stmt* s, json_texts& texts) : s_(s), texts_(texts) {}

  void text(std::string_view v) {
    rc_ |= sqlite3_bind_text(s_, i_++, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  }
  void integer(std::int64_t v) { rc_ |= sqlite3_bind_int64(s_, i_++, v); }
  void json(const json_ptr& v) {
    if (!v) {
      rc_ |= sqlite3_bind_null(s_, i_++);
      return;
    }
    text(texts_.add(*v));
  }
  int rc() const { return rc_; }

 private:
  sqlite3_stmt* s_;
  json_texts& texts_;
  int i_ = 1;
  int rc_ = SQLITE_OK;
};

void bind_row(binder& b, const run_row& r, std::string_view status) {
  b.text(r.run_id);
  b.text(r.workflow);
  b.text(r.version);
  b.text(r.plan_hash);
  b.text(status);
  b.json(r.inputs);
  b.json(r.outputs);
  b.text(r.error);
  b.integer(r.started_at);
  b.integer(r.finished_at);
  b.text(r.parent_run_id);
  b.text(r.parent_node_id);
  b.text(r.owner);
  b.integer(is_final(r.status) ? 0 : r.lease_until);  // a finished run holds no lease
  b.integer(r.epoch);
}

std::string_view column_text(sqlite3_stmt* s, int i) {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
  return p == nullptr ? std::string_view() : std::string_view(p, sqlite3_column_bytes(s, i));
}

expected<json_ptr, store_error> column_json(sqlite3_stmt* s, int i, std::string_view what) {
  if (sqlite3_column_type(s, i) == SQLITE_NULL) {
    return json_ptr();
  }
  return json_from_text(column_text(s, i), what);
}

class sqlite_store final : public store {
 public:
  sqlite_store(db_ptr db, std::string path, std::string url)
      : db_(std::move(db)), path_(std::move(path)), url_(std::move(url)) {
    max_vars_ = sqlite3_limit(db_.get(), SQLITE_LIMIT_VARIABLE_NUMBER, -1);
  }

  ~sqlite_store() override {
    if (checkpointer_.joinable()) {
      {
        std::lock_guard lock(cp_mu_);
        cp_stop_ = true;
      }
      cp_cv_.notify_one();
      checkpointer_.join();
    }
  }

  expected<bool, store_error> init() {
    sqlite3* db = db_.get();
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, open_busy_timeout_ms);
    if (auto r = exec("PRAGMA journal_mode=WAL", "enable WAL"); !r) {
      return r;
    }
    if (auto r = exec("PRAGMA synchronous=NORMAL", "set synchronous"); !r) {
      return r;
    }
    if (auto r = migrate(); !r) {
      return r;
    }
    // Preparing every statement now also checks the tables have the columns this build
    // expects: a conflicting schema fails the open, not a write hours later.
    for (std::size_t q = 0; q < q_count; ++q) {
      if (auto r = prepare(query_sql(static_cast<query_id>(q)), queries_[q]); !r) {
        return r;
      }
    }
    for (const table_spec* t : {&runs_table, &nodes_table, &workflows_table, &cache_table}) {
      if (auto r = upsert(*t, 1); !r) {
        return make_unexpected(r.error());
      }
    }
    sqlite3_busy_timeout(db, write_busy_timeout_ms);
    // Replaces SQLite's automatic checkpoint, which runs inside COMMIT and so in the latency of
    // every caller waiting for that commit: the hook only counts the log's frames, maintain()
    // checkpoints once the writer has answered its callers.
    sqlite3_wal_hook(
        db,
        [](void* self, sqlite3*, const char*, int frames) {
          static_cast<sqlite_store*>(self)->wal_frames_ = frames;
          return SQLITE_OK;
        },
        this);
    return true;
  }

  void maintain() override {
    std::lock_guard lock(mu_);
    if (wal_frames_ < checkpoint_frames) {
      return;
    }
    wal_frames_ = 0;
    // A checkpoint copies the log into the database and syncs it: milliseconds during which the
    // writer's thread would hold every waiting caller. In WAL mode a checkpoint may run while
    // another connection commits, so a thread of its own does it on a second connection.
    if (start_checkpointer()) {
      {
        std::lock_guard cp(cp_mu_);
        cp_due_ = true;
      }
      cp_cv_.notify_one();
      return;
    }
    // PASSIVE: never waits for readers; what it cannot copy now is copied next time.
    sqlite3_wal_checkpoint_v2(db_.get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
  }

  bool start_checkpointer() {
    if (checkpointer_.joinable()) {
      return true;
    }
    if (cp_failed_ || path_.empty() || path_ == ":memory:") {
      return false;
    }
    sqlite3* raw = nullptr;
    const int rc =
        sqlite3_open_v2(path_.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
    db_ptr cp(raw);
    if (rc != SQLITE_OK) {
      cp_failed_ = true;  // checkpoint inline, as before
      return false;
    }
    sqlite3_busy_timeout(cp.get(), write_busy_timeout_ms);
    checkpointer_ = std::thread([this, cp = std::move(cp)]() mutable {
      std::unique_lock lock(cp_mu_);
      for (;;) {
        cp_cv_.wait(lock, [&] { return cp_due_ || cp_stop_; });
        if (cp_stop_) {
          return;
        }
        cp_due_ = false;
        lock.unlock();
        sqlite3_wal_checkpoint_v2(cp.get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
        lock.lock();
      }
    });
    return true;
  }

  std::string describe() const override { return url_; }

  expected<write_outcome, store_error> write(const write_batch& batch) override {
    return guarded("sqlite write", [&]() -> expected<write_outcome, store_error> {
      write_outcome out;
      if (batch.empty()) {
        return out;
      }
      if (auto r = check_rows(batch); !r) {
        return make_unexpected(r.error());
      }
      fence_pairs fence;
      for (const auto& r : batch.runs) {
        fence.add(r.run_id, r.epoch);
      }
      for (const auto& n : batch.nodes) {
        fence.add(n.run_id, n.epoch);
      }
      std::lock_guard lock(mu_);
      // BEGIN IMMEDIATE holds the database's write lock from the fence's read to COMMIT: no
      // claim (nor any other write) runs in between, in this process or another.
      auto r = in_transaction([&]() -> expected<bool, store_error> {
        auto fenced = write_rows(batch, fence);
        if (!fenced) {
          return make_unexpected(fenced.error());
        }
        out.fenced_runs = std::move(*fenced);
        return true;
      });
      json_texts_.release_large();
      if (!r) {
        return make_unexpected(r.error());
      }
      return out;
    });
  }

  expected<claim_result, store_error> claim_run(std::string_view run_id, std::string_view owner,
                                                std::int64_t now_us,
                                                std::int64_t lease_until_us) override {
    return guarded("sqlite claim_run", [&]() -> expected<claim_result, store_error> {
      claim_result out;
      std::lock_guard lock(mu_);
      longer_busy_timeout wait{db_.get(), claim_busy_timeout_ms};
      // One transaction, so that a refusal reports the holder that caused it.
      auto r = in_transaction([&]() -> expected<bool, store_error> {
        sqlite3_stmt* s = queries_[q_claim].get();
        reset_guard g{s};
        bind_text(s, 1, run_id);
        bind_text(s, 2, owner);
        sqlite3_bind_int64(s, 3, now_us);
        sqlite3_bind_int64(s, 4, lease_until_us);
        const int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
          out.found = true;
          out.claimed = true;
          return read_holder(s, out);
        }
        if (rc != SQLITE_DONE) {
          return make_unexpected(sqlite_error(db_.get(), rc, "claim run"));
        }
        sqlite3_stmt* q = queries_[q_run_owner].get();
        reset_guard gq{q};
        bind_text(q, 1, run_id);
        const int qrc = sqlite3_step(q);
        if (qrc == SQLITE_DONE) {
          return true;  // no such run
        }
        if (qrc != SQLITE_ROW) {
          return make_unexpected(sqlite_error(db_.get(), qrc, "read run owner"));
        }
        out.found = true;
        return read_holder(q, out);
      });
      if (!r) {
        return make_unexpected(r.error());
      }
      return out;
    });
  }

  expected<std::vector<std::string>, store_error> renew_leases(
      std::string_view owner, const std::vector<lease_ref>& runs,
      std::int64_t lease_until_us) override {
    return guarded("sqlite renew_leases", [&]() -> expected<std::vector<std::string>, store_error> {
      std::vector<std::string> lost;
      if (runs.empty()) {
        return lost;
      }
      std::lock_guard lock(mu_);
      auto r = in_transaction([&]() -> expected<bool, store_error> {
        for (const lease_ref& ref : runs) {
          sqlite3_stmt* s = queries_[q_renew].get();
          reset_guard g{s};
          bind_text(s, 1, ref.run_id);
          bind_text(s, 2, owner);
          sqlite3_bind_int64(s, 3, lease_until_us);
          sqlite3_bind_int64(s, 4, ref.epoch);
          if (int rc = sqlite3_step(s); rc != SQLITE_DONE) {
            return make_unexpected(sqlite_error(db_.get(), rc, "renew lease"));
          }
          if (sqlite3_changes64(db_.get()) > 0) {
            continue;
          }
          // Not renewed: missing, finished, or held by someone else now.
          sqlite3_stmt* q = queries_[q_run_owner].get();
          reset_guard gq{q};
          bind_text(q, 1, ref.run_id);
          const int rc = sqlite3_step(q);
          if (rc == SQLITE_DONE) {
            continue;
          }
          if (rc != SQLITE_ROW) {
            return make_unexpected(sqlite_error(db_.get(), rc, "read run owner"));
          }
          if (column_text(q, 0) != owner || sqlite3_column_int64(q, 2) != ref.epoch) {
            lost.push_back(ref.run_id);
          }
        }
        return true;
      });
      if (!r) {
        return make_unexpected(r.error());
      }
      sort_ids(lost);
      return lost;
    });
  }

  expected<bool, store_error> write_dead_letters(
      const std::vector<dead_letter_row>& rows) override {
    return guarded("sqlite write_dead_letters", [&]() -> expected<bool, store_error> {
      if (rows.empty()) {
        return true;
      }
      std::vector<dead_letter_row> kept;
      kept.reserve(rows.size());
      for (const auto& r : rows) {
        kept.push_back(storable(r));
      }
      std::lock_guard lock(mu_);
      return in_transaction([&]() -> expected<bool, store_error> {
        for (const auto& d : kept) {
          sqlite3_stmt* s = queries_[q_add_dead_letter].get();
          reset_guard g{s};
          bind_text(s, 1, d.run_id);
          bind_text(s, 2, d.table);
          bind_text(s, 3, d.key);
          bind_text(s, 4, d.row);
          bind_text(s, 5, d.error);
          sqlite3_bind_int64(s, 6, d.at);
          if (int rc = sqlite3_step(s); rc != SQLITE_DONE) {
            return make_unexpected(sqlite_error(db_.get(), rc, "write dead letter"));
          }
        }
        return true;
      });
    });
  }

  expected<std::vector<dead_letter_row>, store_error> list_dead_letters(
      std::size_t limit) override {
    return guarded(
        "sqlite list_dead_letters", [&]() -> expected<std::vector<dead_letter_row>, store_error> {
          std::lock_guard lock(mu_);
          sqlite3_stmt* s = queries_[q_list_dead_letters].get();
          reset_guard g{s};
          sqlite3_bind_int64(s, 1, limit == 0 ? -1 : static_cast<std::int64_t>(limit));
          return read_all<dead_letter_row>(s, "list dead letters", &sqlite_store::read_dead_letter);
        });
  }

  expected<request_key_row, store_error> remember_request(const request_key_row& row,
                                                          std::int64_t expired_before_us) override {
    return guarded("sqlite remember_request", [&]() -> expected<request_key_row, store_error> {
      if (auto r = check_request_row(row); !r) {
        return make_unexpected(r.error());
      }
      std::optional<request_key_row> stored;
      std::lock_guard lock(mu_);
      longer_busy_timeout wait{db_.get(), request_busy_timeout_ms};
      // BEGIN IMMEDIATE holds the database's write lock from the upsert to the read of the
      // entry that stays: no other caller, in this process or another, comes in between.
      auto r = in_transaction([&]() -> expected<bool, store_error> {
        sqlite3_stmt* s = queries_[q_remember_request].get();
        reset_guard g{s};
        bind_text(s, 1, row.key);
        bind_text(s, 2, row.scope);
        bind_text(s, 3, row.request_hash);
        bind_text(s, 4, row.run_id);
        sqlite3_bind_int64(s, 5, row.created_at);
        sqlite3_bind_int64(s, 6, expired_before_us);
        if (int rc = sqlite3_step(s); rc != SQLITE_DONE) {
          return make_unexpected(sqlite_error(db_.get(), rc, "remember request"));
        }
        if (sqlite3_changes64(db_.get()) > 0) {
          stored = row;
          return true;
        }
        // An entry created at or after expired_before_us holds the key.
        sqlite3_stmt* q = queries_[q_find_request].get();
        reset_guard gq{q};
        bind_text(q, 1, row.key);
        bind_text(q, 2, row.scope);
        auto found = read_one<request_key_row>(q, "read request key", &sqlite_store::read_request);
        if (!found) {
          return make_unexpected(found.error());
        }
        if (!*found) {  // cannot happen: the write lock is held
          return make_unexpected(store_error{"sqlite: remember request: the entry vanished", true});
        }
        stored = std::move(*found);
        return true;
      });
      if (!r) {
        return make_unexpected(r.error());
      }
      return std::move(*stored);
    });
  }

  expected<std::optional<request_key_row>, store_error> find_request(
      std::string_view key, std::string_view scope) override {
    return guarded(
        "sqlite find_request", [&]() -> expected<std::optional<request_key_row>, store_error> {
          if (auto r = check_request_key(key, scope); !r) {
            return make_unexpected(r.error());
          }
          std::lock_guard lock(mu_);
          sqlite3_stmt* s = queries_[q_find_request].get();
          reset_guard g{s};
          bind_text(s, 1, key);
          bind_text(s, 2, scope);
          return read_one<request_key_row>(s, "find request key", &sqlite_store::read_request);
        });
  }

  expected<std::size_t, store_error> forget_requests(std::int64_t before_us) override {
    return guarded("sqlite forget_requests", [&]() -> expected<std::size_t, store_error> {
      std::size_t removed = 0;
      std::lock_guard lock(mu_);
      longer_busy_timeout wait{db_.get(), request_busy_timeout_ms};
      auto r = in_transaction([&]() -> expected<bool, store_error> {
        sqlite3_stmt* s = queries_[q_forget_requests].get();
        reset_guard g{s};
        sqlite3_bind_int64(s, 1, before_us);
        if (int rc = sqlite3_step(s); rc != SQLITE_DONE) {
          return make_unexpected(sqlite_error(db_.get(), rc, "forget requests"));
        }
        removed = static_cast<std::size_t>(sqlite3_changes64(db_.get()));
        return true;
      });
      if (!r) {
        return make_unexpected(r.error());
      }
      return removed;
    });
  }

  expected<std::vector<run_row>, store_error> list_runs(const run_query& q) override {
    return guarded("sqlite list_runs", [&]() -> expected<std::vector<run_row>, store_error> {
      if (q.top_level && !q.parent_run_id.empty()) {
        return std::vector<run_row>();  // a child run is never top-level
      }
      const bool paged = !q.before_run_id.empty();
      std::lock_guard lock(mu_);
      sqlite3_stmt* s =
          queries_[q.parent_run_id.empty() ? (paged ? q_list_runs_before : q_list_runs)
                                           : (paged ? q_list_child_runs_before : q_list_child_runs)]
              .get();
      reset_guard g{s};
      if (q.status) {
        const std::string_view name = to_string(*q.status);
        sqlite3_bind_text(s, 1, name.data(), static_cast<int>(name.size()), SQLITE_STATIC);
      } else {
        sqlite3_bind_null(s, 1);
      }
      if (!q.workflow.empty()) {
        sqlite3_bind_text(s, 2, q.workflow.data(), static_cast<int>(q.workflow.size()),
                          SQLITE_STATIC);
      } else {
        sqlite3_bind_null(s, 2);
      }
      sqlite3_bind_int64(s, 3, q.limit == 0 ? -1 : static_cast<std::int64_t>(q.limit));
      if (!q.parent_run_id.empty()) {
        bind_text(s, 4, q.parent_run_id);
      } else {
        sqlite3_bind_int(s, 5, q.top_level ? 1 : 0);
      }
      if (paged) {
        sqlite3_bind_int64(s, 6, q.before_started_at);
        bind_text(s, 7, q.before_run_id);
      }
      return read_all<run_row>(s, "list runs", &sqlite_store::read_run);
    });
  }

  expected<std::optional<run_row>, store_error> get_run(std::string_view run_id) override {
    return guarded("sqlite get_run", [&]() -> expected<std::optional<run_row>, store_error> {
      std::lock_guard lock(mu_);
      sqlite3_stmt* s = queries_[q_get_run].get();
      reset_guard g{s};
      bind_text(s, 1, run_id);
      return read_one<run_row>(s, "get run", &sqlite_store::read_run);
    });
  }

  expected<std::vector<node_row>, store_error> node_rows(std::string_view run_id) override {
    return guarded("sqlite node_rows", [&]() -> expected<std::vector<node_row>, store_error> {
      std::lock_guard lock(mu_);
      sqlite3_stmt* s = queries_[q_node_rows].get();
      reset_guard g{s};
      bind_text(s, 1, run_id);
      return read_all<node_row>(s, "node rows", &sqlite_store::read_node);
    });
  }

  expected<std::vector<run_row>, store_error> unfinished_runs() override {
    return guarded("sqlite unfinished_runs", [&]() -> expected<std::vector<run_row>, store_error> {
      std::lock_guard lock(mu_);
      sqlite3_stmt* s = queries_[q_unfinished].get();
      reset_guard g{s};
      return read_all<run_row>(s, "unfinished runs", &sqlite_store::read_run);
    });
  }

  expected<std::optional<workflow_row>, store_error> get_workflow(
      std::string_view name, std::string_view version) override {
    return guarded("sqlite get_workflow",
                   [&]() -> expected<std::optional<workflow_row>, store_error> {
                     std::lock_guard lock(mu_);
                     sqlite3_stmt* s = queries_[q_get_workflow].get();
                     reset_guard g{s};
                     bind_text(s, 1, name);
                     bind_text(s, 2, version);
                     return read_one<workflow_row>(s, "get workflow", &sqlite_store::read_workflow);
                   });
  }

  expected<std::optional<cache_row>, store_error> get_cache(std::string_view key) override {
    return guarded("sqlite get_cache", [&]() -> expected<std::optional<cache_row>, store_error> {
      std::lock_guard lock(mu_);
      sqlite3_stmt* s = queries_[q_get_cache].get();
      reset_guard g{s};
      bind_text(s, 1, key);
      return read_one<cache_row>(s, "get cache entry", &sqlite_store::read_cache);
    });
  }

  expected<std::vector<cache_row>, store_error> list_cache(std::string_view workflow) override {
    return guarded("sqlite list_cache", [&]() -> expected<std::vector<cache_row>, store_error> {
      std::lock_guard lock(mu_);
      sqlite3_stmt* s = queries_[q_list_cache].get();
      reset_guard g{s};
      bind_optional_text(s, 1, workflow);
      return read_all<cache_row>(s, "list cache", &sqlite_store::read_cache);
    });
  }

  expected<std::size_t, store_error> clear_cache(std::string_view workflow) override {
    return guarded("sqlite clear_cache", [&]() -> expected<std::size_t, store_error> {
      std::lock_guard lock(mu_);
      sqlite3_stmt* s = queries_[q_clear_cache].get();
      reset_guard g{s};
      bind_optional_text(s, 1, workflow);
      if (int rc = sqlite3_step(s); rc != SQLITE_DONE) {
        return make_unexpected(sqlite_error(db_.get(), rc, "clear cache"));
      }
      return static_cast<std::size_t>(sqlite3_changes64(db_.get()));
    });
  }

 private:
  // For calls that wait for the database's write lock like an open does (a claim, a request
  // key) rather than failing after write_busy_timeout_ms: the busy timeout until it goes.
  struct longer_busy_timeout {
    sqlite3* db;
    longer_busy_timeout(sqlite3* d, int ms) : db(d) { sqlite3_busy_timeout(db, ms); }
    ~longer_busy_timeout() { sqlite3_busy_timeout(db, write_busy_timeout_ms); }
    longer_busy_timeout(const longer_busy_timeout&) = delete;
    longer_busy_timeout& operator=(const longer_busy_timeout&) = delete;
  };

  struct reset_guard {
    sqlite3_stmt* s;
    ~reset_guard() {
      sqlite3_reset(s);
      sqlite3_clear_bindings(s);
    }
  };

  static void bind_text(sqlite3_stmt* s, int i, std::string_view v) {
    sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  }
  static void bind_optional_text(sqlite3_stmt* s, int i, std::string_view v) {
    if (v.empty()) {
      sqlite3_bind_null(s, i);
    } else {
      bind_text(s, i, v);
    }
  }

  // REQUIRES: mu_ is held. Runs `body` (returning expected<bool, store_error>) between BEGIN
  // IMMEDIATE and COMMIT. Whatever way it ends (an error, an exception from a write's yield), no
  // transaction stays open: every later call would fail to begin one. Some errors (a full disk,
  // an I/O error) roll back by themselves; otherwise this undoes whatever part went in.
  template <class F>
  expected<bool, store_error> in_transaction(F&& body) {
    if (int rc = step_done(queries_[q_begin].get()); rc != SQLITE_OK) {
      return make_unexpected(sqlite_error(db_.get(), rc, "begin transaction"));
    }
    struct rollback_unless_done {
      sqlite_store& self;
      ~rollback_unless_done() {
        if (sqlite3_get_autocommit(self.db_.get()) == 0) {
          step_done(self.queries_[q_rollback].get());
        }
      }
    } guard{*this};
    expected<bool, store_error> r = body();
    if (r) {
      if (int rc = step_done(queries_[q_commit].get()); rc != SQLITE_OK) {
        r = make_unexpected(sqlite_error(db_.get(), rc, "commit"));
      }
    }
    return r;
  }

  // REQUIRES: mu_ is held, inside the write's transaction. Those of the runs `ids` (distinct)
  // that are stored with another epoch than one of their `pairs` (sorted, as fence_pairs
  // gives them), sorted.
  expected<std::vector<std::string>, store_error> read_fence(
      const std::vector<std::string_view>& ids,
      const std::vector<std::pair<std::string_view, std::int64_t>>& pairs) {
    std::vector<std::string> fenced;
    if (ids.empty()) {
      return fenced;
    }
    if (!fence_) {
      if (auto r = prepare(fence_sql, fence_); !r) {
        return make_unexpected(r.error());
      }
    }
    fence_ids_.clear();
    fence_ids_ += '[';
    for (std::string_view id : ids) {
      if (fence_ids_.size() > 1) {
        fence_ids_ += ',';
      }
      append_json_string(fence_ids_, id);
    }
    fence_ids_ += ']';
    sqlite3_stmt* s = fence_.get();
    reset_guard g{s};
    bind_text(s, 1, fence_ids_);
    for (;;) {
      const int rc = sqlite3_step(s);
      if (rc == SQLITE_DONE) {
        break;
      }
      if (rc != SQLITE_ROW) {
        return make_unexpected(sqlite_error(db_.get(), rc, "read run epochs"));
      }
      const std::string_view run_id = column_text(s, 0);
      const std::int64_t stored = sqlite3_column_int64(s, 1);
      auto it = std::lower_bound(pairs.begin(), pairs.end(), run_id,
                                 [](const auto& p, std::string_view id) { return p.first < id; });
      for (; it != pairs.end() && it->first == run_id; ++it) {
        if (it->second != stored) {
          fenced.emplace_back(run_id);
          break;
        }
      }
    }
    sort_ids(fenced);
    return fenced;
  }

  // Reads owner, lease_until, epoch and status (the first four columns) into `out`.
  static expected<bool, store_error> read_holder(sqlite3_stmt* s, claim_result& out) {
    out.owner = column_text(s, 0);
    out.lease_until = sqlite3_column_int64(s, 1);
    out.epoch = sqlite3_column_int64(s, 2);
    auto status = parse_run_status(column_text(s, 3));
    if (!status) {
      return make_unexpected(
          store_error{"unknown run status '" + std::string(column_text(s, 3)) + "'", false});
    }
    out.status = *status;
    return true;
  }

  // Runs a statement that returns no rows; SQLITE_OK when it completed.
  static int step_done(sqlite3_stmt* s) {
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
  }

  expected<bool, store_error> exec(const char* sql, std::string_view doing) {
    char* err = nullptr;
    const int rc = sqlite3_exec(db_.get(), sql, nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
      store_error e = sqlite_error(db_.get(), rc, doing);
      if (err != nullptr) {
        e.message =
            "sqlite: " + std::string(doing) + ": " + err + " (code " + std::to_string(rc) + ")";
        sqlite3_free(err);
      }
      return make_unexpected(std::move(e));
    }
    return true;
  }

  expected<bool, store_error> prepare(const std::string& sql, stmt_ptr& out) {
    sqlite3_stmt* s = nullptr;
    const int rc = sqlite3_prepare_v3(db_.get(), sql.c_str(), static_cast<int>(sql.size() + 1),
                                      SQLITE_PREPARE_PERSISTENT, &s, nullptr);
    if (rc != SQLITE_OK) {
      store_error e = sqlite_error(db_.get(), rc, "prepare");
      if (!e.transient) {
        e.message += "; the database's tables do not match the schema this troupe expects";
      }
      return make_unexpected(std::move(e));
    }
    out.reset(s);
    return true;
  }

  expected<sqlite3_stmt*, store_error> upsert(const table_spec& t, int rows) {
    stmt_ptr& slot = upserts_[{&t, rows}];
    if (!slot) {
      if (auto r = prepare(upsert_sql(t, rows), slot); !r) {
        upserts_.erase({&t, rows});
        return make_unexpected(r.error());
      }
    }
    return slot.get();
  }

  expected<bool, store_error> migrate() {
    if (auto r = exec("BEGIN IMMEDIATE", "begin migration"); !r) {
      return r;
    }
    auto r = migrate_in_transaction();
    if (r) {
      r = exec("COMMIT", "commit migration");
    }
    if (!r && sqlite3_get_autocommit(db_.get()) == 0) {
      exec("ROLLBACK", "roll back migration");
    }
    return r;
  }

  expected<bool, store_error> migrate_in_transaction() {
    if (auto r = exec("CREATE TABLE IF NOT EXISTS troupe_schema (version INTEGER NOT NULL)",
                      "create troupe_schema");
        !r) {
      return r;
    }
    stmt_ptr q;
    if (auto r = prepare("SELECT coalesce(max(version), 0) FROM troupe_schema", q); !r) {
      return r;
    }
    const int rc = sqlite3_step(q.get());
    if (rc != SQLITE_ROW) {
      return make_unexpected(sqlite_error(db_.get(), rc, "read schema version"));
    }
    const sqlite3_int64 found = sqlite3_column_int64(q.get(), 0);
    q.reset();
    if (found > current_schema_version) {
      return make_unexpected(store_error{schema_too_new_message(found), false});
    }
    for (const migration& m : migrations) {
      if (m.version <= found) {
        continue;
      }
      for (std::size_t i = 0; i < m.count; ++i) {
        const std::string doing = "migrate to schema version " + std::to_string(m.version);
        if (auto r = exec(m.statements[i], doing); !r) {
          return r;
        }
      }
      const std::string stamp =
          "INSERT INTO troupe_schema (version) VALUES (" + std::to_string(m.version) + ")";
      if (auto r = exec(stamp.c_str(), "stamp schema version"); !r) {
        return r;
      }
    }
    return true;
  }

  // `statements`: those of this batch so far, over every table (the yield goes between
  // statements, not before the first).
  // `changes`, when given, adds up the rows the statements inserted or updated.
  template <class Row>
  expected<bool, store_error> write_table(const table_spec& t, const std::vector<const Row*>& rows,
                                          std::size_t& statements, std::string_view what,
                                          std::int64_t* changes = nullptr) {
    const int max_rows = std::max(1, max_vars_ / static_cast<int>(t.column_count));
    std::size_t done = 0;
    const int max_chunk =
        slices_writes() ? std::min(max_rows, static_cast<int>(write_slice_rows)) : max_rows;
    while (done < rows.size()) {
      if (statements++ > 0) {
        yield_between_slices();
      }
      const std::size_t left = rows.size() - done;
      int n = 1;
      for (int c : chunk_sizes) {
        if (c <= max_chunk && static_cast<std::size_t>(c) <= left) {
          n = c;
          break;
        }
      }
      auto s = upsert(t, n);
      if (!s) {
        return make_unexpected(s.error());
      }
      sqlite3_stmt* st = *s;
      json_texts_.reuse();
      binder b(st, json_texts_);
      for (int i = 0; i < n; ++i) {
        if (auto r = bind(b, *rows[done + static_cast<std::size_t>(i)]); !r) {
          sqlite3_clear_bindings(st);
          return r;
        }
      }
      if (b.rc() != SQLITE_OK) {
        sqlite3_clear_bindings(st);
        return make_unexpected(sqlite_error(db_.get(), b.rc(), "bind " + std::string(what)));
      }
      const int rc = sqlite3_step(st);
      sqlite3_reset(st);
      if (rc != SQLITE_DONE) {
        return make_unexpected(sqlite_error(db_.get(), rc, "write " + std::string(what)));
      }
      if (changes != nullptr) {
        *changes += sqlite3_changes64(db_.get());
      }
      done += static_cast<std::size_t>(n);
    }
    return true;
  }

  static expected<bool, store_error> bind(binder& b, const run_row& r) {
    auto status = status_name(r.status);
    if (!status) {
      return make_unexpected(status.error());
    }
    bind_row(b, r, *status);
    return true;
  }
  static expected<bool, store_error> bind(binder& b, const node_row& r) {
    auto status = status_name(r.status);
    if (!status) {
      return make_unexpected(status.error());
    }
    auto cache = status_name(r.cache);
    if (!cache) {
      return make_unexpected(cache.error());
    }
    auto spec_cache = status_name(r.spec_cache);
    if (!spec_cache) {
      return make_unexpected(spec_cache.error());
    }
    b.text(r.run_id);
    b.text(r.node_id);
    b.integer(r.item);
    b.integer(r.attempt);
    b.text(*status);
    b.json(r.input);
    b.json(r.output);
    b.text(r.error);
    b.text(*cache);
    b.integer(r.started_at);
    b.integer(r.finished_at);
    b.text(r.worker);
    b.text(*spec_cache);
    b.text(r.child_run_id);
    b.integer(r.started_seq);
    b.integer(r.finished_seq);
    b.integer(r.lost);
    return true;
  }
  static expected<bool, store_error> bind(binder& b, const workflow_row& r) {
    b.text(r.name);
    b.text(r.version);
    b.text(r.hash);
    b.text(r.document);
    b.integer(r.registered_at);
    return true;
  }
  static expected<bool, store_error> bind(binder& b, const cache_row& r) {
    b.text(r.key);
    b.text(r.workflow);
    b.text(r.node_id);
    b.json(r.value);
    b.text(r.kind);
    b.integer(r.created_at);
    return true;
  }

  // REQUIRES: mu_ is held, inside the write's transaction. Writes every row of the batch but
  // those of fenced runs, and returns the fenced runs, sorted. `fence`: the batch's (run, epoch)
  // pairs. A run whose row is in the batch with the run's one epoch in it (the common case: an
  // engine writes a run's rows under one epoch) is fenced by the runs upsert itself (its WHERE
  // clause) at no cost: only when the upsert changed fewer rows than it was given are those
  // runs' epochs read, to tell which were refused. Other runs with pairs (node rows without
  // their run's row, mixed epochs) have their stored epochs read before anything is written.
  expected<std::vector<std::string>, store_error> write_rows(const write_batch& batch,
                                                             fence_pairs& fence) {
    const bool unique = batch.unique_keys;
    auto runs = rows_to_write(batch.runs, run_key, unique);
    auto nodes = rows_to_write(batch.nodes, node_key, unique);
    std::vector<std::string> fenced;
    std::vector<std::string_view> by_upsert;  // runs the upsert's WHERE clause fences
    const auto drop_fenced = [&](auto& rows) {
      if (!fenced.empty()) {
        std::erase_if(rows, [&](const auto* row) {
          return std::binary_search(fenced.begin(), fenced.end(), row->run_id);
        });
      }
    };
    if (!fence.empty()) {
      const auto& pairs = fence.pairs();
      std::vector<std::pair<std::string_view, std::int64_t>> row_epochs;  // of the run rows
      row_epochs.reserve(runs.size());
      for (const run_row* r : runs) {
        row_epochs.emplace_back(r->run_id, r->epoch);
      }
      std::sort(row_epochs.begin(), row_epochs.end());
      std::vector<std::string_view> lookups;
      for (auto at = pairs.begin(); at != pairs.end();) {
        auto end = at;
        while (end != pairs.end() && end->first == at->first) {
          ++end;
        }
        auto row =
            std::lower_bound(row_epochs.begin(), row_epochs.end(), at->first,
                             [](const auto& p, std::string_view id) { return p.first < id; });
        const bool one_epoch_in_its_row = end - at == 1 && row != row_epochs.end() &&
                                          row->first == at->first && row->second == at->second;
        (one_epoch_in_its_row ? by_upsert : lookups).push_back(at->first);
        at = end;
      }
      if (!lookups.empty()) {
        auto f = read_fence(lookups, pairs);
        if (!f) {
          return make_unexpected(f.error());
        }
        fenced = std::move(*f);
        drop_fenced(runs);
      }
    }
    std::size_t statements = 0;
    std::int64_t runs_changed = 0;
    if (auto r = write_table(runs_table, runs, statements, "runs", &runs_changed); !r) {
      return make_unexpected(r.error());
    }
    if (!by_upsert.empty() && runs_changed < static_cast<std::int64_t>(runs.size())) {
      // Refused rows kept their stored epoch; the others have the batch's now.
      auto f = read_fence(by_upsert, fence.pairs());
      if (!f) {
        return make_unexpected(f.error());
      }
      fenced.insert(fenced.end(), f->begin(), f->end());
      sort_ids(fenced);
    }
    drop_fenced(nodes);
    if (auto r = write_table(nodes_table, nodes, statements, "node executions"); !r) {
      return make_unexpected(r.error());
    }
    if (auto r = write_table(workflows_table, rows_to_write(batch.workflows, workflow_key, unique),
                             statements, "workflows");
        !r) {
      return make_unexpected(r.error());
    }
    if (auto r = write_table(cache_table, rows_to_write(batch.cache, cache_key, unique), statements,
                             "cache entries");
        !r) {
      return make_unexpected(r.error());
    }
    return fenced;
  }

  template <class Row>
  using reader = expected<Row, store_error> (*)(sqlite3_stmt*);

  template <class Row>
  expected<std::vector<Row>, store_error> read_all(sqlite3_stmt* s, std::string_view doing,
                                                   reader<Row> read) {
    std::vector<Row> out;
    for (;;) {
      const int rc = sqlite3_step(s);
      if (rc == SQLITE_DONE) {
        return out;
      }
      if (rc != SQLITE_ROW) {
        return make_unexpected(sqlite_error(db_.get(), rc, doing));
      }
      auto row = read(s);
      if (!row) {
        return make_unexpected(row.error());
      }
      out.push_back(std::move(*row));
    }
  }

  template <class Row>
  expected<std::optional<Row>, store_error> read_one(sqlite3_stmt* s, std::string_view doing,
                                                     reader<Row> read) {
    const int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
      return std::optional<Row>();
    }
    if (rc != SQLITE_ROW) {
      return make_unexpected(sqlite_error(db_.get(), rc, doing));
    }
    auto row = read(s);
    if (!row) {
      return make_unexpected(row.error());
    }
    return std::optional<Row>(std::move(*row));
  }

  static expected<run_row, store_error> read_run(sqlite3_stmt* s) {
    run_row r;
    r.run_id = column_text(s, 0);
    r.workflow = column_text(s, 1);
    r.version = column_text(s, 2);
    r.plan_hash = column_text(s, 3);
    auto status = parse_run_status(column_text(s, 4));
    if (!status) {
      return make_unexpected(store_error{
          "run " + r.run_id + ": unknown status '" + std::string(column_text(s, 4)) + "'", false});
    }
    r.status = *status;
    auto inputs = column_json(s, 5, "inputs of run " + r.run_id);
    if (!inputs) {
      return make_unexpected(inputs.error());
    }
    r.inputs = std::move(*inputs);
    auto outputs = column_json(s, 6, "outputs of run " + r.run_id);
    if (!outputs) {
      return make_unexpected(outputs.error());
    }
    r.outputs = std::move(*outputs);
    r.error = column_text(s, 7);
    r.started_at = sqlite3_column_int64(s, 8);
    r.finished_at = sqlite3_column_int64(s, 9);
    r.parent_run_id = column_text(s, 10);
    r.parent_node_id = column_text(s, 11);
    r.owner = column_text(s, 12);
    r.lease_until = sqlite3_column_int64(s, 13);
    r.epoch = sqlite3_column_int64(s, 14);
    return r;
  }

  static expected<dead_letter_row, store_error> read_dead_letter(sqlite3_stmt* s) {
    dead_letter_row r;
    r.run_id = column_text(s, 0);
    r.table = column_text(s, 1);
    r.key = column_text(s, 2);
    r.row = column_text(s, 3);
    r.error = column_text(s, 4);
    r.at = sqlite3_column_int64(s, 5);
    return r;
  }

  static expected<node_row, store_error> read_node(sqlite3_stmt* s) {
    node_row r;
    r.run_id = column_text(s, 0);
    r.node_id = column_text(s, 1);
    r.item = sqlite3_column_int64(s, 2);
    r.attempt = sqlite3_column_int(s, 3);
    const std::string where = "node " + r.run_id + "/" + r.node_id;
    auto status = parse_node_status(column_text(s, 4));
    if (!status) {
      return make_unexpected(
          store_error{where + ": unknown status '" + std::string(column_text(s, 4)) + "'", false});
    }
    r.status = *status;
    auto input = column_json(s, 5, "input of " + where);
    if (!input) {
      return make_unexpected(input.error());
    }
    r.input = std::move(*input);
    auto output = column_json(s, 6, "output of " + where);
    if (!output) {
      return make_unexpected(output.error());
    }
    r.output = std::move(*output);
    r.error = column_text(s, 7);
    auto cache = parse_cache_status(column_text(s, 8));
    if (!cache) {
      return make_unexpected(store_error{
          where + ": unknown cache status '" + std::string(column_text(s, 8)) + "'", false});
    }
    r.cache = *cache;
    r.started_at = sqlite3_column_int64(s, 9);
    r.finished_at = sqlite3_column_int64(s, 10);
    r.worker = column_text(s, 11);
    auto spec_cache = parse_cache_status(column_text(s, 12));
    if (!spec_cache) {
      return make_unexpected(store_error{
          where + ": unknown spec cache status '" + std::string(column_text(s, 12)) + "'", false});
    }
    r.spec_cache = *spec_cache;
    r.child_run_id = column_text(s, 13);
    r.started_seq = sqlite3_column_int64(s, 14);
    r.finished_seq = sqlite3_column_int64(s, 15);
    r.lost = static_cast<std::int32_t>(sqlite3_column_int64(s, 16));
    return r;
  }

  static expected<request_key_row, store_error> read_request(sqlite3_stmt* s) {
    request_key_row r;
    r.key = column_text(s, 0);
    r.scope = column_text(s, 1);
    r.request_hash = column_text(s, 2);
    r.run_id = column_text(s, 3);
    r.created_at = sqlite3_column_int64(s, 4);
    return r;
  }

  static expected<workflow_row, store_error> read_workflow(sqlite3_stmt* s) {
    workflow_row r;
    r.name = column_text(s, 0);
    r.version = column_text(s, 1);
    r.hash = column_text(s, 2);
    r.document = column_text(s, 3);
    r.registered_at = sqlite3_column_int64(s, 4);
    return r;
  }

  static expected<cache_row, store_error> read_cache(sqlite3_stmt* s) {
    cache_row r;
    r.key = column_text(s, 0);
    r.workflow = column_text(s, 1);
    r.node_id = column_text(s, 2);
    auto value = column_json(s, 3, "value of cache entry " + r.key);
    if (!value) {
      return make_unexpected(value.error());
    }
    r.value = std::move(*value);
    r.kind = column_text(s, 4);
    r.created_at = sqlite3_column_int64(s, 5);
    return r;
  }

  mutable std::mutex mu_;
  db_ptr db_;
  std::string path_;
  std::string url_;
  // The background checkpointer (see maintain()).
  std::thread checkpointer_;
  std::mutex cp_mu_;
  std::condition_variable cp_cv_;
  bool cp_due_ = false;
  bool cp_stop_ = false;
  bool cp_failed_ = false;
  int max_vars_ = 999;
  int wal_frames_ = 0;     // frames in the write-ahead log after the last commit
  json_texts json_texts_;  // write_table's, kept between writes for their capacity
  static constexpr int checkpoint_frames = 1000;  // SQLite's own default threshold
  std::array<stmt_ptr, q_count> queries_;
  std::map<std::pair<const table_spec*, int>, stmt_ptr> upserts_;
  stmt_ptr fence_;         // read_fence's statement, prepared at its first use
  std::string fence_ids_;  // read_fence's JSON array, kept for its capacity
};

}  // namespace

expected<std::unique_ptr<store>, store_error> open_sqlite_store(std::string path, std::string url) {
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(
      path.c_str(), &raw,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
      nullptr);
  db_ptr db(raw);
  if (rc != SQLITE_OK) {
    store_error e = sqlite_error(db.get(), rc, "open " + path);
    return make_unexpected(std::move(e));
  }
  auto s = std::make_unique<sqlite_store>(std::move(db), path, std::move(url));
  if (auto r = s->init(); !r) {
    return make_unexpected(r.error());
  }
  return std::unique_ptr<store>(std::move(s));
}

}  // namespace troupe::detail
