#include "test/persistence/conformance.hpp"

#include <algorithm>
#include <atomic>
#include <limits>
#include <thread>

namespace utf = boost::unit_test;

namespace troupe::test {

void check_same(const run_row& got, const run_row& want) {
  BOOST_TEST(got.run_id == want.run_id);
  BOOST_TEST(got.workflow == want.workflow);
  BOOST_TEST(got.version == want.version);
  BOOST_TEST(got.plan_hash == want.plan_hash);
  BOOST_TEST(to_string(got.status) == to_string(want.status));
  BOOST_TEST(same_json(got.inputs, want.inputs),
             "inputs: " << text_of(got.inputs) << " != " << text_of(want.inputs));
  BOOST_TEST(same_json(got.outputs, want.outputs),
             "outputs: " << text_of(got.outputs) << " != " << text_of(want.outputs));
  BOOST_TEST(got.error == want.error);
  BOOST_TEST(got.started_at == want.started_at);
  BOOST_TEST(got.finished_at == want.finished_at);
  BOOST_TEST(got.parent_run_id == want.parent_run_id);
  BOOST_TEST(got.parent_node_id == want.parent_node_id);
  BOOST_TEST(got.owner == want.owner);
  BOOST_TEST(got.lease_until == want.lease_until);
  BOOST_TEST(got.epoch == want.epoch);
}

void check_same(const node_row& got, const node_row& want) {
  BOOST_TEST(got.run_id == want.run_id);
  BOOST_TEST(got.node_id == want.node_id);
  BOOST_TEST(got.item == want.item);
  BOOST_TEST(got.attempt == want.attempt);
  BOOST_TEST(to_string(got.status) == to_string(want.status));
  BOOST_TEST(same_json(got.input, want.input),
             "input: " << text_of(got.input) << " != " << text_of(want.input));
  BOOST_TEST(same_json(got.output, want.output),
             "output: " << text_of(got.output).substr(0, 200)
                        << " != " << text_of(want.output).substr(0, 200));
  BOOST_TEST(got.error == want.error);
  BOOST_TEST(to_string(got.cache) == to_string(want.cache));
  BOOST_TEST(got.started_at == want.started_at);
  BOOST_TEST(got.finished_at == want.finished_at);
  BOOST_TEST(got.worker == want.worker);
  BOOST_TEST(to_string(got.spec_cache) == to_string(want.spec_cache));
  BOOST_TEST(got.child_run_id == want.child_run_id);
  BOOST_TEST(got.started_seq == want.started_seq);
  BOOST_TEST(got.finished_seq == want.finished_seq);
  BOOST_TEST(got.lost == want.lost);
}

void check_same(const request_key_row& got, const request_key_row& want) {
  BOOST_TEST(got.key == want.key);
  BOOST_TEST(got.scope == want.scope);
  BOOST_TEST(got.request_hash == want.request_hash);
  BOOST_TEST(got.run_id == want.run_id);
  BOOST_TEST(got.created_at == want.created_at);
}

request_key_row must_remember(store& s, const request_key_row& row,
                              std::int64_t expired_before_us) {
  auto r = s.remember_request(row, expired_before_us);
  BOOST_REQUIRE_MESSAGE(r.has_value(), "remember_request failed: " << error_of(r));
  return *r;
}

std::optional<request_key_row> must_find(store& s, std::string_view key, std::string_view scope) {
  auto r = s.find_request(key, scope);
  BOOST_REQUIRE_MESSAGE(r.has_value(), "find_request failed: " << error_of(r));
  return *r;
}

std::size_t must_forget(store& s, std::int64_t before_us) {
  auto r = s.forget_requests(before_us);
  BOOST_REQUIRE_MESSAGE(r.has_value(), "forget_requests failed: " << error_of(r));
  return *r;
}

void must_write(store& s, const write_batch& b) {
  auto r = s.write(b);
  BOOST_REQUIRE_MESSAGE(r.has_value(), "write failed: " << error_of(r));
}

void check_v1_rows_migrated(store& s) {
  run_row parent = sample_run("parent");
  parent.status = run_status::succeeded;
  parent.inputs = parse(R"({"n":3})");
  parent.outputs = parse(R"({"ok":true})");
  parent.finished_at = 2000;
  auto got = s.get_run("parent");
  BOOST_REQUIRE_MESSAGE(got.has_value() && got->has_value(), error_of(got));
  check_same(**got, parent);

  node_row v1_node = sample_node("parent", "spawn");
  v1_node.input = parse(R"({"x":1})");
  v1_node.output = parse(R"({"y":[1,2.5]})");
  v1_node.cache = cache_status::miss;
  v1_node.worker = "w1";
  auto nodes = s.node_rows("parent");
  BOOST_REQUIRE_MESSAGE(nodes.has_value(), error_of(nodes));
  BOOST_REQUIRE_EQUAL(nodes->size(), 1u);
  check_same((*nodes)[0], v1_node);  // spec_cache off, child_run_id empty: the defaults

  auto children = s.list_runs(runs_query().children_of("parent"));
  BOOST_REQUIRE_MESSAGE(children.has_value(), error_of(children));
  BOOST_REQUIRE_EQUAL(children->size(), 1u);
  BOOST_TEST((*children)[0].run_id == "child");
  BOOST_TEST((*children)[0].parent_node_id == "spawn");
  auto w = s.get_workflow("etl", "3");
  BOOST_REQUIRE(w.has_value() && w->has_value());
  BOOST_TEST((*w)->registered_at == 42);
  auto c = s.get_cache("k");
  BOOST_REQUIRE(c.has_value() && c->has_value());
  BOOST_TEST(same_json((*c)->value, parse("1")));

  // Version 2 writes, one batch: the old row replaced, a new one added.
  node_row replaced = v1_node;
  replaced.spec_cache = cache_status::hit;
  replaced.child_run_id = "child";
  node_row added = sample_node("parent", "spawn", -1, 2);
  added.spec_cache = cache_status::miss;
  added.child_run_id = "child-2";
  must_write(s, write_batch{{}, {replaced, added}, {}, {}});
  nodes = s.node_rows("parent");
  BOOST_REQUIRE_MESSAGE(nodes.has_value(), error_of(nodes));
  BOOST_REQUIRE_EQUAL(nodes->size(), 2u);
  check_same((*nodes)[0], replaced);
  check_same((*nodes)[1], added);
}

void check_v2_rows_migrated(store& s) {
  node_row v2_node = sample_node("parent", "spawn", -1, 2);
  v2_node.input = parse(R"({"x":2})");
  v2_node.output = parse(R"({"y":3})");
  v2_node.started_at = 30;
  v2_node.finished_at = 40;
  v2_node.worker = "w2";
  v2_node.spec_cache = cache_status::hit;
  v2_node.child_run_id = "child";
  auto nodes = s.node_rows("parent");
  BOOST_REQUIRE_MESSAGE(nodes.has_value(), error_of(nodes));
  BOOST_REQUIRE_EQUAL(nodes->size(), 2u);
  BOOST_TEST((*nodes)[0].attempt == 1);
  check_same((*nodes)[1], v2_node);

  run_row child = sample_run("child", 1500);
  child.inputs = nullptr;
  child.parent_run_id = "parent";
  child.parent_node_id = "spawn";
  auto got = s.get_run("child");
  BOOST_REQUIRE_MESSAGE(got.has_value() && got->has_value(), error_of(got));
  check_same(**got, child);  // owner '', lease_until 0, epoch 0
  auto unfinished = s.unfinished_runs();
  BOOST_REQUIRE_MESSAGE(unfinished.has_value(), error_of(unfinished));
  BOOST_REQUIRE_EQUAL(unfinished->size(), 1u);
  check_same((*unfinished)[0], child);
  auto listed = s.list_runs(runs_query().limit(0));
  BOOST_REQUIRE_MESSAGE(listed.has_value(), error_of(listed));
  BOOST_REQUIRE_EQUAL(listed->size(), 2u);
  for (const auto& r : *listed) {
    BOOST_TEST(r.owner == "");
    BOOST_TEST(r.lease_until == 0);
    BOOST_TEST(r.epoch == 0);
  }
}

void check_v3_rows_migrated(store& s) {
  run_row owned = sample_run("owned", 3000);
  owned.inputs = nullptr;
  owned.owner = "engine-1";
  owned.lease_until = 9000;
  owned.epoch = 2;
  auto got = s.get_run("owned");
  BOOST_REQUIRE_MESSAGE(got.has_value() && got->has_value(), error_of(got));
  check_same(**got, owned);
  auto unfinished = s.unfinished_runs();
  BOOST_REQUIRE_MESSAGE(unfinished.has_value(), error_of(unfinished));
  BOOST_TEST(unfinished->size() == 2u);  // child, owned

  node_row step = sample_node("owned", "step");
  step.status = node_status::running;
  step.input = parse(R"({"x":3})");
  step.output = nullptr;
  step.started_at = 3010;
  step.finished_at = 0;
  step.worker = "w3";
  auto nodes = s.node_rows("owned");
  BOOST_REQUIRE_MESSAGE(nodes.has_value(), error_of(nodes));
  BOOST_REQUIRE_EQUAL(nodes->size(), 1u);
  check_same((*nodes)[0], step);  // started_seq and finished_seq 0: the defaults
  nodes = s.node_rows("parent");
  BOOST_REQUIRE_MESSAGE(nodes.has_value(), error_of(nodes));
  BOOST_REQUIRE_EQUAL(nodes->size(), 2u);
  for (const auto& n : *nodes) {
    BOOST_TEST(n.started_seq == 0);
    BOOST_TEST(n.finished_seq == 0);
  }
  auto letters = s.list_dead_letters(0);
  BOOST_REQUIRE_MESSAGE(letters.has_value(), error_of(letters));
  BOOST_REQUIRE_EQUAL(letters->size(), 1u);
  BOOST_TEST((*letters)[0].key == "owned/bad/-1/1");

  // Version 4 writes under the run's epoch (the fenced path): the old row replaced with its
  // event seqs, a new one added.
  node_row finished = step;
  finished.status = node_status::succeeded;
  finished.finished_at = 3020;
  finished.started_seq = 3;
  finished.finished_seq = 4;
  finished.epoch = 2;
  node_row added = sample_node("owned", "next");
  added.started_at = 3030;
  added.finished_at = 3040;
  added.started_seq = 5;
  added.finished_seq = 6;
  added.epoch = 2;
  auto written = s.write(write_batch{{}, {finished, added}, {}, {}});
  BOOST_REQUIRE_MESSAGE(written.has_value(), error_of(written));
  BOOST_TEST(written->fenced_runs.empty());
  nodes = s.node_rows("owned");
  BOOST_REQUIRE_MESSAGE(nodes.has_value(), error_of(nodes));
  BOOST_REQUIRE_EQUAL(nodes->size(), 2u);
  check_same((*nodes)[0], finished);
  check_same((*nodes)[1], added);

  const request_key_row key{"key-1", "etl", "hash", "owned", 3000};
  check_same(must_remember(s, key, 0), key);
  check_same(must_remember(s, {"key-1", "etl", "hash", "other", 3001}, 0), key);
  auto found = must_find(s, "key-1", "etl");
  BOOST_REQUIRE(found.has_value());
  check_same(*found, key);
}

void check_old_runs_take_part_in_ownership(store& s) {
  node_row n = sample_node("child", "late");
  n.epoch = 1;
  auto fenced = s.write(write_batch{{}, {n}, {}, {}});
  BOOST_REQUIRE_MESSAGE(fenced.has_value(), error_of(fenced));
  BOOST_TEST(fenced->fenced_runs == std::vector<std::string>{"child"},
             boost::test_tools::per_element());

  auto refused = s.claim_run("parent", "engine-2", 10, 1000);
  BOOST_REQUIRE_MESSAGE(refused.has_value(), error_of(refused));
  BOOST_TEST(refused->found);
  BOOST_TEST(!refused->claimed);  // succeeded
  auto claimed = s.claim_run("child", "engine-2", 10, 1000);
  BOOST_REQUIRE_MESSAGE(claimed.has_value(), error_of(claimed));
  BOOST_TEST(claimed->claimed);
  BOOST_TEST(claimed->epoch == 1);
  BOOST_TEST(claimed->owner == "engine-2");

  auto written = s.write(write_batch{{}, {n}, {}, {}});
  BOOST_REQUIRE_MESSAGE(written.has_value(), error_of(written));
  BOOST_TEST(written->fenced_runs.empty());
  auto nodes = s.node_rows("child");
  BOOST_REQUIRE_MESSAGE(nodes.has_value(), error_of(nodes));
  BOOST_TEST(nodes->size() == 1u);

  auto kept = s.write_dead_letters({{"child", "node_executions", "child/x/-1/1", "{}", "no", 5}});
  BOOST_REQUIRE_MESSAGE(kept.has_value(), error_of(kept));
  auto letters = s.list_dead_letters(0);
  BOOST_REQUIRE_MESSAGE(letters.has_value(), error_of(letters));
  BOOST_REQUIRE_EQUAL(letters->size(), 1u);
  BOOST_TEST((*letters)[0].key == "child/x/-1/1");
}

namespace {

struct store_fixture {
  std::unique_ptr<store> s = make_test_store();

