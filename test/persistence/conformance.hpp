#pragma once

// The conformance suite (conformance.cpp) runs against every backend: each test executable
// links it and defines the two functions below for its own backend.

#include <boost/test/unit_test.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "persistence/store.hpp"

namespace troupe::test {

/// A store with empty tables, new for every call.
std::unique_ptr<store> make_test_store();

/// Whether the backend can run here (PostgreSQL: the test server started); the message says
/// why not.
boost::test_tools::assertion_result backend_available(boost::unit_test::test_unit_id);

inline json_ptr parse(std::string_view text) {
  auto v = parse_json(text);
  BOOST_REQUIRE_MESSAGE(v.has_value(), "test JSON does not parse: " << text);
  return make_json(std::move(*v));
}

inline run_row sample_run(std::string id, std::int64_t started = 1000) {
  run_row r;
  r.run_id = std::move(id);
  r.workflow = "etl";
  r.version = "3";
  r.plan_hash = "abc123";
  r.status = run_status::running;
  r.inputs = parse(R"({"n": 3, "names": ["a", "b"]})");
  r.started_at = started;
  return r;
}

inline node_row sample_node(std::string run, std::string node, std::int64_t item = -1,
                            int attempt = 1) {
  node_row n;
  n.run_id = std::move(run);
  n.node_id = std::move(node);
  n.item = item;
  n.attempt = attempt;
  n.status = node_status::succeeded;
  n.input = parse(R"({"x": 1})");
  n.output = parse(R"({"y": [1, 2.5, "z", null, true]})");
  n.started_at = 10;
  n.finished_at = 20;
  return n;
}

/// `count` node rows of `run` (node "map", items 0 to count - 1): a batch that takes several
/// slices to write.
inline write_batch map_batch(const std::string& run, int count) {
  write_batch b;
  for (int i = 0; i < count; ++i) {
    b.nodes.push_back(sample_node(run, "map", i, 1));
  }
  return b;
}

/// A write yield that throws on its `nth` call, as a failure in the middle of a sliced batch.
inline std::function<void()> yield_throwing_on_call(int nth) {
  return [calls = 0, nth]() mutable {
    if (++calls == nth) {
      throw std::runtime_error("yield failed");
    }
  };
}

inline bool same_json(const json_ptr& a, const json_ptr& b) {
  if (!a || !b) {
    return !a && !b;
  }
  return *a == *b;
}

inline std::string text_of(const json_ptr& v) {
  return v ? to_json_text(*v) : "<SQL NULL>";
}

/// The error message of a failed result, empty otherwise. Boost.Test builds a check's message
/// even when the check passes, so messages must not touch a missing error.
template <class R>
std::string error_of(const R& r) {
  return r.has_value() ? std::string() : r.error().message;
}

/// A run_query built by field name: positional initializers depend on the order run_query
/// declares its fields in, and partial ones draw -Wmissing-field-initializers.
class runs_query {
 public:
  runs_query& status(run_status s) {
    q_.status = s;
    return *this;
  }
  runs_query& workflow(std::string w) {
    q_.workflow = std::move(w);
    return *this;
  }
  runs_query& children_of(std::string parent_run_id) {
    q_.parent_run_id = std::move(parent_run_id);
    return *this;
  }
  runs_query& limit(std::size_t n) {
    q_.limit = n;
    return *this;
  }
  runs_query& top_level(bool on = true) {
    q_.top_level = on;
    return *this;
  }
  /// The cursor: only runs after (started_at, run_id) in the newest-first order.
  runs_query& before(std::int64_t started_at, std::string run_id) {
    q_.before_started_at = started_at;
    q_.before_run_id = std::move(run_id);
    return *this;
  }
  operator run_query() const { return q_; }

