// The expression and template engine.
//
// Decisions (the contract users rely on; WORKFLOW_FORMAT.md "Templates and expressions"):
//
// Syntax
// - Precedence, loosest first: `?:` (right-associative), `||`, `&&`, `== !=`, `< <= > >=`, `in`,
//   `+ -`, `* / %`, unary `! -`, postfix `.name` / `[expr]`; calls `f(args)`. Binary operators are
//   left-associative.
// - Integer literals are int64; one that does not fit is a parse error (so the smallest int64 is
//   out of reach as a literal: write it as an expression if it is ever needed). A literal with a
//   fraction or exponent is a double. `1.` and `.5` are not numbers.
// - String literals take `'` or `"` and the escapes `\n \t \r \\ \' \" \uXXXX` (surrogate pairs
//   become one UTF-8 sequence; an unpaired surrogate is an error) plus JSON's `\/ \b \f`, so any
//   JSON string literal is also an expression string literal.
// - Object literal keys are string literals or bare names; a duplicate key is a parse error.
// - `vars`, `nodes.<id>` and `run` must be followed by a member; `nodes.<id>` by `.output`,
//   `.status` or `.error` (or the same in brackets); `run` only has `.id` and `.workflow`. Any
//   other bare name is a parse error, so typos surface when the workflow is compiled, not when it
//   runs.
// - Function names and argument counts are checked at parse time.
// - Parsing folds literal arrays/objects and `-<number literal>` into constants, and `a["k"]` /
//   `a[3]` into static path segments, so evaluating them costs nothing.
// - Nesting deeper than 128 levels is a parse error: the tree is walked recursively.
//
// Evaluation
// - Paths are walked by pointer into the scope's storage; a value is copied only when it leaves
//   evaluate()/render() or an operator builds a new one. Comparisons and `len` of paths allocate
//   nothing.
// - A missing name, key, index, node result, or an unbound `item`/`index`/`output` is an error of
//   the "missing" kind: `default(x, fallback)` catches exactly those (and a null x). Type errors,
//   division by zero, overflow etc. always propagate.
// - Negative array indexes count from the end: `a[-1]` is the last element. Indexes may be any
//   integer-valued number (`a[2.0]` is `a[2]`); a string indexes objects only.
// - Error columns point at what failed: the operator, the function name, the path segment (the
//   name after `.`, or the `[` of a bracket), the root name for roots.
// - Numbers compare by value across int64, uint64 and double, exactly (no rounding through
//   double). Integer arithmetic is int64 and checked: overflow is an error. A uint64 above the
//   int64 range takes part only in double arithmetic (otherwise "integer overflow"). A double
//   result that is not finite (1e308 * 10) is an error: JSON cannot hold it.
// - `int / int` is an integer when exact, else a double. `%` takes the sign of the dividend.
// - Error messages say "number" for every numeric kind ("cannot add string and number").
//
// Text
// - Interpolation, `str`, `join` and `json` write compact JSON with doubles in shortest
//   round-trip decimal form (`1.5`, `3`, `1e+300`), not Boost's `1.5E0`: these strings are read by
//   people and by shells. A non-finite double (never produced here) would be written as null.
// - `split(s, sep)` of an empty string is `[""]`; `sum([])` is 0; `min`/`max` return the chosen
//   element itself (its type kept); `len` of a string counts UTF-8 code points (continuation
//   bytes are not counted, invalid UTF-8 is not diagnosed).
// - `int("3.7")` is 3 (numeric strings parse as JSON numbers would, then truncate), surrounding
//   whitespace is ignored; `bool("false")` is false, any other string is its truthiness.
// - `range` accepts 1 to 3 integer arguments like Python's; more than 1,000,000 elements is an
//   error.
//
// Templates
// - The scanner respects quotes and also nested braces inside `{{ }}`, so an object literal such
//   as `{{ {'a': {'b': 1}} }}` works. Inside a string literal a backslash escapes the next byte.
// - Every string is scanned completely: compile() reports every error of every string.
// - Object keys are never templates.
//
// Nothing here throws through the public API: exceptions (only allocation failure or a Boost
// container limit in practice) are caught at the boundary and reported as errors.

#include "workflow/expr.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <compare>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace troupe {

namespace detail::expr_impl {

enum class error_kind : std::uint8_t { missing, type, other };

struct eval_error {
  std::string message;
  std::size_t column = 0;
  error_kind kind = error_kind::other;
};

inline unexpected<eval_error> fail(error_kind kind, std::size_t column, std::string message) {
  return {eval_error{std::move(message), column, kind}};
}

// What evaluating a node gives: a value borrowed from the scope (or the syntax tree), a value
// the node built, or an error. Built in place and returned by guaranteed elision, so a path read
// or a comparison moves no json::value (whose move and destructor are out-of-line calls) and
// allocates nothing; errors live behind a pointer because they are rare.
class result {
 public:
  static result ref(const json::value& v) noexcept {
    result r;
    r.ref_ = &v;
    return r;
  }
  template <class... A>
  static result make(A&&... args) {
    result r;
    r.own_.emplace(std::forward<A>(args)...);
    return r;
  }
  result(unexpected<eval_error> e) : err_(std::make_unique<eval_error>(std::move(e.error))) {}

  explicit operator bool() const noexcept { return !err_; }
  const json::value& get() const noexcept { return ref_ ? *ref_ : *own_; }
  bool borrowed() const noexcept { return ref_ != nullptr; }
  json::value take() && { return ref_ ? json::value(*ref_) : std::move(*own_); }
  eval_error& error() noexcept { return *err_; }

 private:
  result() = default;
  const json::value* ref_ = nullptr;
  std::optional<json::value> own_;
  std::unique_ptr<eval_error> err_;
};

}  // namespace detail::expr_impl

namespace detail {

struct expr_node {
  explicit expr_node(std::size_t col) : column(col) {}
  virtual ~expr_node() = default;
  virtual expr_impl::result eval(const scope& s) const = 0;
  // The value when the node is a literal; lets the parser fold constants.
  virtual const json::value* literal() const { return nullptr; }
  std::size_t column;
};

struct template_node {
  virtual ~template_node() = default;
  virtual expected<json::value, template_error> render(const scope& s) const = 0;
};

}  // namespace detail