  run_row must_get_run(std::string_view id) {
    auto r = s->get_run(id);
    BOOST_REQUIRE_MESSAGE(r.has_value(), "get_run failed: " << error_of(r));
    BOOST_REQUIRE_MESSAGE(r->has_value(), "run " << id << " not found");
    return **r;
  }
  std::vector<node_row> must_nodes(std::string_view id) {
    auto r = s->node_rows(id);
    BOOST_REQUIRE_MESSAGE(r.has_value(), "node_rows failed: " << error_of(r));
    return *r;
  }
  std::vector<run_row> must_list(const run_query& q) {
    auto r = s->list_runs(q);
    BOOST_REQUIRE_MESSAGE(r.has_value(), "list_runs failed: " << error_of(r));
    return *r;
  }
  std::vector<std::string> ids(const std::vector<run_row>& rows) {
    std::vector<std::string> out;
    for (const auto& r : rows) {
      out.push_back(r.run_id);
    }
    return out;
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(conformance, *utf::precondition(backend_available))
BOOST_FIXTURE_TEST_SUITE(a_store, store_fixture)

BOOST_AUTO_TEST_CASE(reads_back_every_column_it_wrote, *utf::timeout(60)) {
  run_row run = sample_run("run-1");
  run.status = run_status::failed;
  run.outputs = parse(R"({"total": 12.75, "nested": {"k": [null, false, "\u00e9\u6f22"]}})");
  run.error = "step 'fetch' failed: caf\u00e9 \u2603 \"quoted\" \\ back\\slash, {braces}";
  run.finished_at = 2'000'000'000'000'000;
  run.parent_run_id = "parent-7";
  run.parent_node_id = "spawn";

  node_row done = sample_node("run-1", "fetch", 3, 2);
  done.cache = cache_status::miss;
  done.worker = "worker-\u00fc-1";
  done.error = "NULL";  // the word, not SQL NULL
  done.spec_cache = cache_status::hit;
  done.child_run_id = "child-\u00e9-\"7\"";
  done.started_seq = 4;
  done.finished_seq = 5'000'000'000'000;  // beyond 32 bits
  done.lost = 2;
  node_row skipped = sample_node("run-1", "report", -1, 0);
  skipped.status = node_status::skipped;
  skipped.input = nullptr;
  skipped.output = nullptr;
  skipped.started_at = 0;
  skipped.finished_at = 0;
  node_row json_null = sample_node("run-1", "noop");
  json_null.output = parse("null");  // JSON null, distinct from no output
  json_null.cache = cache_status::hit;
  json_null.spec_cache = cache_status::miss;
  json_null.child_run_id = "run-1.noop.0";

  workflow_row wf{"etl", "3", "hash-1", R"({"name": "etl", "tasks": []})", 42};
  cache_row entry{"k1", "etl", "fetch", parse(R"([1, "two", {"three": 3}])"), "output", 77};

  write_batch b;
  b.runs = {run};
  b.nodes = {done, skipped, json_null};
  b.workflows = {wf};
  b.cache = {entry};
  must_write(*s, b);

  check_same(must_get_run("run-1"), run);
  auto nodes = must_nodes("run-1");
  BOOST_REQUIRE_EQUAL(nodes.size(), 3u);
  // Ordered by started_at, node_id: the skipped node (never started) comes first.
  check_same(nodes[0], skipped);
  check_same(nodes[1], done);
  check_same(nodes[2], json_null);
  BOOST_TEST(nodes[2].output != nullptr);

  auto w = s->get_workflow("etl", "3");
  BOOST_REQUIRE(w.has_value());
  BOOST_REQUIRE(w->has_value());
  BOOST_TEST((*w)->hash == wf.hash);
  BOOST_TEST((*w)->document == wf.document);
  BOOST_TEST((*w)->registered_at == 42);

  auto c = s->get_cache("k1");
  BOOST_REQUIRE(c.has_value());
  BOOST_REQUIRE(c->has_value());
  BOOST_TEST((*c)->workflow == "etl");
  BOOST_TEST((*c)->node_id == "fetch");
  BOOST_TEST(same_json((*c)->value, entry.value));
  BOOST_TEST((*c)->kind == "output");
  BOOST_TEST((*c)->created_at == 77);
}

BOOST_AUTO_TEST_CASE(keeps_a_one_megabyte_output_intact, *utf::timeout(60)) {
  std::string big(1u << 20, 'x');
  for (std::size_t i = 0; i < big.size(); i += 1000) {
    big[i] = '"';  // escaped in JSON and in PostgreSQL array literals
  }
  node_row n = sample_node("run-big", "produce");
  n.output = make_json(json::value{{"blob", big}, {"tail", "\u00e9"}});
  write_batch b;
  b.runs = {sample_run("run-big")};
  b.nodes = {n};
  must_write(*s, b);
  auto nodes = must_nodes("run-big");
  BOOST_REQUIRE_EQUAL(nodes.size(), 1u);
  BOOST_REQUIRE(nodes[0].output != nullptr);
  BOOST_TEST(nodes[0].output->at("blob").as_string().size() == big.size());
  BOOST_TEST(same_json(nodes[0].output, n.output));
}

BOOST_AUTO_TEST_CASE(leaves_the_same_rows_when_a_batch_is_replayed, *utf::timeout(60)) {
  write_batch b;
  b.runs = {sample_run("r1"), sample_run("r2", 2000)};
  b.nodes = {sample_node("r1", "a"), sample_node("r1", "b"), sample_node("r2", "a")};
  b.workflows = {{"etl", "3", "h", "{}", 1}};
  b.cache = {{"k", "etl", "a", parse("1"), "output", 5}};
  must_write(*s, b);
  must_write(*s, b);
  must_write(*s, b);
  BOOST_TEST(must_list({}).size() == 2u);
  auto nodes = must_nodes("r1");
  BOOST_REQUIRE_EQUAL(nodes.size(), 2u);
  check_same(nodes[0], b.nodes[0]);
  check_same(nodes[1], b.nodes[1]);
  check_same(must_get_run("r2"), b.runs[1]);
  auto cache = s->list_cache("");
  BOOST_REQUIRE(cache.has_value());
  BOOST_TEST(cache->size() == 1u);
}

BOOST_AUTO_TEST_CASE(keeps_the_last_row_for_a_key_within_a_batch, *utf::timeout(60)) {
  run_row first = sample_run("r1");
  run_row last = first;
  last.status = run_status::succeeded;
  last.outputs = parse(R"({"ok": true})");
  last.finished_at = 99;

  node_row running = sample_node("r1", "a");
  running.status = node_status::running;
  running.output = nullptr;
  running.finished_at = 0;
  node_row succeeded = sample_node("r1", "a");

  write_batch b;
  b.runs = {first, last};
  b.nodes = {running, sample_node("r1", "b"), succeeded};
  b.workflows = {{"etl", "3", "old", "{}", 1}, {"etl", "3", "new", "{}", 2}};
  b.cache = {{"k", "etl", "a", parse("1"), "output", 5},
             {"k", "etl", "a", parse("2"), "output", 6}};
  must_write(*s, b);

  check_same(must_get_run("r1"), last);
  auto nodes = must_nodes("r1");
  BOOST_REQUIRE_EQUAL(nodes.size(), 2u);
  check_same(nodes[0], succeeded);
  auto w = s->get_workflow("etl", "3");
  BOOST_REQUIRE(w.has_value() && w->has_value());
  BOOST_TEST((*w)->hash == "new");
  auto c = s->get_cache("k");
  BOOST_REQUIRE(c.has_value() && c->has_value());
  BOOST_TEST(same_json((*c)->value, parse("2")));
}

// Many keys, each written up to three times and interleaved with other keys' rows: the newest
// state of each is stored, and keys that share run and node but not item or attempt stay apart.
BOOST_AUTO_TEST_CASE(keeps_the_newest_of_many_interleaved_rows_per_key, *utf::timeout(60)) {
  constexpr int items = 300;
  write_batch b;
  for (int i = 0; i < items; ++i) {
    node_row pending = sample_node("r1", "map", i, 1);
    pending.status = node_status::pending;
    pending.output = nullptr;
    b.nodes.push_back(pending);
  }
  for (int i = items - 1; i >= 0; --i) {  // a different order than the first rows
    node_row running = sample_node("r1", "map", i, 1);
    running.status = node_status::running;
    running.output = nullptr;
    b.nodes.push_back(running);
    if (i % 3 == 0) {
      node_row done = sample_node("r1", "map", i, 1);
      done.output = parse(std::to_string(i));
      b.nodes.push_back(done);
    }
  }
  b.nodes.push_back(sample_node("r1", "map", -1, 1));  // the node-level row: item -1
  b.nodes.push_back(sample_node("r1", "map", 0, 2));   // a second attempt of item 0
  must_write(*s, b);

  auto nodes = must_nodes("r1");
  BOOST_REQUIRE_EQUAL(nodes.size(), static_cast<std::size_t>(items + 2));
  int done = 0;
  for (const auto& n : nodes) {
    if (n.item < 0 || n.attempt == 2) {
      BOOST_TEST((n.status == node_status::succeeded));
      continue;
    }
    if (n.item % 3 == 0) {
      ++done;
      BOOST_TEST((n.status == node_status::succeeded), "item " << n.item);
      BOOST_TEST(same_json(n.output, parse(std::to_string(n.item))), "item " << n.item);
    } else {
      BOOST_TEST((n.status == node_status::running), "item " << n.item);
      BOOST_TEST(!n.output, "item " << n.item);
    }
  }
  BOOST_TEST(done == items / 3);
}

BOOST_AUTO_TEST_CASE(replaces_every_column_when_a_row_is_written_again, *utf::timeout(60)) {
  run_row r = sample_run("r1");
  r.outputs = parse(R"({"partial": 1})");
  write_batch b;
  b.runs = {r};
  must_write(*s, b);
  r.status = run_status::cancelled;
  r.inputs = nullptr;
  r.outputs = nullptr;
  r.error = "cancelled by user";
  r.finished_at = 5000;
  b.runs = {r};
  must_write(*s, b);
  check_same(must_get_run("r1"), r);
}

BOOST_AUTO_TEST_CASE(replaces_the_spec_cache_and_child_run_when_a_node_is_written_again,
                     *utf::timeout(60)) {
  // A `dynamic` node: running with its child started, then resumed with another child, then
  // written as a plain node again (the defaults must overwrite, not keep, the old values).
  node_row n = sample_node("r1", "spawn");
  n.status = node_status::running;
  n.spec_cache = cache_status::miss;
  n.child_run_id = "child-a";
  must_write(*s, write_batch{{}, {n}, {}, {}});
  auto nodes = must_nodes("r1");
  BOOST_REQUIRE_EQUAL(nodes.size(), 1u);
  check_same(nodes[0], n);

  n.status = node_status::succeeded;
  n.spec_cache = cache_status::hit;
  n.child_run_id = "child-b";
  must_write(*s, write_batch{{}, {n}, {}, {}});
  nodes = must_nodes("r1");
  BOOST_REQUIRE_EQUAL(nodes.size(), 1u);
  check_same(nodes[0], n);

  n.spec_cache = cache_status::off;
  n.child_run_id.clear();
  must_write(*s, write_batch{{}, {n}, {}, {}});
  nodes = must_nodes("r1");
  BOOST_REQUIRE_EQUAL(nodes.size(), 1u);
  check_same(nodes[0], n);
}

BOOST_AUTO_TEST_CASE(replaces_the_event_seqs_when_a_node_is_written_again, *utf::timeout(60)) {
  // An attempt as the engine writes it: running (its node_started seq), then final (both).
  node_row started = sample_node("r1", "a");
  started.status = node_status::running;
  started.started_seq = 2;
  node_row finished = started;
  finished.status = node_status::succeeded;
  finished.finished_seq = 7;

  // Across batches.
  must_write(*s, write_batch{{}, {started}, {}, {}});
  auto nodes = must_nodes("r1");
  BOOST_REQUIRE_EQUAL(nodes.size(), 1u);
  check_same(nodes[0], started);  // finished_seq 0: not emitted yet
  must_write(*s, write_batch{{}, {finished}, {}, {}});
  nodes = must_nodes("r1");
  BOOST_REQUIRE_EQUAL(nodes.size(), 1u);
  check_same(nodes[0], finished);
  // A later row replaces them, smaller or zero as they may be (a retried attempt's row).
  node_row again = finished;
  again.started_seq = 0;
  again.finished_seq = 3;
  must_write(*s, write_batch{{}, {again}, {}, {}});
  nodes = must_nodes("r1");
  BOOST_REQUIRE_EQUAL(nodes.size(), 1u);
  check_same(nodes[0], again);

  // In one batch: the last row for the key wins, beside another attempt with its own seqs.
  node_row other = sample_node("r2", "a", -1, 2);
  other.started_seq = 11;
  other.finished_seq = 12;
  started.run_id = "r2";
  finished.run_id = "r2";
  must_write(*s, write_batch{{}, {started, other, finished}, {}, {}});
  nodes = must_nodes("r2");
  BOOST_REQUIRE_EQUAL(nodes.size(), 2u);
  check_same(nodes[0], finished);
  check_same(nodes[1], other);
}

BOOST_AUTO_TEST_CASE(stores_the_event_seqs_in_fenced_and_sliced_batches, *utf::timeout(60)) {
  // Rows under an epoch take the fenced statement (PostgreSQL); many rows, the sliced path.
  run_row run = sample_run("r1");
  run.epoch = 1;
  write_batch b = map_batch("r1", 150);
  b.runs = {run};
  for (std::size_t i = 0; i < b.nodes.size(); ++i) {
    b.nodes[i].epoch = 1;
    b.nodes[i].started_seq = static_cast<std::int64_t>(2 * i + 2);
    b.nodes[i].finished_seq = static_cast<std::int64_t>(2 * i + 3);
  }
  for (const bool sliced : {false, true}) {
    if (sliced) {
      s->set_write_yield([] {});
      for (auto& n : b.nodes) {
        n.finished_seq += 1000;
      }
    }
    auto r = s->write(b);
    BOOST_REQUIRE_MESSAGE(r.has_value(), error_of(r));
    BOOST_TEST(r->fenced_runs.empty());
    auto nodes = must_nodes("r1");
    BOOST_REQUIRE_EQUAL(nodes.size(), b.nodes.size());
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      BOOST_TEST(nodes[i].item == b.nodes[i].item);
      BOOST_TEST(nodes[i].started_seq == b.nodes[i].started_seq, "item " << i);
      BOOST_TEST(nodes[i].finished_seq == b.nodes[i].finished_seq, "item " << i);
      BOOST_TEST(nodes[i].epoch == 0);  // not stored
    }
  }
  s->set_write_yield(nullptr);
}

BOOST_AUTO_TEST_CASE(writes_nothing_from_a_batch_with_an_invalid_row, *utf::timeout(60)) {
  node_row bad = sample_node("r1", "bad");
  bad.attempt = -1;  // attempts count from 0
  write_batch b;
  b.runs = {sample_run("r1")};
  b.workflows = {{"etl", "3", "h", "{}", 1}};
  b.nodes = {sample_node("r1", "good"), bad};
  b.cache = {{"k", "etl", "a", parse("1"), "output", 5}};
  auto r = s->write(b);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(!r.error().transient, r.error().message);
  auto run = s->get_run("r1");
  BOOST_REQUIRE(run.has_value());
  BOOST_TEST(!run->has_value());
  BOOST_TEST(must_nodes("r1").empty());
  auto w = s->get_workflow("etl", "3");
  BOOST_REQUIRE(w.has_value());
  BOOST_TEST(!w->has_value());
  auto c = s->get_cache("k");
  BOOST_REQUIRE(c.has_value());
  BOOST_TEST(!c->has_value());
  // The store still works after the refused batch.
  b.nodes.pop_back();
  must_write(*s, b);
  BOOST_TEST(must_nodes("r1").size() == 1u);
}

// A value no store can name is refused for good (a retry could only fail again), before
// anything of its batch is written.
BOOST_AUTO_TEST_CASE(refuses_a_status_out_of_range_for_good, *utf::timeout(60)) {
  run_row bad_run = sample_run("r1");
  bad_run.status = static_cast<run_status>(42);
  node_row bad_node = sample_node("r2", "a");
  bad_node.cache = static_cast<cache_status>(9);
  const write_batch batches[] = {
      write_batch{{bad_run}, {sample_node("r2", "a")}, {}, {}},
      write_batch{{sample_run("r1")}, {bad_node}, {}, {}},
  };
  for (const write_batch& b : batches) {
    auto r = s->write(b);
    BOOST_REQUIRE(!r.has_value());
    BOOST_TEST(!r.error().transient, r.error().message);
    auto run = s->get_run("r1");
    BOOST_REQUIRE(run.has_value());
    BOOST_TEST(!run->has_value());
    BOOST_TEST(must_nodes("r2").empty());
  }
}

// PostgreSQL text ends at a NUL byte: such a run id would name another run there, so every
// store refuses it.
BOOST_AUTO_TEST_CASE(refuses_a_run_id_with_a_nul_byte_for_good, *utf::timeout(60)) {
  const std::string id("r\0x", 3);
  for (const write_batch& b : {write_batch{{sample_run(id)}, {}, {}, {}},
                               write_batch{{sample_run("r")}, {sample_node(id, "a")}, {}, {}}}) {
    auto r = s->write(b);
    BOOST_REQUIRE(!r.has_value());
    BOOST_TEST(!r.error().transient, r.error().message);
    BOOST_TEST(must_list({}).empty());
  }
}

BOOST_AUTO_TEST_CASE(writes_large_batches_completely, *utf::timeout(120)) {
  // 3000 rows cross every statement-size boundary of the chunked SQL writers.
  write_batch b;
  b.runs = {sample_run("big")};
  for (int i = 0; i < 3001; ++i) {
    b.nodes.push_back(sample_node("big", "map", i, 1));
  }
  must_write(*s, b);
  auto nodes = must_nodes("big");
  BOOST_REQUIRE_EQUAL(nodes.size(), 3001u);
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    BOOST_REQUIRE_EQUAL(nodes[i].item, static_cast<std::int64_t>(i));
  }
}

BOOST_AUTO_TEST_CASE(writes_a_batch_in_slices_completely_yielding_between_them,
                     *utf::timeout(120)) {
  int yields = 0;
  s->set_write_yield([&] { ++yields; });
  write_batch b = map_batch("sliced", 1000);
  b.runs = {sample_run("sliced")};
  b.nodes.push_back(sample_node("sliced", "map", 7, 1));  // the later row for a key wins
  b.nodes.back().error = "second";
  b.workflows = {{"etl", "3", "h", "{}", 1}};
  b.cache = {{"k", "etl", "a", parse("1"), "output", 5}};
  must_write(*s, b);
  // 1003 rows once the repeated key is dropped, in slices of at most write_slice_rows: a
  // yield between each two slices.
  BOOST_TEST(yields >= static_cast<int>((1003 + write_slice_rows - 1) / write_slice_rows) - 1);
  auto nodes = must_nodes("sliced");
  BOOST_REQUIRE_EQUAL(nodes.size(), 1000u);
  BOOST_TEST(nodes[7].error == "second");
  check_same(must_get_run("sliced"), b.runs[0]);
  auto c = s->get_cache("k");
  BOOST_REQUIRE(c.has_value());
  BOOST_TEST(c->has_value());
}

BOOST_AUTO_TEST_CASE(a_sliced_batch_with_an_invalid_row_at_its_end_writes_nothing,
                     *utf::timeout(120)) {
  s->set_write_yield([] {});
  write_batch b = map_batch("r1", 500);
  b.runs = {sample_run("r1")};
  node_row bad = sample_node("r1", "bad");
  bad.attempt = -1;  // refused after several slices have gone in
  b.nodes.push_back(bad);
  auto r = s->write(b);
  BOOST_REQUIRE(!r.has_value());
  auto run = s->get_run("r1");
  BOOST_REQUIRE(run.has_value());
  BOOST_TEST(!run->has_value());
  BOOST_TEST(must_nodes("r1").empty());
  b.nodes.pop_back();
  must_write(*s, b);  // the store still works, in slices
  BOOST_TEST(must_nodes("r1").size() == 500u);
}

BOOST_AUTO_TEST_CASE(treats_an_empty_batch_as_a_successful_no_op, *utf::timeout(60)) {
  auto r = s->write({});
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(must_list({}).empty());
}

BOOST_AUTO_TEST_CASE(reports_missing_rows_as_absent, *utf::timeout(60)) {
  auto run = s->get_run("nope");
  BOOST_REQUIRE(run.has_value());
  BOOST_TEST(!run->has_value());
  BOOST_TEST(must_nodes("nope").empty());
  auto w = s->get_workflow("nope", "1");
  BOOST_REQUIRE(w.has_value());
  BOOST_TEST(!w->has_value());
  auto c = s->get_cache("nope");
  BOOST_REQUIRE(c.has_value());
  BOOST_TEST(!c->has_value());
}

BOOST_AUTO_TEST_CASE(lists_runs_newest_first_with_filters_and_a_limit, *utf::timeout(60)) {
  write_batch b;
  auto add = [&](std::string id, std::int64_t started, run_status st, std::string wf) {
    run_row r = sample_run(std::move(id), started);
    r.status = st;
    r.workflow = std::move(wf);
    b.runs.push_back(r);
  };
  add("a", 100, run_status::succeeded, "etl");
  add("b", 300, run_status::failed, "etl");
  add("c", 200, run_status::succeeded, "report");
  add("d", 300, run_status::succeeded, "etl");  // same start as b: run_id breaks the tie
  add("e", 50, run_status::running, "report");
  must_write(*s, b);

  using v = std::vector<std::string>;
  BOOST_TEST(ids(must_list({})) == (v{"d", "b", "c", "a", "e"}), boost::test_tools::per_element());
  BOOST_TEST(ids(must_list(runs_query().status(run_status::succeeded))) == (v{"d", "c", "a"}),
             boost::test_tools::per_element());
  BOOST_TEST(ids(must_list(runs_query().workflow("etl"))) == (v{"d", "b", "a"}),
             boost::test_tools::per_element());
  BOOST_TEST(
      ids(must_list(runs_query().status(run_status::succeeded).workflow("etl"))) == (v{"d", "a"}),
      boost::test_tools::per_element());
  BOOST_TEST(ids(must_list(runs_query().limit(2))) == (v{"d", "b"}),
             boost::test_tools::per_element());
  BOOST_TEST(ids(must_list(runs_query().limit(0))).size() == 5u);  // 0: no limit
  BOOST_TEST(must_list(runs_query().status(run_status::cancelled)).empty());
}

BOOST_AUTO_TEST_CASE(lists_the_child_runs_of_a_run, *utf::timeout(60)) {
  write_batch b;
  auto add = [&](std::string id, std::int64_t started, std::string parent,
                 run_status st = run_status::succeeded, std::string wf = "etl") {
    run_row r = sample_run(std::move(id), started);
    r.status = st;
    r.workflow = std::move(wf);
    r.parent_node_id = parent.empty() ? "" : "spawn";
    r.parent_run_id = std::move(parent);
    b.runs.push_back(r);
  };
  add("p1", 10, "");
  add("p2", 20, "");
  add("c1", 100, "p1");
  add("c2", 300, "p1", run_status::failed);
  add("c3", 200, "p1", run_status::succeeded, "report");
  add("c4", 300, "p1");  // same start as c2: run_id breaks the tie
  add("d1", 400, "p2");
  add("g1", 500, "c1");  // a grandchild is not a child
  must_write(*s, b);

  using v = std::vector<std::string>;
  BOOST_TEST(ids(must_list(runs_query().children_of("p1"))) == (v{"c4", "c2", "c3", "c1"}),
             boost::test_tools::per_element());
  BOOST_TEST(ids(must_list(runs_query().children_of("p2"))) == (v{"d1"}),
             boost::test_tools::per_element());
  BOOST_TEST(ids(must_list(runs_query().children_of("c1"))) == (v{"g1"}),
             boost::test_tools::per_element());
  BOOST_TEST(must_list(runs_query().children_of("g1")).empty());
  BOOST_TEST(must_list(runs_query().children_of("nope")).empty());
  // With the other filters and the limit.
  BOOST_TEST(ids(must_list(runs_query().status(run_status::succeeded).children_of("p1"))) ==
                 (v{"c4", "c3", "c1"}),
             boost::test_tools::per_element());
  BOOST_TEST(ids(must_list(runs_query().workflow("report").children_of("p1"))) == (v{"c3"}),
             boost::test_tools::per_element());
  BOOST_TEST(must_list(runs_query().workflow("report").children_of("p2")).empty());
  BOOST_TEST(ids(must_list(runs_query().children_of("p1").limit(2))) == (v{"c4", "c2"}),
             boost::test_tools::per_element());
  BOOST_TEST(ids(must_list(runs_query().children_of("p1").limit(0))).size() == 4u);
  // Empty: any run, children and top-level alike.
  BOOST_TEST(ids(must_list(runs_query().children_of(""))).size() == 8u);
  // The rows come back whole, parent columns included.
  auto children = must_list(runs_query().children_of("p2"));
  BOOST_REQUIRE_EQUAL(children.size(), 1u);
  check_same(children[0], b.runs[6]);
}

namespace {

/// ~25 runs for the paging tests: ids of mixed lengths and cases (run ids order bytewise:
/// "Zed" < "a" < "r1" < "r10" < "r2"), groups with equal started_at and runs with distinct ones,
/// statuses and workflows mixed, six child runs (of r0 and r1) among the top-level ones.
std::vector<run_row> paging_runs() {
  std::vector<run_row> out;
  const run_status statuses[] = {run_status::succeeded, run_status::failed, run_status::running};
  for (int i = 0; i < 25; ++i) {
    // r0 to r11 in three groups of four equal starts; r12 to r24 one start each.
    run_row r = sample_run("r" + std::to_string(i), i < 12 ? 1000 + 100 * (i % 3) : 2000 + 37 * i);
    r.status = statuses[i % 3];
    r.workflow = i % 2 == 0 ? "etl" : "report";
    if (i % 4 == 3) {
      r.parent_run_id = i % 8 == 3 ? "r0" : "r1";
      r.parent_node_id = "spawn";
    }
    out.push_back(r);
  }
  for (const char* id : {"Zed", "a"}) {  // tied with r0, r3, r6, r9
    run_row r = sample_run(id, 1000);
    r.status = run_status::succeeded;
    out.push_back(r);
  }
  return out;
}

/// The ids of the runs `keep` accepts, newest first: started_at, then run_id (bytewise),
/// both descending. What list_runs must answer, worked out independently of any store.
template <class Pred>
std::vector<std::string> newest_first(std::vector<run_row> runs, Pred keep) {
  std::erase_if(runs, [&](const run_row& r) { return !keep(r); });
  std::sort(runs.begin(), runs.end(), [](const run_row& a, const run_row& b) {
    if (a.started_at != b.started_at) {
      return a.started_at > b.started_at;
    }
    return a.run_id.str() > b.run_id.str();
  });
  std::vector<std::string> out;
  for (const auto& r : runs) {
    out.push_back(r.run_id);
  }
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(pages_through_runs_with_the_last_row_of_each_page_as_the_cursor,
                     *utf::timeout(60)) {
  const std::vector<run_row> runs = paging_runs();
  must_write(*s, write_batch{runs, {}, {}, {}});
  using v = std::vector<std::string>;

  // Pages of `size` from `q`, each after the last row of the one before, until a short page
  // (an empty one when the rows fill the last page exactly): all the ids, in page order.
  auto page_through = [&](runs_query q, std::size_t size) {
    v out;
    std::size_t pages = 0;
    std::size_t total = 0;
    runs_query next = q;
    next.limit(size);
    for (;;) {
      BOOST_REQUIRE_MESSAGE(++pages <= 30, "paging does not end");
      const auto page = must_list(next);
      BOOST_TEST(page.size() <= size);
      total += page.size();
      for (const auto& r : page) {
        out.push_back(r.run_id);
      }
      if (page.size() < size) {
        break;
      }
      next = q;
      next.limit(size).before(page.back().started_at, page.back().run_id);
    }
    BOOST_TEST(pages == total / size + 1);  // full pages, then the short (or empty) one
    return out;
  };
  auto no_duplicates = [](v ids) {
    std::sort(ids.begin(), ids.end());
    return std::adjacent_find(ids.begin(), ids.end()) == ids.end();
  };

  struct filter {
    const char* name;
    runs_query q;
    std::function<bool(const run_row&)> keep;
  };
  const filter filters[] = {
      {"none", runs_query(), [](const run_row&) { return true; }},
      {"status", runs_query().status(run_status::succeeded),
       [](const run_row& r) { return r.status == run_status::succeeded; }},
      {"workflow", runs_query().workflow("report"),
       [](const run_row& r) { return r.workflow == "report"; }},
      {"top_level", runs_query().top_level(),
       [](const run_row& r) { return r.parent_run_id.empty(); }},
      {"status, workflow", runs_query().status(run_status::failed).workflow("etl"),
       [](const run_row& r) { return r.status == run_status::failed && r.workflow == "etl"; }},
      {"workflow, top_level", runs_query().workflow("etl").top_level(),
       [](const run_row& r) { return r.workflow == "etl" && r.parent_run_id.empty(); }},
      {"status, workflow, top_level",
       runs_query().status(run_status::succeeded).workflow("etl").top_level(),
       [](const run_row& r) {
         return r.status == run_status::succeeded && r.workflow == "etl" && r.parent_run_id.empty();
       }},
      {"children", runs_query().children_of("r1"),
       [](const run_row& r) { return r.parent_run_id == "r1"; }},
      {"children, workflow", runs_query().children_of("r0").workflow("report"),
       [](const run_row& r) { return r.parent_run_id == "r0" && r.workflow == "report"; }},
  };
  for (const auto& f : filters) {
    BOOST_TEST_CONTEXT("filter: " << f.name) {
      const v want = newest_first(runs, f.keep);
      BOOST_TEST(ids(must_list(runs_query(f.q).limit(0))) == want,
                 boost::test_tools::per_element());
      for (std::size_t size : {7u, 1u, 3u}) {
        BOOST_TEST_CONTEXT("pages of " << size) {
          const v paged = page_through(f.q, size);
          BOOST_TEST(paged == want, boost::test_tools::per_element());  // no gap, in order
          BOOST_TEST(no_duplicates(paged));
        }
      }
    }
  }
  // The unfiltered list, spelled out: equal starts by run id, descending and bytewise.
  BOOST_TEST(ids(must_list(runs_query().limit(0))) ==
                 (v{"r24", "r23", "r22", "r21", "r20", "r19", "r18", "r17", "r16",
                    "r15", "r14", "r13", "r12", "r8",  "r5",  "r2",  "r11", "r7",
                    "r4",  "r10", "r1",  "r9",  "r6",  "r3",  "r0",  "a",   "Zed"}),
             boost::test_tools::per_element());
  // 27 runs in pages of 7: 7, 7, 7, 6.
  BOOST_TEST(page_through(runs_query(), 7).size() == 27u);
}

BOOST_AUTO_TEST_CASE(starts_a_page_strictly_after_any_cursor, *utf::timeout(60)) {
  const std::vector<run_row> runs = paging_runs();
  must_write(*s, write_batch{runs, {}, {}, {}});
  using v = std::vector<std::string>;
  auto after = [&](std::int64_t at, const std::string& id) {
    return newest_first(runs, [&](const run_row& r) {
      return r.started_at < at || (r.started_at == at && r.run_id.str() < id);
    });
  };

  // At a run: the runs after it, not the run itself.
  BOOST_TEST(ids(must_list(runs_query().limit(0).before(1100, "r4"))) == after(1100, "r4"),
             boost::test_tools::per_element());
  BOOST_TEST(ids(must_list(runs_query().limit(3).before(1100, "r4"))) == (v{"r10", "r1", "r9"}),
             boost::test_tools::per_element());
  // Between runs: a run id that no run has, a start that no run has.
  BOOST_TEST(ids(must_list(runs_query().limit(0).before(1000, "b"))) == (v{"a", "Zed"}),
             boost::test_tools::per_element());
  BOOST_TEST(ids(must_list(runs_query().limit(0).before(1150, "0"))) == after(1150, "0"),
             boost::test_tools::per_element());
  BOOST_TEST(ids(must_list(runs_query().limit(0).before(1150, "0"))).size() == 10u);
  // Before the newest run: everything.
  BOOST_TEST(
      ids(must_list(runs_query().limit(0).before(std::numeric_limits<std::int64_t>::max(), "x")))
          .size() == runs.size());
  // An empty run id is no cursor, whatever the start.
  BOOST_TEST(ids(must_list(runs_query().limit(0).before(1000, ""))).size() == runs.size());
  // Past the end: nothing.
  BOOST_TEST(must_list(runs_query().before(1000, "Zed")).empty());
  BOOST_TEST(must_list(runs_query().before(1000, "A")).empty());
  BOOST_TEST(must_list(runs_query().before(999, "zzz")).empty());
  BOOST_TEST(
      must_list(runs_query().before(std::numeric_limits<std::int64_t>::min(), "r1")).empty());
  BOOST_TEST(must_list(runs_query().children_of("r1").before(1100, "r7")).empty());
  // With a filter: the cursor needs not be a row the filter keeps.
  BOOST_TEST(
      ids(must_list(runs_query().top_level().limit(2).before(1200, "r11"))) == (v{"r4", "r10"}),
      boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(lists_only_top_level_runs_when_asked, *utf::timeout(60)) {
  const std::vector<run_row> runs = paging_runs();
  must_write(*s, write_batch{runs, {}, {}, {}});
  const auto top = must_list(runs_query().top_level().limit(0));
  BOOST_TEST(top.size() == runs.size() - 6);
  for (const auto& r : top) {
    BOOST_TEST(r.parent_run_id.empty(), r.run_id.str() << " has a parent");
  }
  // The rows come back whole.
  BOOST_REQUIRE(!top.empty());
  BOOST_REQUIRE_EQUAL(top.back().run_id.str(), "Zed");
  check_same(top.back(), runs[25]);
  // Children of a run are never top-level; false is no filter.
  BOOST_TEST(must_list(runs_query().top_level().children_of("r0")).empty());
  BOOST_TEST(must_list(runs_query().top_level(false).limit(0)).size() == runs.size());
  BOOST_TEST(must_list(runs_query().top_level(false).children_of("r0")).size() == 3u);
}

BOOST_AUTO_TEST_CASE(finds_unfinished_runs_oldest_first, *utf::timeout(60)) {
  write_batch b;
  const run_status all[] = {run_status::pending, run_status::running,   run_status::succeeded,
                            run_status::failed,  run_status::cancelled, run_status::timed_out};
  std::int64_t t = 600;
  for (run_status st : all) {
    run_row r = sample_run(std::string(to_string(st)), t);
    r.status = st;
    b.runs.push_back(r);
    t -= 100;
  }
  must_write(*s, b);
  auto r = s->unfinished_runs();
  BOOST_REQUIRE(r.has_value());
  using v = std::vector<std::string>;
  BOOST_TEST(ids(*r) == (v{"running", "pending"}), boost::test_tools::per_element());

  // A run that finishes leaves the set.
  run_row done = b.runs[1];
  done.status = run_status::succeeded;
  must_write(*s, write_batch{{done}, {}, {}, {}});
  r = s->unfinished_runs();
  BOOST_REQUIRE(r.has_value());
  BOOST_TEST(ids(*r) == (v{"pending"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(orders_node_rows_by_start_node_item_and_attempt, *utf::timeout(60)) {
  auto n = [](std::string node, std::int64_t item, int attempt, std::int64_t started) {
    node_row r = sample_node("r", std::move(node), item, attempt);
    r.started_at = started;
    return r;
  };
  write_batch b;
  b.nodes = {n("b", -1, 1, 5), n("a", 1, 2, 7),  n("a", 1, 1, 7),          n("a", 0, 1, 7),
             n("z", -1, 0, 0), n("c", -1, 1, 6), sample_node("other", "a")};
  must_write(*s, b);
  auto rows = must_nodes("r");
  std::vector<std::string> got;
  for (const auto& r : rows) {
    got.push_back(r.node_id + ":" + std::to_string(r.item) + ":" + std::to_string(r.attempt));
  }
  const std::vector<std::string> want = {"z:-1:0", "b:-1:1", "c:-1:1", "a:0:1", "a:1:1", "a:1:2"};
  BOOST_TEST(got == want, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(gets_lists_and_clears_cache_entries_by_workflow, *utf::timeout(60)) {
  write_batch b;
  b.cache = {{"k3", "etl", "a", parse("3"), "output", 30},
             {"k1", "etl", "b", parse(R"({"spec": true})"), "spec", 10},
             {"k2", "report", "a", nullptr, "output", 20}};
  must_write(*s, b);

  auto all = s->list_cache("");
  BOOST_REQUIRE(all.has_value());
  BOOST_REQUIRE_EQUAL(all->size(), 3u);
  BOOST_TEST((*all)[0].key == "k1");  // by created_at
  BOOST_TEST((*all)[1].key == "k2");
  BOOST_TEST((*all)[1].value == nullptr);
  BOOST_TEST((*all)[2].key == "k3");

  auto etl = s->list_cache("etl");
  BOOST_REQUIRE(etl.has_value());
  BOOST_TEST(etl->size() == 2u);

  auto cleared = s->clear_cache("etl");
  BOOST_REQUIRE(cleared.has_value());
  BOOST_TEST(*cleared == 2u);
  auto gone = s->get_cache("k1");
  BOOST_REQUIRE(gone.has_value());
  BOOST_TEST(!gone->has_value());
  auto kept = s->get_cache("k2");
  BOOST_REQUIRE(kept.has_value());
  BOOST_TEST(kept->has_value());

  auto none = s->clear_cache("nothing-here");
  BOOST_REQUIRE(none.has_value());
  BOOST_TEST(*none == 0u);
  auto rest = s->clear_cache("");
  BOOST_REQUIRE(rest.has_value());
  BOOST_TEST(*rest == 1u);
  auto empty = s->list_cache("");
  BOOST_REQUIRE(empty.has_value());
  BOOST_TEST(empty->empty());
}

BOOST_AUTO_TEST_CASE(keeps_workflow_versions_apart, *utf::timeout(60)) {
  write_batch b;
  b.workflows = {{"etl", "1", "h1", R"({"v": 1})", 1},
                 {"etl", "2", "h2", R"({"v": 2})", 2},
                 {"other", "1", "h3", "{}", 3}};
  must_write(*s, b);
  auto v1 = s->get_workflow("etl", "1");
  auto v2 = s->get_workflow("etl", "2");
  auto v3 = s->get_workflow("etl", "3");
  BOOST_REQUIRE(v1.has_value() && v2.has_value() && v3.has_value());
  BOOST_REQUIRE(v1->has_value() && v2->has_value());
  BOOST_TEST((*v1)->document == R"({"v": 1})");
  BOOST_TEST((*v2)->hash == "h2");
  BOOST_TEST(!v3->has_value());
}

BOOST_AUTO_TEST_CASE(can_be_read_from_one_thread_while_another_writes, *utf::timeout(120)) {
  std::atomic<bool> failed{false};
  std::thread writer([&] {
    for (int i = 0; i < 200; ++i) {
      write_batch b;
      b.runs = {sample_run("r" + std::to_string(i), i)};
      b.nodes = {sample_node("r" + std::to_string(i), "a")};
      if (!s->write(b)) {
        failed = true;
      }
    }
  });
  std::size_t reads = 0;
  std::size_t last_seen = 0;
  while (last_seen < 200 && !failed) {
    auto rows = s->list_runs(runs_query().limit(0));
    if (!rows) {
      failed = !rows.error().transient;
      continue;
    }
    BOOST_REQUIRE_GE(rows->size(), last_seen);  // never goes backwards
    last_seen = rows->size();
    ++reads;
  }
  writer.join();
  BOOST_TEST(!failed);
  BOOST_TEST(last_seen == 200u);
  BOOST_TEST(reads > 0u);
}

// The SQL stores build each JSON value's text into buffers they reuse from statement to
// statement and from write to write: every row must still get its own text, short (inside the
// string) or long (on the heap), NULL or not, sliced or not.
BOOST_AUTO_TEST_CASE(every_row_keeps_its_own_json_across_statements_and_writes,
                     *utf::timeout(120)) {
  for (int pass = 0; pass < 3; ++pass) {
    for (const bool sliced : {false, true}) {
      if (sliced) {
        s->set_write_yield([] {});
      } else {
        s->set_write_yield(nullptr);
      }
      write_batch b;
      const std::string run = "j" + std::to_string(pass) + "-" + std::to_string(sliced);
      for (int i = 0; i < 1200; ++i) {
        node_row n = sample_node(run, "map", i, 1);
        const std::string pad(
            static_cast<std::size_t>((pass == 1 ? 40 : (pass == 2 ? 3 : 200)) + i % 17), 'p');
        n.input = parse("{\"i\":" + std::to_string(i) + ",\"pad\":\"" + pad + "\"}");
        if (i % 5 != 0) {
          n.output = parse("[" + std::to_string(i * 7) + ",\"" +
                           pad.substr(0, static_cast<std::size_t>(i % 30)) + "\"]");
        }
        b.nodes.push_back(std::move(n));
      }
      must_write(*s, b);
      auto nodes = must_nodes(run);
      BOOST_REQUIRE_EQUAL(nodes.size(), 1200u);
      for (std::size_t i = 0; i < nodes.size(); ++i) {
        BOOST_REQUIRE_MESSAGE(same_json(nodes[i].input, b.nodes[i].input), "input " << i);
        BOOST_REQUIRE_MESSAGE(same_json(nodes[i].output, b.nodes[i].output), "output " << i);
      }
    }
  }
}

// Texts that PostgreSQL's array literals must escape (quotes, backslashes, braces, commas, the
// word NULL, surrounding spaces), control characters and multi-byte UTF-8, in text columns and
// in JSON.
BOOST_AUTO_TEST_CASE(awkward_texts_come_back_unchanged, *utf::timeout(60)) {
  const std::vector<std::string> texts = {"",
                                          "NULL",
                                          "null",
                                          " lead",
                                          "trail ",
                                          "\\",
                                          "\"",
                                          "\\\"",
                                          "a\\",
                                          "\"\"",
                                          "{}",
                                          "{a,b}",
                                          ",",
                                          "a,b",
                                          "\t\n\r\x01\x1f",
                                          "caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80",
                                          "x\\\\y\"\"z",
                                          std::string(100, '\\'),
                                          std::string(100, '"'),
                                          "\\N",
                                          "'",
                                          "''",
                                          "\x7f"};
  write_batch b;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    node_row n = sample_node("awk", texts[i].empty() ? std::string("empty") : texts[i],
                             static_cast<std::int64_t>(i));
    n.error = texts[i];
    n.worker = texts[i];
    n.input = parse("{\"s\":\"x\"}");
    std::string text;
    append_json_string(text, texts[i]);
    n.output = parse(text);
    b.nodes.push_back(std::move(n));
  }
  must_write(*s, b);
  auto nodes = must_nodes("awk");
  BOOST_REQUIRE_EQUAL(nodes.size(), texts.size());
  for (const auto& n : nodes) {
    const auto i = static_cast<std::size_t>(n.item);
    BOOST_TEST(n.error == texts[i], "item " << i);
    BOOST_TEST(n.worker == texts[i], "item " << i);
    BOOST_TEST(n.node_id == (texts[i].empty() ? std::string("empty") : texts[i]), "item " << i);
    BOOST_TEST(same_json(n.output, b.nodes[i].output), "item " << i);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// Ownership: owner, lease and epoch on run rows; fenced writes, claims, renewals; dead letters.
BOOST_FIXTURE_TEST_SUITE(ownership, store_fixture)

namespace {

run_row owned_run(std::string id, std::string owner, std::int64_t epoch, std::int64_t lease_until,
                  run_status status = run_status::running) {
  run_row r = sample_run(std::move(id));
  r.owner = std::move(owner);
  r.epoch = epoch;
  r.lease_until = lease_until;
  r.status = status;
  return r;
}

node_row epoch_node(std::string run, std::string node, std::int64_t epoch, std::int64_t item = -1) {
  node_row n = sample_node(std::move(run), std::move(node), item);
  n.epoch = epoch;
  return n;
}

write_outcome must_write_outcome(store& s, const write_batch& b) {
  auto r = s.write(b);
  BOOST_REQUIRE_MESSAGE(r.has_value(), "write failed: " << error_of(r));
  return *r;
}

claim_result must_claim(store& s, std::string_view run, std::string_view owner, std::int64_t now,
                        std::int64_t lease_until) {
  auto r = s.claim_run(run, owner, now, lease_until);
  BOOST_REQUIRE_MESSAGE(r.has_value(), "claim_run failed: " << error_of(r));
  return *r;
}

std::vector<std::string> must_renew(store& s, std::string_view owner,
                                    const std::vector<lease_ref>& runs, std::int64_t until) {
  auto r = s.renew_leases(owner, runs, until);
  BOOST_REQUIRE_MESSAGE(r.has_value(), "renew_leases failed: " << error_of(r));
  return *r;
}

using ids_t = std::vector<std::string>;

}  // namespace

BOOST_AUTO_TEST_CASE(reads_back_owner_lease_and_epoch_from_every_run_query, *utf::timeout(60)) {
  const run_row r = owned_run("r1", "host/42/1700000000000000", 3, 5'000'000);
  must_write(*s, write_batch{{r}, {}, {}, {}});
  check_same(must_get_run("r1"), r);
  auto listed = must_list({});
  BOOST_REQUIRE_EQUAL(listed.size(), 1u);
  check_same(listed[0], r);
  auto unfinished = s->unfinished_runs();
  BOOST_REQUIRE_MESSAGE(unfinished.has_value(), error_of(unfinished));
  BOOST_REQUIRE_EQUAL(unfinished->size(), 1u);
  check_same((*unfinished)[0], r);
  // A node's epoch fences its write but is not stored.
  must_write(*s, write_batch{{}, {epoch_node("r1", "a", 3)}, {}, {}});
  auto nodes = must_nodes("r1");
  BOOST_REQUIRE_EQUAL(nodes.size(), 1u);
  BOOST_TEST(nodes[0].epoch == 0);
}

BOOST_AUTO_TEST_CASE(a_run_written_again_keeps_its_owner_epoch_and_renewed_lease,
                     *utf::timeout(60)) {
  must_write(*s, write_batch{{owned_run("r1", "a", 1, 1000)}, {}, {}, {}});
  BOOST_TEST(must_renew(*s, "a", {{"r1", 1}}, 8000).empty());
  // The owner's next write of the run carries the lease it started with, or another engine's
  // name: neither changes what claims and renewals decided.
  run_row again = owned_run("r1", "someone-else", 1, 1000);
  again.outputs = parse(R"({"partial": true})");
  must_write(*s, write_batch{{again}, {}, {}, {}});
  run_row want = again;
  want.owner = "a";
  want.lease_until = 8000;
  check_same(must_get_run("r1"), want);
  // Epoch 0 (an unfenced write) keeps the stored epoch too.
  again.epoch = 0;
  must_write(*s, write_batch{{again}, {}, {}, {}});
  check_same(must_get_run("r1"), want);
}

BOOST_AUTO_TEST_CASE(a_final_status_releases_the_lease_and_keeps_owner_and_epoch,
                     *utf::timeout(60)) {
  for (run_status st :
       {run_status::succeeded, run_status::failed, run_status::cancelled, run_status::timed_out}) {
    const std::string id(to_string(st));
    must_write(*s, write_batch{{owned_run(id, "a", 2, 9000)}, {}, {}, {}});
    run_row done = owned_run(id, "a", 2, 9000, st);
    done.finished_at = 5000;
    must_write(*s, write_batch{{done}, {}, {}, {}});
    run_row want = done;
    want.lease_until = 0;
    check_same(must_get_run(id), want);
    // Inserted finished, too.
    const std::string fresh = id + "-fresh";
    run_row inserted = owned_run(fresh, "a", 1, 9000, st);
    must_write(*s, write_batch{{inserted}, {}, {}, {}});
    inserted.lease_until = 0;
    check_same(must_get_run(fresh), inserted);
  }
  // pending and running keep it.
  must_write(*s, write_batch{{owned_run("p", "a", 1, 9000, run_status::pending)}, {}, {}, {}});
  must_write(*s, write_batch{{owned_run("p", "a", 1, 1, run_status::running)}, {}, {}, {}});
  BOOST_TEST(must_get_run("p").lease_until == 9000);
}

BOOST_AUTO_TEST_CASE(a_stale_epoch_changes_none_of_its_runs_rows_and_the_rest_lands,
                     *utf::timeout(60)) {
  write_batch first;
  first.runs = {owned_run("r1", "a", 1, 100), owned_run("r2", "a", 1, 100)};
  first.nodes = {epoch_node("r1", "x", 1), epoch_node("r2", "x", 1)};
  BOOST_TEST(must_write_outcome(*s, first).fenced_runs.empty());
  const claim_result c = must_claim(*s, "r1", "b", 200, 9000);
  BOOST_REQUIRE(c.claimed);
  BOOST_TEST(c.epoch == 2);

  // The old owner's next batch: r1's rows are stale, r2's and the rest are not.
  write_batch stale;
  run_row r1_done = owned_run("r1", "a", 1, 100, run_status::succeeded);
  r1_done.outputs = parse(R"({"from": "the old owner"})");
  node_row r1_x = epoch_node("r1", "x", 1);
  r1_x.error = "overwritten";
  stale.runs = {r1_done, owned_run("r2", "a", 1, 100, run_status::failed),
                owned_run("r3", "a", 1, 100)};
  stale.nodes = {r1_x, epoch_node("r1", "y", 1), epoch_node("r2", "y", 1),
                 epoch_node("r3", "x", 1)};
  stale.workflows = {{"etl", "3", "h", "{}", 1}};
  stale.cache = {{"k", "etl", "x", parse("1"), "output", 5}};
  const write_outcome out = must_write_outcome(*s, stale);
  BOOST_TEST(out.fenced_runs == (ids_t{"r1"}), boost::test_tools::per_element());

  run_row r1 = first.runs[0];
  r1.owner = "b";
  r1.epoch = 2;
  r1.lease_until = 9000;
  check_same(must_get_run("r1"), r1);
  auto r1_nodes = must_nodes("r1");
  BOOST_REQUIRE_EQUAL(r1_nodes.size(), 1u);
  check_same(r1_nodes[0], first.nodes[0]);

  BOOST_TEST(to_string(must_get_run("r2").status) == "failed");
  BOOST_TEST(must_nodes("r2").size() == 2u);
  BOOST_TEST(must_get_run("r3").epoch == 1);
  BOOST_TEST(must_nodes("r3").size() == 1u);
  auto w = s->get_workflow("etl", "3");
  BOOST_REQUIRE(w.has_value());
  BOOST_TEST(w->has_value());
  auto k = s->get_cache("k");
  BOOST_REQUIRE(k.has_value());
  BOOST_TEST(k->has_value());

  // The new owner writes under epoch 2.
  run_row r1_new = owned_run("r1", "b", 2, 9000, run_status::succeeded);
  BOOST_TEST(must_write_outcome(*s, write_batch{{r1_new}, {epoch_node("r1", "y", 2)}, {}, {}})
                 .fenced_runs.empty());
  BOOST_TEST(to_string(must_get_run("r1").status) == "succeeded");
  BOOST_TEST(must_nodes("r1").size() == 2u);
}

BOOST_AUTO_TEST_CASE(node_rows_alone_are_fenced_by_their_epoch, *utf::timeout(60)) {
  must_write(*s, write_batch{{owned_run("r1", "a", 4, 0)}, {}, {}, {}});
  // Newer or older, any other epoch is fenced; several rows name the run once.
  for (std::int64_t e : {3, 5}) {
    const write_outcome out = must_write_outcome(
        *s, write_batch{{}, {epoch_node("r1", "x", e), epoch_node("r1", "y", e)}, {}, {}});
    BOOST_TEST(out.fenced_runs == (ids_t{"r1"}), boost::test_tools::per_element());
  }
  BOOST_TEST(must_nodes("r1").empty());
  BOOST_TEST(must_write_outcome(*s, write_batch{{}, {epoch_node("r1", "x", 4)}, {}, {}})
                 .fenced_runs.empty());
  BOOST_TEST(must_nodes("r1").size() == 1u);
}

BOOST_AUTO_TEST_CASE(unfenced_rows_of_epoch_0_always_write, *utf::timeout(60)) {
  must_write(*s, write_batch{{owned_run("r1", "a", 1, 0)}, {}, {}, {}});
  BOOST_REQUIRE(must_claim(*s, "r1", "b", 1, 9000).claimed);
  run_row tool = owned_run("r1", "tool", 0, 0, run_status::cancelled);
  tool.error = "cancelled by a tool";
  const write_outcome out =
      must_write_outcome(*s, write_batch{{tool}, {epoch_node("r1", "x", 0)}, {}, {}});
  BOOST_TEST(out.fenced_runs.empty());
  const run_row got = must_get_run("r1");
  BOOST_TEST(got.error == "cancelled by a tool");
  BOOST_TEST(got.owner == "b");
  BOOST_TEST(got.epoch == 2);
  BOOST_TEST(got.lease_until == 0);
  BOOST_TEST(must_nodes("r1").size() == 1u);
}

BOOST_AUTO_TEST_CASE(a_run_with_rows_of_several_epochs_is_fenced_whole, *utf::timeout(60)) {
  must_write(*s, write_batch{{owned_run("r1", "a", 2, 0)}, {}, {}, {}});
  const write_outcome out = must_write_outcome(
      *s,
      write_batch{{},
                  {epoch_node("r1", "x", 2), epoch_node("r1", "y", 1), epoch_node("r1", "z", 0)},
                  {},
                  {}});
  BOOST_TEST(out.fenced_runs == (ids_t{"r1"}), boost::test_tools::per_element());
  BOOST_TEST(must_nodes("r1").empty());
}

BOOST_AUTO_TEST_CASE(a_run_not_stored_yet_is_never_fenced, *utf::timeout(60)) {
  // Node rows first (the run row comes in a later batch), then the run row, at any epoch.
  BOOST_TEST(must_write_outcome(*s, write_batch{{}, {epoch_node("new", "x", 7)}, {}, {}})
                 .fenced_runs.empty());
  BOOST_TEST(must_nodes("new").size() == 1u);
  BOOST_TEST(
      must_write_outcome(
          *s, write_batch{{owned_run("new", "a", 7, 50)}, {epoch_node("new", "y", 7)}, {}, {}})
          .fenced_runs.empty());
  BOOST_TEST(must_get_run("new").epoch == 7);
  BOOST_TEST(must_nodes("new").size() == 2u);
}

BOOST_AUTO_TEST_CASE(a_sliced_batch_fences_a_runs_rows_in_every_slice, *utf::timeout(120)) {
  must_write(
      *s, write_batch{{owned_run("stale", "a", 1, 0), owned_run("live", "a", 1, 0)}, {}, {}, {}});
  BOOST_REQUIRE(must_claim(*s, "stale", "b", 1, 9000).claimed);
  s->set_write_yield([] {});
  write_batch b;
  for (int i = 0; i < 400; ++i) {  // the two runs' rows interleaved over many slices
    b.nodes.push_back(epoch_node(i % 2 == 0 ? "stale" : "live", "map", 1, i));
  }
  b.runs = {owned_run("stale", "a", 1, 0, run_status::failed),
            owned_run("live", "a", 1, 0, run_status::succeeded)};
  const write_outcome out = must_write_outcome(*s, b);
  BOOST_TEST(out.fenced_runs == (ids_t{"stale"}), boost::test_tools::per_element());
  BOOST_TEST(must_nodes("stale").empty());
  BOOST_TEST(must_nodes("live").size() == 200u);
  BOOST_TEST(to_string(must_get_run("stale").status) == "running");
  BOOST_TEST(to_string(must_get_run("live").status) == "succeeded");
}

BOOST_AUTO_TEST_CASE(a_batch_with_an_invalid_row_fails_whole_even_when_that_run_is_fenced,
                     *utf::timeout(60)) {
  must_write(*s, write_batch{{owned_run("r1", "a", 1, 0)}, {}, {}, {}});
  BOOST_REQUIRE(must_claim(*s, "r1", "b", 1, 9000).claimed);
  node_row bad = epoch_node("r1", "bad", 1);
  bad.attempt = -1;
  auto r = s->write(write_batch{{owned_run("r2", "a", 1, 0)}, {bad}, {}, {}});
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(!r.error().transient, r.error().message);
  auto r2 = s->get_run("r2");
  BOOST_REQUIRE(r2.has_value());
  BOOST_TEST(!r2->has_value());
}

BOOST_AUTO_TEST_CASE(a_batch_with_unique_keys_is_written_as_given, *utf::timeout(60)) {
  write_batch b = map_batch("u", 300);
  b.runs = {owned_run("u", "a", 1, 0)};
  b.workflows = {{"etl", "3", "h", "{}", 1}};
  b.cache = {{"k", "etl", "a", parse("1"), "output", 5}};
  for (auto& n : b.nodes) {
    n.epoch = 1;
  }
  b.unique_keys = true;
  BOOST_TEST(must_write_outcome(*s, b).fenced_runs.empty());
  BOOST_TEST(must_nodes("u").size() == 300u);
  BOOST_TEST(must_get_run("u").epoch == 1);
}

BOOST_AUTO_TEST_CASE(claims_a_run_whose_lease_expired, *utf::timeout(60)) {
  run_row r = owned_run("r1", "a", 1, 1000);
  must_write(*s, write_batch{{r}, {}, {}, {}});
  const claim_result c = must_claim(*s, "r1", "b", 1000, 61000);  // expired at lease_until
  BOOST_TEST(c.found);
  BOOST_TEST(c.claimed);
  BOOST_TEST(c.owner == "b");
  BOOST_TEST(c.epoch == 2);
  BOOST_TEST(c.lease_until == 61000);
  BOOST_TEST(to_string(c.status) == "running");
  r.owner = "b";
  r.epoch = 2;
  r.lease_until = 61000;
  check_same(must_get_run("r1"), r);  // nothing else changed
}

BOOST_AUTO_TEST_CASE(refuses_a_live_lease_and_names_its_holder, *utf::timeout(60)) {
  const run_row r = owned_run("r1", "a", 3, 1000);
  must_write(*s, write_batch{{r}, {}, {}, {}});
  const claim_result c = must_claim(*s, "r1", "b", 999, 61000);
  BOOST_TEST(c.found);
  BOOST_TEST(!c.claimed);
  BOOST_TEST(c.owner == "a");
  BOOST_TEST(c.lease_until == 1000);
  BOOST_TEST(c.epoch == 3);
  BOOST_TEST(to_string(c.status) == "running");
  check_same(must_get_run("r1"), r);
  // Claimed once, then refused to the next claimant until the new lease ends.
  BOOST_REQUIRE(must_claim(*s, "r1", "b", 1000, 61000).claimed);
  const claim_result again = must_claim(*s, "r1", "c", 60999, 99000);
  BOOST_TEST(!again.claimed);
  BOOST_TEST(again.owner == "b");
  BOOST_TEST(again.epoch == 4);
  BOOST_TEST(must_claim(*s, "r1", "c", 61000, 99000).epoch == 5);
}

BOOST_AUTO_TEST_CASE(refuses_a_succeeded_run_and_claims_a_finished_failed_one, *utf::timeout(60)) {
  must_write(*s, write_batch{{owned_run("ok", "a", 1, 5000, run_status::succeeded),
                              owned_run("bad", "a", 1, 5000, run_status::failed)},
                             {},
                             {},
                             {}});
  const claim_result ok = must_claim(*s, "ok", "b", 10, 9000);
  BOOST_TEST(ok.found);
  BOOST_TEST(!ok.claimed);
  BOOST_TEST(to_string(ok.status) == "succeeded");
  BOOST_TEST(ok.epoch == 1);
  BOOST_TEST(must_get_run("ok").owner == "a");
  // A failed run's lease was released when it finished: claimable at once, status unchanged.
  const claim_result bad = must_claim(*s, "bad", "b", 10, 9000);
  BOOST_TEST(bad.claimed);
  BOOST_TEST(bad.epoch == 2);
  BOOST_TEST(to_string(bad.status) == "failed");
  BOOST_TEST(must_get_run("bad").lease_until == 9000);
}

BOOST_AUTO_TEST_CASE(claiming_an_unknown_run_finds_nothing, *utf::timeout(60)) {
  const claim_result c = must_claim(*s, "nope", "b", 10, 9000);
  BOOST_TEST(!c.found);
  BOOST_TEST(!c.claimed);
  auto got = s->get_run("nope");
  BOOST_REQUIRE(got.has_value());
  BOOST_TEST(!got->has_value());
}

BOOST_AUTO_TEST_CASE(renews_its_own_leases_and_reports_the_runs_it_lost, *utf::timeout(60)) {
  must_write(*s, write_batch{{owned_run("r1", "a", 1, 1000), owned_run("r2", "a", 1, 1000),
                              owned_run("r3", "a", 1, 1000, run_status::pending),
                              owned_run("done", "a", 1, 1000, run_status::succeeded),
                              owned_run("other", "z", 1, 1000)},
                             {},
                             {},
                             {}});
  BOOST_REQUIRE(must_claim(*s, "r2", "b", 1000, 50000).claimed);
  const ids_t lost = must_renew(
      *s, "a", {{"r1", 1}, {"r2", 1}, {"r3", 1}, {"done", 1}, {"missing", 1}, {"other", 1}}, 20000);
  BOOST_TEST(lost == (ids_t{"other", "r2"}), boost::test_tools::per_element());
  BOOST_TEST(must_get_run("r1").lease_until == 20000);
  BOOST_TEST(must_get_run("r3").lease_until == 20000);
  BOOST_TEST(must_get_run("done").lease_until == 0);  // finished: nothing to renew, not lost
  const run_row r2 = must_get_run("r2");
  BOOST_TEST(r2.owner == "b");
  BOOST_TEST(r2.lease_until == 50000);
  BOOST_TEST(must_get_run("other").lease_until == 1000);
  auto missing = s->get_run("missing");
  BOOST_REQUIRE(missing.has_value());
  BOOST_TEST(!missing->has_value());  // renewing never creates a run
}

BOOST_AUTO_TEST_CASE(a_renewal_under_an_old_epoch_is_lost_even_for_the_same_owner,
                     *utf::timeout(60)) {
  must_write(*s, write_batch{{owned_run("r1", "a", 1, 1000)}, {}, {}, {}});
  // The same engine claimed it again (e.g. `runs resume` in the same process): epoch 2.
  BOOST_REQUIRE(must_claim(*s, "r1", "a", 1000, 5000).claimed);
  BOOST_TEST(must_renew(*s, "a", {{"r1", 1}}, 9000) == (ids_t{"r1"}),
             boost::test_tools::per_element());
  BOOST_TEST(must_get_run("r1").lease_until == 5000);
  BOOST_TEST(must_renew(*s, "a", {{"r1", 2}}, 9000).empty());
  BOOST_TEST(must_get_run("r1").lease_until == 9000);
  BOOST_TEST(must_renew(*s, "a", {}, 9000).empty());
}

BOOST_AUTO_TEST_CASE(keeps_dead_letters_and_lists_the_newest_first, *utf::timeout(60)) {
  auto none = s->list_dead_letters(0);
  BOOST_REQUIRE_MESSAGE(none.has_value(), error_of(none));
  BOOST_TEST(none->empty());
  const dead_letter_row a{
      "r1", "node_executions", "r1/n/-1/1", R"({"run_id":"r1"})", "CHECK constraint failed", 300};
  const dead_letter_row b{"", "workflows", "etl@3", "{}", "value too long", 100};
  const dead_letter_row c{"r2", "runs", "r2", R"({"run_id":"r2"})", "trigger said no", 200};
  auto w = s->write_dead_letters({a, b});
  BOOST_REQUIRE_MESSAGE(w.has_value(), error_of(w));
  w = s->write_dead_letters({c});
  BOOST_REQUIRE_MESSAGE(w.has_value(), error_of(w));
  w = s->write_dead_letters({});
  BOOST_REQUIRE_MESSAGE(w.has_value(), error_of(w));

  auto all = s->list_dead_letters(0);
  BOOST_REQUIRE_MESSAGE(all.has_value(), error_of(all));
  BOOST_REQUIRE_EQUAL(all->size(), 3u);
  // In the order written, newest first, whatever `at` says.
  const dead_letter_row* want[] = {&c, &b, &a};
  for (std::size_t i = 0; i < 3; ++i) {
    const dead_letter_row& got = (*all)[i];
    BOOST_TEST(got.run_id == want[i]->run_id);
    BOOST_TEST(got.table == want[i]->table);
    BOOST_TEST(got.key == want[i]->key);
    BOOST_TEST(got.row == want[i]->row);
    BOOST_TEST(got.error == want[i]->error);
    BOOST_TEST(got.at == want[i]->at);
  }
  auto two = s->list_dead_letters(2);
  BOOST_REQUIRE(two.has_value());
  BOOST_REQUIRE_EQUAL(two->size(), 2u);
  BOOST_TEST((*two)[0].run_id == "r2");
  BOOST_TEST((*two)[1].table == "workflows");
}

BOOST_AUTO_TEST_CASE(keeps_any_dead_letter_text_storable_and_cut_to_64_kib, *utf::timeout(60)) {
  dead_letter_row d;
  d.run_id = "r\xff";  // invalid UTF-8, as a refused row's text may well be
  d.table = "node_executions";
  d.key = std::string("k\0ey", 4);
  d.row = std::string(70 * 1024, 'x') + "tail";
  d.error = "bad byte \xc3 then \xe2\x98\x83";
  d.at = 7;
  auto w = s->write_dead_letters({d});
  BOOST_REQUIRE_MESSAGE(w.has_value(), error_of(w));
  auto got = s->list_dead_letters(1);
  BOOST_REQUIRE_MESSAGE(got.has_value(), error_of(got));
  BOOST_REQUIRE_EQUAL(got->size(), 1u);
  const dead_letter_row& g = (*got)[0];
  BOOST_TEST(g.run_id == "r\xef\xbf\xbd");
  BOOST_TEST(g.key ==
             "k\xef\xbf\xbd"
             "ey");
  BOOST_TEST(g.row == std::string(64 * 1024, 'x'));
  BOOST_TEST(g.error == "bad byte \xef\xbf\xbd then \xe2\x98\x83");
  BOOST_TEST(g.at == 7);
}

BOOST_AUTO_TEST_SUITE_END()

// Idempotency keys (issue 15): remember_request, find_request, forget_requests.
BOOST_FIXTURE_TEST_SUITE(request_keys, store_fixture)

BOOST_AUTO_TEST_CASE(the_first_request_under_a_key_is_stored_and_returned, *utf::timeout(60)) {
  const request_key_row row{"key-1", "etl", "hash-a", "run-a", 1000};
  check_same(must_remember(*s, row, 0), row);
  auto found = must_find(*s, "key-1", "etl");
  BOOST_REQUIRE(found.has_value());
  check_same(*found, row);
}

BOOST_AUTO_TEST_CASE(a_second_request_under_the_key_gets_the_first_ones_entry, *utf::timeout(60)) {
  const request_key_row first{"key-1", "etl", "hash-a", "run-a", 1000};
  must_remember(*s, first, 0);
  // A retry (same hash) and a different request (another hash) alike: the first entry.
  check_same(must_remember(*s, {"key-1", "etl", "hash-a", "run-b", 2000}, 500), first);
  check_same(must_remember(*s, {"key-1", "etl", "hash-other", "run-c", 3000}, 1000), first);
  auto found = must_find(*s, "key-1", "etl");
  BOOST_REQUIRE(found.has_value());
  check_same(*found, first);
}

BOOST_AUTO_TEST_CASE(keys_of_different_scopes_are_independent, *utf::timeout(60)) {
  const request_key_row etl{"key-1", "etl", "hash-a", "run-a", 1000};
  const request_key_row report{"key-1", "report", "hash-b", "run-b", 1000};
  const request_key_row other_key{"key-2", "etl", "hash-c", "run-c", 1000};
  check_same(must_remember(*s, etl, 0), etl);
  check_same(must_remember(*s, report, 0), report);
  check_same(must_remember(*s, other_key, 0), other_key);
  check_same(*must_find(*s, "key-1", "etl"), etl);
  check_same(*must_find(*s, "key-1", "report"), report);
  check_same(*must_find(*s, "key-2", "etl"), other_key);
  BOOST_TEST(!must_find(*s, "key-2", "report").has_value());
  BOOST_TEST(!must_find(*s, "key-1", "").has_value());
}

BOOST_AUTO_TEST_CASE(an_expired_entry_is_replaced, *utf::timeout(60)) {
  const request_key_row first{"key-1", "etl", "hash-a", "run-a", 1000};
  must_remember(*s, first, 0);
  // Created at expired_before_us: not expired yet.
  check_same(must_remember(*s, {"key-1", "etl", "hash-b", "run-b", 5000}, 1000), first);
  // Created before it: expired, replaced by the new request's entry.
  const request_key_row second{"key-1", "etl", "hash-b", "run-b", 5000};
  check_same(must_remember(*s, second, 1001), second);
  check_same(*must_find(*s, "key-1", "etl"), second);
  check_same(must_remember(*s, {"key-1", "etl", "hash-c", "run-c", 6000}, 1001), second);
}

BOOST_AUTO_TEST_CASE(finds_entries_expired_or_not_and_misses_unknown_keys, *utf::timeout(60)) {
  BOOST_TEST(!must_find(*s, "key-1", "etl").has_value());
  const request_key_row old{"key-1", "etl", "hash-a", "run-a", 10};
  must_remember(*s, old, 0);
  check_same(*must_find(*s, "key-1", "etl"), old);  // whatever its age
  BOOST_TEST(!must_find(*s, "key-1", "etl2").has_value());
  BOOST_TEST(!must_find(*s, "KEY-1", "etl").has_value());  // keys are compared byte for byte
  BOOST_TEST(!must_find(*s, "key-", "etl").has_value());
}

BOOST_AUTO_TEST_CASE(forgets_the_entries_created_before_a_time_and_counts_them, *utf::timeout(60)) {
  BOOST_TEST(must_forget(*s, 1'000'000) == 0u);
  int n = 0;
  for (std::int64_t at : {100, 200, 200, 300}) {
    const std::string key = "key-" + std::to_string(at) + "-" + std::to_string(n++);
    must_remember(*s, {key, "etl", "h", "run", at}, 0);
  }
  must_remember(*s, {"other", "report", "h", "run", 200}, 0);
  BOOST_TEST(must_forget(*s, 100) == 0u);  // created before 100: none
  BOOST_TEST(must_forget(*s, 201) == 1u + 2u + 1u);
  BOOST_TEST(must_forget(*s, 201) == 0u);
  BOOST_TEST(!must_find(*s, "other", "report").has_value());
  BOOST_TEST(must_find(*s, "key-300-3", "etl").has_value());
  // A forgotten key is free for a new request.
  const request_key_row again{"other", "report", "h2", "run-2", 400};
  check_same(must_remember(*s, again, 0), again);
  BOOST_TEST(must_forget(*s, 1'000'000) == 2u);
}

BOOST_AUTO_TEST_CASE(keys_may_be_any_text_up_to_255_bytes, *utf::timeout(60)) {
  const std::string longest(request_key_max_bytes, 'k');
  // 255 bytes of three-byte characters: 85 of them.
  std::string snowmen;
  for (int i = 0; i < 85; ++i) {
    snowmen += "\u2603";
  }
  BOOST_REQUIRE_EQUAL(snowmen.size(), 255u);
  const std::vector<std::string> keys = {
      longest, snowmen,        "q\"uote 'apos' back\\slash", "%_ wildcards *?",
      " ",     "{\"a\",NULL}", "tab\tnew\nline\x01"};
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const request_key_row row{keys[i], "etl", "hash-" + std::to_string(i),
                              "run-" + std::to_string(i), 1000};
    check_same(must_remember(*s, row, 0), row);
  }
  for (std::size_t i = 0; i < keys.size(); ++i) {
    auto found = must_find(*s, keys[i], "etl");
    BOOST_REQUIRE_MESSAGE(found.has_value(), "key " << i);
    BOOST_TEST(found->key == keys[i], "key " << i);
    BOOST_TEST(found->run_id == "run-" + std::to_string(i), "key " << i);
  }
  BOOST_TEST(must_forget(*s, 1001) == keys.size());
}

BOOST_AUTO_TEST_CASE(refuses_keys_no_store_can_keep_for_good, *utf::timeout(60)) {
  struct bad {
    const char* what;
    request_key_row row;
    const char* message;  // a part of the error's
  };
  const std::string nul_key("ab\0cd", 5);
  const bad cases[] = {
      {"an empty key", {"", "etl", "h", "run", 1}, "empty"},
      {"a key of 256 bytes", {std::string(256, 'k'), "etl", "h", "run", 1}, "256 bytes"},
      {"a key of 300 bytes", {std::string(300, 'k'), "etl", "h", "run", 1}, "more than the 255"},
      {"a NUL byte in the key", {nul_key, "etl", "h", "run", 1}, "NUL"},
      {"a NUL byte in the scope", {"k", std::string("et\0l", 4), "h", "run", 1}, "NUL"},
      {"a key that is not UTF-8", {"caf\xc3", "etl", "h", "run", 1}, "UTF-8"},
      {"a scope that is not UTF-8", {"k", "\xff", "h", "run", 1}, "UTF-8"},
      {"a NUL byte in the run id", {"k", "etl", "h", std::string("r\0n", 3), 1}, "NUL"},
      {"a NUL byte in the hash", {"k", "etl", std::string("h\0", 2), "run", 1}, "NUL"},
  };
  for (const bad& c : cases) {
    auto r = s->remember_request(c.row, 0);
    BOOST_REQUIRE_MESSAGE(!r.has_value(), c.what);
    BOOST_TEST(!r.error().transient, c.what << ": " << r.error().message);
    BOOST_TEST(r.error().message.find(c.message) != std::string::npos,
               c.what << ": " << r.error().message);
    const bool key_or_scope = c.row.run_id == "run" && c.row.request_hash == "h";
    if (key_or_scope) {
      auto f = s->find_request(c.row.key, c.row.scope);
      BOOST_REQUIRE_MESSAGE(!f.has_value(), c.what);
      BOOST_TEST(!f.error().transient, c.what << ": " << f.error().message);
      BOOST_TEST(f.error().message.find(c.message) != std::string::npos,
                 c.what << ": " << f.error().message);
    }
  }
  // Nothing was stored, and the store works on.
  BOOST_TEST(must_forget(*s, 1'000'000) == 0u);
  const request_key_row fine{"k", "etl", "h", "run", 1};
  check_same(must_remember(*s, fine, 0), fine);
}

// In one process, many threads on one store object: exactly one request wins the key.
BOOST_AUTO_TEST_CASE(of_concurrent_requests_under_one_key_exactly_one_wins, *utf::timeout(120)) {
  constexpr int threads = 6;
  constexpr int keys = 20;
  std::vector<std::vector<request_key_row>> got(threads);
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
        const request_key_row row{"key-" + std::to_string(k), "etl", "hash",
                                  "run-" + std::to_string(t), 1000 + k};
        auto r = s->remember_request(row, 0);
        if (!r) {
          errors[t] = r.error().message;
          return;
        }
        got[t].push_back(*r);
      }
    });
  }
  for (auto& th : pool) {
    th.join();
  }
  for (const auto& e : errors) {
    BOOST_REQUIRE_MESSAGE(e.empty(), e);
  }
  for (int k = 0; k < keys; ++k) {
    auto stored = must_find(*s, "key-" + std::to_string(k), "etl");
    BOOST_REQUIRE(stored.has_value());
    for (int t = 0; t < threads; ++t) {
      check_same(got[t][static_cast<std::size_t>(k)], *stored);
    }
  }
  BOOST_TEST(must_forget(*s, 1'000'000) == static_cast<std::size_t>(keys));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE_END()

}  // namespace troupe::test
