#define BOOST_TEST_MODULE persistence postgres store
#include <boost/test/unit_test.hpp>

#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <thread>

#include "test/persistence/conformance.hpp"

// Set by test/persistence/CMakeLists.txt: the test server's directory (DIR/url holds the URL
// once `scripts/pg-test-server start DIR` has run, as the CTest fixture does) and the script.
#ifndef TROUPE_PG_DIR
#error "TROUPE_PG_DIR must name the pg-test-server directory"
#endif
#ifndef TROUPE_PG_SCRIPT
#error "TROUPE_PG_SCRIPT must name scripts/pg-test-server"
#endif

namespace utf = boost::unit_test;

namespace troupe::test {

namespace {

std::string base_url() {
  std::ifstream in(std::string(TROUPE_PG_DIR) + "/url");
  std::string url;
  std::getline(in, url);
  return url;
}

struct pg_conn {
  PGconn* c;
  explicit pg_conn(const std::string& url) : c(PQconnectdb(url.c_str())) {
    BOOST_REQUIRE_MESSAGE(PQstatus(c) == CONNECTION_OK, "connect: " << PQerrorMessage(c));
    PQsetNoticeProcessor(
        c, [](void*, const char*) {}, nullptr);
  }
  ~pg_conn() { PQfinish(c); }
  std::string exec(const std::string& sql) {
    PGresult* r = PQexec(c, sql.c_str());
    const auto st = PQresultStatus(r);
    std::string out;
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0) {
      out = PQgetvalue(r, 0, 0);
    }
    const std::string err = PQresultErrorMessage(r);
    PQclear(r);
    BOOST_REQUIRE_MESSAGE(st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK, sql << ": " << err);
    return out;
  }
};

/// A new, empty PostgreSQL schema and a URL whose search_path points at it: every test gets
/// its own tables in the shared test server.
std::string fresh_schema_url() {
  static std::atomic<int> n{0};
  const std::string schema = "t_" + std::to_string(::getpid()) + "_" + std::to_string(n++);
  const std::string base = base_url();
  pg_conn(base).exec("DROP SCHEMA IF EXISTS " + schema + " CASCADE; CREATE SCHEMA " + schema);
  return base + (base.find('?') == std::string::npos ? "?" : "&") + "options=-csearch_path%3D" +
         schema;
}

std::string schema_of(const std::string& url) {
  return url.substr(url.rfind("%3D") + 3);
}

std::unique_ptr<store> must_open(const std::string& url) {
  auto s = open_store(url);
  BOOST_REQUIRE_MESSAGE(s.has_value(), "open failed: " << error_of(s));
  return std::move(*s);
}

/// A plpgsql trigger `name` that runs `body` (then RETURN NEW) for each row of `event`, e.g.
/// "BEFORE INSERT ON runs": how a test makes the server fail a row, or tell on its writer.
void add_row_trigger(pg_conn& raw, const std::string& name, const std::string& event,
                     const std::string& body) {
  raw.exec("CREATE FUNCTION " + name + "() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN " + body +
           " RETURN NEW; END $$");
  raw.exec("CREATE TRIGGER " + name + " " + event + " FOR EACH ROW EXECUTE FUNCTION " + name +
           "()");
}

void server(const std::string& command) {
  const std::string cmd =
      std::string("'") + TROUPE_PG_SCRIPT + "' " + command + " '" + TROUPE_PG_DIR + "' >/dev/null";
  BOOST_REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, cmd << " failed");
}

}  // namespace

std::unique_ptr<store> make_test_store() {
  return must_open(fresh_schema_url());
}

boost::test_tools::assertion_result backend_available(utf::test_unit_id) {
  if (base_url().empty()) {
    boost::test_tools::assertion_result r(false);
    r.message() << "SKIPPED: no PostgreSQL test server (" << TROUPE_PG_DIR
                << "/url is missing: the server binaries are absent, or the pg_server_start "
                   "fixture did not run)";
    return r;
  }
  return true;
}

BOOST_AUTO_TEST_SUITE(postgres_schema, *utf::precondition(backend_available))

BOOST_AUTO_TEST_CASE(creates_the_tables_and_stamps_every_version, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto s = must_open(url);
  pg_conn raw(url);
  BOOST_TEST(
      raw.exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM troupe_schema") ==
      "1,2,3,4,5");
  BOOST_TEST(raw.exec("SELECT string_agg(table_name, ',' ORDER BY table_name) FROM "
                      "information_schema.tables WHERE table_schema = '" +
                      schema_of(url) + "'") ==
             "cache_entries,dead_letters,node_executions,request_keys,runs,troupe_schema,"
             "workflows");
}

