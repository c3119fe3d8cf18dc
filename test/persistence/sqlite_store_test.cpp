#define BOOST_TEST_MODULE persistence sqlite store
#include <boost/test/unit_test.hpp>

#include <malloc.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "test/persistence/conformance.hpp"

namespace utf = boost::unit_test;
namespace fs = std::filesystem;

namespace troupe::test {

namespace {

/// A fresh database path under the temp directory; the files go when the test binary exits.
struct temp_dir {
  fs::path path;
  temp_dir() {
    path = fs::temp_directory_path() / ("troupe-sqlite-test-" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

temp_dir& scratch() {
  static temp_dir d;
  return d;
}

std::string fresh_path() {
  static std::atomic<int> n{0};
  return (scratch().path / ("db" + std::to_string(n++) + ".db")).string();
}

std::unique_ptr<store> must_open(const std::string& path) {
  auto s = open_store("sqlite://" + path);
  BOOST_REQUIRE_MESSAGE(s.has_value(), "open failed: " << error_of(s));
  return std::move(*s);
}

/// A raw connection, as another process would have.
struct raw_db {
  sqlite3* db = nullptr;
  explicit raw_db(const std::string& path) {
    BOOST_REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  }
  ~raw_db() { sqlite3_close(db); }
  void exec(const std::string& sql) {
    char* err = nullptr;
    const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    BOOST_REQUIRE_MESSAGE(rc == SQLITE_OK, sql << ": " << (err ? err : "?"));
  }
  std::string text(const std::string& sql) {
    sqlite3_stmt* s = nullptr;
    BOOST_REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) == SQLITE_OK);
    std::string out;
    while (sqlite3_step(s) == SQLITE_ROW) {
      if (!out.empty()) {
        out += "\n";
      }
      for (int i = 0; i < sqlite3_column_count(s); ++i) {
        const auto* t = sqlite3_column_text(s, i);
        out += (i ? "|" : "") + std::string(t ? reinterpret_cast<const char*>(t) : "NULL");
      }
    }
    sqlite3_finalize(s);
    return out;
  }
};

}  // namespace

std::unique_ptr<store> make_test_store() {
  return must_open(fresh_path());
}

boost::test_tools::assertion_result backend_available(utf::test_unit_id) {
  return true;
}

BOOST_AUTO_TEST_SUITE(sqlite_schema)

BOOST_AUTO_TEST_CASE(creates_a_fresh_database_file_in_wal_mode, *utf::timeout(30)) {
  const std::string path = fresh_path();
  BOOST_REQUIRE(!fs::exists(path));
  auto s = must_open(path);
  BOOST_TEST(fs::exists(path));
  BOOST_TEST(s->describe() == "sqlite://" + path);
  raw_db raw(path);
  BOOST_TEST(raw.text("PRAGMA journal_mode") == "wal");
  BOOST_TEST(raw.text("SELECT version FROM troupe_schema ORDER BY version") == "1\n2\n3\n4\n5");
  BOOST_TEST(raw.text("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name") ==
             "cache_entries\ndead_letters\nnode_executions\nrequest_keys\nruns\nsqlite_sequence\n"
             "troupe_schema\nworkflows");
}

BOOST_AUTO_TEST_CASE(accepts_relative_paths, *utf::timeout(30)) {
  const fs::path old = fs::current_path();
  fs::current_path(scratch().path);
  auto s = open_store("sqlite://relative.db");
  fs::current_path(old);
  BOOST_REQUIRE_MESSAGE(s.has_value(), error_of(s));
  BOOST_TEST(fs::exists(scratch().path / "relative.db"));
}

BOOST_AUTO_TEST_CASE(changes_nothing_when_reopened, *utf::timeout(30)) {
  const std::string path = fresh_path();
  run_row run = sample_run("r1");
  {
    auto s = must_open(path);
    must_write(*s, write_batch{{run}, {}, {}, {}});
  }
  raw_db raw(path);
  const std::string schema_before = raw.text("SELECT sql FROM sqlite_master ORDER BY name");
  auto again = must_open(path);
  auto third = must_open(path);  // two stores on one file at once are fine too
  BOOST_TEST(raw.text("SELECT sql FROM sqlite_master ORDER BY name") == schema_before);
  BOOST_TEST(raw.text("SELECT version FROM troupe_schema ORDER BY version") == "1\n2\n3\n4\n5");
  auto got = again->get_run("r1");
  BOOST_REQUIRE(got.has_value() && got->has_value());
  check_same(**got, run);
}

BOOST_AUTO_TEST_CASE(refuses_a_database_with_a_newer_schema, *utf::timeout(30)) {
  const std::string path = fresh_path();
  must_open(path);
  raw_db(path).exec("INSERT INTO troupe_schema (version) VALUES (99)");
  auto s = open_store("sqlite://" + path);
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient);
  BOOST_TEST(s.error().message ==
             "database schema version 99 is newer than this troupe supports (5); upgrade troupe");
}

BOOST_AUTO_TEST_CASE(refuses_tables_that_conflict_with_the_schema, *utf::timeout(30)) {
  const std::string path = fresh_path();
  raw_db(path).exec("CREATE TABLE runs (run_id TEXT PRIMARY KEY, something_else TEXT)");
  auto s = open_store("sqlite://" + path);
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient, s.error().message);
  BOOST_TEST(s.error().message.find("runs") != std::string::npos, s.error().message);

