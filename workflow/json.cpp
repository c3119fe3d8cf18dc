#include "workflow/json.hpp"

#include <boost/json/parse_options.hpp>
#include <boost/json/stream_parser.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

// Header-only use: no library to link, and the hash is inlined into content_hash.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace troupe {

namespace detail {
namespace {

// 1-based line and byte column of `offset` in `text`, as editors count them.
std::pair<std::size_t, std::size_t> line_and_column(std::string_view text, std::size_t offset) {
  offset = std::min(offset, text.size());
  std::size_t line = 1;
  std::size_t line_start = 0;
  for (std::size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return {line, offset - line_start + 1};
}

std::string at_position(std::string_view text, std::size_t offset) {
  auto [line, column] = line_and_column(text, offset);
  return "line " + std::to_string(line) + ", column " + std::to_string(column);
}


// Finds the first string (or key) over the limit. Depth is already bounded by the parser, so
// recursion here cannot run away.
bool find_long_string(const json::value& v, std::size_t limit, std::string& pointer,
                      std::size_t& size) {
  if (const auto* s = v.if_string()) {
    if (s->size() > limit) {
      size = s->size();
      return true;
    }
    return false;
  }
  if (const auto* a = v.if_array()) {
    for (std::size_t i = 0; i < a->size(); ++i) {
      const std::size_t mark = pointer.size();
      pointer += '/';
      pointer += std::to_string(i);
      if (find_long_string((*a)[i], limit, pointer, size)) {
        return true;
      }
      pointer.resize(mark);
    }
    return false;
  }
  if (const auto* o = v.if_object()) {
    for (const auto& kv : *o) {
      const std::size_t mark = pointer.size();
      append_pointer_token(pointer, kv.key());
      if (kv.key().size() > limit) {
        size = kv.key().size();
        return true;
      }
      if (find_long_string(kv.value(), limit, pointer, size)) {
        return true;
      }
      pointer.resize(mark);
    }
  }
  return false;
}

// Feeds canonical text straight into the hash in chunks, so hashing a large document does not
// build (and keep reallocating) its whole canonical text.
class hash_sink {
 public:
  hash_sink() { XXH3_128bits_reset(&state_); }

  void append(const char* data, std::size_t size) {
    if (size > sizeof buf_ - used_) {
      flush();
      if (size > sizeof buf_) {
        XXH3_128bits_update(&state_, data, size);
        return;
      }
    }
    std::memcpy(buf_ + used_, data, size);
    used_ += size;
  }
  hash_sink& operator+=(char c) {
    if (used_ == sizeof buf_) {
      flush();
    }
    buf_[used_++] = c;
    return *this;
  }
  hash_sink& operator+=(std::string_view s) {
    append(s.data(), s.size());
    return *this;
  }

  XXH128_hash_t digest() {
    flush();
    return XXH3_128bits_digest(&state_);
  }

 private:
  void flush() {
    XXH3_128bits_update(&state_, buf_, used_);
    used_ = 0;
  }

  XXH3_state_t state_;
  char buf_[4096];
  std::size_t used_ = 0;
};

template <class Out, class Int>
void append_integer(Out& out, Int i) {
  char buf[24];
  auto res = std::to_chars(buf, buf + sizeof buf, i);
  out.append(buf, static_cast<std::size_t>(res.ptr - buf));
}

template <class Out>
void append_double(Out& out, double d, json_style::doubles form) {
  if (!std::isfinite(d)) {
    // JSON has no spelling for these; values built in code may still hold them.
    out += "null";
    return;
  }
  if (form == json_style::doubles::integral_as_integer && d == std::trunc(d)) {
    // Integers keep one spelling whatever kind they were parsed as: 1, 1.0 and 1e0 are equal.
    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0) {
      append_integer(out, static_cast<std::int64_t>(d));
      return;
    }
    if (d >= 0 && d < 18446744073709551616.0) {
      append_integer(out, static_cast<std::uint64_t>(d));
      return;
    }
  }
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d);
  const std::string_view text(buf, static_cast<std::size_t>(res.ptr - buf));
  out += text;
  if (form == json_style::doubles::keep_point &&
      text.find_first_of(".e") == std::string_view::npos) {
    out += ".0";
  }
}

// The same escapes as Boost.JSON's serializer, without its per-call allocation: canonical text
// is built for every compile and every cache key, so this is on a hot path.
template <class Out>
void append_string(Out& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out += '"';
  std::size_t clean = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') {
      continue;
    }
    out.append(s.data() + clean, i - clean);
    clean = i + 1;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default: {
        const char esc[] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};
        out.append(esc, sizeof esc);
      }
    }
  }
  out.append(s.data() + clean, s.size() - clean);
  out += '"';
}

