#pragma once

#include <boost/json/fwd.hpp>
#include <boost/json/value.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "workflow/expected.hpp"

namespace troupe {

namespace json = boost::json;

/// Immutable JSON shared between contexts, messages and records without copying.
using json_ptr = std::shared_ptr<const json::value>;

inline json_ptr make_json(json::value v) {
  return std::make_shared<const json::value>(std::move(v));
}

/// Limits applied to untrusted JSON documents before anything else looks at them.
struct json_limits {
  std::size_t max_document_bytes = 16u << 20;  // 16 MiB
  std::size_t max_depth = 64;
  std::size_t max_string_bytes = 1u << 20;  // 1 MiB
};

struct json_parse_error {
  std::string message;  // plain text, includes line and column when the syntax is wrong
};

/// Parses text as JSON within the limits; every violation is reported, never thrown.
expected<json::value, json_parse_error> parse_json(std::string_view text,
                                                  const json_limits& limits = {});

/// How append_json spells a value. One writer serves every text the program produces, so that
/// strings are escaped one way everywhere.
struct json_style {
  enum class doubles {
    /// Shortest round-trip form, with ".0" on an integral one (1.0 -> 1.0): the text parses
    /// back to the same value of the same kind.
    keep_point,
    /// Shortest round-trip form (1.0 -> 1, 1e15 -> 1e+15): how expressions interpolate numbers.
    shortest,
    /// Integral ones as integers (1.0 -> 1, 1e2 -> 100), others shortest: canonical_json.
    integral_as_integer,
  };
  /// Object keys sorted by bytes rather than in document order.
  bool sort_keys = false;
  doubles numbers = doubles::keep_point;
  /// One member or element a line, indented two spaces a level; empty containers stay `{}` and
  /// `[]`.
  bool pretty = false;
};

/// Appends the JSON text of `v`. Infinities and NaN, which JSON cannot spell but values built
/// in code may hold, are written as null.
void append_json(std::string& out, const json::value& v, const json_style& style = {});
/// Appends `text` as a JSON string literal (quoted and escaped), as append_json writes strings.
void append_json_string(std::string& out, std::string_view text);

/// Compact JSON text of a value, in document order, doubles keeping their kind (1.0 -> 1.0).
std::string to_json_text(const json::value& v);

/// Canonical JSON: object keys sorted by bytes, numbers that are mathematically integers written
/// as integers (1.0 -> 1, 1e2 -> 100), other doubles in shortest round-trip form. Two values that
/// differ only in key order or number spelling have the same canonical text and hash.
std::string canonical_json(const json::value& v);

/// A 128-bit content hash (XXH3-128) of a byte string, as 32 lowercase hex digits.
std::string content_hash(std::string_view bytes);

/// Appends "/" and `token` escaped per RFC 6901 (`~` as `~0`, `/` as `~1`), so a pointer to a
/// key holding those characters can still be followed.
void append_pointer_token(std::string& pointer, std::string_view token);

/// Shortcut: content_hash(canonical_json(v)).
std::string canonical_hash(const json::value& v);

/// The name of a JSON kind as users read it: "string", "number", "integer", "boolean", "array",
/// "object", "null".
std::string_view json_kind_name(const json::value& v);

}  // namespace troupe