  // Stamped as current but with a column missing: caught when the statements are prepared.
  const std::string stamped = fresh_path();
  {
    raw_db raw(stamped);
    raw.exec("CREATE TABLE troupe_schema (version INTEGER NOT NULL)");
    raw.exec("INSERT INTO troupe_schema VALUES (" + std::to_string(schema_version()) + ")");
    raw.exec("CREATE TABLE runs (run_id TEXT PRIMARY KEY)");
  }
  auto t = open_store("sqlite://" + stamped);
  BOOST_REQUIRE(!t.has_value());
  BOOST_TEST(!t.error().transient, t.error().message);
  BOOST_TEST(t.error().message.find("do not match") != std::string::npos, t.error().message);
}

BOOST_AUTO_TEST_CASE(a_missing_directory_is_a_permanent_error, *utf::timeout(30)) {
  auto s = open_store("sqlite://" + (scratch().path / "no" / "such" / "dir.db").string());
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient, s.error().message);
}

BOOST_AUTO_TEST_CASE(reads_node_rows_through_the_primary_key_index, *utf::timeout(30)) {
  const std::string path = fresh_path();
  must_open(path);
  const std::string plan = raw_db(path).text(
      "EXPLAIN QUERY PLAN SELECT * FROM node_executions WHERE run_id = 'x' "
      "ORDER BY started_at, node_id, item, attempt");
  BOOST_TEST(
      plan.find("USING INDEX sqlite_autoindex_node_executions_1 (run_id=?)") != std::string::npos,
      plan);
}

BOOST_AUTO_TEST_CASE(lists_child_runs_through_the_parent_index, *utf::timeout(30)) {
  const std::string path = fresh_path();
  must_open(path);
  // The store's q_list_child_runs statement.
  const std::string plan = raw_db(path).text(
      "EXPLAIN QUERY PLAN SELECT * FROM runs WHERE parent_run_id = 'x' AND parent_run_id <> '' "
      "AND (NULL IS NULL OR status = NULL) AND (NULL IS NULL OR workflow = NULL) "
      "ORDER BY started_at DESC, run_id DESC LIMIT 50");
  BOOST_TEST(plan.find("USING INDEX runs_parent (parent_run_id=?)") != std::string::npos, plan);
  BOOST_TEST(plan.find("TEMP B-TREE") == std::string::npos, plan);  // the index gives the order
}

