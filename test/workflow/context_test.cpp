#define BOOST_TEST_MODULE workflow_context
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "workflow/context.hpp"
#include "workflow/pvector.hpp"

namespace bdata = boost::unit_test::data;
using namespace troupe;

namespace {

node_result ok(json::value output) {
  return {node_status::succeeded, make_json(std::move(output)), nullptr};
}

// A context with `n` node results, every one set (so every slot holds storage).
context filled(std::size_t n, std::size_t vars = 4) {
  context c(n, vars, make_json(json::object{{"x", 1}}));
  for (std::size_t i = 0; i < n; ++i) {
    c = c.with_node(i, ok(json::value(static_cast<std::int64_t>(i))));
  }
  return c;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(pvector_)

BOOST_DATA_TEST_CASE(every_slot_reads_back_what_was_set,
                     bdata::make({0, 1, 31, 32, 33, 1024, 1025, 40000}), size) {
  const auto n = static_cast<std::size_t>(size);
  pvector<int> v(n);
  BOOST_TEST(v.size() == n);
  for (std::size_t i = 0; i < n; ++i) {
    v = v.set(i, static_cast<int>(i) * 3 + 1);
  }
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) {
    wrong += v.get(i) != static_cast<int>(i) * 3 + 1 ? 1 : 0;
  }
  BOOST_TEST(wrong == 0u);
  BOOST_TEST(v.get(n) == 0);  // out of range reads default
  BOOST_TEST(v.find(n) == nullptr);
}

BOOST_DATA_TEST_CASE(slots_never_set_read_as_default,
                     bdata::make({1, 31, 32, 33, 1024, 1025, 40000}), size) {
  const auto n = static_cast<std::size_t>(size);
  const pvector<std::string> empty(n);
  const auto v = empty.set(n - 1, "last");
  BOOST_TEST(v.get(n - 1) == "last");
  BOOST_TEST(empty.get(n - 1) == "");
  BOOST_TEST(empty.find(n - 1) == nullptr);
  std::size_t not_default = 0;
  for (std::size_t i = 0; i + 1 < n; ++i) {
    not_default += v.get(i).empty() && v.find(i) == nullptr ? 0 : 1;
  }
  BOOST_TEST(not_default == 0u);
}

BOOST_DATA_TEST_CASE(old_versions_are_unchanged_by_set,
                     bdata::make({1, 31, 32, 33, 1024, 1025, 40000}), size) {
  const auto n = static_cast<std::size_t>(size);
  pvector<int> v0(n);
  for (std::size_t i = 0; i < n; i += 7) {
    v0 = v0.set(i, 1);
  }
  const auto v1 = v0.set(0, 2);
  const auto v2 = v1.set(n - 1, 3);
  BOOST_TEST(v0.get(0) == 1);
  BOOST_TEST(v1.get(0) == 2);
  BOOST_TEST(v2.get(0) == (n == 1 ? 3 : 2));
  BOOST_TEST(v0.get(n - 1) == ((n - 1) % 7 == 0 ? 1 : 0));
  BOOST_TEST(v1.get(n - 1) == (n == 1 ? 2 : v0.get(n - 1)));
  BOOST_TEST(v2.get(n - 1) == 3);
}

BOOST_AUTO_TEST_CASE(set_past_the_end_throws_and_empty_vector_reads_default) {
  const pvector<int> empty;
  BOOST_TEST(empty.size() == 0u);
  BOOST_TEST(empty.get(0) == 0);
  BOOST_CHECK_THROW(empty.set(0, 1), std::out_of_range);
  BOOST_CHECK_THROW(pvector<int>(40000).set(40000, 1), std::out_of_range);
}

BOOST_AUTO_TEST_CASE(set_shares_every_untouched_value_with_the_old_version) {
  pvector<int> v(2000);
  for (std::size_t i = 0; i < v.size(); ++i) {
    v = v.set(i, 1);
  }
  const auto w = v.set(1000, 2);
  BOOST_TEST(!w.same_root(v));
  BOOST_TEST(!w.shares_leaf(v, 1000));
  std::size_t not_shared = 0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    not_shared += i != 1000 && !w.shares_leaf(v, i) ? 1 : 0;
  }
  BOOST_TEST(not_shared == 0u);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(node_status_)

BOOST_AUTO_TEST_CASE(statuses_have_their_format_names) {
  BOOST_TEST(to_string(node_status::pending) == "pending");
  BOOST_TEST(to_string(node_status::running) == "running");
  BOOST_TEST(to_string(node_status::succeeded) == "succeeded");
  BOOST_TEST(to_string(node_status::failed) == "failed");
  BOOST_TEST(to_string(node_status::skipped) == "skipped");
  BOOST_TEST(to_string(node_status::cancelled) == "cancelled");
  BOOST_TEST(to_string(node_status::timed_out) == "timed_out");
}

BOOST_AUTO_TEST_CASE(only_pending_and_running_are_not_terminal) {
  BOOST_TEST(!is_terminal(node_status::pending));
  BOOST_TEST(!is_terminal(node_status::running));
  BOOST_TEST(is_terminal(node_status::succeeded));
  BOOST_TEST(is_terminal(node_status::failed));
  BOOST_TEST(is_terminal(node_status::skipped));
  BOOST_TEST(is_terminal(node_status::cancelled));
  BOOST_TEST(is_terminal(node_status::timed_out));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(context_)

BOOST_AUTO_TEST_CASE(a_new_context_has_no_results_vars_or_item) {
  const auto inputs = make_json(json::object{{"a", 1}});
  const context c(3, 2, inputs);
  BOOST_TEST(c.node_count() == 3u);
  BOOST_TEST(c.var_count() == 2u);
  BOOST_TEST(c.inputs() == inputs);
  BOOST_TEST(c.node(0) == nullptr);
  BOOST_TEST(c.node(3) == nullptr);
  BOOST_TEST(c.var(1) == nullptr);
  BOOST_TEST(c.item() == nullptr);
  BOOST_TEST(!c.index().has_value());
}

BOOST_AUTO_TEST_CASE(a_copy_shares_the_whole_node_tree) {
  const context a = filled(1000);
  const context b = a;  // NOLINT(performance-unnecessary-copy-initialization): the point
  BOOST_TEST(b.shares_all_nodes(a));
  BOOST_TEST(b.inputs() == a.inputs());
  std::size_t not_shared = 0;
  for (std::size_t i = 0; i < a.node_count(); ++i) {
    not_shared += b.shares_node_storage(a, i) ? 0 : 1;
  }
  BOOST_TEST(not_shared == 0u);
}

BOOST_AUTO_TEST_CASE(with_node_replaces_one_slot_and_shares_every_other) {
  const context a = filled(1000);
  const context c = a.with_node(5, ok("new"));
  BOOST_TEST(!c.shares_all_nodes(a));
  BOOST_TEST(!c.shares_node_storage(a, 5));
  BOOST_TEST(c.node(5)->output->as_string() == "new");
  BOOST_TEST(a.node(5)->output->as_int64() == 5);
  std::size_t not_shared = 0;
  for (std::size_t i = 0; i < a.node_count(); ++i) {
    if (i != 5 && !c.shares_node_storage(a, i)) {
      ++not_shared;
    }
  }
  BOOST_TEST(not_shared == 0u);
  // Same storage, so the very same JSON too.
  BOOST_TEST(c.node(6)->output.get() == a.node(6)->output.get());
}

BOOST_AUTO_TEST_CASE(with_var_shares_node_storage_entirely) {
  const context a = filled(1000);
  const context c = a.with_var(2, make_json("v"));
  BOOST_TEST(c.shares_all_nodes(a));
  BOOST_TEST(*c.var(2) == json::value("v"));
  BOOST_TEST(a.var(2) == nullptr);
}

BOOST_AUTO_TEST_CASE(with_var_shares_every_other_var) {
  context a(10, 100, nullptr);
  for (std::size_t i = 0; i < 100; ++i) {
    a = a.with_var(i, make_json(static_cast<std::int64_t>(i)));
  }
  const context c = a.with_var(40, make_json("x"));
  BOOST_TEST(!c.shares_var_storage(a, 40));
  std::size_t not_shared = 0;
  for (std::size_t i = 0; i < 100; ++i) {
    not_shared += i != 40 && !c.shares_var_storage(a, i) ? 1 : 0;
  }
  BOOST_TEST(not_shared == 0u);
}

BOOST_AUTO_TEST_CASE(slots_never_set_are_not_reported_as_shared) {
  const context a(10, 10, nullptr);
  const context b = a;  // NOLINT(performance-unnecessary-copy-initialization)
  BOOST_TEST(b.shares_all_nodes(a));
  BOOST_TEST(!b.shares_node_storage(a, 0));
  BOOST_TEST(!b.shares_var_storage(a, 0));
}

BOOST_AUTO_TEST_CASE(writes_past_the_end_throw) {
  const context a(3, 2, nullptr);
  BOOST_CHECK_THROW(a.with_node(3, ok(1)), std::out_of_range);
  BOOST_CHECK_THROW(a.with_var(2, make_json(1)), std::out_of_range);
  BOOST_CHECK_THROW(a.with_item(make_json(1), -1), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(item_views_see_only_their_own_writes) {
  const context base = filled(50, 8);
  std::vector<context> views;
  for (std::int64_t i = 0; i < 100; ++i) {
    views.push_back(base.with_item(make_json(i), i)
                        .with_node(7, ok(json::value(i)))
                        .with_var(3, make_json(i * 10)));
  }
  std::size_t wrong = 0;
  for (std::int64_t i = 0; i < 100; ++i) {
    const context& v = views[static_cast<std::size_t>(i)];
    wrong += v.node(7)->output->as_int64() == i ? 0 : 1;
    wrong += v.var(3)->as_int64() == i * 10 ? 0 : 1;
    wrong += v.item()->as_int64() == i ? 0 : 1;
    wrong += v.index() == i ? 0 : 1;
    wrong += v.shares_node_storage(base, 8) ? 0 : 1;
  }
  BOOST_TEST(wrong == 0u);
  BOOST_TEST(base.node(7)->output->as_int64() == 7);
  BOOST_TEST(base.var(3) == nullptr);
  BOOST_TEST(base.item() == nullptr);
  BOOST_TEST(!base.index().has_value());
}

BOOST_AUTO_TEST_CASE(with_item_points_into_the_array_without_copying) {
  const auto array = make_json(json::array{"a", "b", "c"});
  const context base(1, 1, nullptr);
  const auto& elements = array->as_array();
  const json_ptr second(array, &elements[1]);  // aliasing: shares ownership of the array
  const context view = base.with_item(second, 1);
  BOOST_TEST(view.item().get() == &elements[1]);
  BOOST_TEST(view.item()->as_string() == "b");
  BOOST_TEST(*view.index() == 1);
  BOOST_TEST(array.use_count() == 3);  // array, second, view: no copy was made
  BOOST_TEST(view.shares_all_nodes(base));
}

BOOST_AUTO_TEST_CASE(a_view_keeps_what_it_shares_alive_after_the_base_is_destroyed) {
  auto base = std::make_unique<context>(filled(100));
  json_ptr array = make_json(json::array{10, 20});
  const context view =
      base->with_item(json_ptr(array, &array->as_array()[1]), 1).with_node(0, ok("mine"));
  const std::weak_ptr<const json::value> watch = array;
  base.reset();
  array.reset();
  BOOST_TEST(!watch.expired());
  BOOST_TEST(view.item()->as_int64() == 20);
  BOOST_TEST(view.node(0)->output->as_string() == "mine");
  BOOST_TEST(view.node(99)->output->as_int64() == 99);
  BOOST_TEST(view.inputs()->at("x").as_int64() == 1);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(context_scope_)

struct scope_fixture {
  name_table names;
  run_identity run{"run-0123456789abcdef-0123456789", "resize"};
  context ctx;

  scope_fixture() {
    names.nodes = {{"fetch", 0}, {"parse", 1}, {"later", 2}, {"empty", 3}};
    names.vars = {{"count", 0}, {"unset", 1}};
    ctx = context(4, 2, make_json(json::object{{"url", "http://x"}}))
              .with_node(0, ok(json::object{{"body", "hi"}}))
              .with_node(1, {node_status::failed, nullptr, make_json("boom")})
              .with_node(3, {node_status::skipped, nullptr, nullptr})
              .with_var(0, make_json(3));
  }
};

BOOST_FIXTURE_TEST_CASE(inputs_and_vars_are_read_by_name, scope_fixture) {
  const context_scope s(names, ctx, run);
  BOOST_TEST(s.inputs() == ctx.inputs().get());
  BOOST_TEST(s.inputs()->at("url").as_string() == "http://x");
  BOOST_TEST(*s.var("count") == json::value(3));
  BOOST_TEST(s.var("unset") == nullptr);
  BOOST_TEST(s.var("nope") == nullptr);
}

BOOST_FIXTURE_TEST_CASE(no_inputs_reads_as_a_null_pointer, scope_fixture) {
  const context bare(1, 1, nullptr);
  const context_scope s(names, bare, run);
  BOOST_TEST(s.inputs() == nullptr);
}

BOOST_FIXTURE_TEST_CASE(node_fields_read_output_status_and_error, scope_fixture) {
  const context_scope s(names, ctx, run);
  BOOST_TEST(s.node("fetch", node_field::output) == ctx.node(0)->output.get());
  BOOST_TEST(*s.node("fetch", node_field::status) == json::value("succeeded"));
  BOOST_TEST(s.node("fetch", node_field::error)->is_null());
  BOOST_TEST(s.node("parse", node_field::output)->is_null());
  BOOST_TEST(*s.node("parse", node_field::status) == json::value("failed"));
  BOOST_TEST(*s.node("parse", node_field::error) == json::value("boom"));
  BOOST_TEST(*s.node("empty", node_field::status) == json::value("skipped"));
}

BOOST_FIXTURE_TEST_CASE(unknown_nodes_and_nodes_without_a_result_are_missing, scope_fixture) {
  const context_scope s(names, ctx, run);
  BOOST_TEST(s.node("nope", node_field::output) == nullptr);
  BOOST_TEST(s.node("nope", node_field::status) == nullptr);
  BOOST_TEST(s.node("later", node_field::output) == nullptr);
  BOOST_TEST(s.node("later", node_field::status) == nullptr);
  BOOST_TEST(s.node("later", node_field::error) == nullptr);
}

BOOST_FIXTURE_TEST_CASE(every_status_reads_as_its_name_from_shared_storage, scope_fixture) {
  const node_status all[] = {node_status::pending,  node_status::running, node_status::succeeded,
                             node_status::failed,   node_status::skipped, node_status::cancelled,
                             node_status::timed_out};
  for (const auto st : all) {
    const context c = ctx.with_node(2, {st, nullptr, nullptr});
    const context_scope s1(names, c, run);
    const context_scope s2(names, c, run);
    const json::value* v = s1.node("later", node_field::status);
    BOOST_TEST_REQUIRE(v != nullptr);
    BOOST_TEST(v->as_string() == to_string(st));
    BOOST_TEST(v == s2.node("later", node_field::status));  // one static value per status
  }
}

BOOST_FIXTURE_TEST_CASE(item_and_index_exist_only_inside_an_item, scope_fixture) {
  const context_scope outside(names, ctx, run);
  BOOST_TEST(outside.item() == nullptr);
  BOOST_TEST(outside.index() == nullptr);

  const context inside = ctx.with_item(make_json("elem"), 4);
  const context_scope s(names, inside, run);
  BOOST_TEST(s.item() == inside.item().get());
  BOOST_TEST(*s.index() == json::value(4));

  const context null_item = ctx.with_item(nullptr, 0);
  const context_scope n(names, null_item, run);
  BOOST_TEST_REQUIRE(n.item() != nullptr);
  BOOST_TEST(n.item()->is_null());
  BOOST_TEST(*n.index() == json::value(0));
}

BOOST_FIXTURE_TEST_CASE(output_is_bound_only_when_given, scope_fixture) {
  const context_scope without(names, ctx, run);
  BOOST_TEST(without.output() == nullptr);
  const json::value out = {{"k", 1}};
  const context_scope with(names, ctx, run, &out);
  BOOST_TEST(with.output() == &out);
}

BOOST_FIXTURE_TEST_CASE(run_exposes_id_and_workflow_only, scope_fixture) {
  const context_scope s(names, ctx, run);
  BOOST_TEST(*s.run("id") == json::value("run-0123456789abcdef-0123456789"));
  BOOST_TEST(*s.run("workflow") == json::value("resize"));
  BOOST_TEST(s.run("name") == nullptr);
  BOOST_TEST(s.run("") == nullptr);
}

BOOST_AUTO_TEST_SUITE_END()