namespace detail::expr_impl {
namespace {

using node_ptr = std::unique_ptr<const expr_node>;

constexpr std::size_t max_nesting = 128;
constexpr std::size_t max_range = 1'000'000;

std::string_view sv(const json::string& s) noexcept {
  return {s.data(), s.size()};
}

// Users see "number" for any numeric kind in expression errors ("cannot add string and
// number"); everything else is named as the validator names it.
std::string_view kind_name(const json::value& v) noexcept {
  return v.is_number() ? std::string_view("number") : json_kind_name(v);
}

std::string quoted(std::string_view s) {
  std::string r;
  r.reserve(s.size() + 2);
  r += '\'';
  r += s;
  r += '\'';
  return r;
}

// ---- text -----------------------------------------------------------------------------------

// Compact, in document order, numbers as they read in text (2.0 -> 2).
void append_json(std::string& out, const json::value& v) {
  static constexpr json_style style{false, json_style::doubles::shortest, false};
  troupe::append_json(out, v, style);
}

// Strings bare, everything else compact JSON: how values appear inside interpolated text.
void append_text(std::string& out, const json::value& v) {
  if (v.is_string()) {
    out += sv(v.get_string());
  } else {
    append_json(out, v);
  }
}

json::value text_value(const json::value& v) {
  std::string out;
  append_text(out, v);
  return json::value(json::string(out));
}

// ---- numbers --------------------------------------------------------------------------------

constexpr double two_63 = 9223372036854775808.0;
constexpr double two_64 = 18446744073709551616.0;

std::partial_ordering cmp_int_double(std::int64_t i, double d) {
  if (std::isnan(d))
    return std::partial_ordering::unordered;
  if (d >= two_63)
    return std::partial_ordering::less;
  if (d < -two_63)
    return std::partial_ordering::greater;
  const auto t = static_cast<std::int64_t>(d);  // truncates; in range by the checks above
  if (i != t)
    return i <=> t;
  // |d| < 2^63, so d - trunc(d) is exact.
  const double frac = d - static_cast<double>(t);
  return 0.0 <=> frac;
}

std::partial_ordering cmp_uint_double(std::uint64_t u, double d) {
  if (std::isnan(d))
    return std::partial_ordering::unordered;
  if (d >= two_64)
    return std::partial_ordering::less;
  if (d < 0)
    return std::partial_ordering::greater;
  const auto t = static_cast<std::uint64_t>(d);
  if (u != t)
    return u <=> t;
  const double frac = d - static_cast<double>(t);
  return 0.0 <=> frac;
}

std::partial_ordering reverse(std::partial_ordering o) {
  if (o == std::partial_ordering::less)
    return std::partial_ordering::greater;
  if (o == std::partial_ordering::greater)
    return std::partial_ordering::less;
  return o;
}

// Exact comparison of two JSON numbers of any representation.
std::partial_ordering compare_numbers(const json::value& a, const json::value& b) {
  using k = json::kind;
  switch (a.kind()) {
    case k::int64: {
      const auto x = a.get_int64();
      if (b.is_int64())
        return x <=> b.get_int64();
      if (b.is_uint64()) {
        return x < 0 ? std::partial_ordering::less
                     : static_cast<std::uint64_t>(x) <=> b.get_uint64();
      }
      return cmp_int_double(x, b.get_double());
    }
    case k::uint64: {
      const auto x = a.get_uint64();
      if (b.is_uint64())
        return x <=> b.get_uint64();
      if (b.is_int64()) {
        const auto y = b.get_int64();
        return y < 0 ? std::partial_ordering::greater : x <=> static_cast<std::uint64_t>(y);
      }
      return cmp_uint_double(x, b.get_double());
    }
    default:
      if (b.is_double())
        return a.get_double() <=> b.get_double();
      return reverse(compare_numbers(b, a));
  }
}

bool deep_equal(const json::value& a, const json::value& b) {
  if (a.is_number() && b.is_number())
    return compare_numbers(a, b) == 0;
  if (a.kind() != b.kind())
    return false;
  switch (a.kind()) {
    case json::kind::null:
      return true;
    case json::kind::bool_:
      return a.get_bool() == b.get_bool();
    case json::kind::string:
      return a.get_string() == b.get_string();
    case json::kind::array: {
      const auto& x = a.get_array();
      const auto& y = b.get_array();
      if (x.size() != y.size())
        return false;
      for (std::size_t i = 0; i < x.size(); ++i) {
        if (!deep_equal(x[i], y[i]))
          return false;
      }
      return true;
    }
    case json::kind::object: {
      const auto& x = a.get_object();
      const auto& y = b.get_object();
      if (x.size() != y.size())
        return false;
      for (const auto& kv : x) {
        const auto* other = y.if_contains(kv.key());
        if (!other || !deep_equal(kv.value(), *other))
          return false;
      }
      return true;
    }
    default:
      return false;
  }
}

double as_double(const json::value& v) noexcept {
  if (v.is_int64())
    return static_cast<double>(v.get_int64());
  if (v.is_uint64())
    return static_cast<double>(v.get_uint64());
  return v.get_double();
}

bool is_integer(const json::value& v) noexcept {
  return v.is_int64() || v.is_uint64();
}

// int64 value of an integer, or of a double with an integral value in range.
bool integral_value(const json::value& v, std::int64_t& out) noexcept {
  if (v.is_int64()) {
    out = v.get_int64();
    return true;
  }
  if (v.is_uint64()) {
    if (v.get_uint64() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      return false;
    }
    out = static_cast<std::int64_t>(v.get_uint64());
    return true;
  }
  if (v.is_double()) {
    const double d = v.get_double();
    if (!(d >= -two_63 && d < two_63) || std::trunc(d) != d)
      return false;
    out = static_cast<std::int64_t>(d);
    return true;
  }
  return false;
}

result finite(double d, std::size_t column) {
  if (!std::isfinite(d))
    return fail(error_kind::other, column, "number overflow");
  return result::make(d);
}

enum class arith { add, sub, mul, div, mod };

char arith_symbol(arith op) {
  switch (op) {
    case arith::add:
      return '+';
    case arith::sub:
      return '-';
    case arith::mul:
      return '*';
    case arith::div:
      return '/';
    case arith::mod:
      return '%';
  }
  return '?';
}

// Both operands are numbers.
result arithmetic(arith op, const json::value& a, const json::value& b, std::size_t column) {
  if (is_integer(a) && is_integer(b)) {
    std::int64_t x = 0;
    std::int64_t y = 0;
    if (!integral_value(a, x) || !integral_value(b, y)) {
      return fail(error_kind::other, column, "integer overflow");
    }
    std::int64_t r = 0;
    switch (op) {
      case arith::add:
        if (__builtin_add_overflow(x, y, &r))
          break;
        return result::make(r);
      case arith::sub:
        if (__builtin_sub_overflow(x, y, &r))
          break;
        return result::make(r);
      case arith::mul:
        if (__builtin_mul_overflow(x, y, &r))
          break;
        return result::make(r);
      case arith::div:
        if (y == 0)
          return fail(error_kind::other, column, "division by zero");
        if (y == -1) {
          if (__builtin_sub_overflow(std::int64_t{0}, x, &r))
            break;
          return result::make(r);
        }
        if (x % y == 0)
          return result::make(x / y);
        return result::make(static_cast<double>(x) / static_cast<double>(y));
      case arith::mod:
        if (y == 0)
          return fail(error_kind::other, column, "modulo by zero");
        // INT64_MIN % -1 is undefined behaviour in C++; its value is 0.
        if (y == -1)
          return result::make(std::int64_t{0});
        return result::make(x % y);
    }
    return fail(error_kind::other, column, "integer overflow");
  }
  const double x = as_double(a);
  const double y = as_double(b);
  switch (op) {
    case arith::add:
      return finite(x + y, column);
    case arith::sub:
      return finite(x - y, column);
    case arith::mul:
      return finite(x * y, column);
    case arith::div:
      if (y == 0)
        return fail(error_kind::other, column, "division by zero");
      return finite(x / y, column);
    case arith::mod:
      if (y == 0)
        return fail(error_kind::other, column, "modulo by zero");
      return finite(std::fmod(x, y), column);
  }
  return fail(error_kind::other, column, "unknown operator");
}

// ---- paths ----------------------------------------------------------------------------------

struct segment {
  enum class kind : std::uint8_t { key, index, dynamic };
  kind k = kind::key;
  std::string key;
  std::int64_t index = 0;
  node_ptr expr;
  std::size_t column = 0;
  // Set on the first segment after `inputs`, whose absence reads "unknown name inputs.x".
  const char* root_label = nullptr;
};

using step_result = expected<const json::value*, eval_error>;

step_result lookup_key(const json::value& cur, std::string_view key, const segment& seg) {
  if (const auto* obj = cur.if_object()) {
    if (const auto* v = obj->if_contains(key))
      return v;
    if (seg.root_label) {
      return fail(error_kind::missing, seg.column,
                  "unknown name " + std::string(seg.root_label) + "." + std::string(key));
    }
    return fail(error_kind::missing, seg.column, "no key " + quoted(key) + " in object");
  }
  return fail(error_kind::type, seg.column,
              "cannot read key " + quoted(key) + " of " + std::string(kind_name(cur)));
}

step_result lookup_index(const json::value& cur, const json::value& index_value, std::int64_t i,
                         bool integral, const segment& seg) {
  if (const auto* arr = cur.if_array()) {
    const auto n = static_cast<std::int64_t>(arr->size());
    if (integral) {
      const std::int64_t j = i < 0 ? i + n : i;
      if (j >= 0 && j < n)
        return &(*arr)[static_cast<std::size_t>(j)];
    }
    std::string msg = "index ";
    append_json(msg, index_value);
    msg += " out of range (length " + std::to_string(n) + ")";
    return fail(error_kind::missing, seg.column, std::move(msg));
  }
  if (cur.is_object()) {
    return fail(error_kind::type, seg.column,
                "cannot index object with a number (use a string key)");
  }
  return fail(error_kind::type, seg.column, "cannot index " + std::string(kind_name(cur)));
}

step_result step(const json::value& cur, const segment& seg, const scope& s) {
  switch (seg.k) {
    case segment::kind::key:
      return lookup_key(cur, seg.key, seg);
    case segment::kind::index: {
      const json::value index_value(seg.index);
      return lookup_index(cur, index_value, seg.index, true, seg);
    }
    case segment::kind::dynamic:
      break;
  }
  auto k = seg.expr->eval(s);
  if (!k)
    return unexpected<eval_error>{std::move(k.error())};
  const json::value& kv = k.get();
  if (kv.is_string())
    return lookup_key(cur, sv(kv.get_string()), seg);
  if (kv.is_number()) {
    std::int64_t i = 0;
    const bool integral = integral_value(kv, i);
    if (!integral && kv.is_double() && cur.is_array()) {
      return fail(error_kind::type, seg.column, "array index must be an integer");
    }
    return lookup_index(cur, kv, i, integral, seg);
  }
  return fail(error_kind::type, seg.column,
              "cannot index with " + std::string(kind_name(kv)) + " (use a string or a number)");
}

// ---- nodes ----------------------------------------------------------------------------------

struct literal_node final : expr_node {
  literal_node(std::size_t col, json::value v) : expr_node(col), value(std::move(v)) {}
  result eval(const scope&) const override { return result::ref(value); }
  const json::value* literal() const override { return &value; }
  json::value value;
};

struct array_node final : expr_node {
  using expr_node::expr_node;
  result eval(const scope& s) const override {
    json::array out;
    out.reserve(items.size());
    for (const auto& e : items) {
      auto v = e->eval(s);
      if (!v)
        return v;
      out.push_back(std::move(v).take());
    }
    return result::make(std::move(out));
  }
  std::vector<node_ptr> items;
};

struct object_node final : expr_node {
  using expr_node::expr_node;
  result eval(const scope& s) const override {
    json::object out;
    out.reserve(members.size());
    for (const auto& [key, e] : members) {
      auto v = e->eval(s);
      if (!v)
        return v;
      out.emplace(key, std::move(v).take());
    }
    return result::make(std::move(out));
  }
  std::vector<std::pair<std::string, node_ptr>> members;
};

struct inputs_node final : expr_node {
  using expr_node::expr_node;
  result eval(const scope& s) const override {
    if (const auto* v = s.inputs())
      return result::ref(*v);
    return fail(error_kind::missing, column, "unknown name inputs");
  }
};

// `item`, `index`, `output`: bound only in some places.
struct bound_node final : expr_node {
  enum class which : std::uint8_t { item, index, output };
  bound_node(std::size_t col, which w) : expr_node(col), what(w) {}
  result eval(const scope& s) const override {
    const json::value* v = nullptr;
    switch (what) {
      case which::item:
        v = s.item();
        if (!v)
          return fail(error_kind::missing, column, "unknown name item (bound only in for_each)");
        break;
      case which::index:
        v = s.index();
        if (!v) {
          return fail(error_kind::missing, column, "unknown name index (bound only in for_each)");
        }
        break;
      case which::output:
        v = s.output();
        if (!v)
          return fail(error_kind::missing, column, "unknown name output (bound only in publish)");
        break;
    }
    return result::ref(*v);
  }
  which what;
};

struct var_node final : expr_node {
  using expr_node::expr_node;
  result eval(const scope& s) const override {
    if (!key)
      return read(s, name);
    auto k = key->eval(s);
    if (!k)
      return k;
    if (!k.get().is_string()) {
      return fail(error_kind::type, column,
                  "vars[...] needs a string, got " + std::string(kind_name(k.get())));
    }
    return read(s, sv(k.get().get_string()));
  }
  result read(const scope& s, std::string_view n) const {
    if (const auto* v = s.var(n))
      return result::ref(*v);
    return fail(error_kind::missing, column, "unknown name vars." + std::string(n));
  }
  std::string name;
  node_ptr key;  // `vars[expr]`
};

struct node_ref_node final : expr_node {
  using expr_node::expr_node;
  result eval(const scope& s) const override {
    if (!key)
      return read(s, id);
    auto k = key->eval(s);
    if (!k)
      return k;
    if (!k.get().is_string()) {
      return fail(error_kind::type, column,
                  "nodes[...] needs a string, got " + std::string(kind_name(k.get())));
    }
    return read(s, sv(k.get().get_string()));
  }
  result read(const scope& s, std::string_view n) const {
    if (const auto* v = s.node(n, field))
      return result::ref(*v);
    return fail(error_kind::missing, column, "nodes." + std::string(n) + " has no result yet");
  }
  std::string id;
  node_ptr key;  // `nodes[expr]`
  node_field field = node_field::output;
};

struct run_node final : expr_node {
  using expr_node::expr_node;
  result eval(const scope& s) const override {
    if (const auto* v = s.run(field))
      return result::ref(*v);
    return fail(error_kind::missing, column, "unknown name run." + field);
  }
  std::string field;
};

struct access_node final : expr_node {
  using expr_node::expr_node;
  result eval(const scope& s) const override {
    auto b = base->eval(s);
    if (!b)
      return b;
    const json::value* cur = &b.get();
    for (const auto& seg : segments) {
      auto r = step(*cur, seg, s);
      if (!r)
        return unexpected<eval_error>{std::move(r.error())};
      cur = *r;
    }
    if (b.borrowed())
      return result::ref(*cur);
    // The base is a temporary this node owns: move the part that was read out of it.
    return result::make(std::move(*const_cast<json::value*>(cur)));
  }
  node_ptr base;
  std::vector<segment> segments;
};

struct not_node final : expr_node {
  using expr_node::expr_node;
  result eval(const scope& s) const override {
    auto v = operand->eval(s);
    if (!v)
      return v;
    return result::make(!truthy(v.get()));
  }
  node_ptr operand;
};

result negate(const json::value& v, std::size_t column) {
  if (v.is_int64()) {
    std::int64_t r = 0;
    if (__builtin_sub_overflow(std::int64_t{0}, v.get_int64(), &r)) {
      return fail(error_kind::other, column, "integer overflow");
    }
    return result::make(r);
  }
  if (v.is_uint64()) {
    if (v.get_uint64() == static_cast<std::uint64_t>(1) << 63) {
      return result::make(std::numeric_limits<std::int64_t>::min());
    }
    return fail(error_kind::other, column, "integer overflow");
  }
  if (v.is_double())
    return result::make(-v.get_double());
  return fail(error_kind::type, column, "cannot negate " + std::string(kind_name(v)));
}

struct neg_node final : expr_node {
  using expr_node::expr_node;
  result eval(const scope& s) const override {
    auto v = operand->eval(s);
    if (!v)
      return v;
    return negate(v.get(), column);
  }
  node_ptr operand;
};

struct logic_node final : expr_node {
  logic_node(std::size_t col, bool is_and) : expr_node(col), and_(is_and) {}
  result eval(const scope& s) const override {
    auto a = lhs->eval(s);
    if (!a)
      return a;
    const bool ta = truthy(a.get());
    if (and_ ? !ta : ta)
      return result::make(ta);
    auto b = rhs->eval(s);
    if (!b)
      return b;
    return result::make(truthy(b.get()));
  }
  bool and_;
  node_ptr lhs, rhs;
};

struct cond_node final : expr_node {
  using expr_node::expr_node;
  result eval(const scope& s) const override {
    auto c = test->eval(s);
    if (!c)
      return c;
    return truthy(c.get()) ? yes->eval(s) : no->eval(s);
  }
  node_ptr test, yes, no;
};

enum class binop : std::uint8_t { add, sub, mul, div, mod, eq, ne, lt, le, gt, ge, in };

result add_values(result a, result b, std::size_t column) {
  const auto& x = a.get();
  const auto& y = b.get();
  if (x.is_number() && y.is_number())
    return arithmetic(arith::add, x, y, column);
  if (x.is_string() && y.is_string()) {
    json::string r;
    r.reserve(x.get_string().size() + y.get_string().size());
    r.append(sv(x.get_string()));
    r.append(sv(y.get_string()));
    return result::make(std::move(r));
  }
  if (x.is_array() && y.is_array()) {
    json::value r = std::move(a).take();
    auto& arr = r.get_array();
    const auto& tail = y.get_array();
    arr.reserve(arr.size() + tail.size());
    if (b.borrowed()) {
      for (const auto& e : tail)
        arr.push_back(e);
    } else {
      json::value t = std::move(b).take();
      for (auto& e : t.get_array())
        arr.push_back(std::move(e));
    }
    return result::make(std::move(r));
  }
  return fail(error_kind::type, column,
              "cannot add " + std::string(kind_name(x)) + " and " + std::string(kind_name(y)));
}

result in_values(const json::value& x, const json::value& c, std::size_t column, const char* what) {
  if (const auto* arr = c.if_array()) {
    for (const auto& e : *arr) {
      if (deep_equal(x, e))
        return result::make(true);
    }
    return result::make(false);
  }
  if (const auto* str = c.if_string()) {
    if (!x.is_string()) {
      return fail(error_kind::type, column,
                  std::string(what) + " a string needs a string, got " + std::string(kind_name(x)));
    }
    return result::make(sv(*str).find(sv(x.get_string())) != std::string_view::npos);
  }
  if (const auto* obj = c.if_object()) {
    if (!x.is_string()) {
      return fail(
          error_kind::type, column,
          std::string(what) + " an object needs a string key, got " + std::string(kind_name(x)));
    }
    return result::make(obj->contains(x.get_string()));
  }
  return fail(
      error_kind::type, column,
      std::string(what) + " needs an array, string or object, got " + std::string(kind_name(c)));
}

struct binary_node final : expr_node {
  binary_node(std::size_t col, binop o) : expr_node(col), op(o) {}
  result eval(const scope& s) const override {
    auto a = lhs->eval(s);
    if (!a)
      return a;
    auto b = rhs->eval(s);
    if (!b)
      return b;
    const auto& x = a.get();
    const auto& y = b.get();
    switch (op) {
      case binop::eq:
        return result::make(deep_equal(x, y));
      case binop::ne:
        return result::make(!deep_equal(x, y));
      case binop::lt:
      case binop::le:
      case binop::gt:
      case binop::ge:
        return compare(x, y);
      case binop::in:
        return in_values(x, y, column, "'in'");
      case binop::add:
        return add_values(std::move(a), std::move(b), column);
      case binop::sub:
      case binop::mul:
      case binop::div:
      case binop::mod: {
        const auto o = op == binop::sub   ? arith::sub
                       : op == binop::mul ? arith::mul
                       : op == binop::div ? arith::div
                                          : arith::mod;
        if (!x.is_number() || !y.is_number()) {
          return fail(error_kind::type, column,
                      std::string("cannot apply '") + arith_symbol(o) + "' to " +
                          std::string(kind_name(x)) + " and " + std::string(kind_name(y)));
        }
        return arithmetic(o, x, y, column);
      }
    }
    return fail(error_kind::other, column, "unknown operator");
  }