BOOST_AUTO_TEST_CASE(pages_runs_from_the_cursor_through_the_started_and_parent_indexes,
                     *utf::timeout(30)) {
  const std::string path = fresh_path();
  must_open(path);
  raw_db raw(path);
  // The store's list_runs statements, parameters as it numbers them.
  const std::string filters = "(?1 IS NULL OR status = ?1) AND (?2 IS NULL OR workflow = ?2) ";
  const std::string top = "AND (NOT ?5 OR ifnull(parent_run_id, '') = '') ";
  const std::string order = "ORDER BY started_at DESC, run_id DESC LIMIT ?3";
  const std::string cursor = "AND (started_at, run_id) < (?6, ?7) ";
  const std::string children =
      "SELECT * FROM runs WHERE parent_run_id = ?4 AND parent_run_id <> '' AND ";

  // q_list_runs_before: a search of runs_started that starts at the cursor (the row value is a
  // range constraint of the index), and no sort: the index gives the order.
  std::string plan =
      raw.text("EXPLAIN QUERY PLAN SELECT * FROM runs WHERE " + filters + top + cursor + order);
  BOOST_TEST(plan.find("SEARCH runs USING INDEX runs_started ((started_at,run_id)<(?,?))") !=
                 std::string::npos,
             plan);
  BOOST_TEST(plan.find("TEMP B-TREE") == std::string::npos, plan);
  // q_list_child_runs_before: runs_parent, from the parent's entry at the cursor.
  plan = raw.text("EXPLAIN QUERY PLAN " + children + filters + cursor + order);
  BOOST_TEST(plan.find("USING INDEX runs_parent (parent_run_id=? AND (started_at,run_id)<(?,?))") !=
                 std::string::npos,
             plan);
  BOOST_TEST(plan.find("TEMP B-TREE") == std::string::npos, plan);
  // q_list_runs: the first page walks runs_started from its end.
  plan = raw.text("EXPLAIN QUERY PLAN SELECT * FROM runs WHERE " + filters + top + order);
  BOOST_TEST(plan.find("USING INDEX runs_started") != std::string::npos, plan);
  BOOST_TEST(plan.find("TEMP B-TREE") == std::string::npos, plan);
}

// Version 1 exactly as troupe wrote it (sqlite_store.cpp before version 2), with its
// bookkeeping: troupe_schema holding one row, 1.
constexpr const char* v1_schema[] = {
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
    "CREATE TABLE IF NOT EXISTS troupe_schema (version INTEGER NOT NULL)",
    "INSERT INTO troupe_schema (version) VALUES (1)",
};

BOOST_AUTO_TEST_CASE(migrates_a_version_1_database_in_place, *utf::timeout(30)) {
  const std::string path = fresh_path();
  {
    raw_db raw(path);
    raw.exec("PRAGMA journal_mode=WAL");
    create_v1_database(raw, v1_schema);
  }

  auto s = must_open(path);
  raw_db raw(path);
  BOOST_TEST(raw.text("SELECT version FROM troupe_schema ORDER BY version") == "1\n2\n3\n4\n5");

  check_v1_rows_migrated(*s);
  check_old_runs_take_part_in_ownership(*s);

  // The migrated schema is the one a fresh database gets, and opening again changes nothing.
  const std::string fresh = fresh_path();
  must_open(fresh);
  const std::string schema_sql =
      "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name";
  const std::string migrated = raw.text(schema_sql);
  BOOST_TEST(migrated.find("child_run_id TEXT NOT NULL DEFAULT ''") != std::string::npos, migrated);
  BOOST_TEST(migrated.find("CREATE INDEX runs_parent") != std::string::npos, migrated);
  BOOST_TEST(migrated == raw_db(fresh).text(schema_sql));
  must_open(path);
  BOOST_TEST(raw.text("SELECT version FROM troupe_schema ORDER BY version") == "1\n2\n3\n4\n5");
}

// Version 2 exactly as troupe wrote it (sqlite_store.cpp before version 3): version 1's
// statements, then version 2's, each stamped.
constexpr const char* v2_schema[] = {
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
    "CREATE TABLE IF NOT EXISTS troupe_schema (version INTEGER NOT NULL)",
    "INSERT INTO troupe_schema (version) VALUES (1)",
    "ALTER TABLE node_executions ADD COLUMN spec_cache TEXT NOT NULL DEFAULT 'off'",
    "ALTER TABLE node_executions ADD COLUMN child_run_id TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX runs_parent ON runs (parent_run_id, started_at, run_id) "
    "WHERE parent_run_id <> ''",
    "INSERT INTO troupe_schema (version) VALUES (2)",
};

