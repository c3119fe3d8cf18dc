#define BOOST_TEST_MODULE persistence memory store
#include <boost/test/unit_test.hpp>

#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "persistence/detail/common.hpp"
#include "test/persistence/conformance.hpp"

namespace utf = boost::unit_test;

namespace collisions {
// A key whose every value hashes alike: the table must then find keys by probing alone.
struct same_hash_key {
  int v;
  bool operator==(const same_hash_key& o) const { return v == o.v; }
};
struct tagged_row {
  int key;
  int tag;
};
}  // namespace collisions

template <>
struct std::hash<collisions::same_hash_key> {
  std::size_t operator()(const collisions::same_hash_key&) const { return 42; }
};

namespace troupe::test {

std::unique_ptr<store> make_test_store() {
  auto s = open_store("memory://");
  BOOST_REQUIRE_MESSAGE(s.has_value(), "memory:// failed to open: " << error_of(s));
  return std::move(*s);
}

boost::test_tools::assertion_result backend_available(utf::test_unit_id) {
  return true;
}

BOOST_AUTO_TEST_SUITE(memory_store_slices)

BOOST_AUTO_TEST_CASE(yields_between_slices_and_keeps_every_row, *utf::timeout(30)) {
  auto s = make_test_store();
  write_batch b;
  b.runs = {sample_run("r1")};
  for (int i = 0; i < 300; ++i) {
    b.nodes.push_back(sample_node("r1", "n", i));
  }
  int yields = 0;
  s->set_write_yield([&] { ++yields; });
  auto r = s->write(b);
  BOOST_REQUIRE_MESSAGE(r.has_value(), error_of(r));
  BOOST_TEST(yields == static_cast<int>(301 / write_slice_rows));
  auto nodes = s->node_rows("r1");
  BOOST_REQUIRE(nodes.has_value());
  BOOST_TEST(nodes->size() == 300u);
}

BOOST_AUTO_TEST_SUITE_END()

// keep_newest_rows is what the writer's committer coalesces a job with before every write.
BOOST_AUTO_TEST_SUITE(keep_newest_rows_suite)

BOOST_AUTO_TEST_CASE(keeps_the_last_row_of_each_key_in_the_order_of_the_kept_rows,
                     *utf::timeout(30)) {
  write_batch b;
  auto node = [](const char* id, node_status st) {
    node_row n = sample_node("r1", id);
    n.status = st;
    return n;
  };
  b.nodes = {node("a", node_status::pending), node("b", node_status::running),
             node("a", node_status::running), node("c", node_status::succeeded),
             node("b", node_status::failed),  node("a", node_status::succeeded)};
  b.runs = {sample_run("r1"), sample_run("r2"), sample_run("r1", 7)};
  b.workflows = {
      {"etl", "3", "old", "{}", 1}, {"etl", "4", "x", "{}", 1}, {"etl", "3", "new", "{}", 2}};
  b.cache = {{"k", "etl", "a", parse("1"), "output", 5},
             {"k", "etl", "a", parse("2"), "output", 6}};

  BOOST_TEST(keep_newest_rows(b) == 3u + 1u + 1u + 1u);

  BOOST_REQUIRE_EQUAL(b.nodes.size(), 3u);
  BOOST_TEST(b.nodes[0].node_id == "c");
  BOOST_TEST(b.nodes[1].node_id == "b");
  BOOST_TEST((b.nodes[1].status == node_status::failed));
  BOOST_TEST(b.nodes[2].node_id == "a");
  BOOST_TEST((b.nodes[2].status == node_status::succeeded));
  BOOST_REQUIRE_EQUAL(b.runs.size(), 2u);
  BOOST_TEST(b.runs[0].run_id == "r2");
  BOOST_TEST(b.runs[1].started_at == 7);
  BOOST_REQUIRE_EQUAL(b.workflows.size(), 2u);
  BOOST_TEST(b.workflows[0].version == "4");
  BOOST_TEST(b.workflows[1].hash == "new");
  BOOST_REQUIRE_EQUAL(b.cache.size(), 1u);
  BOOST_TEST(same_json(b.cache[0].value, parse("2")));
}

BOOST_AUTO_TEST_CASE(tells_keys_apart_by_every_field, *utf::timeout(30)) {
  write_batch b;
  b.nodes = {sample_node("ab", "c"), sample_node("a", "bc"), sample_node("a", "bc", 0),
             sample_node("a", "bc", 0, 2), sample_node("a", "bc", -1, 2)};
  BOOST_TEST(keep_newest_rows(b) == 0u);
  BOOST_TEST(b.nodes.size() == 5u);
}

// Thousands of distinct keys (the table probes past collisions) and one key written thousands
// of times (nothing quadratic about it).
BOOST_AUTO_TEST_CASE(handles_many_keys_and_many_rows_of_one_key, *utf::timeout(30)) {
  write_batch b;
  for (int i = 0; i < 5000; ++i) {
    b.nodes.push_back(sample_node("r" + std::to_string(i % 50), "n", i / 50));
  }
  for (int i = 0; i < 5000; ++i) {
    node_row n = sample_node("hot", "n");
    n.started_at = i;
    b.nodes.push_back(std::move(n));
  }
  BOOST_TEST(keep_newest_rows(b) == 4999u);
  BOOST_REQUIRE_EQUAL(b.nodes.size(), 5001u);
  for (int i = 0; i < 5000; ++i) {
    BOOST_TEST(b.nodes[static_cast<std::size_t>(i)].item == i / 50);
  }
  BOOST_TEST(b.nodes.back().run_id == "hot");
  BOOST_TEST(b.nodes.back().started_at == 4999);
}

// Against the obvious map-based reference: which rows survive, in which order, and how many go.
// Keys come from small sets (empty strings, prefixes of each other) so that batches are full of
// duplicates and near-misses.
BOOST_AUTO_TEST_CASE(agrees_with_a_map_on_random_batches, *utf::timeout(60)) {
  std::mt19937 rng(12345);
  const char* runs[] = {"", "a", "b", "ab"};
  const char* nodes[] = {"", "n", "bc", "c"};
  for (int round = 0; round < 400; ++round) {
    const int n = static_cast<int>(rng() % 700);
    write_batch b;
    for (int i = 0; i < n; ++i) {
      node_row r =
          sample_node(runs[rng() % 4], nodes[rng() % 4], static_cast<std::int64_t>(rng() % 5) - 1,
                      static_cast<int>(rng() % 3));
      r.started_at = i;  // tells the rows apart
      b.nodes.push_back(std::move(r));
      b.runs.push_back(sample_run(std::string(runs[rng() % 4]) + std::to_string(rng() % 3), i));
    }
    std::map<std::tuple<std::string, std::string, std::int64_t, int>, std::int64_t> last_node;
    for (const auto& r : b.nodes) {
      last_node[{r.run_id, r.node_id, r.item, r.attempt}] = r.started_at;
    }
    std::map<std::string, std::int64_t> last_run;
    for (const auto& r : b.runs) {
      last_run[r.run_id] = r.started_at;
    }
    std::vector<std::int64_t> want_nodes;
    std::vector<std::int64_t> want_runs;
    for (const auto& r : b.nodes) {
      if (last_node[{r.run_id, r.node_id, r.item, r.attempt}] == r.started_at) {
        want_nodes.push_back(r.started_at);
      }
    }
    for (const auto& r : b.runs) {
      if (last_run[r.run_id] == r.started_at) {
        want_runs.push_back(r.started_at);
      }
    }
    const std::size_t before = b.nodes.size() + b.runs.size();

    BOOST_REQUIRE_EQUAL(keep_newest_rows(b), before - want_nodes.size() - want_runs.size());

    std::vector<std::int64_t> got_nodes;
    for (const auto& r : b.nodes) {
      got_nodes.push_back(r.started_at);
    }
    std::vector<std::int64_t> got_runs;
    for (const auto& r : b.runs) {
      got_runs.push_back(r.started_at);
    }
    BOOST_REQUIRE(got_nodes == want_nodes);
    BOOST_REQUIRE(got_runs == want_runs);
  }
}

BOOST_AUTO_TEST_CASE(finds_keys_when_every_hash_collides, *utf::timeout(30)) {
  std::vector<collisions::tagged_row> rows;
  for (int i = 0; i < 600; ++i) {
    rows.push_back({i % 97, i});
  }
  auto superseded = detail::superseded_rows(rows, [](const collisions::tagged_row& r) {
    return std::tuple<collisions::same_hash_key>(collisions::same_hash_key{r.key});
  });
  std::vector<std::size_t> want;  // every row but the last of its key
  for (std::size_t i = 0; i + 97 < 600; ++i) {
    want.push_back(i);
  }
  BOOST_TEST(superseded == want, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(handles_empty_and_tiny_batches, *utf::timeout(10)) {
  write_batch b;
  BOOST_TEST(keep_newest_rows(b) == 0u);
  b.nodes = {sample_node("r", "n")};
  BOOST_TEST(keep_newest_rows(b) == 0u);
  BOOST_TEST(b.nodes.size() == 1u);
  b.nodes = {sample_node("r", "n"), sample_node("r", "n")};
  BOOST_TEST(keep_newest_rows(b) == 1u);
  BOOST_TEST(b.nodes.size() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(open_store_urls)

BOOST_AUTO_TEST_CASE(an_unknown_scheme_is_refused_with_the_accepted_ones_listed,
                     *utf::timeout(30)) {
  auto s = open_store("mysql://localhost/db");
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient);
  const std::string& m = s.error().message;
  BOOST_TEST(m.find("mysql://localhost/db") != std::string::npos, m);
  for (const char* scheme : {"memory://", "sqlite://", "postgres://", "postgresql://"}) {
    BOOST_TEST(m.find(scheme) != std::string::npos, "missing " << scheme << " in: " << m);
  }
}

BOOST_AUTO_TEST_CASE(a_sqlite_url_without_a_path_is_refused, *utf::timeout(30)) {
  auto s = open_store("sqlite://");
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient);
  BOOST_TEST(s.error().message.find("path") != std::string::npos, s.error().message);
}

BOOST_AUTO_TEST_CASE(a_memory_store_describes_itself_by_its_url, *utf::timeout(30)) {
  BOOST_TEST(make_test_store()->describe() == "memory://");
}

BOOST_AUTO_TEST_CASE(a_postgres_password_never_appears_in_an_error, *utf::timeout(30)) {
  // Port 1 on loopback refuses at once: the open fails, transiently (the server may come up).
  auto s = open_store("postgresql://troupe:s3cret@127.0.0.1:1/db?connect_timeout=5");
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(s.error().transient, s.error().message);
  BOOST_TEST(s.error().message.find("s3cret") == std::string::npos, s.error().message);
  BOOST_TEST(s.error().message.find("***") != std::string::npos, s.error().message);
}

BOOST_AUTO_TEST_CASE(a_malformed_postgres_url_is_refused_as_not_transient, *utf::timeout(30)) {
  auto s = open_store("postgresql://host/db?no_such_option=1");
  BOOST_REQUIRE(!s.has_value());
  BOOST_TEST(!s.error().transient, s.error().message);
}

BOOST_AUTO_TEST_CASE(the_schema_version_is_five, *utf::timeout(30)) {
  BOOST_TEST(schema_version() == 5);
}

BOOST_AUTO_TEST_SUITE_END()

}  // namespace troupe::test