  result compare(const json::value& x, const json::value& y) const {
    std::partial_ordering o = std::partial_ordering::unordered;
    if (x.is_number() && y.is_number()) {
      o = compare_numbers(x, y);
    } else if (x.is_string() && y.is_string()) {
      o = sv(x.get_string()).compare(sv(y.get_string())) <=> 0;
    } else {
      return fail(
          error_kind::type, column,
          "cannot compare " + std::string(kind_name(x)) + " and " + std::string(kind_name(y)));
    }
    bool r = false;
    switch (op) {
      case binop::lt:
        r = o < 0;
        break;
      case binop::le:
        r = o <= 0;
        break;
      case binop::gt:
        r = o > 0;
        break;
      default:
        r = o >= 0;
        break;
    }
    return result::make(r);
  }

  binop op;
  node_ptr lhs, rhs;
};

// ---- functions ------------------------------------------------------------------------------

enum class fn : std::uint8_t {
  len,
  keys,
  values,
  default_,
  str,
  int_,
  float_,
  bool_,
  join,
  split,
  range,
  contains,
  upper,
  lower,
  trim,
  json,
  parse_json,
  min,
  max,
  sum
};

struct fn_info {
  std::string_view name;
  fn id;
  std::size_t min_args;
  std::size_t max_args;
};

constexpr std::size_t variadic = std::numeric_limits<std::size_t>::max();

constexpr std::array<fn_info, 20> functions{{
    {"len", fn::len, 1, 1},
    {"keys", fn::keys, 1, 1},
    {"values", fn::values, 1, 1},
    {"default", fn::default_, 2, 2},
    {"str", fn::str, 1, 1},
    {"int", fn::int_, 1, 1},
    {"float", fn::float_, 1, 1},
    {"bool", fn::bool_, 1, 1},
    {"join", fn::join, 2, 2},
    {"split", fn::split, 2, 2},
    {"range", fn::range, 1, 3},
    {"contains", fn::contains, 2, 2},
    {"upper", fn::upper, 1, 1},
    {"lower", fn::lower, 1, 1},
    {"trim", fn::trim, 1, 1},
    {"json", fn::json, 1, 1},
    {"parse_json", fn::parse_json, 1, 1},
    {"min", fn::min, 1, variadic},
    {"max", fn::max, 1, variadic},
    {"sum", fn::sum, 1, 1},
}};

const fn_info* find_function(std::string_view name) {
  for (const auto& f : functions) {
    if (f.name == name)
      return &f;
  }
  return nullptr;
}

constexpr std::string_view whitespace = " \t\n\r\f\v";

std::string_view trim_view(std::string_view s) {
  const auto b = s.find_first_not_of(whitespace);
  if (b == std::string_view::npos)
    return {};
  const auto e = s.find_last_not_of(whitespace);
  return s.substr(b, e - b + 1);
}

std::optional<double> parse_double(std::string_view t) {
  double d = 0;
  auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), d);
  if (ec != std::errc() || p != t.data() + t.size() || !std::isfinite(d) || t.empty()) {
    return std::nullopt;
  }
  return d;
}