BOOST_AUTO_TEST_CASE(migrates_a_version_2_database_in_place, *utf::timeout(30)) {
  const std::string path = fresh_path();
  {
    raw_db raw(path);
    raw.exec("PRAGMA journal_mode=WAL");
    create_v2_database(raw, v2_schema);
  }

  auto s = must_open(path);
  raw_db raw(path);
  BOOST_TEST(raw.text("SELECT version FROM troupe_schema ORDER BY version") == "1\n2\n3\n4\n5");

  check_v2_rows_migrated(*s);
  check_old_runs_take_part_in_ownership(*s);

  const std::string fresh = fresh_path();
  must_open(fresh);
  const std::string schema_sql =
      "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name";
  const std::string migrated = raw.text(schema_sql);
  BOOST_TEST(migrated.find("epoch INTEGER NOT NULL DEFAULT 0") != std::string::npos, migrated);
  BOOST_TEST(migrated.find("CREATE TABLE dead_letters") != std::string::npos, migrated);
  BOOST_TEST(migrated == raw_db(fresh).text(schema_sql));
  must_open(path);
  BOOST_TEST(raw.text("SELECT version FROM troupe_schema ORDER BY version") == "1\n2\n3\n4\n5");
}

// Version 3 exactly as troupe wrote it (sqlite_store.cpp before version 4): version 2's
// statements, then version 3's, each stamped.
constexpr const char* v3_schema[] = {
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
    "CREATE TABLE IF NOT EXISTS troupe_schema (version INTEGER NOT NULL)",
    "INSERT INTO troupe_schema (version) VALUES (1)",
    "ALTER TABLE node_executions ADD COLUMN spec_cache TEXT NOT NULL DEFAULT 'off'",
    "ALTER TABLE node_executions ADD COLUMN child_run_id TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX runs_parent ON runs (parent_run_id, started_at, run_id) "
    "WHERE parent_run_id <> ''",
    "INSERT INTO troupe_schema (version) VALUES (2)",
    "ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE runs ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
    R"(CREATE TABLE dead_letters (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  run_id TEXT NOT NULL,
  tbl TEXT NOT NULL,
  key TEXT NOT NULL,
  "row" TEXT NOT NULL,
  error TEXT NOT NULL,
  at INTEGER NOT NULL))",
    "INSERT INTO troupe_schema (version) VALUES (3)",
};

BOOST_AUTO_TEST_CASE(migrates_a_version_3_database_in_place, *utf::timeout(30)) {
  const std::string path = fresh_path();
  {
    raw_db raw(path);
    raw.exec("PRAGMA journal_mode=WAL");
    create_v3_database(raw, v3_schema);
  }

  auto s = must_open(path);
  raw_db raw(path);
  BOOST_TEST(raw.text("SELECT version FROM troupe_schema ORDER BY version") == "1\n2\n3\n4\n5");

  check_v3_rows_migrated(*s);

  const std::string fresh = fresh_path();
  must_open(fresh);
  const std::string schema_sql =
      "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name";
  const std::string migrated = raw.text(schema_sql);
  BOOST_TEST(migrated.find("finished_seq INTEGER NOT NULL DEFAULT 0") != std::string::npos,
             migrated);
  BOOST_TEST(migrated.find("lost INTEGER NOT NULL DEFAULT 0") != std::string::npos, migrated);
  BOOST_TEST(migrated.find("CREATE TABLE request_keys") != std::string::npos, migrated);
  BOOST_TEST(migrated.find("CREATE INDEX request_keys_created") != std::string::npos, migrated);
  BOOST_TEST(migrated == raw_db(fresh).text(schema_sql));
  must_open(path);
  BOOST_TEST(raw.text("SELECT version FROM troupe_schema ORDER BY version") == "1\n2\n3\n4\n5");
  BOOST_TEST(raw.text("SELECT count(*) FROM request_keys") == "1");
}