 private:
  run_query q_;
};

/// Every column equal, with messages naming the column.
void check_same(const run_row& got, const run_row& want);
void check_same(const node_row& got, const node_row& want);

void check_same(const request_key_row& got, const request_key_row& want);

/// Writes and requires success.
void must_write(store& s, const write_batch& b);

/// remember_request, find_request and forget_requests, requiring success.
request_key_row must_remember(store& s, const request_key_row& row, std::int64_t expired_before_us);
std::optional<request_key_row> must_find(store& s, std::string_view key, std::string_view scope);
std::size_t must_forget(store& s, std::int64_t before_us);

/// The migration tests' data, written into a version 1 schema by raw SQL that both backends'
/// version 1 DDL accepts (each test keeps its own frozen copy of that DDL).
inline constexpr const char* v1_rows[] = {
    // Columns named: version 3 added three (with defaults) that these rows leave out.
    "INSERT INTO runs (run_id, workflow, version, plan_hash, status, inputs, outputs, error, "
    "started_at, finished_at, parent_run_id, parent_node_id) VALUES ('parent', 'etl', '3', "
    "'abc123', 'succeeded', '{\"n\":3}', '{\"ok\":true}', '', 1000, 2000, '', '')",
    "INSERT INTO runs (run_id, workflow, version, plan_hash, status, inputs, outputs, error, "
    "started_at, finished_at, parent_run_id, parent_node_id) VALUES ('child', 'etl', '3', "
    "'abc123', 'running', NULL, NULL, '', 1500, 0, 'parent', 'spawn')",
    // Columns named: version 2 added two (with defaults) that this row leaves out.
    "INSERT INTO node_executions (run_id, node_id, item, attempt, status, input, output, error, "
    "cache, started_at, finished_at, worker) VALUES ('parent', 'spawn', -1, 1, 'succeeded', "
    "'{\"x\":1}', '{\"y\":[1,2.5]}', '', 'miss', 10, 20, 'w1')",
    "INSERT INTO workflows VALUES ('etl', '3', 'h', '{}', 42)",
    "INSERT INTO cache_entries VALUES ('k', 'etl', 'spawn', '1', 'output', 7)",
};

/// Fills an empty database through `raw` (a test's own connection: anything with exec(sql)) as
/// version 1 left it: `ddl`, the test's frozen copy of that schema, in one transaction, then
/// v1_rows.
template <class Raw, std::size_t N>
void create_v1_database(Raw& raw, const char* const (&ddl)[N]) {
  raw.exec("BEGIN");
  for (const char* sql : ddl) {
    raw.exec(sql);
  }
  raw.exec("COMMIT");
  for (const char* sql : v1_rows) {
    raw.exec(sql);
  }
}

/// Checks that `s`, opened on a version 1 database holding v1_rows, reads every row back with
/// the version 2 columns at their defaults, and writes version 2 rows over and beside them.
void check_v1_rows_migrated(store& s);

/// What version 2 added to v1_rows' database, by raw SQL both backends' version 2 DDL accepts.
inline constexpr const char* v2_rows[] = {
    "INSERT INTO node_executions VALUES ('parent', 'spawn', -1, 2, 'succeeded', '{\"x\":2}', "
    "'{\"y\":3}', '', 'off', 30, 40, 'w2', 'hit', 'child')",
};

/// As create_v1_database, for version 2: `ddl` (the test's frozen copy of the version 2 schema,
/// stamped 1 and 2), then v1_rows and v2_rows.
template <class Raw, std::size_t N>
void create_v2_database(Raw& raw, const char* const (&ddl)[N]) {
  create_v1_database(raw, ddl);
  for (const char* sql : v2_rows) {
    raw.exec(sql);
  }
}

/// Checks that `s`, opened on a version 2 database holding v1_rows and v2_rows, reads every row
/// back (version 2's columns as written, the runs unowned: owner '', lease 0, epoch 0).
void check_v2_rows_migrated(store& s);

/// What version 3 added to v2_rows' database, by raw SQL both backends' version 3 DDL accepts:
/// an owned run with a node row, and a dead letter.
inline constexpr const char* v3_rows[] = {
    "INSERT INTO runs VALUES ('owned', 'etl', '3', 'abc123', 'running', NULL, NULL, '', 3000, 0, "
    "'', '', 'engine-1', 9000, 2)",
    "INSERT INTO node_executions VALUES ('owned', 'step', -1, 1, 'running', '{\"x\":3}', NULL, "
    "'', 'off', 3010, 0, 'w3', 'off', '')",
    "INSERT INTO dead_letters (run_id, tbl, key, \"row\", error, at) VALUES ('owned', "
    "'node_executions', 'owned/bad/-1/1', '{}', 'refused', 5)",
};

/// As create_v2_database, for version 3: `ddl` (the test's frozen copy of the version 3 schema,
/// stamped 1, 2 and 3), then v1_rows, v2_rows and v3_rows.
template <class Raw, std::size_t N>
void create_v3_database(Raw& raw, const char* const (&ddl)[N]) {
  create_v2_database(raw, ddl);
  for (const char* sql : v3_rows) {
    raw.exec(sql);
  }
}

/// Checks that `s`, opened on a version 3 database holding v1_rows, v2_rows and v3_rows, reads
/// every row back (the node rows' event seqs 0), writes event seqs over and beside them under
/// the owned run's epoch, and keeps request keys.
void check_v3_rows_migrated(store& s);

/// Checks that the runs of a migrated database (v1_rows: "parent" succeeded, "child" running,
/// both unowned at epoch 0) take part in ownership: a write under an epoch is fenced until the
/// run is claimed, a succeeded run is refused, unfenced writes go on; dead letters are kept.
void check_old_runs_take_part_in_ownership(store& s);

}  // namespace troupe::test