BOOST_AUTO_TEST_CASE(changes_nothing_when_reopened, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  run_row run = sample_run("r1");
  must_write(*must_open(url), write_batch{{run}, {}, {}, {}});
  auto again = must_open(url);
  pg_conn raw(url);
  BOOST_TEST(
      raw.exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM troupe_schema") ==
      "1,2,3,4,5");
  auto got = again->get_run("r1");
  BOOST_REQUIRE(got.has_value() && got->has_value());
  check_same(**got, run);
}

BOOST_AUTO_TEST_CASE(concurrent_opens_of_a_fresh_database_do_not_race, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  std::vector<std::thread> threads;
  std::atomic<int> opened{0};
  std::vector<std::string> errors(6);
  for (std::size_t i = 0; i < errors.size(); ++i) {
    threads.emplace_back([&, i] {
      auto s = open_store(url);
      if (s) {
        ++opened;
      } else {
        errors[i] = s.error().message;
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  for (const auto& e : errors) {
    BOOST_TEST(e.empty(), e);
  }
  BOOST_TEST(opened == 6);
  BOOST_TEST(pg_conn(url).exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM "
                               "troupe_schema") == "1,2,3,4,5");
}

BOOST_AUTO_TEST_CASE(refuses_a_database_with_a_newer_schema, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  must_open(url);
  pg_conn(url).exec("INSERT INTO troupe_schema (version) VALUES (99)");
  auto s = open_store(url);
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient);
  BOOST_TEST(s.error().message ==
             "database schema version 99 is newer than this troupe supports (5); upgrade troupe");
}

BOOST_AUTO_TEST_CASE(refuses_tables_that_conflict_with_the_schema, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  pg_conn(url).exec("CREATE TABLE runs (run_id text PRIMARY KEY, something_else text)");
  auto s = open_store(url);
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient, s.error().message);

  const std::string stamped = fresh_schema_url();
  pg_conn raw(stamped);
  raw.exec("CREATE TABLE troupe_schema (version integer NOT NULL)");
  raw.exec("INSERT INTO troupe_schema VALUES (" + std::to_string(schema_version()) + ")");
  raw.exec("CREATE TABLE runs (run_id text PRIMARY KEY)");
  auto t = open_store(stamped);
  BOOST_REQUIRE(!t.has_value());
  BOOST_TEST(!t.error().transient, t.error().message);
  BOOST_TEST(t.error().message.find("do not match") != std::string::npos, t.error().message);
}

BOOST_AUTO_TEST_CASE(a_failure_late_in_a_batch_rolls_back_its_earlier_tables, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto s = must_open(url);
  pg_conn raw(url);
  add_row_trigger(raw, "boom", "BEFORE INSERT ON cache_entries",
                  "IF NEW.key = 'boom' THEN RAISE EXCEPTION 'boom'; END IF;");
  write_batch b;
  b.runs = {sample_run("r1")};
  b.nodes = {sample_node("r1", "a")};
  b.workflows = {{"etl", "3", "h", "{}", 1}};
  b.cache = {{"fine", "etl", "a", parse("1"), "output", 1},
             {"boom", "etl", "a", parse("1"), "output", 2}};
  auto r = s->write(b);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(!r.error().transient, r.error().message);
  BOOST_TEST(raw.exec("SELECT count(*) FROM runs") == "0");
  BOOST_TEST(raw.exec("SELECT count(*) FROM node_executions") == "0");
  BOOST_TEST(raw.exec("SELECT count(*) FROM workflows") == "0");
  BOOST_TEST(raw.exec("SELECT count(*) FROM cache_entries") == "0");
}

// The store's list_runs statements (postgres_store.cpp), planned as prepared statements are after
// their first executions: once for any parameter values. Each must walk its index backwards,
// from the cursor when it has one (an index condition), and never sort: a page then costs its
// own rows whatever the table holds before it. Checked on an empty table, on one filled
// without statistics yet, and after ANALYZE.
BOOST_AUTO_TEST_CASE(lists_runs_through_the_indexes_from_the_cursor_with_generic_plans,
                     *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto s = must_open(url);
  pg_conn raw(url);
  raw.exec("SET plan_cache_mode = force_generic_plan");
  raw.exec("SET enable_seqscan = off");  // as the store's connections
  const std::string filters =
      "CASE WHEN $1::text IS NULL THEN true ELSE status = $1::text END AND "
      "CASE WHEN $2::text IS NULL THEN true ELSE workflow = $2::text END ";
  const std::string top =
      "AND CASE WHEN $4::boolean THEN COALESCE(parent_run_id, '') = '' ELSE true END ";
  const std::string cursor = "AND (started_at, run_id) < ($5::bigint, $6::text) ";
  const std::string order = "ORDER BY started_at DESC, run_id DESC LIMIT $3::bigint";
  const std::string children =
      "SELECT * FROM runs WHERE parent_run_id = $4::text AND parent_run_id <> '' AND ";
  raw.exec("PREPARE top(text, text, bigint, boolean) AS SELECT * FROM runs WHERE " + filters + top +
           order);
  raw.exec(
      "PREPARE top_before(text, text, bigint, boolean, bigint, text) AS SELECT * FROM runs "
      "WHERE " +
      filters + top + cursor + order);
  raw.exec("PREPARE children(text, text, bigint, text) AS " + children + filters + order);
  raw.exec("PREPARE children_before(text, text, bigint, text, bigint, text) AS " + children +
           filters + cursor + order);
  auto explain = [&](const std::string& execute) {
    raw.exec("DISCARD PLANS");  // plan again for the table as it is now
    PGresult* r = PQexec(raw.c, ("EXPLAIN " + execute).c_str());
    BOOST_REQUIRE(PQresultStatus(r) == PGRES_TUPLES_OK);
    std::string plan;
    for (int i = 0; i < PQntuples(r); ++i) {
      plan += std::string(PQgetvalue(r, i, 0)) + "\n";
    }
    PQclear(r);
    return plan;
  };
  auto check_plans = [&] {
    std::string plan = explain("EXECUTE top_before(NULL, NULL, 7, true, 5000, 'r5')");
    BOOST_TEST(plan.find("Index Scan Backward using runs_started") != std::string::npos, plan);
    BOOST_TEST(
        plan.find("Index Cond: (ROW(started_at, run_id) < ROW($5, $6))") != std::string::npos,
        plan);
    BOOST_TEST(plan.find("Sort") == std::string::npos, plan);
    plan = explain("EXECUTE children_before(NULL, NULL, 7, 'p1', 5000, 'r5')");
    BOOST_TEST(plan.find("Index Scan Backward using runs_parent") != std::string::npos, plan);
    BOOST_TEST(plan.find("Index Cond: ((parent_run_id = $4) AND (ROW(started_at, run_id) < "
                         "ROW($5, $6)))") != std::string::npos,
               plan);
    BOOST_TEST(plan.find("Sort") == std::string::npos, plan);
    plan = explain("EXECUTE top(NULL, NULL, 7, true)");
    BOOST_TEST(plan.find("Index Scan Backward using runs_started") != std::string::npos, plan);
    BOOST_TEST(plan.find("Sort") == std::string::npos, plan);
    plan = explain("EXECUTE children(NULL, NULL, 7, 'p1')");
    BOOST_TEST(plan.find("Index Scan Backward using runs_parent") != std::string::npos, plan);
    BOOST_TEST(plan.find("Sort") == std::string::npos, plan);
  };
  BOOST_TEST_CONTEXT("empty") {
    check_plans();
  }
  // Half of them children of 100 parents.
  raw.exec("ALTER TABLE runs SET (autovacuum_enabled = false)");
  raw.exec(
      "INSERT INTO runs (run_id, workflow, version, plan_hash, status, inputs, outputs, error, "
      "started_at, finished_at, parent_run_id, parent_node_id) SELECT 'r' || i, 'wf' || (i % "
      "20), '1', 'h', 'succeeded', NULL, NULL, '', 1000 + i, 0, CASE WHEN i % 2 = 0 THEN 'p' || "
      "(i % 100) ELSE '' END, '' FROM generate_series(1, 20000) i");
  BOOST_TEST_CONTEXT("20000 rows, no statistics") {
    check_plans();
  }
  raw.exec("ANALYZE runs");
  BOOST_TEST_CONTEXT("20000 rows, analyzed") {
    check_plans();
  }
}

// Version 1 exactly as troupe wrote it (postgres_store.cpp before version 2), with its
// bookkeeping: troupe_schema holding one row, 1.
constexpr const char* v1_schema[] = {
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
    "CREATE TABLE IF NOT EXISTS troupe_schema (version integer NOT NULL)",
    "INSERT INTO troupe_schema (version) VALUES (1)",
};

/// Columns and indexes of the tables in `schema`, one line each, with the schema name left out
/// (index definitions and sequence defaults name it when it is not on the search path).
std::string describe_schema(pg_conn& raw, const std::string& schema) {
  const std::string in_schema = "'" + schema + "'";
  return raw.exec(
      "SELECT string_agg(line, E'\\n' ORDER BY line) FROM (SELECT replace(line, " + in_schema +
      " || '.', '') AS line FROM (SELECT table_name || '.' || "
      "column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, "
      "'-') || ' ' || coalesce(collation_name, '-') AS line FROM information_schema.columns "
      "WHERE table_schema = " +
      in_schema + " UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = " + in_schema +
      ") raw_lines) lines");
}

BOOST_AUTO_TEST_CASE(migrates_a_version_1_database_in_place, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  {
    pg_conn raw(url);
    create_v1_database(raw, v1_schema);
  }

  auto s = must_open(url);
  pg_conn raw(url);
  BOOST_TEST(
      raw.exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM troupe_schema") ==
      "1,2,3,4,5");

  check_v1_rows_migrated(*s);
  check_old_runs_take_part_in_ownership(*s);

  // The migrated schema is the one a fresh database gets, and opening again changes nothing.
  const std::string fresh = fresh_schema_url();
  must_open(fresh);
  const std::string migrated = describe_schema(raw, schema_of(url));
  BOOST_TEST(migrated.find("node_executions.spec_cache text NO 'off'::text") != std::string::npos,
             migrated);
  BOOST_TEST(migrated.find("CREATE INDEX runs_parent") != std::string::npos, migrated);
  BOOST_TEST(migrated == describe_schema(raw, schema_of(fresh)));
  must_open(url);
  BOOST_TEST(
      raw.exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM troupe_schema") ==
      "1,2,3,4,5");
}

// Version 2 exactly as troupe wrote it (postgres_store.cpp before version 3): version 1's
// statements, then version 2's, each stamped.
constexpr const char* v2_schema[] = {
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
    "CREATE TABLE IF NOT EXISTS troupe_schema (version integer NOT NULL)",
    "INSERT INTO troupe_schema (version) VALUES (1)",
    "ALTER TABLE node_executions ADD COLUMN spec_cache text NOT NULL DEFAULT 'off'",
    "ALTER TABLE node_executions ADD COLUMN child_run_id text NOT NULL DEFAULT ''",
    "CREATE INDEX runs_parent ON runs (parent_run_id, started_at, run_id) "
    "WHERE parent_run_id <> ''",
    "INSERT INTO troupe_schema (version) VALUES (2)",
};

BOOST_AUTO_TEST_CASE(migrates_a_version_2_database_in_place, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  {
    pg_conn raw(url);
    create_v2_database(raw, v2_schema);
  }

  auto s = must_open(url);
  pg_conn raw(url);
  BOOST_TEST(
      raw.exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM troupe_schema") ==
      "1,2,3,4,5");

  check_v2_rows_migrated(*s);
  check_old_runs_take_part_in_ownership(*s);

  const std::string fresh = fresh_schema_url();
  must_open(fresh);
  const std::string migrated = describe_schema(raw, schema_of(url));
  BOOST_TEST(migrated.find("runs.epoch bigint NO 0") != std::string::npos, migrated);
  BOOST_TEST(migrated.find("dead_letters.row text NO") != std::string::npos, migrated);
  BOOST_TEST(migrated == describe_schema(raw, schema_of(fresh)));
  must_open(url);
  BOOST_TEST(
      raw.exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM troupe_schema") ==
      "1,2,3,4,5");
}

// Version 3 exactly as troupe wrote it (postgres_store.cpp before version 4): version 2's
// statements, then version 3's, each stamped.
constexpr const char* v3_schema[] = {
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
    "CREATE TABLE IF NOT EXISTS troupe_schema (version integer NOT NULL)",
    "INSERT INTO troupe_schema (version) VALUES (1)",
    "ALTER TABLE node_executions ADD COLUMN spec_cache text NOT NULL DEFAULT 'off'",
    "ALTER TABLE node_executions ADD COLUMN child_run_id text NOT NULL DEFAULT ''",
    "CREATE INDEX runs_parent ON runs (parent_run_id, started_at, run_id) "
    "WHERE parent_run_id <> ''",
    "INSERT INTO troupe_schema (version) VALUES (2)",
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
    "INSERT INTO troupe_schema (version) VALUES (3)",
};

BOOST_AUTO_TEST_CASE(migrates_a_version_3_database_in_place, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  {
    pg_conn raw(url);
    create_v3_database(raw, v3_schema);
  }

  auto s = must_open(url);
  pg_conn raw(url);
  BOOST_TEST(
      raw.exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM troupe_schema") ==
      "1,2,3,4,5");

  check_v3_rows_migrated(*s);

  const std::string fresh = fresh_schema_url();
  must_open(fresh);
  const std::string migrated = describe_schema(raw, schema_of(url));
  BOOST_TEST(migrated.find("node_executions.finished_seq bigint NO 0") != std::string::npos,
             migrated);
  BOOST_TEST(migrated.find("node_executions.lost integer NO 0") != std::string::npos, migrated);
  BOOST_TEST(migrated.find("request_keys.key text NO - C") != std::string::npos, migrated);
  BOOST_TEST(migrated.find("CREATE INDEX request_keys_created") != std::string::npos, migrated);
  BOOST_TEST(migrated == describe_schema(raw, schema_of(fresh)));
  must_open(url);
  BOOST_TEST(
      raw.exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM troupe_schema") ==
      "1,2,3,4,5");
  BOOST_TEST(raw.exec("SELECT count(*) FROM request_keys") == "1");
}

BOOST_AUTO_TEST_CASE(masks_the_password_in_its_description, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  const std::string with_password =
      "postgresql://postgres:hunter2@" + url.substr(std::string("postgresql://postgres@").size());
  auto s = must_open(with_password);  // trust auth ignores the password
  BOOST_TEST(s->describe().find("hunter2") == std::string::npos, s->describe());
  BOOST_TEST(s->describe().find("postgres:***@") != std::string::npos, s->describe());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(postgres_errors, *utf::precondition(backend_available))

// A row the database refuses for good must come back as a permanent error, so that the writer
// isolates it instead of retrying forever; in one statement or in slices, nothing of the batch
// stays and the store works on.
BOOST_AUTO_TEST_CASE(rows_the_database_refuses_for_good_are_permanent_errors, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto s = must_open(url);
  pg_conn raw(url);
  raw.exec("CREATE UNIQUE INDEX one_hash ON workflows (hash)");
  raw.exec("ALTER TABLE node_executions ADD CONSTRAINT short_worker CHECK (length(worker) < 10)");
  add_row_trigger(raw, "refuse_run", "BEFORE INSERT ON runs",
                  "IF NEW.run_id = 'refused' THEN RAISE EXCEPTION 'run refused'; END IF;");
  struct refused {
    const char* what;
    write_batch batch;
    const char* sqlstate;
  };
  write_batch unique;
  unique.workflows = {{"etl", "1", "same", "{}", 1}, {"etl", "2", "same", "{}", 2}};
  node_row long_worker = sample_node("r", "n");
  long_worker.worker = "a worker name far too long";
  node_row bad_utf8 = sample_node("r", "n");
  bad_utf8.error = "caf\xc3 \xff";
  const refused cases[] = {
      {"class 23 (unique)", unique, "SQLSTATE 23505"},
      {"class 23 (check)", write_batch{{}, {long_worker}, {}, {}}, "SQLSTATE 23514"},
      {"class 22 (invalid UTF-8)", write_batch{{}, {bad_utf8}, {}, {}}, "SQLSTATE 22021"},
      {"P0001 (RAISE EXCEPTION)", write_batch{{sample_run("refused")}, {}, {}, {}},
       "SQLSTATE P0001"},
  };
  for (const bool sliced : {false, true}) {
    if (sliced) {
      s->set_write_yield([] {});
    }
    for (const refused& c : cases) {
      write_batch b = c.batch;
      b.runs.insert(b.runs.begin(), sample_run("innocent"));
      if (sliced) {
        write_batch more = map_batch("innocent", 100);  // the refused row comes slices later
        b.nodes.insert(b.nodes.begin(), more.nodes.begin(), more.nodes.end());
      }
      auto r = s->write(b);
      BOOST_REQUIRE_MESSAGE(!r.has_value(), c.what);
      BOOST_TEST(!r.error().transient, c.what << ": " << r.error().message);
      BOOST_TEST(r.error().message.find(c.sqlstate) != std::string::npos,
                 c.what << ": " << r.error().message);
      BOOST_TEST(raw.exec("SELECT count(*) FROM runs") == "0", c.what);
      BOOST_TEST(raw.exec("SELECT count(*) FROM node_executions") == "0", c.what);
      must_write(*s, write_batch{{}, {}, {}, {{"k", "etl", "a", parse("1"), "output", 1}}});
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

namespace {

/// Returns once a backend of the test server waits for a row lock (pg_stat_activity), polling:
/// the server offers no event for it. The test's timeout bounds the wait.
void wait_for_a_lock_wait(pg_conn& raw) {
  while (raw.exec("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'") == "0") {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

run_row owned(std::string id, std::int64_t epoch) {
  run_row r = sample_run(std::move(id));
  r.owner = "a";
  r.epoch = epoch;
  r.lease_until = 100;
  return r;
}

}  // namespace

// Two connections: a claim against a write's fence, and a write against a claim.
BOOST_AUTO_TEST_SUITE(postgres_fencing, *utf::precondition(backend_available))

// The write's fence locks the run in its first slice and keeps it to its commit (node rows
// only: no upsert of the run row takes that lock instead): a claim arriving in between waits,
// then takes the run over.
BOOST_AUTO_TEST_CASE(a_claim_waits_for_a_write_that_holds_the_run, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto writer = must_open(url);
  auto claimer = must_open(url);
  pg_conn raw(url);
  must_write(*writer, write_batch{{owned("r1", 1)}, {}, {}, {}});

  write_batch b = map_batch("r1", 200);
  for (auto& n : b.nodes) {
    n.epoch = 1;
  }
  std::optional<expected<claim_result, store_error>> claim;
  std::thread claiming;
  writer->set_write_yield([&] {
    if (claiming.joinable()) {
      return;
    }
    claiming = std::thread([&] { claim = claimer->claim_run("r1", "b", 100, 5000); });
    wait_for_a_lock_wait(raw);  // the claim waits for the write's transaction
    BOOST_TEST(!claim.has_value());
  });
  auto r = writer->write(b);
  claiming.join();
  BOOST_REQUIRE_MESSAGE(r.has_value(), error_of(r));
  BOOST_TEST(r->fenced_runs.empty());
  BOOST_REQUIRE(claim.has_value());
  BOOST_REQUIRE_MESSAGE(claim->has_value(), error_of(*claim));
  BOOST_TEST((*claim)->claimed);
  BOOST_TEST((*claim)->epoch == 2);
  BOOST_TEST(raw.exec("SELECT count(*) FROM node_executions") == "200");
}

// A claim that commits while the write waits for the run's lock (after the write's statement
// began, so its snapshot misses the claim) still fences the write: the locking read sees it.
BOOST_AUTO_TEST_CASE(a_claim_committed_first_fences_a_waiting_write, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto writer = must_open(url);
  pg_conn raw(url);
  must_write(*writer, write_batch{{owned("r1", 1), owned("r2", 1)}, {}, {}, {}});

  pg_conn claimer(url);
  claimer.exec("BEGIN");
  claimer.exec(
      "UPDATE runs SET owner = 'b', epoch = epoch + 1, lease_until = 5000 "
      "WHERE run_id = 'r1'");
  write_batch b;
  b.runs = {owned("r1", 1), owned("r2", 1)};
  b.runs[0].status = run_status::succeeded;
  b.runs[1].status = run_status::succeeded;
  node_row n1 = sample_node("r1", "a");
  n1.epoch = 1;
  node_row n2 = sample_node("r2", "a");
  n2.epoch = 1;
  b.nodes = {n1, n2};
  std::optional<expected<write_outcome, store_error>> written;
  std::thread writing([&] { written = writer->write(b); });
  wait_for_a_lock_wait(raw);
  claimer.exec("COMMIT");
  writing.join();
  BOOST_REQUIRE(written.has_value());
  BOOST_REQUIRE_MESSAGE(written->has_value(), error_of(*written));
  BOOST_TEST((*written)->fenced_runs == std::vector<std::string>{"r1"},
             boost::test_tools::per_element());
  BOOST_TEST(raw.exec("SELECT status || ' ' || owner || ' ' || epoch FROM runs WHERE run_id = "
                      "'r1'") == "running b 2");
  BOOST_TEST(raw.exec("SELECT count(*) FROM node_executions WHERE run_id = 'r1'") == "0");
  BOOST_TEST(raw.exec("SELECT status FROM runs WHERE run_id = 'r2'") == "succeeded");
  BOOST_TEST(raw.exec("SELECT count(*) FROM node_executions WHERE run_id = 'r2'") == "1");
}

// In slices, each slice fences the runs it holds rows of: a claim committed between two
// slices fences the runs whose rows come after it, and the batch still commits as one.
BOOST_AUTO_TEST_CASE(a_claim_between_slices_fences_the_runs_of_later_slices, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto writer = must_open(url);
  pg_conn raw(url);
  must_write(*writer, write_batch{{owned("early", 1), owned("late", 1)}, {}, {}, {}});
  write_batch b;
  for (int i = 0; i < 64; ++i) {  // two slices of "early", then "late"
    node_row n = sample_node("early", "map", i);
    n.epoch = 1;
    b.nodes.push_back(n);
  }
  node_row late = sample_node("late", "a");
  late.epoch = 1;
  b.nodes.push_back(late);
  pg_conn claimer(url);
  bool claimed = false;
  writer->set_write_yield([&] {
    if (!claimed) {
      claimed = true;
      claimer.exec("UPDATE runs SET owner = 'b', epoch = 2 WHERE run_id = 'late'");
    }
  });
  auto r = writer->write(b);
  BOOST_REQUIRE_MESSAGE(r.has_value(), error_of(r));
  BOOST_TEST(r->fenced_runs == std::vector<std::string>{"late"}, boost::test_tools::per_element());
  BOOST_TEST(raw.exec("SELECT count(*) FROM node_executions WHERE run_id = 'early'") == "64");
  BOOST_TEST(raw.exec("SELECT count(*) FROM node_executions WHERE run_id = 'late'") == "0");
}

// A renewal that waits for a claim in progress reports the run lost once the claim commits,
// rather than renewing, or missing, the lease it no longer holds.
BOOST_AUTO_TEST_CASE(a_renewal_waiting_for_a_claim_reports_the_run_lost, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto s = must_open(url);
  pg_conn raw(url);
  must_write(*s, write_batch{{owned("r1", 1), owned("r2", 1)}, {}, {}, {}});
  pg_conn claimer(url);
  claimer.exec("BEGIN");
  claimer.exec("UPDATE runs SET owner = 'b', epoch = 2, lease_until = 5000 WHERE run_id = 'r1'");
  std::optional<expected<std::vector<std::string>, store_error>> lost;
  std::thread renewing([&] { lost = s->renew_leases("a", {{"r1", 1}, {"r2", 1}}, 9000); });
  wait_for_a_lock_wait(raw);
  claimer.exec("COMMIT");
  renewing.join();
  BOOST_REQUIRE(lost.has_value());
  BOOST_REQUIRE_MESSAGE(lost->has_value(), error_of(*lost));
  BOOST_TEST(**lost == std::vector<std::string>{"r1"}, boost::test_tools::per_element());
  BOOST_TEST(raw.exec("SELECT lease_until FROM runs WHERE run_id = 'r1'") == "5000");
  BOOST_TEST(raw.exec("SELECT lease_until FROM runs WHERE run_id = 'r2'") == "9000");
}

BOOST_AUTO_TEST_SUITE_END()

// Idempotency keys on several connections at once, as several service processes would call.
BOOST_AUTO_TEST_SUITE(postgres_request_keys, *utf::precondition(backend_available))

namespace {

/// `threads` stores on `url`, each on its own connection, call remember_request with the same
/// key (and run ids of their own) at once, for each of `keys` keys. Returns the run ids each
/// got, by thread then key.
std::vector<std::vector<std::string>> race_for_keys(const std::string& url, int threads, int keys,
                                                    std::int64_t expired_before_us) {
  std::vector<std::unique_ptr<store>> stores;
  for (int t = 0; t < threads; ++t) {
    stores.push_back(must_open(url));
  }
  std::vector<std::vector<std::string>> got(static_cast<std::size_t>(threads));
  std::vector<std::string> errors(static_cast<std::size_t>(threads));
  // Every thread waits at a barrier before each key, so that all of them call at once.
  std::atomic<int> arrived{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      const auto i = static_cast<std::size_t>(t);
      for (int k = 0; k < keys; ++k) {
        ++arrived;
        while (arrived.load() < threads * (k + 1)) {
          std::this_thread::yield();
        }
        auto r = stores[i]->remember_request(
            {"key-" + std::to_string(k), "etl", "hash-" + std::to_string(t),
             "run-" + std::to_string(t), 1000},
            expired_before_us);
        got[i].push_back(r ? r->run_id : "error: " + r.error().message);
        if (!r) {
          errors[i] = r.error().message;
        }
      }
    });
  }
  for (auto& th : pool) {
    th.join();
  }
  for (const auto& e : errors) {
    BOOST_TEST(e.empty(), e);
  }
  return got;
}

void check_one_winner_per_key(pg_conn& raw, const std::vector<std::vector<std::string>>& got,
                              int keys) {
  BOOST_TEST(raw.exec("SELECT count(*) FROM request_keys") == std::to_string(keys));
  for (int k = 0; k < keys; ++k) {
    const std::string stored =
        raw.exec("SELECT run_id FROM request_keys WHERE key = 'key-" + std::to_string(k) + "'");
    BOOST_TEST(!stored.empty());
    BOOST_TEST(raw.exec("SELECT request_hash FROM request_keys WHERE key = 'key-" +
                        std::to_string(k) + "'") == "hash-" + stored.substr(4));
    for (std::size_t t = 0; t < got.size(); ++t) {
      BOOST_TEST(got[t][static_cast<std::size_t>(k)] == stored, "key " << k << ", thread " << t);
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(of_requests_racing_on_several_connections_exactly_one_wins,
                     *utf::timeout(120)) {
  const std::string url = fresh_schema_url();
  constexpr int keys = 30;
  const auto got = race_for_keys(url, 6, keys, 0);
  pg_conn raw(url);
  check_one_winner_per_key(raw, got, keys);
}

// Every key held by an expired entry: all racers may replace it, and exactly one does.
BOOST_AUTO_TEST_CASE(of_requests_racing_to_replace_an_expired_entry_exactly_one_wins,
                     *utf::timeout(120)) {
  const std::string url = fresh_schema_url();
  constexpr int keys = 30;
  pg_conn raw(url);
  must_open(url);
  raw.exec(
      "INSERT INTO request_keys SELECT 'key-' || k, 'etl', 'hash-old', 'run-old', 10 FROM "
      "generate_series(0, 29) AS k");
  const auto got = race_for_keys(url, 6, keys, 500);
  check_one_winner_per_key(raw, got, keys);
  BOOST_TEST(raw.exec("SELECT count(*) FROM request_keys WHERE run_id = 'run-old'") == "0");
}

// An entry forgotten between the upsert that met it and the read of it (forget_requests on
// another connection just then): the key is free, the call tries again and stores its own row.
// A statement trigger stands in for the other connection: once, after the upsert, it deletes
// the entry.
BOOST_AUTO_TEST_CASE(an_entry_forgotten_before_it_is_read_frees_the_key, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto s = must_open(url);
  pg_conn raw(url);
  must_remember(*s, {"k", "etl", "h-first", "run-first", 1000}, 0);
  raw.exec("CREATE TABLE forget_once (n integer)");
  raw.exec("INSERT INTO forget_once VALUES (1)");
  raw.exec(
      "CREATE FUNCTION forget_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF EXISTS "
      "(SELECT 1 FROM forget_once) THEN DELETE FROM forget_once; DELETE FROM request_keys; END "
      "IF; RETURN NULL; END $$");
  raw.exec(
      "CREATE TRIGGER forget_once AFTER INSERT ON request_keys FOR EACH STATEMENT EXECUTE "
      "FUNCTION forget_once()");
  const request_key_row mine{"k", "etl", "h-mine", "run-mine", 5000};
  check_same(must_remember(*s, mine, 0), mine);  // not expired, but gone when read
  BOOST_TEST(raw.exec("SELECT count(*) FROM forget_once") == "0");  // the trigger did run
  BOOST_TEST(raw.exec("SELECT run_id FROM request_keys WHERE key = 'k'") == "run-mine");
}

BOOST_AUTO_TEST_SUITE_END()

// Last in the file: it stops and restarts the shared server.
BOOST_AUTO_TEST_SUITE(postgres_connection, *utf::precondition(backend_available))

BOOST_AUTO_TEST_CASE(a_stopped_server_fails_writes_transiently_until_it_is_back,
                     *utf::timeout(120)) {
  auto s = make_test_store();
  must_write(*s, write_batch{{sample_run("before")}, {}, {}, {}});

  server("stop");
  auto r = s->write(write_batch{{sample_run("during")}, {}, {}, {}});
  auto again = s->write(write_batch{{sample_run("during")}, {}, {}, {}});  // reconnect refused
  auto read = s->get_run("before");
  server("start");

  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().transient, r.error().message);
  BOOST_REQUIRE(!again.has_value());
  BOOST_TEST(again.error().transient, again.error().message);
  BOOST_REQUIRE(!read.has_value());
  BOOST_TEST(read.error().transient, read.error().message);

  // The next call reconnects (and prepares its statements again) by itself.
  must_write(*s, write_batch{{sample_run("after")}, {}, {}, {}});
  for (const char* id : {"before", "after"}) {
    auto got = s->get_run(id);
    BOOST_REQUIRE_MESSAGE(got.has_value(), error_of(got));
    BOOST_TEST(got->has_value(), id);
  }
}

// A sliced batch is one transaction on one connection: whatever stops it midway, nothing of it
// is stored, no transaction is left open on the connection, and the next write works.
BOOST_AUTO_TEST_CASE(a_yield_that_throws_leaves_no_transaction_open, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto s = must_open(url);
  s->set_write_yield(yield_throwing_on_call(2));
  auto r = s->write(map_batch("r1", 300));
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().message.find("yield failed") != std::string::npos, r.error().message);
  s->set_write_yield(nullptr);
  // One statement, no BEGIN of its own: inside a transaction left open it would never commit.
  must_write(*s, write_batch{{sample_run("after")}, {}, {}, {}});
  pg_conn raw(url);
  BOOST_TEST(raw.exec("SELECT count(*) FROM runs") == "1");
  BOOST_TEST(raw.exec("SELECT count(*) FROM node_executions") == "0");
}

BOOST_AUTO_TEST_CASE(a_connection_lost_between_slices_fails_transiently_and_stores_nothing,
                     *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto s = must_open(url);
  pg_conn raw(url);
  // Learn the store's backend: its next committed write records it.
  raw.exec("CREATE TABLE writer_pid (pid integer)");
  add_row_trigger(raw, "note_pid", "AFTER INSERT ON runs",
                  "INSERT INTO writer_pid VALUES (pg_backend_pid());");
  must_write(*s, write_batch{{sample_run("first")}, {}, {}, {}});
  const std::string pid = raw.exec("SELECT pid FROM writer_pid");
  BOOST_REQUIRE(!pid.empty());

  const write_batch b = map_batch("r1", 300);
  bool killed = false;
  s->set_write_yield([&] {
    if (!killed) {
      killed = true;
      raw.exec("SELECT pg_terminate_backend(" + pid + ")");
    }
  });
  auto r = s->write(b);
  BOOST_REQUIRE(killed);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().transient, r.error().message);
  BOOST_TEST(raw.exec("SELECT count(*) FROM node_executions") == "0");
  // The retry reconnects and stores the whole batch.
  must_write(*s, b);
  BOOST_TEST(raw.exec("SELECT count(*) FROM node_executions") == "300");
}

BOOST_AUTO_TEST_SUITE_END()

}  // namespace troupe::test