struct call_node final : expr_node {
  call_node(std::size_t col, const fn_info& f) : expr_node(col), info(f) {}

  result type_error(std::string_view needs, const json::value& got) const {
    return fail(error_kind::type, column,
                std::string(info.name) + " needs " + std::string(needs) + ", got " +
                    std::string(kind_name(got)));
  }
  result error(std::string msg) const {
    return fail(error_kind::other, column, std::string(info.name) + ": " + msg);
  }

  result eval(const scope& s) const override {
    if (info.id == fn::default_) {
      auto a = args[0]->eval(s);
      if (a) {
        if (!a.get().is_null())
          return a;
      } else if (a.error().kind != error_kind::missing) {
        return a;
      }
      return args[1]->eval(s);
    }
    if (info.id == fn::min || info.id == fn::max)
      return extreme(s);
    if (info.id == fn::range)
      return range(s);

    auto a = args[0]->eval(s);
    if (!a)
      return a;
    const json::value& x = a.get();
    if (args.size() == 1)
      return unary(std::move(a));

    auto b = args[1]->eval(s);
    if (!b)
      return b;
    const json::value& y = b.get();
    switch (info.id) {
      case fn::join: {
        if (!x.is_array())
          return type_error("an array", x);
        if (!y.is_string())
          return type_error("a string separator", y);
        std::string out;
        bool first = true;
        for (const auto& e : x.get_array()) {
          if (!first)
            out += sv(y.get_string());
          first = false;
          append_text(out, e);
        }
        return result::make(json::string(out));
      }
      case fn::split: {
        if (!x.is_string())
          return type_error("a string", x);
        if (!y.is_string())
          return type_error("a string separator", y);
        const auto str = sv(x.get_string());
        const auto sep = sv(y.get_string());
        if (sep.empty())
          return error("empty separator");
        json::array out;
        std::size_t from = 0;
        for (;;) {
          const auto at = str.find(sep, from);
          if (at == std::string_view::npos)
            break;
          out.emplace_back(str.substr(from, at - from));
          from = at + sep.size();
        }
        out.emplace_back(str.substr(from));
        return result::make(std::move(out));
      }
      case fn::contains:
        return in_values(y, x, column, "contains");
      default:
        return error("unknown function");
    }
  }

  result unary(result a) const {
    const json::value& x = a.get();
    switch (info.id) {
      case fn::len:
        if (const auto* str = x.if_string()) {
          std::int64_t n = 0;
          for (char c : *str)
            n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
          return result::make(n);
        }
        if (const auto* arr = x.if_array()) {
          return result::make(static_cast<std::int64_t>(arr->size()));
        }
        if (const auto* obj = x.if_object()) {
          return result::make(static_cast<std::int64_t>(obj->size()));
        }
        return type_error("a string, array or object", x);
      case fn::keys:
      case fn::values: {
        const auto* obj = x.if_object();
        if (!obj)
          return type_error("an object", x);
        json::array out;
        out.reserve(obj->size());
        for (const auto& kv : *obj) {
          if (info.id == fn::keys) {
            out.emplace_back(kv.key());
          } else {
            out.push_back(kv.value());
          }
        }
        return result::make(std::move(out));
      }
      case fn::str:
        if (x.is_string())
          return a;
        return result::make(text_value(x));
      case fn::json: {
        std::string out;
        append_json(out, x);
        return result::make(json::string(out));
      }
      case fn::int_:
        return to_int(x);
      case fn::float_:
        if (x.is_number())
          return result::make(as_double(x));
        if (x.is_bool())
          return result::make(x.get_bool() ? 1.0 : 0.0);
        if (const auto* str = x.if_string()) {
          if (auto d = parse_double(trim_view(sv(*str))))
            return result::make(*d);
          return error("cannot convert string " + quoted(sv(*str)) + " to a number");
        }
        return type_error("a number, string or boolean", x);
      case fn::bool_:
        if (const auto* str = x.if_string()) {
          if (*str == "true")
            return result::make(true);
          if (*str == "false")
            return result::make(false);
        }
        return result::make(truthy(x));
      case fn::upper:
      case fn::lower: {
        const auto* str = x.if_string();
        if (!str)
          return type_error("a string", x);
        json::string out(*str);
        for (auto& c : out) {
          if (info.id == fn::upper && c >= 'a' && c <= 'z')
            c = static_cast<char>(c - 'a' + 'A');
          if (info.id == fn::lower && c >= 'A' && c <= 'Z')
            c = static_cast<char>(c - 'A' + 'a');
        }
        return result::make(std::move(out));
      }
      case fn::trim: {
        const auto* str = x.if_string();
        if (!str)
          return type_error("a string", x);
        return result::make(trim_view(sv(*str)));
      }
      case fn::parse_json: {
        const auto* str = x.if_string();
        if (!str)
          return type_error("a string", x);
        boost::system::error_code ec;
        json::value v = json::parse(sv(*str), ec);
        if (ec)
          return error("invalid JSON: " + ec.message());
        return result::make(std::move(v));
      }
      case fn::sum: {
        const auto* arr = x.if_array();
        if (!arr)
          return type_error("an array of numbers", x);
        std::int64_t isum = 0;
        double dsum = 0;
        bool ints = true;
        for (const auto& e : *arr) {
          if (!e.is_number())
            return type_error("an array of numbers", e);
          if (ints) {
            std::int64_t i = 0;
            if (is_integer(e) && integral_value(e, i)) {
              if (__builtin_add_overflow(isum, i, &isum)) {
                return fail(error_kind::other, column, "integer overflow");
              }
              continue;
            }
            ints = false;
            dsum = static_cast<double>(isum);
          }
          dsum += as_double(e);
        }
        if (ints)
          return result::make(isum);
        return finite(dsum, column);
      }
      default:
        return error("unknown function");
    }
  }

