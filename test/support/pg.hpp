#pragma once

// The test PostgreSQL server (the `pg` ctest fixture, scripts/pg-test-server) as suites use it:
// its URL, a statement run on it, and a fresh schema per test. Header-only; pg_url() reads the
// TROUPE_PG_DIR that the suite's target defines.

#include <boost/test/unit_test.hpp>

#include <libpq-fe.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <string_view>

namespace troupe::test {

/// The URL of the test PostgreSQL server (the `pg` fixture writes it); empty when the suite's
/// target does not define TROUPE_PG_DIR or the server is not up.
inline std::string pg_url() {
#ifdef TROUPE_PG_DIR
  std::ifstream in(std::string(TROUPE_PG_DIR) + "/url");
  std::string url;
  std::getline(in, url);
  return url;
#else
  return {};
#endif
}

/// Runs `sql` (one or more statements) on `url`; a failure fails the test.
inline void pg_exec(const std::string& url, const std::string& sql) {
  PGconn* c = PQconnectdb(url.c_str());
  BOOST_REQUIRE_MESSAGE(PQstatus(c) == CONNECTION_OK, PQerrorMessage(c));
  PQsetNoticeProcessor(
      c, [](void*, const char*) {}, nullptr);
  PGresult* r = PQexec(c, sql.c_str());
  const auto st = PQresultStatus(r);
  const std::string err = PQresultErrorMessage(r);
  PQclear(r);
  PQfinish(c);
  BOOST_REQUIRE_MESSAGE(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, sql << ": " << err);
}

/// A fresh, empty schema `<prefix>_<name>_<pid>` on the test server, as a URL whose connections
/// use it; empty when there is no server.
inline std::string pg_schema_url(std::string_view prefix, const std::string& name) {
  const std::string base = pg_url();
  if (base.empty()) {
    return {};
  }
  const std::string schema =
      std::string(prefix) + "_" + name + "_" + std::to_string(::getpid());
  pg_exec(base, "DROP SCHEMA IF EXISTS " + schema + " CASCADE; CREATE SCHEMA " + schema);
  return base + (base.find('?') == std::string::npos ? "?" : "&") + "options=-csearch_path%3D" +
         schema;
}

}  // namespace troupe::test
