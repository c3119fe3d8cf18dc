#pragma once

// What the runtime suites share: an engine configured for a store, one run to its end, a node
// of the result, and the databases the suites run against (PostgreSQL: test/support/pg.hpp).
// Header-only: each suite is one translation unit.

#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "runtime/engine.hpp"
#include "test/support/pg.hpp"
#include "test/support/status_io.hpp"

namespace troupe::test {

/// Two threads and a 2 ms writer flush, so that the suites' runs reach the store quickly.
inline engine_config config(persistence_mode mode, std::string url) {
  engine_config c;
  c.threads = 2;
  c.mode = mode;
  c.store = std::move(url);
  c.writer.flush_ms = 2;
  return c;
}

inline run_result run_once(engine& e, const std::string& workflow, json::object inputs) {
  auto h = e.start(workflow, std::move(inputs));
  BOOST_REQUIRE(h.has_value());
  auto r = h->wait_for(std::chrono::seconds(60));
  BOOST_REQUIRE(r.has_value());
  return *r;
}

inline const node_report& node(const run_result& r, std::string_view id) {
  for (const auto& n : r.nodes) {
    if (n.id == id) {
      return n;
    }
  }
  BOOST_FAIL("no node " << id);
  return r.nodes.front();
}

/// A `sqlite://` URL for a fresh database `name` in troupe-SUITE-PID under the temp directory:
/// one folder per suite and process, so that suites running side by side never share a file.
inline std::string temp_db(std::string_view suite, const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("troupe-" + std::string(suite) + "-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = dir / name;
  std::filesystem::remove(path);
  return "sqlite://" + path.string();
}

}  // namespace troupe::test