  result to_int(const json::value& x) const {
    if (x.is_int64())
      return result::make(x.get_int64());
    if (x.is_bool())
      return result::make(std::int64_t{x.get_bool() ? 1 : 0});
    double d = 0;
    if (x.is_uint64()) {
      std::int64_t i = 0;
      if (integral_value(x, i))
        return result::make(i);
      return error("integer overflow");
    } else if (x.is_double()) {
      d = x.get_double();
    } else if (const auto* str = x.if_string()) {
      const auto t = trim_view(sv(*str));
      std::int64_t i = 0;
      auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), i);
      if (ec == std::errc() && p == t.data() + t.size() && !t.empty()) {
        return result::make(i);
      }
      auto parsed = parse_double(t);
      if (!parsed)
        return error("cannot convert string " + quoted(sv(*str)) + " to an integer");
      d = *parsed;
    } else {
      return type_error("a number, string or boolean", x);
    }
    d = std::trunc(d);
    if (!(d >= -two_63 && d < two_63))
      return error("integer overflow");
    return result::make(static_cast<std::int64_t>(d));
  }

  result range(const scope& s) const {
    std::array<std::int64_t, 3> n{0, 0, 1};
    for (std::size_t i = 0; i < args.size(); ++i) {
      auto v = args[i]->eval(s);
      if (!v)
        return v;
      if (!integral_value(v.get(), n[i]))
        return type_error("integers", v.get());
    }
    std::int64_t start = 0, stop = n[0], step = 1;
    if (args.size() >= 2) {
      start = n[0];
      stop = n[1];
      step = n[2];
    }
    if (step == 0)
      return error("step must not be 0");
    const auto ustep = step > 0 ? static_cast<std::uint64_t>(step)
                                : std::uint64_t{0} - static_cast<std::uint64_t>(step);
    std::uint64_t count = 0;
    if (step > 0 && start < stop) {
      count =
          (static_cast<std::uint64_t>(stop) - static_cast<std::uint64_t>(start) - 1) / ustep + 1;
    } else if (step < 0 && start > stop) {
      count =
          (static_cast<std::uint64_t>(start) - static_cast<std::uint64_t>(stop) - 1) / ustep + 1;
    }
    if (count > max_range) {
      return error(std::to_string(count) + " elements exceed the limit of " +
                   std::to_string(max_range));
    }
    json::array out;
    out.reserve(count);
    std::int64_t v = start;
    for (std::uint64_t k = 0; k < count; ++k) {
      out.emplace_back(v);
      if (k + 1 < count)
        v += step;  // stays between start and stop: no overflow
    }
    return result::make(std::move(out));
  }

  result extreme(const scope& s) const {
    const bool want_min = info.id == fn::min;
    auto better = [&](const json::value& c, const json::value& best) {
      const auto o = compare_numbers(c, best);
      return want_min ? o < 0 : o > 0;
    };
    if (args.size() == 1) {
      auto a = args[0]->eval(s);
      if (!a)
        return a;
      const auto* arr = a.get().if_array();
      if (!arr)
        return type_error("an array or two or more numbers", a.get());
      if (arr->empty())
        return error("empty array");
      const json::value* best = nullptr;
      for (const auto& e : *arr) {
        if (!e.is_number())
          return type_error("numbers", e);
        if (!best || better(e, *best))
          best = &e;
      }
      if (a.borrowed())
        return result::ref(*best);
      return result::make(*best);
    }
    result best = args[0]->eval(s);
    if (!best)
      return best;
    if (!best.get().is_number())
      return type_error("numbers", best.get());
    for (std::size_t i = 1; i < args.size(); ++i) {
      auto v = args[i]->eval(s);
      if (!v)
        return v;
      if (!v.get().is_number())
        return type_error("numbers", v.get());
      if (better(v.get(), best.get()))
        best = std::move(v);
    }
    return best;
  }

  const fn_info& info;
  std::vector<node_ptr> args;
};

// ---- parser ---------------------------------------------------------------------------------

enum class tk : std::uint8_t {
  end,
  error,
  number,
  string,
  ident,
  lparen,
  rparen,
  lbracket,
  rbracket,
  lbrace,
  rbrace,
  comma,
  colon,
  dot,
  question,
  plus,
  minus,
  star,
  slash,
  percent,
  bang,
  eq,
  ne,
  lt,
  le,
  gt,
  ge,
  and_,
  or_
};

struct token {
  tk kind = tk::end;
  std::size_t pos = 0;  // byte offset in the expression source
  std::string_view text;
  std::string str;  // decoded string literal
  bool is_int = false;
  std::int64_t i = 0;
  double d = 0;
};