BOOST_AUTO_TEST_CASE(forgets_requests_through_the_created_at_index, *utf::timeout(30)) {
  const std::string path = fresh_path();
  must_open(path);
  const std::string plan =
      raw_db(path).text("EXPLAIN QUERY PLAN DELETE FROM request_keys WHERE created_at < 5");
  BOOST_TEST(plan.find("request_keys_created") != std::string::npos, plan);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(sqlite_errors)

// Enough commits that maintain() hands checkpoints to the store's background checkpointer,
// which then runs while later batches commit: every row is there, and closing the store stops
// the checkpointer cleanly (the test would hang or crash otherwise).
BOOST_AUTO_TEST_CASE(commits_go_on_while_the_log_is_checkpointed_in_the_background,
                     *utf::timeout(60)) {
  const std::string path = fresh_path();
  constexpr int batches = 40;
  constexpr int per_batch = 200;
  {
    auto s = must_open(path);
    for (int b = 0; b < batches; ++b) {
      write_batch batch;
      for (int i = 0; i < per_batch; ++i) {
        node_row r;
        r.run_id = "run" + std::to_string(b);
        r.node_id = "n" + std::to_string(i);
        r.attempt = 1;
        r.status = node_status::succeeded;
        r.output = std::make_shared<const json::value>(std::string(200, 'x'));
        batch.nodes.push_back(std::move(r));
      }
      must_write(*s, batch);
      s->maintain();
    }
  }
  raw_db raw(path);
  BOOST_TEST(raw.text("SELECT count(*) FROM node_executions") ==
             std::to_string(batches * per_batch));
}

BOOST_AUTO_TEST_CASE(a_write_lock_held_elsewhere_fails_writes_transiently, *utf::timeout(30)) {
  const std::string path = fresh_path();
  auto s = must_open(path);
  raw_db other(path);
  other.exec("BEGIN IMMEDIATE");
  other.exec("INSERT INTO troupe_schema VALUES (1)");  // really holding the write lock
  auto r = s->write(write_batch{{sample_run("r1")}, {}, {}, {}});
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().transient, r.error().message);
  BOOST_TEST(r.error().message.find("locked") != std::string::npos, r.error().message);
  // Readers are not blocked by the writer in WAL mode.
  auto runs = s->list_runs({});
  BOOST_TEST(runs.has_value());
  other.exec("ROLLBACK");
  must_write(*s, write_batch{{sample_run("r1")}, {}, {}, {}});
  auto got = s->get_run("r1");
  BOOST_REQUIRE(got.has_value());
  BOOST_TEST(got->has_value());
}

BOOST_AUTO_TEST_CASE(a_failure_late_in_a_batch_rolls_back_its_earlier_tables, *utf::timeout(30)) {
  const std::string path = fresh_path();
  auto s = must_open(path);
  raw_db(path).exec(
      "CREATE TRIGGER boom BEFORE INSERT ON cache_entries WHEN NEW.key = 'boom' "
      "BEGIN SELECT RAISE(ABORT, 'boom'); END");
  write_batch b;
  b.runs = {sample_run("r1")};
  for (int i = 0; i < 100; ++i) {
    b.nodes.push_back(sample_node("r1", "n", i));
  }
  b.workflows = {{"etl", "3", "h", "{}", 1}};
  b.cache = {{"fine", "etl", "a", parse("1"), "output", 1},
             {"boom", "etl", "a", parse("1"), "output", 2}};
  auto r = s->write(b);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().message.find("boom") != std::string::npos, r.error().message);
  raw_db raw(path);
  BOOST_TEST(raw.text("SELECT count(*) FROM runs") == "0");
  BOOST_TEST(raw.text("SELECT count(*) FROM node_executions") == "0");
  BOOST_TEST(raw.text("SELECT count(*) FROM workflows") == "0");
  BOOST_TEST(raw.text("SELECT count(*) FROM cache_entries") == "0");
}

