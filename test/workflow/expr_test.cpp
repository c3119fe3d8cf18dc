#define BOOST_TEST_MODULE workflow_expr
#include <boost/test/unit_test.hpp>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <atomic>
#include <cstdlib>
#include <iterator>
#include <map>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "workflow/expr.hpp"

// Counts heap allocations while `counting` is set, to prove that path reads do not copy.
namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
}  // namespace

void* operator new(std::size_t n) {
  if (counting.load(std::memory_order_relaxed))
    allocations.fetch_add(1);
  if (void* p = std::malloc(n == 0 ? 1 : n))
    return p;
  throw std::bad_alloc();
}
// Out of line, or GCC inlines free() next to `new` and warns about a mismatched pair.
__attribute__((noinline)) void operator delete(void* p) noexcept {
  std::free(p);
}
__attribute__((noinline)) void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}

namespace {

namespace json = boost::json;
using troupe::expression;
using troupe::node_field;
using troupe::template_value;

struct node_entry {
  json::value output;
  json::value status;
  json::value error;
};

// A scope backed by plain maps; counts how often it is read.
class map_scope final : public troupe::scope {
 public:
  json::value inputs_value;
  bool has_inputs = true;
  std::map<std::string, json::value, std::less<>> vars;
  std::map<std::string, node_entry, std::less<>> nodes;
  std::optional<json::value> item_value;
  std::optional<json::value> index_value;
  std::optional<json::value> output_value;
  std::map<std::string, json::value, std::less<>> run_fields;
  mutable int reads = 0;

  const json::value* inputs() const override {
    ++reads;
    return has_inputs ? &inputs_value : nullptr;
  }
  const json::value* var(std::string_view name) const override {
    ++reads;
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : &it->second;
  }
  const json::value* node(std::string_view id, node_field field) const override {
    ++reads;
    auto it = nodes.find(id);
    if (it == nodes.end())
      return nullptr;
    switch (field) {
      case node_field::output:
        return &it->second.output;
      case node_field::status:
        return &it->second.status;
      case node_field::error:
        return &it->second.error;
    }
    return nullptr;
  }
  const json::value* item() const override {
    ++reads;
    return item_value ? &*item_value : nullptr;
  }
  const json::value* index() const override {
    ++reads;
    return index_value ? &*index_value : nullptr;
  }
  const json::value* output() const override {
    ++reads;
    return output_value ? &*output_value : nullptr;
  }
  const json::value* run(std::string_view field) const override {
    ++reads;
    auto it = run_fields.find(field);
    return it == run_fields.end() ? nullptr : &it->second;
  }
};

json::value j(std::string_view text) {
  return json::parse(text);
}

map_scope make_scope() {
  map_scope s;
  s.inputs_value = j(R"({
    "name": "world", "n": 3, "list": [1, 2, 3], "f": 2.5, "empty": "", "nil": null,
    "nested": {"a": {"b": [10, 20, {"c": "deep"}]}}, "key with space": 7,
    "items": [{"name": "a"}, {"name": "b"}], "obj": {"x": 1, "y": 2}, "s": "a,b,c",
    "big": 9223372036854775807, "neg": -9223372036854775807, "u": 18446744073709551615
  })");
  s.vars["x"] = 5;
  s.vars["greeting"] = "hi";
  s.vars["nul"] = nullptr;
  s.vars["key"] = "x";
  s.vars["list"] = j("[3, 1, 2]");
  s.nodes["a"] = {j(R"({"items": [{"name": "p"}, {"name": "q"}, {"name": "r"}, {"name": "x"}],
                        "count": 4})"),
                  "succeeded", nullptr};
  s.nodes["b"] = {nullptr, "failed", "boom"};
  s.item_value = j(R"({"id": 7, "tags": ["x", "y"]})");
  s.index_value = json::value(2);
  s.output_value = j(R"({"count": 3})");
  s.run_fields["id"] = "run-1";
  s.run_fields["workflow"] = "demo";
  return s;
}

// Exact comparison: Boost's serializer distinguishes 3 from 3.0 (3E0) and keeps key order.
std::string exact(const json::value& v) {
  return json::serialize(v);
}

// Says what a result holds, for failure messages (evaluated even when the check passes).
std::string describe(const troupe::expr_error& e) {
  return e.message + " at column " + std::to_string(e.column);
}
std::string describe(const troupe::template_error& e) {
  return "'" + e.pointer + "': " + describe(e.error);
}
std::string describe(const std::vector<troupe::template_error>& errors) {
  std::string out;
  for (const auto& e : errors)
    out += describe(e) + "; ";
  return out;
}
std::string describe(const expression&) {
  return "an expression";
}
std::string describe(const template_value&) {
  return "a template";
}
std::string describe(const json::value& v) {
  return json::serialize(v);
}
template <class T, class E>
std::string describe(const troupe::expected<T, E>& r) {
  return r.has_value() ? "value " + describe(*r) : "error " + describe(r.error());
}

enum class stage { ok, parse_error, eval_error };