bool is_ident_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_ident_char(char c) {
  return is_ident_start(c) || is_digit(c);
}

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class parser {
 public:
  parser(std::string_view src, std::size_t offset) : src_(src), offset_(offset) {}

  expected<node_ptr, expr_error> run() {
    advance();
    node_ptr root;
    if (tok_.kind == tk::end) {
      error_at(tok_.pos, "empty expression");
    } else {
      root = parse_expr();
      if (root && tok_.kind != tk::end)
        unexpected_token();
    }
    if (error_)
      return unexpected<expr_error>{std::move(*error_)};
    return root;
  }

 private:
  std::size_t col(std::size_t pos) const { return offset_ + pos + 1; }

  node_ptr error_at(std::size_t pos, std::string msg) {
    if (!error_)
      error_ = expr_error{std::move(msg), col(pos)};
    tok_.kind = tk::error;  // stops every loop that is still consuming tokens
    return nullptr;
  }

  std::string describe(const token& t) const {
    switch (t.kind) {
      case tk::end:
        return "end of expression";
      case tk::number:
        return "number " + std::string(t.text);
      case tk::string:
        return "string " + std::string(t.text);
      case tk::ident:
        return "name '" + std::string(t.text) + "'";
      default:
        return "'" + std::string(t.text) + "'";
    }
  }

  node_ptr unexpected_token() {
    if (tok_.kind == tk::error)
      return nullptr;
    return error_at(tok_.pos, "unexpected " + describe(tok_));
  }

  bool expect(tk kind, std::string_view what) {
    if (tok_.kind == kind) {
      advance();
      return true;
    }
    if (tok_.kind != tk::error) {
      error_at(tok_.pos, "expected " + std::string(what) + ", found " + describe(tok_));
    }
    return false;
  }

  // ---- lexer

  void advance() {
    if (tok_.kind == tk::error)
      return;
    while (i_ < src_.size() &&
           (src_[i_] == ' ' || src_[i_] == '\t' || src_[i_] == '\n' || src_[i_] == '\r')) {
      ++i_;
    }
    tok_.pos = i_;
    if (i_ >= src_.size()) {
      tok_.kind = tk::end;
      tok_.text = {};
      return;
    }
    const char c = src_[i_];
    if (is_digit(c))
      return lex_number();
    if (is_ident_start(c)) {
      std::size_t j = i_ + 1;
      while (j < src_.size() && is_ident_char(src_[j]))
        ++j;
      set(tk::ident, j - i_);
      return;
    }
    if (c == '\'' || c == '"')
      return lex_string(c);
    const char n = i_ + 1 < src_.size() ? src_[i_ + 1] : '\0';
    switch (c) {
      case '(':
        return set(tk::lparen, 1);
      case ')':
        return set(tk::rparen, 1);
      case '[':
        return set(tk::lbracket, 1);
      case ']':
        return set(tk::rbracket, 1);
      case '{':
        return set(tk::lbrace, 1);
      case '}':
        return set(tk::rbrace, 1);
      case ',':
        return set(tk::comma, 1);
      case ':':
        return set(tk::colon, 1);
      case '.':
        return set(tk::dot, 1);
      case '?':
        return set(tk::question, 1);
      case '+':
        return set(tk::plus, 1);
      case '-':
        return set(tk::minus, 1);
      case '*':
        return set(tk::star, 1);
      case '/':
        return set(tk::slash, 1);
      case '%':
        return set(tk::percent, 1);
      case '!':
        return n == '=' ? set(tk::ne, 2) : set(tk::bang, 1);
      case '<':
        return n == '=' ? set(tk::le, 2) : set(tk::lt, 1);
      case '>':
        return n == '=' ? set(tk::ge, 2) : set(tk::gt, 1);
      case '=':
        if (n == '=')
          return set(tk::eq, 2);
        error_at(i_, "unexpected '=' (compare with '==')");
        return;
      case '&':
        if (n == '&')
          return set(tk::and_, 2);
        error_at(i_, "unexpected '&' (use '&&')");
        return;
      case '|':
        if (n == '|')
          return set(tk::or_, 2);
        error_at(i_, "unexpected '|' (use '||')");
        return;
      default:
        break;
    }
    if (static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f) {
      error_at(i_, std::string("unexpected character '") + c + "'");
    } else {
      error_at(i_, "unexpected byte " + std::to_string(static_cast<unsigned char>(c)));
    }
  }

  void set(tk kind, std::size_t len) {
    tok_.kind = kind;
    tok_.text = src_.substr(i_, len);
    i_ += len;
  }

  void lex_number() {
    std::size_t j = i_;
    while (j < src_.size() && is_digit(src_[j]))
      ++j;
    bool is_int = true;
    if (j < src_.size() && src_[j] == '.') {
      is_int = false;
      ++j;
      if (j >= src_.size() || !is_digit(src_[j])) {
        error_at(j, "expected a digit after '.'");
        return;
      }
      while (j < src_.size() && is_digit(src_[j]))
        ++j;
    }
    if (j < src_.size() && (src_[j] == 'e' || src_[j] == 'E')) {
      is_int = false;
      ++j;
      if (j < src_.size() && (src_[j] == '+' || src_[j] == '-'))
        ++j;
      if (j >= src_.size() || !is_digit(src_[j])) {
        error_at(j, "expected a digit in the exponent");
        return;
      }
      while (j < src_.size() && is_digit(src_[j]))
        ++j;
    }
    const char* b = src_.data() + i_;
    const char* e = src_.data() + j;
    tok_.is_int = is_int;
    if (is_int) {
      auto [p, ec] = std::from_chars(b, e, tok_.i);
      if (ec != std::errc() || p != e) {
        error_at(i_, "integer literal out of range");
        return;
      }
    } else {
      auto [p, ec] = std::from_chars(b, e, tok_.d);
      if (ec != std::errc() || p != e || !std::isfinite(tok_.d)) {
        error_at(i_, "number literal out of range");
        return;
      }
    }
    set(tk::number, j - i_);
  }

  bool hex4(std::size_t at, std::uint32_t& out) {
    if (at + 4 > src_.size())
      return false;
    out = 0;
    for (std::size_t k = at; k < at + 4; ++k) {
      const char c = src_[k];
      out <<= 4;
      if (is_digit(c)) {
        out |= static_cast<std::uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        out |= static_cast<std::uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        out |= static_cast<std::uint32_t>(c - 'A' + 10);
      } else {
        return false;
      }
    }
    return true;
  }

  void lex_string(char quote) {
    tok_.str.clear();
    std::size_t j = i_ + 1;
    for (;;) {
      if (j >= src_.size()) {
        error_at(i_, "unterminated string");
        return;
      }
      const char c = src_[j];
      if (c == quote)
        break;
      if (c != '\\') {
        tok_.str += c;
        ++j;
        continue;
      }
      if (j + 1 >= src_.size()) {
        error_at(i_, "unterminated string");
        return;
      }
      const char e = src_[j + 1];
      switch (e) {
        case 'n':
          tok_.str += '\n';
          break;
        case 't':
          tok_.str += '\t';
          break;
        case 'r':
          tok_.str += '\r';
          break;
        case 'b':
          tok_.str += '\b';
          break;
        case 'f':
          tok_.str += '\f';
          break;
        case '\\':
        case '\'':
        case '"':
        case '/':
          tok_.str += e;
          break;
        case 'u': {
          std::uint32_t cp = 0;
          if (!hex4(j + 2, cp)) {
            error_at(j, "\\u needs four hex digits");
            return;
          }
          std::size_t len = 6;
          if (cp >= 0xDC00 && cp <= 0xDFFF) {
            error_at(j, "unpaired surrogate in \\u escape");
            return;
          }
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            std::uint32_t lo = 0;
            if (j + 7 >= src_.size() || src_[j + 6] != '\\' || src_[j + 7] != 'u' ||
                !hex4(j + 8, lo) || lo < 0xDC00 || lo > 0xDFFF) {
              error_at(j, "unpaired surrogate in \\u escape");
              return;
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            len = 12;
          }
          append_utf8(tok_.str, cp);
          j += len;
          continue;
        }
        default:
          error_at(j, std::string("unknown escape '\\") + e + "'");
          return;
      }
      j += 2;
    }
    set(tk::string, j + 1 - i_);
  }

  // ---- grammar

  struct depth_guard {
    explicit depth_guard(std::size_t& d) : depth(d) { ++depth; }
    ~depth_guard() { --depth; }
    std::size_t& depth;
  };

  bool too_deep() {
    if (depth_ <= max_nesting)
      return false;
    error_at(tok_.pos, "expression nested too deeply");
    return true;
  }

  node_ptr parse_expr() {
    depth_guard g(depth_);
    if (too_deep())
      return nullptr;
    return parse_cond();
  }

  node_ptr parse_cond() {
    auto test = parse_or();
    if (!test || tok_.kind != tk::question)
      return test;
    auto n = std::make_unique<cond_node>(col(tok_.pos));
    advance();
    n->test = std::move(test);
    n->yes = parse_expr();
    if (!n->yes || !expect(tk::colon, "':'"))
      return nullptr;
    n->no = parse_expr();
    if (!n->no)
      return nullptr;
    return n;
  }

  node_ptr parse_or() {
    auto lhs = parse_and();
    while (lhs && tok_.kind == tk::or_) {
      auto n = std::make_unique<logic_node>(col(tok_.pos), false);
      advance();
      n->lhs = std::move(lhs);
      n->rhs = parse_and();
      if (!n->rhs)
        return nullptr;
      lhs = std::move(n);
    }
    return lhs;
  }

  node_ptr parse_and() {
    auto lhs = parse_eq();
    while (lhs && tok_.kind == tk::and_) {
      auto n = std::make_unique<logic_node>(col(tok_.pos), true);
      advance();
      n->lhs = std::move(lhs);
      n->rhs = parse_eq();
      if (!n->rhs)
        return nullptr;
      lhs = std::move(n);
    }
    return lhs;
  }

  template <class Next>
  node_ptr binary_level(Next next, std::optional<binop> (*match)(const token&)) {
    auto lhs = (this->*next)();
    while (lhs) {
      const auto op = match(tok_);
      if (!op)
        break;
      auto n = std::make_unique<binary_node>(col(tok_.pos), *op);
      advance();
      n->lhs = std::move(lhs);
      n->rhs = (this->*next)();
      if (!n->rhs)
        return nullptr;
      lhs = std::move(n);
    }
    return lhs;
  }

  static std::optional<binop> match_eq(const token& t) {
    if (t.kind == tk::eq)
      return binop::eq;
    if (t.kind == tk::ne)
      return binop::ne;
    return std::nullopt;
  }
  static std::optional<binop> match_rel(const token& t) {
    switch (t.kind) {
      case tk::lt:
        return binop::lt;
      case tk::le:
        return binop::le;
      case tk::gt:
        return binop::gt;
      case tk::ge:
        return binop::ge;
      default:
        return std::nullopt;
    }
  }
  static std::optional<binop> match_in(const token& t) {
    if (t.kind == tk::ident && t.text == "in")
      return binop::in;
    return std::nullopt;
  }
  static std::optional<binop> match_add(const token& t) {
    if (t.kind == tk::plus)
      return binop::add;
    if (t.kind == tk::minus)
      return binop::sub;
    return std::nullopt;
  }
  static std::optional<binop> match_mul(const token& t) {
    if (t.kind == tk::star)
      return binop::mul;
    if (t.kind == tk::slash)
      return binop::div;
    if (t.kind == tk::percent)
      return binop::mod;
    return std::nullopt;
  }

  node_ptr parse_eq() { return binary_level(&parser::parse_rel, &parser::match_eq); }
  node_ptr parse_rel() { return binary_level(&parser::parse_in, &parser::match_rel); }
  node_ptr parse_in() { return binary_level(&parser::parse_add, &parser::match_in); }
  node_ptr parse_add() { return binary_level(&parser::parse_mul, &parser::match_add); }
  node_ptr parse_mul() { return binary_level(&parser::parse_unary, &parser::match_mul); }

  node_ptr parse_unary() {
    if (tok_.kind != tk::bang && tok_.kind != tk::minus)
      return parse_postfix();
    depth_guard g(depth_);
    if (too_deep())
      return nullptr;
    const bool is_not = tok_.kind == tk::bang;
    const auto column = col(tok_.pos);
    advance();
    auto operand = parse_unary();
    if (!operand)
      return nullptr;
    if (is_not) {
      auto n = std::make_unique<not_node>(column);
      n->operand = std::move(operand);
      return n;
    }
    if (const auto* lit = operand->literal(); lit && lit->is_number()) {
      auto folded = negate(*lit, column);
      if (!folded)
        return error_at(column - offset_ - 1, folded.error().message);
      return std::make_unique<literal_node>(column, std::move(folded).take());
    }
    auto n = std::make_unique<neg_node>(column);
    n->operand = std::move(operand);
    return n;
  }

  node_ptr parse_postfix() {
    const char* label = nullptr;
    auto base = parse_primary(label);
    if (!base)
      return nullptr;
    return parse_segments(std::move(base), label);
  }

  // Parses `.name` / `[expr]` segments after `base`, if any.
  node_ptr parse_segments(node_ptr base, const char* label) {
    std::vector<segment> segs;
    while (tok_.kind == tk::dot || tok_.kind == tk::lbracket) {
      segment seg;
      if (!parse_segment(seg))
        return nullptr;
      if (segs.empty())
        seg.root_label = label;
      segs.push_back(std::move(seg));
    }
    if (segs.empty())
      return base;
    auto n = std::make_unique<access_node>(base->column);
    n->base = std::move(base);
    n->segments = std::move(segs);
    return n;
  }

  bool parse_segment(segment& seg) {
    if (tok_.kind == tk::dot) {
      advance();
      if (tok_.kind != tk::ident) {
        if (tok_.kind != tk::error) {
          error_at(tok_.pos, "expected a name after '.', found " + describe(tok_));
        }
        return false;
      }
      seg.k = segment::kind::key;
      seg.key = std::string(tok_.text);
      seg.column = col(tok_.pos);
      advance();
      return true;
    }
    seg.column = col(tok_.pos);
    advance();
    auto e = parse_expr();
    if (!e || !expect(tk::rbracket, "']'"))
      return false;
    const auto* lit = e->literal();
    if (lit && lit->is_string()) {
      seg.k = segment::kind::key;
      seg.key = std::string(sv(lit->get_string()));
    } else if (lit && lit->is_int64()) {
      seg.k = segment::kind::index;
      seg.index = lit->get_int64();
    } else {
      seg.k = segment::kind::dynamic;
      seg.expr = std::move(e);
    }
    return true;
  }

  // `.name` or `["name"]` after a root that needs a static member; empty on error.
  std::optional<std::string> static_member(std::size_t& column, std::string_view usage) {
    if (tok_.kind == tk::dot || tok_.kind == tk::lbracket) {
      const auto at = tok_.pos;
      segment seg;
      if (!parse_segment(seg))
        return std::nullopt;
      if (seg.k == segment::kind::key) {
        column = seg.column;
        return seg.key;
      }
      error_at(at, "expected " + std::string(usage));
      return std::nullopt;
    }
    unexpected_or(usage);
    return std::nullopt;
  }

  void unexpected_or(std::string_view usage) {
    if (tok_.kind != tk::error) {
      error_at(tok_.pos, "expected " + std::string(usage) + ", found " + describe(tok_));
    }
  }

  node_ptr parse_primary(const char*& label) {
    const auto column = col(tok_.pos);
    switch (tok_.kind) {
      case tk::number: {
        json::value v = tok_.is_int ? json::value(tok_.i) : json::value(tok_.d);
        advance();
        return std::make_unique<literal_node>(column, std::move(v));
      }
      case tk::string: {
        json::value v(json::string(tok_.str));
        advance();
        return std::make_unique<literal_node>(column, std::move(v));
      }
      case tk::lparen: {
        advance();
        auto e = parse_expr();
        if (!e || !expect(tk::rparen, "')'"))
          return nullptr;
        return e;
      }
      case tk::lbracket:
        return parse_array();
      case tk::lbrace:
        return parse_object();
      case tk::ident:
        return parse_name(label);
      default:
        return unexpected_token();
    }
  }

  node_ptr parse_array() {
    auto n = std::make_unique<array_node>(col(tok_.pos));
    advance();
    if (tok_.kind != tk::rbracket) {
      for (;;) {
        auto e = parse_expr();
        if (!e)
          return nullptr;
        n->items.push_back(std::move(e));
        if (tok_.kind == tk::comma) {
          advance();
          continue;
        }
        if (!expect(tk::rbracket, "',' or ']'"))
          return nullptr;
        break;
      }
    } else {
      advance();
    }
    bool constant = true;
    for (const auto& e : n->items)
      constant = constant && e->literal();
    if (!constant)
      return n;
    json::array folded;
    folded.reserve(n->items.size());
    for (const auto& e : n->items)
      folded.push_back(*e->literal());
    return std::make_unique<literal_node>(n->column, json::value(std::move(folded)));
  }

  node_ptr parse_object() {
    auto n = std::make_unique<object_node>(col(tok_.pos));
    advance();
    if (tok_.kind != tk::rbrace) {
      for (;;) {
        std::string key;
        if (tok_.kind == tk::string) {
          key = tok_.str;
        } else if (tok_.kind == tk::ident) {
          key = std::string(tok_.text);
        } else {
          unexpected_or("a key (a string or a name)");
          return nullptr;
        }
        for (const auto& m : n->members) {
          if (m.first == key)
            return error_at(tok_.pos, "duplicate key " + quoted(key));
        }
        advance();
        if (!expect(tk::colon, "':'"))
          return nullptr;
        auto e = parse_expr();
        if (!e)
          return nullptr;
        n->members.emplace_back(std::move(key), std::move(e));
        if (tok_.kind == tk::comma) {
          advance();
          continue;
        }
        if (!expect(tk::rbrace, "',' or '}'"))
          return nullptr;
        break;
      }
    } else {
      advance();
    }
    bool constant = true;
    for (const auto& m : n->members)
      constant = constant && m.second->literal();
    if (!constant)
      return n;
    json::object folded;
    folded.reserve(n->members.size());
    for (const auto& m : n->members)
      folded.emplace(m.first, *m.second->literal());
    return std::make_unique<literal_node>(n->column, json::value(std::move(folded)));
  }

  node_ptr parse_name(const char*& label) {
    const auto pos = tok_.pos;
    const auto column = col(pos);
    const std::string_view name = tok_.text;
    advance();
    if (tok_.kind == tk::lparen)
      return parse_call(name, pos);
    if (name == "null")
      return std::make_unique<literal_node>(column, json::value(nullptr));
    if (name == "true")
      return std::make_unique<literal_node>(column, json::value(true));
    if (name == "false")
      return std::make_unique<literal_node>(column, json::value(false));
    if (name == "inputs") {
      label = "inputs";
      return std::make_unique<inputs_node>(column);
    }
    if (name == "item")
      return std::make_unique<bound_node>(column, bound_node::which::item);
    if (name == "index")
      return std::make_unique<bound_node>(column, bound_node::which::index);
    if (name == "output")
      return std::make_unique<bound_node>(column, bound_node::which::output);
    if (name == "vars")
      return parse_vars();
    if (name == "nodes")
      return parse_nodes();
    if (name == "run")
      return parse_run();
    if (name == "in")
      return error_at(pos, "unexpected 'in'");
    return error_at(pos, "unknown name '" + std::string(name) + "'");
  }

  node_ptr parse_vars() {
    if (tok_.kind != tk::dot && tok_.kind != tk::lbracket) {
      unexpected_or("a name after 'vars' (vars.x)");
      return nullptr;
    }
    segment seg;
    if (!parse_segment(seg))
      return nullptr;
    auto n = std::make_unique<var_node>(seg.column);
    switch (seg.k) {
      case segment::kind::key:
        n->name = std::move(seg.key);
        break;
      case segment::kind::index:
        return error_at(seg.column - offset_ - 1, "vars[...] needs a string");
      case segment::kind::dynamic:
        n->key = std::move(seg.expr);
        break;
    }
    return n;
  }

  node_ptr parse_nodes() {
    if (tok_.kind != tk::dot && tok_.kind != tk::lbracket) {
      unexpected_or("a node id after 'nodes' (nodes.<id>.output)");
      return nullptr;
    }
    segment seg;
    if (!parse_segment(seg))
      return nullptr;
    auto n = std::make_unique<node_ref_node>(seg.column);
    std::string shown = "<id>";
    switch (seg.k) {
      case segment::kind::key:
        n->id = std::move(seg.key);
        shown = n->id;
        break;
      case segment::kind::index:
        return error_at(seg.column - offset_ - 1, "nodes[...] needs a string");
      case segment::kind::dynamic:
        n->key = std::move(seg.expr);
        break;
    }
    std::size_t field_column = 0;
    const std::string usage = ".output, .status or .error after nodes." + shown;
    auto field = static_member(field_column, usage);
    if (!field)
      return nullptr;
    if (*field == "output") {
      n->field = node_field::output;
    } else if (*field == "status") {
      n->field = node_field::status;
    } else if (*field == "error") {
      n->field = node_field::error;
    } else {
      return error_at(field_column - offset_ - 1,
                      "unknown node field " + quoted(*field) + " (output, status or error)");
    }
    return n;
  }

  node_ptr parse_run() {
    std::size_t column = 0;
    auto field = static_member(column, "run.id or run.workflow");
    if (!field)
      return nullptr;
    if (*field != "id" && *field != "workflow") {
      return error_at(column - offset_ - 1,
                      "unknown name run." + *field + " (run.id or run.workflow)");
    }
    auto n = std::make_unique<run_node>(column);
    n->field = std::move(*field);
    return n;
  }

  node_ptr parse_call(std::string_view name, std::size_t pos) {
    const auto* info = find_function(name);
    if (!info)
      return error_at(pos, "unknown function '" + std::string(name) + "'");
    auto n = std::make_unique<call_node>(col(pos), *info);
    advance();  // '('
    if (tok_.kind != tk::rparen) {
      for (;;) {
        auto e = parse_expr();
        if (!e)
          return nullptr;
        n->args.push_back(std::move(e));
        if (tok_.kind == tk::comma) {
          advance();
          continue;
        }
        if (!expect(tk::rparen, "',' or ')'"))
          return nullptr;
        break;
      }
    } else {
      advance();
    }
    const auto count = n->args.size();
    if (count < info->min_args || count > info->max_args) {
      std::string expected_count;
      if (info->max_args == variadic) {
        expected_count = "at least " + std::to_string(info->min_args);
      } else if (info->min_args == info->max_args) {
        expected_count = std::to_string(info->min_args);
      } else {
        expected_count = std::to_string(info->min_args) + " to " + std::to_string(info->max_args);
      }
      return error_at(pos, std::string(name) + " takes " + expected_count + " argument" +
                               (info->max_args == 1 ? "" : "s") + ", got " + std::to_string(count));
    }
    return n;
  }

  std::string_view src_;
  std::size_t offset_;
  std::size_t i_ = 0;
  std::size_t depth_ = 0;
  token tok_;
  std::optional<expr_error> error_;
};