template <class Out>
void append_value(Out& out, const json::value& v, const json_style& style, int level) {
  const auto newline = [&](int at) {
    if (style.pretty) {
      out += '\n';
      for (int i = 0; i < at; ++i) {
        out += "  ";
      }
    }
  };
  switch (v.kind()) {
    case json::kind::null:
      out += "null";
      break;
    case json::kind::bool_:
      out += v.get_bool() ? "true" : "false";
      break;
    case json::kind::int64:
      append_integer(out, v.get_int64());
      break;
    case json::kind::uint64:
      append_integer(out, v.get_uint64());
      break;
    case json::kind::double_:
      append_double(out, v.get_double(), style.numbers);
      break;
    case json::kind::string:
      append_string(out, v.get_string());
      break;
    case json::kind::array: {
      const auto& a = v.get_array();
      out += '[';
      bool first = true;
      for (const auto& e : a) {
        if (!first) {
          out += ',';
        }
        first = false;
        newline(level + 1);
        append_value(out, e, style, level + 1);
      }
      if (!a.empty()) {
        newline(level);
      }
      out += ']';
      break;
    }
    case json::kind::object: {
      const auto& o = v.get_object();
      out += '{';
      bool first = true;
      const auto member = [&](const json::key_value_pair& kv) {
        if (!first) {
          out += ',';
        }
        first = false;
        newline(level + 1);
        append_string(out, kv.key());
        out += style.pretty ? ": " : ":";
        append_value(out, kv.value(), style, level + 1);
      };
      if (style.sort_keys) {
        std::vector<const json::key_value_pair*> members;
        members.reserve(o.size());
        for (const auto& kv : o) {
          members.push_back(&kv);
        }
        // string_view ordering compares as unsigned bytes, which is what "sorted by bytes" means.
        std::sort(members.begin(), members.end(), [](const auto* a, const auto* b) {
          return std::string_view(a->key()) < std::string_view(b->key());
        });
        for (const auto* kv : members) {
          member(*kv);
        }
      } else {
        for (const auto& kv : o) {
          member(kv);
        }
      }
      if (!o.empty()) {
        newline(level);
      }
      out += '}';
      break;
    }
  }
}

constexpr json_style canonical_style{true, json_style::doubles::integral_as_integer, false};

std::string to_hex(XXH128_hash_t h) {
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return std::string(buf, 32);
}

}  // namespace
}  // namespace detail

void append_json_string(std::string& out, std::string_view text) {
  detail::append_string(out, text);
}

expected<json::value, json_parse_error> parse_json(std::string_view text,
                                                   const json_limits& limits) {
  if (text.size() > limits.max_document_bytes) {
    return make_unexpected(json_parse_error{"document too large: " + std::to_string(text.size()) +
                                            " bytes (limit " +
                                            std::to_string(limits.max_document_bytes) + ")"});
  }
  try {
    json::parse_options opts;
    opts.max_depth = limits.max_depth;
    json::stream_parser parser(json::storage_ptr(), opts);
    json::error_code ec;
    // write_some stops at the failing byte, which gives the error's position.
    const std::size_t consumed = parser.write_some(text.data(), text.size(), ec);
    if (!ec && consumed < text.size()) {
      return make_unexpected(json_parse_error{"invalid JSON at " +
                                              detail::at_position(text, consumed) +
                                              ": extra data after the JSON value"});
    }
    if (!ec) {
      parser.finish(ec);
      if (ec) {
        return make_unexpected(json_parse_error{
            "invalid JSON at " + detail::at_position(text, text.size()) + ": " + ec.message()});
      }
    } else if (ec == json::error::too_deep) {
      return make_unexpected(json_parse_error{"nesting too deep at " +
                                              detail::at_position(text, consumed) + " (limit " +
                                              std::to_string(limits.max_depth) + " levels)"});
    } else {
      return make_unexpected(json_parse_error{
          "invalid JSON at " + detail::at_position(text, consumed) + ": " + ec.message()});
    }
    json::value v = parser.release();
    std::string pointer;
    std::size_t size = 0;
    if (detail::find_long_string(v, limits.max_string_bytes, pointer, size)) {
      return make_unexpected(json_parse_error{"string too long at '" + pointer +
                                              "': " + std::to_string(size) + " bytes (limit " +
                                              std::to_string(limits.max_string_bytes) + ")"});
    }
    return v;
  } catch (const std::exception& e) {
    // Allocation failure or a Boost.JSON internal limit (e.g. an object with too many members).
    return make_unexpected(json_parse_error{std::string("cannot parse JSON: ") + e.what()});
  }
}

void append_json(std::string& out, const json::value& v, const json_style& style) {
  detail::append_value(out, v, style, 0);
}

std::string to_json_text(const json::value& v) {
  std::string out;
  append_json(out, v);
  return out;
}

std::string canonical_json(const json::value& v) {
  std::string out;
  detail::append_value(out, v, detail::canonical_style, 0);
  return out;
}

std::string content_hash(std::string_view bytes) {
  return detail::to_hex(XXH3_128bits(bytes.data(), bytes.size()));
}

std::string canonical_hash(const json::value& v) {
  // Same bytes as content_hash(canonical_json(v)), streamed.
  auto sink = std::make_unique<detail::hash_sink>();
  detail::append_value(*sink, v, detail::canonical_style, 0);
  return detail::to_hex(sink->digest());
}

std::string_view json_kind_name(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null:
      return "null";
    case json::kind::bool_:
      return "boolean";
    case json::kind::int64:
    case json::kind::uint64:
      return "integer";
    case json::kind::double_:
      return "number";
    case json::kind::string:
      return "string";
    case json::kind::array:
      return "array";
    case json::kind::object:
      return "object";
  }
  return "null";
}

// JSON pointer token escaping (RFC 6901), so the reported location can be followed.
void append_pointer_token(std::string& pointer, std::string_view token) {
  pointer += '/';
  for (char c : token) {
    if (c == '~') {
      pointer += "~0";
    } else if (c == '/') {
      pointer += "~1";
    } else {
      pointer += c;
    }
  }
}

}  // namespace troupe
