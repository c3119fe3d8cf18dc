#define BOOST_TEST_MODULE workflow_json
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <string>

#include "workflow/json.hpp"

using namespace troupe;

namespace {

std::string parse_error(std::string_view text, const json_limits& limits = {}) {
  auto r = parse_json(text, limits);
  BOOST_TEST_REQUIRE(!r.has_value());
  return r.error().message;
}

bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(parsing)

BOOST_AUTO_TEST_CASE(a_valid_document_parses_to_its_value) {
  auto r = parse_json(R"({"a": [1, 2.5, "x", true, null]})");
  BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(*r == json::parse(R"({"a": [1, 2.5, "x", true, null]})"));
}

BOOST_AUTO_TEST_CASE(a_document_over_the_byte_limit_is_rejected_before_parsing) {
  json_limits limits;
  limits.max_document_bytes = 10;
  // Not even valid JSON: the size check must come first.
  const std::string message = parse_error("[1, 2, 3, 4, 5", limits);
  BOOST_TEST(contains(message, "document too large: 14 bytes (limit 10)"), message);
}

BOOST_AUTO_TEST_CASE(a_document_exactly_at_the_byte_limit_is_accepted) {
  json_limits limits;
  limits.max_document_bytes = 9;
  BOOST_TEST(parse_json("[1,2,3,4]", limits).has_value());
}

BOOST_AUTO_TEST_CASE(nesting_deeper_than_the_limit_is_rejected_with_its_position) {
  json_limits limits;
  limits.max_depth = 3;
  BOOST_TEST(parse_json("[[[1]]]", limits).has_value());
  const std::string message = parse_error("[[[[1]]]]", limits);
  BOOST_TEST(contains(message, "nesting too deep"), message);
  BOOST_TEST(contains(message, "(limit 3 levels)"), message);
  BOOST_TEST(contains(message, "line 1, column 4"), message);
}

BOOST_AUTO_TEST_CASE(a_string_over_the_limit_is_rejected_with_its_pointer) {
  json_limits limits;
  limits.max_string_bytes = 5;
  BOOST_TEST(parse_json(R"({"a": ["12345"]})", limits).has_value());
  const std::string message = parse_error(R"({"a": ["ok", "123456"]})", limits);
  BOOST_TEST(contains(message, "string too long at '/a/1': 6 bytes (limit 5)"), message);
}

BOOST_AUTO_TEST_CASE(an_object_key_over_the_string_limit_is_rejected) {
  json_limits limits;
  limits.max_string_bytes = 3;
  const std::string message = parse_error(R"({"long": 1})", limits);
  BOOST_TEST(contains(message, "string too long at '/long': 4 bytes"), message);
}

BOOST_AUTO_TEST_CASE(a_syntax_error_names_its_line_and_column) {
  const std::string message = parse_error("{\n  \"a\": 1,\n  \"b\" 2\n}");
  BOOST_TEST(contains(message, "invalid JSON at line 3, column 7"), message);
}

BOOST_AUTO_TEST_CASE(truncated_input_is_reported_at_its_end) {
  const std::string message = parse_error("[1,\n2");
  BOOST_TEST(contains(message, "line 2, column 2"), message);
}

BOOST_AUTO_TEST_CASE(trailing_data_after_the_value_is_a_syntax_error) {
  const std::string message = parse_error("{} x");
  BOOST_TEST(contains(message, "line 1, column 4"), message);
  BOOST_TEST(contains(message, "extra data"), message);
}

BOOST_AUTO_TEST_CASE(an_empty_document_is_a_syntax_error) {
  const std::string message = parse_error("");
  BOOST_TEST(contains(message, "line 1, column 1"), message);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(canonical_form)

BOOST_AUTO_TEST_CASE(keys_are_sorted_and_integral_numbers_lose_their_fraction) {
  const auto v = json::parse(R"({"b": 1.0, "a": {"z": 1e2, "y": [2.5, -0.0, 3]}})");
  BOOST_TEST(canonical_json(v) == R"({"a":{"y":[2.5,0,3],"z":100},"b":1})");
}

BOOST_AUTO_TEST_CASE(non_integral_doubles_use_the_shortest_round_trip_form) {
  BOOST_TEST(canonical_json(json::value(0.1)) == "0.1");
  BOOST_TEST(canonical_json(json::value(1.5e300)) == "1.5e+300");
}

BOOST_AUTO_TEST_CASE(strings_are_escaped_as_json) {
  BOOST_TEST(canonical_json(json::value("a\"b\n")) == R"("a\"b\n")");
  const json::value tricky("\x01\\/\t\xc3\xa9");
  BOOST_TEST(canonical_json(tricky) == R"("\u0001\\/\t)"
                                       "\xc3\xa9\"");
  BOOST_TEST((json::parse(canonical_json(tricky)) == tricky));
}

BOOST_AUTO_TEST_CASE(reordered_keys_and_number_spellings_hash_the_same) {
  const auto a = json::parse(R"({"x": 1, "y": {"p": [1, 2], "q": "s"}})");
  const auto b = json::parse(R"({"y": {"q": "s", "p": [1.0, 2e0]}, "x": 1e0})");
  BOOST_TEST(canonical_json(a) == canonical_json(b));
  BOOST_TEST(canonical_hash(a) == canonical_hash(b));
}

BOOST_AUTO_TEST_CASE(different_values_hash_differently) {
  const auto a = json::parse(R"({"x": 1})");
  BOOST_TEST(canonical_hash(a) != canonical_hash(json::parse(R"({"x": 2})")));
  BOOST_TEST(canonical_hash(a) != canonical_hash(json::parse(R"({"x": "1"})")));
  BOOST_TEST(canonical_hash(a) != canonical_hash(json::parse(R"({"y": 1})")));
  BOOST_TEST(canonical_hash(a) != canonical_hash(json::parse(R"([{"x": 1}])")));
}

BOOST_AUTO_TEST_CASE(canonical_hash_is_the_content_hash_of_the_canonical_text) {
  // Larger than the hash's internal buffer, with a string longer than it too.
  json::array big;
  for (int i = 0; i < 2000; ++i) {
    big.emplace_back(json::object{{"k" + std::to_string(i), i * 0.5}, {"s", "x\ty"}});
  }
  big.emplace_back(std::string(10000, 'z'));
  const json::value v(std::move(big));
  BOOST_TEST(canonical_json(v).size() > 20000u);
  BOOST_TEST(canonical_hash(v) == content_hash(canonical_json(v)));
  BOOST_TEST(canonical_hash(json::value(1)) == content_hash("1"));
}

// Pinned text and hash over every kind and number range: stored cache keys and spec hashes are
// canonical hashes, so a writer change that moved one byte here would orphan them all.
BOOST_AUTO_TEST_CASE(canonical_text_and_hash_of_every_kind_are_pinned) {
  json::object o;
  o["z"] = json::array{nullptr, true, false, json::object{}, json::array{}, ""};
  o["b"] = json::array{std::numeric_limits<std::int64_t>::min(),
                       std::numeric_limits<std::uint64_t>::max(),
                       -0.0,
                       1e15,
                       1.8e19,
                       1e20,
                       -1e19,
                       0.1,
                       -2.5e-7,
                       1.0 / 3.0,
                       std::numeric_limits<double>::infinity(),
                       std::nan("")};
  o["a"] = json::object{{"y", "\x01\x1f\"\\/\b\f\n\r\t\x7f\xc3\xa9"}, {"\xc3\xa9", 1}, {"B", 2}};
  const json::value v(std::move(o));
  const std::string want =
      R"({"a":{"B":2,"y":"\u0001\u001f\"\\/\b\f\n\r\t)"
      "\x7f\xc3\xa9\",\"\xc3\xa9\""
      R"(:1},"b":[-9223372036854775808,18446744073709551615,0,1000000000000000,)"
      R"(18000000000000000000,1e+20,-1e+19,0.1,-2.5e-07,0.3333333333333333,null,null],)"
      R"("z":[null,true,false,{},[],""]})";
  BOOST_TEST(canonical_json(v) == want);
  BOOST_TEST(canonical_hash(v) == "226a56e380b2cc28180c022bc6f7c0c8");
}

BOOST_AUTO_TEST_CASE(content_hash_is_32_lowercase_hex_digits_and_stable) {
  const std::string h = content_hash("hello");
  BOOST_TEST(h.size() == 32u);
  BOOST_TEST(h.find_first_not_of("0123456789abcdef") == std::string::npos, h);
  BOOST_TEST(content_hash("hello") == h);
  BOOST_TEST(content_hash("hello!") != h);
  // Pinned: a change of algorithm would silently invalidate every stored cache key.
  BOOST_TEST(content_hash("") == "99aa06d3014798d86001c324468d497f");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(helpers)

BOOST_AUTO_TEST_CASE(to_json_text_is_compact) {
  BOOST_TEST(to_json_text(json::parse(R"({ "a" : [ 1 , 2 ] })")) == R"({"a":[1,2]})");
}

BOOST_AUTO_TEST_CASE(to_json_text_keeps_key_order_and_the_kind_of_doubles) {
  const auto v = json::parse(R"({"z": 1.0, "a": [0.074, 1e20, -0.0, 3], "s": "\u0001"})");
  const std::string text = to_json_text(v);
  BOOST_TEST(text == R"({"z":1.0,"a":[0.074,1e+20,-0.0,3],"s":"\u0001"})");
  BOOST_TEST((json::parse(text) == v));  // same values, same kinds
}

BOOST_AUTO_TEST_CASE(the_writer_styles_differ_only_where_they_say) {
  const auto v = json::parse(R"({"b": [2.0, 1e15, {}], "a": {"x": []}})");
  std::string shortest;
  append_json(shortest, v, {false, json_style::doubles::shortest, false});
  BOOST_TEST(shortest == R"({"b":[2,1e+15,{}],"a":{"x":[]}})");
  std::string pretty;
  append_json(pretty, v, {true, json_style::doubles::keep_point, true});
  BOOST_TEST(pretty ==
             "{\n  \"a\": {\n    \"x\": []\n  },\n  \"b\": [\n    2.0,\n    1e+15,\n"
             "    {}\n  ]\n}");
}

BOOST_AUTO_TEST_CASE(kind_names_read_as_users_write_types) {
  BOOST_TEST(json_kind_name(json::value(1)) == "integer");
  BOOST_TEST(json_kind_name(json::value(std::uint64_t{1})) == "integer");
  BOOST_TEST(json_kind_name(json::value(1.5)) == "number");
  BOOST_TEST(json_kind_name(json::value("s")) == "string");
  BOOST_TEST(json_kind_name(json::value(true)) == "boolean");
  BOOST_TEST(json_kind_name(json::value(nullptr)) == "null");
  BOOST_TEST(json_kind_name(json::value(json::array{})) == "array");
  BOOST_TEST(json_kind_name(json::value(json::object{})) == "object");
}

BOOST_AUTO_TEST_SUITE_END()