expected<std::shared_ptr<const expr_node>, expr_error> parse_tree(std::string_view source,
                                                                  std::size_t offset) {
  auto r = parser(source, offset).run();
  if (!r)
    return unexpected<expr_error>{std::move(r.error())};
  return std::shared_ptr<const expr_node>(std::move(*r));
}

expr_error public_error(eval_error e) {
  return expr_error{std::move(e.message), e.column};
}

expr_error internal_error(const std::exception& e) {
  return expr_error{std::string("internal error: ") + e.what(), 0};
}

// ---- templates ------------------------------------------------------------------------------

using tnode_ptr = std::unique_ptr<const template_node>;

struct const_tnode final : template_node {
  explicit const_tnode(const json::value& v) : value(&v) {}
  expected<json::value, template_error> render(const scope&) const override { return *value; }
  const json::value* value;  // into the template_value's source
};

struct typed_tnode final : template_node {
  expected<json::value, template_error> render(const scope& s) const override {
    auto r = expr->eval(s);
    if (!r)
      return unexpected<template_error>{{pointer, public_error(std::move(r.error()))}};
    return std::move(r).take();
  }
  std::shared_ptr<const expr_node> expr;
  std::string pointer;
};

struct interp_tnode final : template_node {
  struct part {
    std::string_view text;  // into the source string, when expr is null
    std::shared_ptr<const expr_node> expr;
  };
  expected<json::value, template_error> render(const scope& s) const override {
    std::string out;
    out.reserve(literal_bytes + 16);
    for (const auto& p : parts) {
      if (!p.expr) {
        out += p.text;
        continue;
      }
      auto r = p.expr->eval(s);
      if (!r)
        return unexpected<template_error>{{pointer, public_error(std::move(r.error()))}};
      append_text(out, r.get());
    }
    return json::value(json::string(out));
  }
  std::vector<part> parts;
  std::size_t literal_bytes = 0;
  std::string pointer;
};