struct expr_case {
  std::string_view source;
  std::string_view expected;  // JSON text, when stage::ok
  stage st = stage::ok;
  std::size_t column = 0;
  std::string_view message = {};
};

constexpr auto P = stage::parse_error;
constexpr auto E = stage::eval_error;

const expr_case expr_cases[] = {
    // literals
    {"null", "null"},
    {"true", "true"},
    {"false", "false"},
    {"42", "42"},
    {"-7", "-7"},
    {"1.5", "1.5"},
    {"1e3", "1e3"},
    {"'text'", R"("text")"},
    {R"("dq")", R"("dq")"},
    {R"('a\nb\t')", R"("a\nb\t")"},
    {R"('\u00e9')", R"("é")"},
    {R"('\ud83d\ude00')", R"("\ud83d\ude00")"},
    {R"('it\'s')", R"("it's")"},
    {R"("say \"hi\" \\ ")", R"("say \"hi\" \\ ")"},
    {"[1, 'two', null]", R"([1, "two", null])"},
    {R"({"k": 1, bare: 2})", R"({"k": 1, "bare": 2})"},
    {"[]", "[]"},
    {"{}", "{}"},
    {"[inputs.n, vars.x]", "[3, 5]"},
    {R"({"n": inputs.n, "l": [index]})", R"({"n": 3, "l": [2]})"},
    // arithmetic, precedence and associativity
    {"1 + 2 * 3", "7"},
    {"(1 + 2) * 3", "9"},
    {"10 - 4 - 3", "3"},
    {"2 * 3 % 4", "2"},
    {"64 / 4 / 2", "8"},
    {"7 / 2", "3.5"},
    {"6 / 3", "2"},
    {"-7 / 2", "-3.5"},
    {"7 % 3", "1"},
    {"-7 % 3", "-1"},
    {"7 % -3", "1"},
    {"7.5 % 2", "1.5"},
    {"1 + 1.5", "2.5"},
    {"2.5 * 2", "5.0"},
    {"- inputs.n", "-3"},
    {"--3", "3"},
    {"-(2 + 3)", "-5"},
    {"-inputs.f", "-2.5"},
    {"'a' + 'b'", R"("ab")"},
    {"[1] + [2, 3]", "[1, 2, 3]"},
    {"inputs.list + [4]", "[1, 2, 3, 4]"},
    {"inputs.big + 0", "9223372036854775807"},
    {"inputs.u + 0.5", "1.8446744073709552e19"},
    {"inputs.big + 1", "", E, 12, "integer overflow"},
    {"inputs.neg - 10", "", E, 12, "integer overflow"},
    {"inputs.big * 2", "", E, 12, "integer overflow"},
    {"inputs.u + 1", "", E, 10, "integer overflow"},
    {"1 / 0", "", E, 3, "division by zero"},
    {"1 % 0", "", E, 3, "modulo by zero"},
    {"1.0 / 0", "", E, 5, "division by zero"},
    {"1e308 * 10", "", E, 7, "number overflow"},
    {"'a' + 1", "", E, 5, "cannot add string and number"},
    {"[1] + 'a'", "", E, 5, "cannot add array and string"},
    {"'a' - 1", "", E, 5, "cannot apply '-' to string and number"},
    {"null * 2", "", E, 6, "cannot apply '*' to null and number"},
    {"-'a'", "", E, 1, "cannot negate string"},
    {"1 + 2 + 'x' + 3", "", E, 7, "cannot add number and string"},
    // equality and ordering
    {"1 == 1.0", "true"},
    {"1 != 1.0", "false"},
    {"inputs.u > inputs.big", "true"},
    {"inputs.big < 9223372036854775808.0", "true"},
    {"inputs.big == 9223372036854775807.0", "false"},
    {R"([1, {"a": 2}] == [1.0, {"a": 2}])", "true"},
    {R"({"a": 1, "b": 2} == {"b": 2, "a": 1})", "true"},
    {R"({"a": 1} == {"a": 1, "b": 2})", "false"},
    {"'a' == 'a'", "true"},
    {"null == false", "false"},
    {"'1' == 1", "false"},
    {"vars.nul == null", "true"},
    {"2 < 3", "true"},
    {"3 <= 3", "true"},
    {"3 > 3", "false"},
    {"3 >= 3.0", "true"},
    {"2.5 < 3", "true"},
    {"'abc' < 'abd'", "true"},
    {"'B' < 'a'", "true"},
    {"'é' > 'z'", "true"},
    {"1 < 'a'", "", E, 3, "cannot compare number and string"},
    {"null < 1", "", E, 6, "cannot compare null and number"},
    {"[1] >= [1]", "", E, 5, "cannot compare array and array"},
    {"1 < 2 == true", "true"},
    {"1 == 1 == true", "true"},
    // logic
    {"true && false", "false"},
    {"1 && 'x'", "true"},
    {"0 || ''", "false"},
    {"0 || 'x'", "true"},
    {"false && vars.nope", "false"},
    {"true || vars.nope", "true"},
    {"true && vars.nope", "", E, 14, "unknown name vars.nope"},
    {"!0", "true"},
    {"!inputs.list", "false"},
    {"!!'x'", "true"},
    {"![]", "true"},
    {"!{}", "true"},
    {"!0.0", "true"},
    {"true || false && false", "true"},
    {"(true || false) && false", "false"},
    {"!true == false", "true"},
    // conditional
    {"inputs.n > 2 ? 'big' : 'small'", R"("big")"},
    {"0 ? 1 : 2", "2"},
    {"false ? 1 : true ? 2 : 3", "2"},
    {"true ? false ? 1 : 2 : 3", "2"},
    {"'' ? 1 : 0", "0"},
    {"1 + 1 ? 'a' : 'b'", R"("a")"},
    {"true ? 1 : vars.nope", "1"},
    // in
    {"2 in inputs.list", "true"},
    {"2.0 in [1, 2]", "true"},
    {"'b' in 'abc'", "true"},
    {"'name' in inputs", "true"},
    {"'zz' in inputs.obj", "false"},
    {R"({"a": 1} in [{"a": 1.0}])", "true"},
    {"1 + 1 in [2]", "true"},
    {"1 in 'abc'", "", E, 3, "'in' a string needs a string, got number"},
    {"1 in 2", "", E, 3, "'in' needs an array, string or object, got number"},
    {"1 in inputs.obj", "", E, 3, "needs a string key"},
    // paths
    {"inputs.nested", R"({"a": {"b": [10, 20, {"c": "deep"}]}})"},
    {"inputs.nested.a.b[2].c", R"("deep")"},
    {R"(inputs.nested["a"]['b'][0])", "10"},
    {R"(inputs["key with space"])", "7"},
    {"inputs.list[-1]", "3"},
    {"inputs.list[-3]", "1"},
    {"inputs.list[inputs.n - 2]", "2"},
    {"inputs.list[4 / 2]", "3"},
    {"inputs.obj[vars.key]", "1"},
    {"inputs.items[1].name", R"("b")"},
    {"vars.x", "5"},
    {R"(vars["greeting"])", R"("hi")"},
    {"vars['gr' + 'eeting']", R"("hi")"},
    {"nodes.a.output.count", "4"},
    {R"(nodes["a"].status)", R"("succeeded")"},
    {"nodes['' + 'b'].error", R"("boom")"},
    {"nodes.b.output", "null"},
    {"nodes.a.output.items[3].name == 'x' && len(inputs.list) > 2", "true"},
    {"item.tags[1]", R"("y")"},
    {"item", R"({"id": 7, "tags": ["x", "y"]})"},
    {"index", "2"},
    {"output.count", "3"},
    {"run.id", R"("run-1")"},
    {R"(run["workflow"])", R"("demo")"},
    {"[10, 20, 30][1]", "20"},
    {R"({"a": {"b": 5}}.a.b)", "5"},
    {R"(parse_json('{"x": [1, 2]}').x[1])", "2"},
    {"keys(inputs.obj)[0]", R"("x")"},
    {"(inputs.list)[0]", "1"},
    {"vars.nope", "", E, 6, "unknown name vars.nope"},
    {"inputs.nope", "", E, 8, "unknown name inputs.nope"},
    {"inputs.nested.zz", "", E, 15, "no key 'zz' in object"},
    {"inputs.list[5]", "", E, 12, "index 5 out of range (length 3)"},
    {"inputs.list[-4]", "", E, 12, "index -4 out of range (length 3)"},
    {"inputs.list[vars.x]", "", E, 12, "index 5 out of range (length 3)"},
    {"inputs.list.x", "", E, 13, "cannot read key 'x' of array"},
    {"inputs.n[0]", "", E, 9, "cannot index number"},
    {"inputs.obj[0]", "", E, 11, "cannot index object with a number"},
    {"inputs.list['a']", "", E, 12, "cannot read key 'a' of array"},
    {"inputs.list[true]", "", E, 12, "cannot index with boolean"},
    {"inputs.list[0.5]", "", E, 12, "array index must be an integer"},
    {"nodes.c.output", "", E, 7, "nodes.c has no result yet"},
    {"vars[inputs.n]", "", E, 5, "vars[...] needs a string, got number"},
    // parse errors, with exact columns
    {"foo", "", P, 1, "unknown name 'foo'"},
    {"1 + foo", "", P, 5, "unknown name 'foo'"},
    {"nope(1)", "", P, 1, "unknown function 'nope'"},
    {"len(1, 2)", "", P, 1, "len takes 1 argument, got 2"},
    {"default(1)", "", P, 1, "default takes 2 arguments, got 1"},
    {"range()", "", P, 1, "range takes 1 to 3 arguments, got 0"},
    {"2 * min()", "", P, 5, "min takes at least 1 argument"},
    {"vars", "", P, 5, "expected a name after 'vars'"},
    {"vars[1]", "", P, 5, "vars[...] needs a string"},
    {"nodes.a", "", P, 8, "expected .output, .status or .error after nodes.a"},
    {"nodes.a.foo", "", P, 9, "unknown node field 'foo'"},
    {"run.foo", "", P, 5, "unknown name run.foo"},
    {"run", "", P, 4, "expected run.id or run.workflow"},
    {"1 +", "", P, 4, "unexpected end of expression"},
    {"(1 + 2", "", P, 7, "expected ')'"},
    {"1 = 1", "", P, 3, "compare with '=='"},
    {"1 & 2", "", P, 3, "use '&&'"},
    {"'abc", "", P, 1, "unterminated string"},
    {R"('\q')", "", P, 2, "unknown escape"},
    {R"('\ud800')", "", P, 2, "unpaired surrogate"},
    {R"('\u12')", "", P, 2, "four hex digits"},
    {"1 2", "", P, 3, "unexpected number 2"},
    {R"({"a": 1, "a": 2})", "", P, 10, "duplicate key 'a'"},
    {"99999999999999999999", "", P, 1, "integer literal out of range"},
    {"1.", "", P, 3, "expected a digit after '.'"},
    {"", "", P, 1, "empty expression"},
    {"   ", "", P, 4, "empty expression"},
    {"inputs.", "", P, 8, "expected a name after '.'"},
    {"1 ? 2", "", P, 6, "expected ':'"},
    {"[1, 2", "", P, 6, "expected ',' or ']'"},
    {"a.b", "", P, 1, "unknown name 'a'"},
    {"in", "", P, 1, "unexpected 'in'"},
    {"1 # 2", "", P, 3, "unexpected character '#'"},
    {"len(x)", "", P, 5, "unknown name 'x'"},
    // functions
    {"len('héllo')", "5"},
    {"len(inputs.list)", "3"},
    {"len(inputs.obj)", "2"},
    {"len('')", "0"},
    {"len(5)", "", E, 1, "len needs a string, array or object, got number"},
    {R"(keys({"b": 1, "a": 2}))", R"(["b", "a"])"},
    {"values(inputs.obj)", "[1, 2]"},
    {"keys([])", "", E, 1, "keys needs an object, got array"},
    {"default(vars.nope, 'fb')", R"("fb")"},
    {"default(vars.nul, 1)", "1"},
    {"default(vars.x, 1)", "5"},
    {"default(inputs.list[9], 0)", "0"},
    {"default(inputs.nested.zz.y, 0)", "0"},
    {"default(nodes.zz.output, [])", "[]"},
    {"default(vars.nope, vars.nope2)", "", E, 25, "unknown name vars.nope2"},
    {"default(1 + 'a', 0)", "", E, 11, "cannot add number and string"},
    {"default(1 / 0, 0)", "", E, 11, "division by zero"},
    {"default(inputs.n.x, 0)", "", E, 18, "cannot read key 'x' of number"},
    {"str(12)", R"("12")"},
    {"str('s')", R"("s")"},
    {"str(null)", R"("null")"},
    {"str([1, 'a'])", R"("[1,\"a\"]")"},
    {"str(1.5)", R"("1.5")"},
    {"str(true)", R"("true")"},
    {"int(3.9)", "3"},
    {"int(-3.9)", "-3"},
    {"int(' 42 ')", "42"},
    {"int('-7')", "-7"},
    {"int('2.5')", "2"},
    {"int(true)", "1"},
    {"int(inputs.big)", "9223372036854775807"},
    {"int(inputs.u)", "", E, 1, "integer overflow"},
    {"int('abc')", "", E, 1, "cannot convert string 'abc' to an integer"},
    {"int([])", "", E, 1, "int needs a number, string or boolean, got array"},
    {"float(2)", "2.0"},
    {"float('2.5')", "2.5"},
    {"float(false)", "0.0"},
    {"float('x')", "", E, 1, "cannot convert string 'x' to a number"},
    {"bool('false')", "false"},
    {"bool('true')", "true"},
    {"bool('no')", "true"},
    {"bool(0)", "false"},
    {"bool([0])", "true"},
    {"join(['a', 1, null, [2]], '-')", R"("a-1-null-[2]")"},
    {"join([], ',')", R"("")"},
    {"join('a', ',')", "", E, 1, "join needs an array, got string"},
    {"join([1], 2)", "", E, 1, "join needs a string separator, got number"},
    {"split(inputs.s, ',')", R"(["a", "b", "c"])"},
    {"split('a--b--', '--')", R"(["a", "b", ""])"},
    {"split('', ',')", R"([""])"},
    {"split('abc', '')", "", E, 1, "empty separator"},
    {"range(3)", "[0, 1, 2]"},
    {"range(0)", "[]"},
    {"range(-2)", "[]"},
    {"range(2, 5)", "[2, 3, 4]"},
    {"range(5, 0, -2)", "[5, 3, 1]"},
    {"range(0, 5, 2)", "[0, 2, 4]"},
    {"range(0, 1, 0)", "", E, 1, "step must not be 0"},
    {"range(1000001)", "", E, 1, "exceed the limit of 1000000"},
    {"range('3')", "", E, 1, "range needs integers, got string"},
    {"len(range(1000000))", "1000000"},
    {"contains('hello', 'ell')", "true"},
    {"contains('hello', 'z')", "false"},
    {"contains([1, 2], 2.0)", "true"},
    {"contains(inputs.obj, 'y')", "true"},
    {"contains(5, 1)", "", E, 1, "contains needs an array, string or object, got number"},
    {"upper('abC1é')", R"("ABC1é")"},
    {"lower('ABc')", R"("abc")"},
    {R"(trim('  a b \n'))", R"("a b")"},
    {"trim(1)", "", E, 1, "trim needs a string, got number"},
    {"json('a')", R"("\"a\"")"},
    {R"(json({"a": [1, true, 0.5]}))", R"("{\"a\":[1,true,0.5]}")"},
    {"parse_json('[1, 2.5]')", "[1, 2.5]"},
    {"parse_json('{')", "", E, 1, "invalid JSON"},
    {"parse_json(1)", "", E, 1, "parse_json needs a string, got number"},
    {"min(3, 1, 2)", "1"},
    {"max(3, 1.5)", "3"},
    {"max([1, 5.5, 2])", "5.5"},
    {"min(vars.list)", "1"},
    {"min([])", "", E, 1, "empty array"},
    {"max(1, 'a')", "", E, 1, "max needs numbers, got string"},
    {"min(5)", "", E, 1, "min needs an array or two or more numbers, got number"},
    {"sum([1, 2, 3])", "6"},
    {"sum([1, 2.5])", "3.5"},
    {"sum([])", "0"},
    {"sum(['a'])", "", E, 1, "sum needs an array of numbers, got string"},
    {"sum([inputs.big, 1])", "", E, 1, "integer overflow"},
    {"1 + len(vars.nope)", "", E, 14, "unknown name vars.nope"},
};

BOOST_AUTO_TEST_CASE(expression_table) {
  BOOST_TEST(std::size(expr_cases) >= 150u);
  const auto s = make_scope();
  for (const auto& c : expr_cases) {
    BOOST_TEST_CONTEXT("expression: " << c.source) {
      auto parsed = expression::parse(c.source);
      if (c.st == stage::parse_error) {
        BOOST_TEST_REQUIRE(!parsed.has_value(), describe(parsed));
        BOOST_TEST(parsed.error().column == c.column);
        BOOST_TEST(parsed.error().message.find(c.message) != std::string::npos,
                   "message: " << parsed.error().message);
        continue;
      }
      BOOST_TEST_REQUIRE(parsed.has_value(), describe(parsed));
      BOOST_TEST(parsed->source() == c.source);
      auto r = parsed->evaluate(s);
      if (c.st == stage::eval_error) {
        BOOST_TEST_REQUIRE(!r.has_value(), describe(r));
        BOOST_TEST(r.error().column == c.column);
        BOOST_TEST(r.error().message.find(c.message) != std::string::npos,
                   "message: " << r.error().message);
        continue;
      }
      BOOST_TEST_REQUIRE(r.has_value(), describe(r));
      BOOST_TEST(exact(*r) == exact(j(c.expected)));
    }
  }
}

struct template_case {
  std::string_view source;    // JSON text of the template value
  std::string_view expected;  // JSON text, when stage::ok
  stage st = stage::ok;       // parse_error: compile() fails; eval_error: render() fails
  std::string_view pointer = {};
  std::size_t column = 0;
  std::string_view message = {};
};

const template_case template_cases[] = {
    {R"("{{ inputs.n }}")", "3"},
    {R"("  {{inputs.list}}  ")", "[1, 2, 3]"},
    {R"("{{ vars.nul }}")", "null"},
    {R"("{{ inputs.f }}")", "2.5"},
    {R"("n={{ inputs.n }}")", R"("n=3")"},
    {R"("{{ inputs.name }} and {{ inputs.list }}")", R"("world and [1,2,3]")"},
    {R"("{{inputs.name}}{{inputs.n}}")", R"("world3")"},
    {R"("x{{ vars.nul }}")", R"("xnull")"},
    {R"("{{ 3 / 2 }}s")", R"("1.5s")"},
    {R"("{{ '}}' }}")", R"("}}")"},
    {R"("{{ '{{' }}")", R"("{{")"},
    {R"("a {{ \"}}\" }} b")", R"("a }} b")"},
    {R"("{{ 'it\\'s }}' }}")", R"("it's }}")"},
    {R"("{{ {'a': {'b': 1}} }}")", R"({"a": {"b": 1}})"},
    {R"("{{ '{{ inputs.n }}' }}")", R"("{{ inputs.n }}")"},
    {R"("plain text")", R"("plain text")"},
    {R"("single } and { braces")", R"("single } and { braces")"},
    {"[1, true, null, 2.5]", "[1, true, null, 2.5]"},
    {R"({"a": "{{ inputs.n }}", "b": ["x{{ index }}", 1, true], "{{ k }}": "lit"})",
     R"({"a": 3, "b": ["x2", 1, true], "{{ k }}": "lit"})"},
    {R"({"deep": {"deeper": ["{{ item.tags }}"]}})", R"({"deep": {"deeper": [["x", "y"]]}})"},
    {R"("{{ foo }}")", "", P, "", 4, "unknown name 'foo'"},
    {R"("a }} b")", "", P, "", 3, "write {{ '}}' }} for a literal }}"},
    {R"("x {{ 1 +")", "", P, "", 3, "unterminated '{{'"},
    {R"("{{ 'abc }}")", "", P, "", 1, "unterminated '{{'"},
    {R"("{{ }}")", "", P, "", 1, "empty expression"},
    {R"("ab {{1 + }}")", "", P, "", 10, "unexpected end of expression"},
    {R"({"a/b": {"c~d": ["ok", "{{ nope }}"]}})", "", P, "/a~1b/c~0d/1", 4, "unknown name 'nope'"},
    {R"({"x": ["{{ vars.nope }}"]})", "", E, "/x/0", 9, "unknown name vars.nope"},
    {R"("n = {{ 1 / 0 }}")", "", E, "", 10, "division by zero"},
    {R"({"a": "ok {{ inputs.n }}", "b": "{{ inputs.list[7] }}"})", "", E, "/b", 15,
     "index 7 out of range"},
};

BOOST_AUTO_TEST_CASE(template_table) {
  const auto s = make_scope();
  for (const auto& c : template_cases) {
    BOOST_TEST_CONTEXT("template: " << c.source) {
      auto compiled = template_value::compile(j(c.source));
      if (c.st == stage::parse_error) {
        BOOST_TEST_REQUIRE(!compiled.has_value(), describe(compiled));
        BOOST_TEST_REQUIRE(compiled.error().size() == 1u, describe(compiled));
        const auto& e = compiled.error().front();
        BOOST_TEST(e.pointer == c.pointer);
        BOOST_TEST(e.error.column == c.column);
        BOOST_TEST(e.error.message.find(c.message) != std::string::npos,
                   "message: " << e.error.message);
        continue;
      }
      BOOST_TEST_REQUIRE(compiled.has_value(), describe(compiled));
      BOOST_TEST(exact(compiled->source()) == exact(j(c.source)));
      auto r = compiled->render(s);
      if (c.st == stage::eval_error) {
        BOOST_TEST_REQUIRE(!r.has_value(), describe(r));
        BOOST_TEST(r.error().pointer == c.pointer);
        BOOST_TEST(r.error().error.column == c.column);
        BOOST_TEST(r.error().error.message.find(c.message) != std::string::npos,
                   "message: " << r.error().error.message);
        continue;
      }
      BOOST_TEST_REQUIRE(r.has_value(), describe(r));
      BOOST_TEST(exact(*r) == exact(j(c.expected)));
    }
  }
}

BOOST_AUTO_TEST_CASE(missing_variable_is_an_error_not_null) {
  auto s = make_scope();
  auto e = expression::parse("vars.later");
  BOOST_TEST_REQUIRE(e.has_value());
  auto r = e->evaluate(s);
  BOOST_TEST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().message == "unknown name vars.later");
  BOOST_TEST(r.error().column == 6u);
  // The same expression reads the variable once it exists: the error was about absence.
  s.vars["later"] = nullptr;
  auto again = e->evaluate(s);
  BOOST_TEST_REQUIRE(again.has_value());
  BOOST_TEST(again->is_null());
}

BOOST_AUTO_TEST_CASE(unbound_roots_are_missing_names) {
  auto s = make_scope();
  s.item_value.reset();
  s.output_value.reset();
  s.has_inputs = false;
  for (std::string_view src : {"item", "output.count", "inputs.n", "index + 1"}) {
    BOOST_TEST_CONTEXT(src) {
      if (src == "index + 1")
        s.index_value.reset();
      auto r = expression::parse(src)->evaluate(s);
      BOOST_TEST_REQUIRE(!r.has_value());
      BOOST_TEST(r.error().message.find("unknown name") == 0u, r.error().message);
      BOOST_TEST(r.error().column == 1u);
      // default() treats them as missing.
      auto d = expression::parse("default(" + std::string(src) + ", 'none')")->evaluate(s);
      BOOST_TEST_REQUIRE(d.has_value());
      BOOST_TEST(*d == json::value("none"));
    }
  }
}

BOOST_AUTO_TEST_CASE(default_catches_missing_names_but_not_type_errors) {
  const auto s = make_scope();
  auto eval = [&](std::string_view src) { return expression::parse(src)->evaluate(s); };
  BOOST_TEST(*eval("default(vars.nope, 1)") == json::value(1));
  BOOST_TEST(*eval("default(nodes.ghost.status, 'pending')") == json::value("pending"));
  BOOST_TEST(*eval("default(inputs.items[10].name, 'none')") == json::value("none"));
  BOOST_TEST(*eval("default(vars.nul, 'was null')") == json::value("was null"));
  // A present, falsy value is kept: default() is about absence, not truthiness.
  BOOST_TEST(*eval("default(inputs.empty, 'x')") == json::value(""));
  BOOST_TEST(*eval("default(0, 1)") == json::value(0));
  // Type errors inside the first argument still surface, with their own column.
  auto t = eval("default(inputs.name * 2, 0)");
  BOOST_TEST_REQUIRE(!t.has_value());
  BOOST_TEST(t.error().message == "cannot apply '*' to string and number");
  BOOST_TEST(t.error().column == 21u);
  auto k = eval("default(inputs.list.name, 0)");
  BOOST_TEST_REQUIRE(!k.has_value());
  BOOST_TEST(k.error().message == "cannot read key 'name' of array");
  // The fallback is evaluated only when needed.
  BOOST_TEST(*eval("default(vars.x, 1 / 0)") == json::value(5));
}

BOOST_AUTO_TEST_CASE(template_compile_reports_every_error_with_its_pointer) {
  auto r = template_value::compile(j(R"({
    "url": "{{ nope }}/{{ 1 + }}",
    "ok": "{{ inputs.n }}",
    "list": ["fine", "oops }}", {"k/~": "{{"}],
    "{{ keys are not templates }}": "x"
  })"));
  BOOST_TEST_REQUIRE(!r.has_value());
  const auto& errors = r.error();
  BOOST_TEST_REQUIRE(errors.size() == 4u, describe(errors));
  BOOST_TEST(errors[0].pointer == "/url");
  BOOST_TEST(errors[0].error.column == 4u);
  BOOST_TEST(errors[0].error.message.find("unknown name 'nope'") != std::string::npos);
  BOOST_TEST(errors[1].pointer == "/url");
  BOOST_TEST(errors[1].error.column == 19u);
  BOOST_TEST(errors[2].pointer == "/list/1");
  BOOST_TEST(errors[2].error.column == 6u);
  BOOST_TEST(errors[3].pointer == "/list/2/k~1~0");
  BOOST_TEST(errors[3].error.column == 1u);
}

struct throwing_scope final : troupe::scope {
  [[noreturn]] static void touched() { throw std::logic_error("scope was read"); }
  const json::value* inputs() const override { touched(); }
  const json::value* var(std::string_view) const override { touched(); }
  const json::value* node(std::string_view, node_field) const override { touched(); }
  const json::value* item() const override { touched(); }
  const json::value* index() const override { touched(); }
  const json::value* output() const override { touched(); }
  const json::value* run(std::string_view) const override { touched(); }
};

BOOST_AUTO_TEST_CASE(constant_template_is_not_evaluated) {
  const auto source = j(R"({"a": [1, "two", {"three": null}], "{{ key }}": "single } brace"})");
  auto t = template_value::compile(source);
  BOOST_TEST_REQUIRE(t.has_value());
  BOOST_TEST(t->is_constant());
  auto r = t->render(throwing_scope{});
  BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(exact(*r) == exact(source));

  auto dynamic = template_value::compile(j(R"({"a": [1, "{{ index }}"]})"));
  BOOST_TEST_REQUIRE(dynamic.has_value());
  BOOST_TEST(!dynamic->is_constant());
  // A dynamic template does read the scope; the exception from this scope is reported as an
  // error, never thrown through the API.
  auto failed = dynamic->render(throwing_scope{});
  BOOST_TEST_REQUIRE(!failed.has_value());
  BOOST_TEST(failed.error().error.message.find("scope was read") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(default_template_renders_null) {
  template_value t;
  BOOST_TEST(t.is_constant());
  BOOST_TEST(t.source().is_null());
  auto r = t.render(throwing_scope{});
  BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(r->is_null());
}

BOOST_AUTO_TEST_CASE(path_reads_do_not_copy_the_value) {
  const auto s = make_scope();
  auto e = expression::parse("nodes.a.output.items[3].name == 'x' && len(inputs.list) > 2");
  auto k = expression::parse("vars[vars.key] != null || inputs.nested.a.b[-1].c in ['deep']");
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST_REQUIRE(k.has_value());
  allocations = 0;
  counting = true;
  auto r = e->evaluate(s);
  auto q = k->evaluate(s);
  counting = false;
  BOOST_TEST(allocations.load() == 0);
  // The counter does see allocations: building a string allocates.
  auto text = expression::parse("str(inputs.nested) + '!'");
  BOOST_TEST_REQUIRE(text.has_value());
  counting = true;
  auto built = text->evaluate(s);
  counting = false;
  BOOST_TEST(allocations.load() > 0);
  BOOST_TEST(built.has_value());
  BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(*r == json::value(true));
  BOOST_TEST_REQUIRE(q.has_value());
  BOOST_TEST(*q == json::value(true));
}

BOOST_AUTO_TEST_CASE(columns_are_relative_to_the_template_string) {
  const auto s = make_scope();
  // As if the expression started at byte 7 of "prefix {{ vars.nope }}".
  auto e = expression::parse("vars.nope", 10);
  BOOST_TEST_REQUIRE(e.has_value());
  auto r = e->evaluate(s);
  BOOST_TEST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().column == 16u);
  auto p = expression::parse("1 + zap", 10);
  BOOST_TEST_REQUIRE(!p.has_value());
  BOOST_TEST(p.error().column == 15u);

  auto t = template_value::compile(json::value("prefix {{ vars.nope }}"));
  BOOST_TEST_REQUIRE(t.has_value());
  auto rendered = t->render(s);
  BOOST_TEST_REQUIRE(!rendered.has_value());
  BOOST_TEST(rendered.error().error.column == 16u);
}

BOOST_AUTO_TEST_CASE(render_stops_at_the_first_error) {
  auto s = make_scope();
  auto t = template_value::compile(
      j(R"({"a": "{{ vars.one }}", "b": "{{ vars.two }}", "c": "{{ vars.three }}"})"));
  BOOST_TEST_REQUIRE(t.has_value());
  s.vars["one"] = 1;
  auto r = t->render(s);
  BOOST_TEST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().pointer == "/b");
  BOOST_TEST(r.error().error.message == "unknown name vars.two");
  s.vars["two"] = 2;
  s.vars["three"] = 3;
  auto ok = t->render(s);
  BOOST_TEST_REQUIRE(ok.has_value());
  BOOST_TEST(exact(*ok) == R"({"a":1,"b":2,"c":3})");
}

BOOST_AUTO_TEST_CASE(typed_template_keeps_the_type_and_interpolation_makes_text) {
  const auto s = make_scope();
  auto typed = template_value::compile(json::value(" {{ inputs.obj }} "));
  auto text = template_value::compile(json::value("obj: {{ inputs.obj }}"));
  BOOST_TEST_REQUIRE(typed.has_value());
  BOOST_TEST_REQUIRE(text.has_value());
  auto a = typed->render(s);
  auto b = text->render(s);
  BOOST_TEST_REQUIRE(a.has_value());
  BOOST_TEST_REQUIRE(b.has_value());
  BOOST_TEST(a->is_object());
  BOOST_TEST(exact(*a) == R"({"x":1,"y":2})");
  BOOST_TEST(b->is_string());
  BOOST_TEST(*b == json::value(R"(obj: {"x":1,"y":2})"));
}

BOOST_AUTO_TEST_CASE(copies_share_the_parsed_form) {
  const auto s = make_scope();
  auto e = expression::parse("vars.x * 2");
  BOOST_TEST_REQUIRE(e.has_value());
  const expression copy = *e;
  BOOST_TEST(copy.source() == "vars.x * 2");
  BOOST_TEST(*copy.evaluate(s) == json::value(10));
  auto t = template_value::compile(json::value("{{ vars.x }}"));
  BOOST_TEST_REQUIRE(t.has_value());
  const template_value tcopy = *t;
  BOOST_TEST(&tcopy.source() == &t->source());
  BOOST_TEST(*tcopy.render(s) == json::value(5));
}

BOOST_AUTO_TEST_CASE(deep_nesting_is_a_parse_error_not_a_crash) {
  const std::string deep = std::string(1000, '(') + "1" + std::string(1000, ')');
  auto e = expression::parse(deep);
  BOOST_TEST_REQUIRE(!e.has_value());
  BOOST_TEST(e.error().message.find("nested too deeply") != std::string::npos);
  const std::string nots = std::string(1000, '!') + "1";
  BOOST_TEST(!expression::parse(nots).has_value());
  const std::string fine = std::string(50, '(') + "1" + std::string(50, ')');
  BOOST_TEST(expression::parse(fine).has_value());
}

BOOST_AUTO_TEST_CASE(short_circuit_skips_the_other_side) {
  auto s = make_scope();
  const auto before = s.reads;
  auto r = expression::parse("false && vars.x == 1")->evaluate(s);
  BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(*r == json::value(false));
  BOOST_TEST(s.reads == before);
  auto c = expression::parse("true ? 1 : vars.x")->evaluate(s);
  BOOST_TEST(*c == json::value(1));
  BOOST_TEST(s.reads == before);
}

BOOST_AUTO_TEST_CASE(truthiness_follows_the_documented_table) {
  for (std::string_view falsy : {"false", "null", "0", "0.0", "-0.0", "\"\"", "[]", "{}"}) {
    BOOST_TEST(!troupe::truthy(j(falsy)), falsy);
  }
  for (std::string_view truthy : {"true", "1", "-1", "0.5", "\"0\"", "\"false\"", "[0]",
                                  "{\"a\":null}", "18446744073709551615"}) {
    BOOST_TEST(troupe::truthy(j(truthy)), truthy);
  }
}

BOOST_AUTO_TEST_CASE(negative_indexes_count_from_the_end) {
  const auto s = make_scope();
  BOOST_TEST(*expression::parse("vars.list[-1]")->evaluate(s) == json::value(2));
  BOOST_TEST(*expression::parse("vars.list[-3]")->evaluate(s) == json::value(3));
  BOOST_TEST(*expression::parse("vars.list[0 - 2]")->evaluate(s) == json::value(1));
  auto r = expression::parse("vars.list[-4]")->evaluate(s);
  BOOST_TEST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().message == "index -4 out of range (length 3)");
}

}  // namespace
