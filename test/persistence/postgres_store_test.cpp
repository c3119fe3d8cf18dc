#define BOOST_TEST_MODULE persistence postgres store
#include <boost/test/unit_test.hpp>

#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
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
      "1,2,3");
  BOOST_TEST(raw.exec("SELECT string_agg(table_name, ',' ORDER BY table_name) FROM "
                      "information_schema.tables WHERE table_schema = '" +
                      schema_of(url) + "'") ==
             "cache_entries,dead_letters,node_executions,runs,troupe_schema,workflows");
}

BOOST_AUTO_TEST_CASE(changes_nothing_when_reopened, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  run_row run = sample_run("r1");
  must_write(*must_open(url), write_batch{{run}, {}, {}, {}});
  auto again = must_open(url);
  pg_conn raw(url);
  BOOST_TEST(
      raw.exec("SELECT string_agg(version::text, ',' ORDER BY version) FROM troupe_schema") ==
      "1,2,3");
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
                               "troupe_schema") == "1,2,3");
}

BOOST_AUTO_TEST_CASE(refuses_a_database_with_a_newer_schema, *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  must_open(url);
  pg_conn(url).exec("INSERT INTO troupe_schema (version) VALUES (99)");
  auto s = open_store(url);
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient);
  BOOST_TEST(s.error().message ==
             "database schema version 99 is newer than this troupe supports (3); upgrade troupe");
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

BOOST_AUTO_TEST_CASE(lists_child_runs_through_the_parent_index_with_a_generic_plan,
                     *utf::timeout(60)) {
  const std::string url = fresh_schema_url();
  auto s = must_open(url);
  pg_conn raw(url);
  // The store's troupe_list_child_runs statement, planned as a prepared statement is after its
  // first executions: once for any parameter values.
  raw.exec("SET plan_cache_mode = force_generic_plan");
  raw.exec("SET enable_seqscan = off");
  raw.exec(
      "PREPARE children(text, text, bigint, text) AS SELECT * FROM runs WHERE parent_run_id = "
      "$4::text AND parent_run_id <> '' AND ($1::text IS NULL OR status = $1::text) AND "
      "($2::text IS NULL OR workflow = $2::text) ORDER BY started_at DESC, run_id DESC "
      "LIMIT $3::bigint");
  PGresult* r = PQexec(raw.c, "EXPLAIN EXECUTE children(NULL, NULL, 50, 'p')");
  BOOST_REQUIRE(PQresultStatus(r) == PGRES_TUPLES_OK);
  std::string plan;
  for (int i = 0; i < PQntuples(r); ++i) {
    plan += std::string(PQgetvalue(r, i, 0)) + "\n";
  }
  PQclear(r);
  BOOST_TEST(plan.find("runs_parent") != std::string::npos, plan);
  BOOST_TEST(plan.find("Sort") == std::string::npos, plan);  // the index gives the order
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
      "1,2,3");

  check_v1_rows_migrated(*s);

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
      "1,2,3");
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