// A row the database refuses for good must come back as a permanent error, so that the writer
// isolates it instead of retrying forever; the store stays usable after each.
BOOST_AUTO_TEST_CASE(rows_the_database_refuses_for_good_are_permanent_errors, *utf::timeout(30)) {
  const std::string path = fresh_path();
  auto s = must_open(path);
  raw_db raw(path);
  raw.exec("CREATE UNIQUE INDEX one_hash ON workflows (hash)");
  raw.exec(
      "CREATE TRIGGER abort_run BEFORE INSERT ON runs WHEN NEW.run_id = 'abort' "
      "BEGIN SELECT RAISE(ABORT, 'run refused'); END");
  raw.exec(
      "CREATE TRIGGER rollback_run BEFORE INSERT ON runs WHEN NEW.run_id = 'rollback' "
      "BEGIN SELECT RAISE(ROLLBACK, 'run refused, transaction rolled back'); END");
  raw.exec(
      "CREATE TRIGGER too_big BEFORE INSERT ON node_executions WHEN NEW.node_id = 'big' "
      "BEGIN SELECT zeroblob(2000000000); END");
  struct refused {
    const char* what;
    write_batch batch;
    const char* message;  // a part of the error's
  };
  write_batch unique;
  unique.workflows = {{"etl", "1", "same", "{}", 1}, {"etl", "2", "same", "{}", 2}};
  const refused cases[] = {
      {"SQLITE_CONSTRAINT_UNIQUE", unique, "UNIQUE constraint failed"},
      {"SQLITE_CONSTRAINT_TRIGGER (ABORT)", write_batch{{sample_run("abort")}, {}, {}, {}},
       "run refused"},
      {"SQLITE_CONSTRAINT_TRIGGER (ROLLBACK)", write_batch{{sample_run("rollback")}, {}, {}, {}},
       "rolled back"},
      {"SQLITE_TOOBIG", write_batch{{}, {sample_node("r", "big")}, {}, {}}, "too big"},
  };
  for (const refused& c : cases) {
    write_batch b = c.batch;
    b.runs.push_back(sample_run("innocent"));  // written before the refused row: rolled back
    auto r = s->write(b);
    BOOST_REQUIRE_MESSAGE(!r.has_value(), c.what);
    BOOST_TEST(!r.error().transient, c.what << ": " << r.error().message);
    BOOST_TEST(r.error().message.find(c.message) != std::string::npos,
               c.what << ": " << r.error().message);
    BOOST_TEST(raw.text("SELECT count(*) FROM runs") == "0", c.what);
    BOOST_TEST(raw.text("SELECT count(*) FROM workflows") == "0", c.what);
    // No transaction left open: the next write works.
    must_write(*s, write_batch{{}, {}, {}, {{"k", "etl", "a", parse("1"), "output", 1}}});
  }
}

// The fence reads every run of a batch, whatever their number.
BOOST_AUTO_TEST_CASE(fences_batches_of_any_number_of_runs, *utf::timeout(60)) {
  auto s = make_test_store();
  for (int runs : {1, 8, 9, 64, 65, 600}) {
    const std::string prefix = "n" + std::to_string(runs) + "-";
    write_batch setup;
    for (int i = 0; i < runs; ++i) {
      run_row r = sample_run(prefix + std::to_string(i));
      r.epoch = 1;
      setup.runs.push_back(r);
    }
    must_write(*s, setup);
    // Every third run is claimed away: its rows in the next batch are stale.
    std::vector<std::string> want;
    for (int i = 0; i < runs; i += 3) {
      auto c = s->claim_run(prefix + std::to_string(i), "other", 0, 100);
      BOOST_REQUIRE(c.has_value() && c->claimed);
      want.push_back(prefix + std::to_string(i));
    }
    std::sort(want.begin(), want.end());
    write_batch b;
    for (int i = 0; i < runs; ++i) {
      node_row n = sample_node(prefix + std::to_string(i), "a");
      n.epoch = 1;
      b.nodes.push_back(n);
    }
    auto r = s->write(b);
    BOOST_REQUIRE_MESSAGE(r.has_value(), error_of(r));
    BOOST_TEST(r->fenced_runs == want, boost::test_tools::per_element());
    for (int i = 0; i < runs; ++i) {
      auto nodes = s->node_rows(prefix + std::to_string(i));
      BOOST_REQUIRE(nodes.has_value());
      BOOST_TEST(nodes->size() == (i % 3 == 0 ? 0u : 1u), runs << " runs, run " << i);
    }
  }
}

// The fence passes the run ids to SQLite as a JSON array: ids that JSON must escape, and bytes
// that are not UTF-8 (SQLite stores any), name the same runs.
BOOST_AUTO_TEST_CASE(fences_runs_whatever_bytes_their_ids_hold, *utf::timeout(30)) {
  auto s = make_test_store();
  const std::vector<std::string> ids = {"q\"uote",
                                        "back\\slash",
                                        "tab\tnew\nline",
                                        "\x01\x1f",
                                        "caf\xc3\xa9 \xe2\x98\x83",
                                        "bad \xff\xc3",
                                        "[1,2]",
                                        ""};
  write_batch setup;
  for (const auto& id : ids) {
    run_row r = sample_run(id);
    r.epoch = 1;
    setup.runs.push_back(r);
  }
  must_write(*s, setup);
  for (std::size_t i = 0; i < ids.size(); i += 2) {
    auto c = s->claim_run(ids[i], "other", 0, 100);
    BOOST_REQUIRE_MESSAGE(c.has_value() && c->claimed, "claim " << i);
  }
  write_batch b;
  std::vector<std::string> want;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    node_row n = sample_node(ids[i], "a");
    n.epoch = 1;
    b.nodes.push_back(n);
    if (i % 2 == 0) {
      want.push_back(ids[i]);
    }
  }
  std::sort(want.begin(), want.end());
  auto r = s->write(b);
  BOOST_REQUIRE_MESSAGE(r.has_value(), error_of(r));
  BOOST_TEST(r->fenced_runs == want, boost::test_tools::per_element());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto nodes = s->node_rows(ids[i]);
    BOOST_REQUIRE(nodes.has_value());
    BOOST_TEST(nodes->size() == (i % 2 == 0 ? 0u : 1u), "run " << i);
  }
}