struct array_tnode final : template_node {
  expected<json::value, template_error> render(const scope& s) const override {
    json::array out;
    out.reserve(items.size());
    for (const auto& t : items) {
      auto r = t->render(s);
      if (!r)
        return r;
      out.push_back(std::move(*r));
    }
    return json::value(std::move(out));
  }
  std::vector<tnode_ptr> items;
};

struct object_tnode final : template_node {
  expected<json::value, template_error> render(const scope& s) const override {
    json::object out;
    out.reserve(members.size());
    for (const auto& [key, t] : members) {
      auto r = t->render(s);
      if (!r)
        return r;
      out.emplace(key, std::move(*r));
    }
    return json::value(std::move(out));
  }
  std::vector<std::pair<std::string_view, tnode_ptr>> members;  // keys into the source
};

bool is_blank(std::string_view s) {
  return s.find_first_not_of(" \t\n\r") == std::string_view::npos;
}

struct scanned {
  bool is_expr;
  std::size_t begin, end;  // literal text, or the expression between the braces
};

// Splits a template string into literal text and expressions; errors go to `errors`.
void scan_template(std::string_view s, std::vector<scanned>& parts,
                   std::vector<expr_error>& errors) {
  const std::size_t n = s.size();
  std::size_t i = 0;
  std::size_t lit = 0;
  while (i < n) {
    const bool pair = i + 1 < n && s[i + 1] == s[i];
    if (pair && s[i] == '}') {
      errors.push_back({"'}}' outside an expression (write {{ '}}' }} for a literal }})", i + 1});
      i += 2;
      continue;
    }
    if (!(pair && s[i] == '{')) {
      ++i;
      continue;
    }
    const std::size_t open = i;
    std::size_t j = i + 2;
    std::size_t depth = 0;
    bool closed = false;
    while (j < n) {
      const char c = s[j];
      if (c == '\'' || c == '"') {
        ++j;
        while (j < n && s[j] != c)
          j += s[j] == '\\' ? 2 : 1;
        ++j;
        continue;
      }
      if (c == '{') {
        ++depth;
      } else if (c == '}') {
        if (depth > 0) {
          --depth;
        } else if (j + 1 < n && s[j + 1] == '}') {
          closed = true;
          break;
        }
      }
      ++j;
    }
    if (!closed) {
      errors.push_back({"unterminated '{{' (no matching '}}')", open + 1});
      return;
    }
    if (open > lit)
      parts.push_back({false, lit, open});
    if (is_blank(s.substr(open + 2, j - open - 2))) {
      errors.push_back({"empty expression in '{{ }}'", open + 1});
    } else {
      parts.push_back({true, open + 2, j});
    }
    i = j + 2;
    lit = i;
  }
  if (n > lit)
    parts.push_back({false, lit, n});
}


// Null when `v` holds no expression: the caller keeps it as a constant.
tnode_ptr compile_string(std::string_view s, const std::string& pointer,
                         std::vector<template_error>& errors) {
  if (s.find("{{") == std::string_view::npos && s.find("}}") == std::string_view::npos) {
    return nullptr;
  }
  std::vector<scanned> parts;
  std::vector<expr_error> errs;
  scan_template(s, parts, errs);
  std::vector<std::shared_ptr<const expr_node>> exprs(parts.size());
  std::size_t expr_count = 0;
  std::size_t blank_literals = 0;
  for (std::size_t k = 0; k < parts.size(); ++k) {
    const auto& p = parts[k];
    if (!p.is_expr) {
      blank_literals += is_blank(s.substr(p.begin, p.end - p.begin));
      continue;
    }
    ++expr_count;
    auto r = parse_tree(s.substr(p.begin, p.end - p.begin), p.begin);
    if (r) {
      exprs[k] = std::move(*r);
    } else {
      errs.push_back(std::move(r.error()));
    }
  }
  if (!errs.empty()) {
    std::sort(errs.begin(), errs.end(),
              [](const expr_error& a, const expr_error& b) { return a.column < b.column; });
    for (auto& e : errs)
      errors.push_back({pointer, std::move(e)});
    return nullptr;
  }
  if (expr_count == 0)
    return nullptr;
  if (expr_count == 1 && blank_literals + 1 == parts.size()) {
    auto t = std::make_unique<typed_tnode>();
    for (auto& e : exprs) {
      if (e)
        t->expr = std::move(e);
    }
    t->pointer = pointer;
    return t;
  }
  auto t = std::make_unique<interp_tnode>();
  for (std::size_t k = 0; k < parts.size(); ++k) {
    const auto& p = parts[k];
    if (p.is_expr) {
      t->parts.push_back({{}, std::move(exprs[k])});
    } else {
      t->parts.push_back({s.substr(p.begin, p.end - p.begin), nullptr});
      t->literal_bytes += p.end - p.begin;
    }
  }
  t->pointer = pointer;
  return t;
}

tnode_ptr compile_value(const json::value& v, std::string& pointer,
                        std::vector<template_error>& errors) {
  switch (v.kind()) {
    case json::kind::string:
      return compile_string(sv(v.get_string()), pointer, errors);
    case json::kind::array: {
      const auto& arr = v.get_array();
      std::vector<tnode_ptr> items(arr.size());
      bool dynamic = false;
      for (std::size_t i = 0; i < arr.size(); ++i) {
        const auto mark = pointer.size();
        pointer += '/';
        pointer += std::to_string(i);
        items[i] = compile_value(arr[i], pointer, errors);
        pointer.resize(mark);
        dynamic = dynamic || items[i];
      }
      if (!dynamic)
        return nullptr;
      auto t = std::make_unique<array_tnode>();
      for (std::size_t i = 0; i < arr.size(); ++i) {
        if (!items[i])
          items[i] = std::make_unique<const_tnode>(arr[i]);
      }
      t->items = std::move(items);
      return t;
    }
    case json::kind::object: {
      const auto& obj = v.get_object();
      std::vector<std::pair<std::string_view, tnode_ptr>> members;
      members.reserve(obj.size());
      bool dynamic = false;
      for (const auto& kv : obj) {
        const std::string_view key(kv.key().data(), kv.key().size());
        const auto mark = pointer.size();
        append_pointer_token(pointer, key);
        auto t = compile_value(kv.value(), pointer, errors);
        pointer.resize(mark);
        dynamic = dynamic || t;
        if (!t)
          t = std::make_unique<const_tnode>(kv.value());
        members.emplace_back(key, std::move(t));
      }
      if (!dynamic)
        return nullptr;
      auto t = std::make_unique<object_tnode>();
      t->members = std::move(members);
      return t;
    }
    default:
      return nullptr;
  }
}

const json_ptr& null_json() {
  static const json_ptr v = make_json(json::value(nullptr));
  return v;
}

const std::string& empty_string() {
  static const std::string s;
  return s;
}

}  // namespace
}  // namespace detail::expr_impl

// ---- public API -----------------------------------------------------------------------------

bool truthy(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null:
      return false;
    case json::kind::bool_:
      return v.get_bool();
    case json::kind::int64:
      return v.get_int64() != 0;
    case json::kind::uint64:
      return v.get_uint64() != 0;
    case json::kind::double_:
      return v.get_double() != 0.0;
    case json::kind::string:
      return !v.get_string().empty();
    case json::kind::array:
      return !v.get_array().empty();
    case json::kind::object:
      return !v.get_object().empty();
  }
  return false;
}

expected<expression, expr_error> expression::parse(std::string_view source,
                                                   std::size_t column_offset) {
  try {
    auto tree = detail::expr_impl::parse_tree(source, column_offset);
    if (!tree)
      return unexpected<expr_error>{std::move(tree.error())};
    expression e;
    e.root_ = std::move(*tree);
    e.source_ = std::make_shared<const std::string>(source);
    return e;
  } catch (const std::exception& ex) {
    return unexpected<expr_error>{detail::expr_impl::internal_error(ex)};
  }
}

expected<json::value, expr_error> expression::evaluate(const scope& s) const {
  if (!root_)
    return json::value(nullptr);
  try {
    auto r = root_->eval(s);
    if (!r)
      return unexpected<expr_error>{detail::expr_impl::public_error(std::move(r.error()))};
    return std::move(r).take();
  } catch (const std::exception& ex) {
    return unexpected<expr_error>{detail::expr_impl::internal_error(ex)};
  }
}

const std::string& expression::source() const {
  return source_ ? *source_ : detail::expr_impl::empty_string();
}

template_value::template_value() : source_(detail::expr_impl::null_json()) {}

expected<template_value, std::vector<template_error>> template_value::compile(
    const json::value& v) {
  try {
    template_value t;
    t.source_ = make_json(v);
    std::vector<template_error> errors;
    std::string pointer;
    auto root = detail::expr_impl::compile_value(*t.source_, pointer, errors);
    if (!errors.empty())
      return unexpected<std::vector<template_error>>{std::move(errors)};
    t.root_ = std::move(root);
    return t;
  } catch (const std::exception& ex) {
    return unexpected<std::vector<template_error>>{
        {template_error{"", detail::expr_impl::internal_error(ex)}}};
  }
}

expected<json::value, template_error> template_value::render(const scope& s) const {
  try {
    if (!root_)
      return *source_;
    return root_->render(s);
  } catch (const std::exception& ex) {
    return unexpected<template_error>{template_error{"", detail::expr_impl::internal_error(ex)}};
  }
}

bool template_value::is_constant() const {
  return !root_;
}

const json::value& template_value::source() const {
  return *source_;
}

}  // namespace troupe