// The claim and the write take the same database write lock: while another connection holds
// it, a claim fails transiently and changes nothing.
BOOST_AUTO_TEST_CASE(a_claim_waits_for_no_write_lock_held_elsewhere, *utf::timeout(30)) {
  const std::string path = fresh_path();
  auto s = must_open(path);
  run_row r = sample_run("r1");
  r.epoch = 1;
  must_write(*s, write_batch{{r}, {}, {}, {}});
  raw_db other(path);
  other.exec("BEGIN IMMEDIATE");
  auto c = s->claim_run("r1", "b", 0, 100);
  BOOST_REQUIRE(!c.has_value());
  BOOST_TEST(c.error().transient, c.error().message);
  auto lost = s->renew_leases("a", {{"r1", 1}}, 100);
  BOOST_REQUIRE(!lost.has_value());
  BOOST_TEST(lost.error().transient, lost.error().message);
  other.exec("ROLLBACK");
  c = s->claim_run("r1", "b", 0, 100);
  BOOST_REQUIRE_MESSAGE(c.has_value(), error_of(c));
  BOOST_TEST(c->epoch == 2);
}

// remember_request and forget_requests wait for the write lock like a claim does, rather than
// failing after the writer's 10 ms: the service's request would fail otherwise.
BOOST_AUTO_TEST_CASE(request_keys_wait_for_a_write_lock_held_elsewhere, *utf::timeout(30)) {
  const std::string path = fresh_path();
  auto s = must_open(path);
  raw_db other(path);
  other.exec("BEGIN IMMEDIATE");
  other.exec("INSERT INTO request_keys VALUES ('k', 'etl', 'h-other', 'run-other', 5)");
  std::thread committer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    other.exec("COMMIT");
  });
  auto r = s->remember_request({"k", "etl", "h", "run", 10}, 0);
  committer.join();
  BOOST_REQUIRE_MESSAGE(r.has_value(), error_of(r));
  BOOST_TEST(r->run_id == "run-other");  // the entry committed first
  other.exec("BEGIN IMMEDIATE");
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    other.exec("ROLLBACK");
  });
  auto n = s->forget_requests(100);
  releaser.join();
  BOOST_REQUIRE_MESSAGE(n.has_value(), error_of(n));
  BOOST_TEST(*n == 1u);
  // And the writer's short timeout is back: a held lock fails a write at once.
  other.exec("BEGIN IMMEDIATE");
  auto w = s->write(write_batch{{sample_run("r1")}, {}, {}, {}});
  other.exec("ROLLBACK");
  BOOST_REQUIRE(!w.has_value());
  BOOST_TEST(w.error().transient, w.error().message);
}

// Several connections (as several processes would have), one key: exactly one entry wins.
BOOST_AUTO_TEST_CASE(of_requests_racing_on_several_connections_exactly_one_wins,
                     *utf::timeout(60)) {
  const std::string path = fresh_path();
  constexpr int threads = 4;
  constexpr int keys = 20;
  std::vector<std::unique_ptr<store>> stores;
  for (int t = 0; t < threads; ++t) {
    stores.push_back(must_open(path));
  }
  std::vector<std::vector<std::string>> got(threads);
  std::vector<std::string> errors(threads);
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ++ready;
      while (ready.load() < threads) {
        std::this_thread::yield();
      }
      for (int k = 0; k < keys; ++k) {
        auto r = stores[static_cast<std::size_t>(t)]->remember_request(
            {"key-" + std::to_string(k), "etl", "h", "run-" + std::to_string(t), 1000}, 0);
        if (!r) {
          errors[static_cast<std::size_t>(t)] = r.error().message;
          return;
        }
        got[static_cast<std::size_t>(t)].push_back(r->run_id);
      }
    });
  }
  for (auto& th : pool) {
    th.join();
  }
  for (const auto& e : errors) {
    BOOST_REQUIRE_MESSAGE(e.empty(), e);
  }
  raw_db raw(path);
  BOOST_TEST(raw.text("SELECT count(*) FROM request_keys") == std::to_string(keys));
  for (int k = 0; k < keys; ++k) {
    const std::string stored =
        raw.text("SELECT run_id FROM request_keys WHERE key = 'key-" + std::to_string(k) + "'");
    for (int t = 0; t < threads; ++t) {
      BOOST_TEST(got[static_cast<std::size_t>(t)][static_cast<std::size_t>(k)] == stored,
                 "key " << k << ", thread " << t);
    }
  }
}

BOOST_AUTO_TEST_CASE(a_sliced_batch_is_still_one_transaction, *utf::timeout(30)) {
  const std::string path = fresh_path();
  auto s = must_open(path);
  write_batch b;
  b.runs = {sample_run("r1")};
  for (int i = 0; i < 300; ++i) {
    b.nodes.push_back(sample_node("r1", "n", i));
  }
  // What another connection sees at each yield: the transaction is open, nothing is visible.
  raw_db other(path);
  std::vector<std::string> seen;
  s->set_write_yield([&] { seen.push_back(other.text("SELECT count(*) FROM node_executions")); });
  must_write(*s, b);
  // 301 rows in statements of at most write_slice_rows: a yield between each two of them.
  BOOST_TEST(seen.size() >= (300 + write_slice_rows - 1) / write_slice_rows);
  for (const auto& count : seen) {
    BOOST_TEST(count == "0");
  }
  BOOST_TEST(other.text("SELECT count(*) FROM node_executions") == "300");
  BOOST_TEST(other.text("SELECT count(*) FROM runs") == "1");
}

BOOST_AUTO_TEST_CASE(a_yield_that_throws_leaves_no_transaction_open, *utf::timeout(30)) {
  const std::string path = fresh_path();
  auto s = must_open(path);
  s->set_write_yield(yield_throwing_on_call(2));
  auto r = s->write(map_batch("r1", 300));
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().message.find("yield failed") != std::string::npos, r.error().message);
  BOOST_TEST(raw_db(path).text("SELECT count(*) FROM node_executions") == "0");
  // A transaction left open would make every later write fail to begin one.
  must_write(*s, write_batch{{sample_run("after")}, {}, {}, {}});
  BOOST_TEST(raw_db(path).text("SELECT count(*) FROM runs") == "1");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(sqlite_memory)

long resident_mib() {
  std::ifstream statm("/proc/self/statm");
  long size = 0;
  long resident = 0;
  statm >> size >> resident;
  return resident * ::sysconf(_SC_PAGESIZE) / (1 << 20);
}

// The store reuses its JSON text buffers between writes so that a steady load allocates nothing
// per value; one batch of huge outputs must not keep its buffers for the store's lifetime
// (without the release after each write: 67 MiB stayed resident here, with it 3 MiB).
BOOST_AUTO_TEST_CASE(a_batch_of_huge_json_does_not_stay_resident, *utf::timeout(60)) {
  auto s = make_test_store();
  ::malloc_trim(0);
  const long before = resident_mib();
  {
    write_batch huge;
    const std::string text(std::size_t{1} << 20, 'x');
    for (int i = 0; i < 128; ++i) {
      node_row n = sample_node("huge", "map", i, 1);
      n.output = parse("\"" + text + "\"");
      huge.nodes.push_back(std::move(n));
    }
    must_write(*s, huge);
  }
  write_batch small;
  small.nodes = {sample_node("small", "n")};
  must_write(*s, small);
  ::malloc_trim(0);
  const long after = resident_mib();
  BOOST_TEST_MESSAGE("resident before " << before << " MiB, after " << after << " MiB");
  BOOST_TEST(after - before < 24,
             "128 MiB of JSON text written; " << after - before << " MiB still resident");
}

BOOST_AUTO_TEST_SUITE_END()

}  // namespace troupe::test
