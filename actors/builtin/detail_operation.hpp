#pragma once

// Helpers shared by the builtin operations (shell.cpp, http.cpp). Private to actors/builtin.

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "actors/builtin/operation.hpp"
#include "workflow/expected.hpp"

namespace troupe::detail {

/// Captured output (stdout, stderr, a response body) is capped at this size.
inline constexpr std::size_t max_capture_bytes = std::size_t{16} << 20;

/// Error messages quote at most this much of stderr or of a response body.
inline constexpr std::size_t max_quoted_bytes = 4096;

/// An operation that failed before it started (bad input): nothing to cancel.
class finished_operation final : public operation {
 public:
  void cancel() override {}
};

/// Reports a failure that was known before any I/O started. `done` still runs on an I/O thread,
/// never inside the start_* call, so callers get the same contract on every path.
inline operation_ptr post_failure(boost::asio::io_context& io, completion done, std::string error) {
  boost::asio::post(io, [done = std::move(done), error = std::move(error)]() mutable {
    done(task_result::failure(std::move(error)));
  });
  return std::make_shared<finished_operation>();
}

/// Starts an `Operation` from a parsed input, or reports the parse error the same way as any
/// other failure (post_failure). Each start_* is this with its own parser and operation.
template <class Operation, class Spec>
operation_ptr start_parsed(boost::asio::io_context& io, expected<Spec, std::string> spec,
                           completion done) {
  if (!spec) {
    return post_failure(io, std::move(done), std::move(spec.error()));
  }
  auto op = std::make_shared<Operation>(io, std::move(*spec), std::move(done));
  op->start();
  return op;
}

/// The name of a field of `object` that is not among `known`, or an empty view when all are known.
inline std::string_view unknown_field(const json::object& object,
                                      std::span<const std::string_view> known) {
  for (const auto& entry : object) {
    bool found = false;
    for (std::string_view name : known) {
      found = found || entry.key() == name;
    }
    if (!found) {
      return entry.key();
    }
  }
  return {};
}

/// "a, b, c": how error messages list the fields an input accepts.
inline std::string field_list(std::span<const std::string_view> known) {
  std::string out;
  for (std::string_view name : known) {
    if (!out.empty()) {
      out += ", ";
    }
    out += name;
  }
  return out;
}

inline bool is_utf8_continuation(char c) {
  return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

inline std::string_view trim(std::string_view text) {
  constexpr std::string_view space = " \t\r\n\v\f";
  const auto first = text.find_first_not_of(space);
  if (first == std::string_view::npos) {
    return {};
  }
  const auto last = text.find_last_not_of(space);
  return text.substr(first, last - first + 1);
}

/// The last `limit` bytes of `text`, not starting inside a UTF-8 sequence, prefixed with "..."
/// when something was cut: the end of stderr is where the reason for a failure usually is.
inline std::string tail(std::string_view text, std::size_t limit = max_quoted_bytes) {
  if (text.size() <= limit) {
    return std::string(text);
  }
  std::size_t start = text.size() - limit;
  while (start < text.size() && is_utf8_continuation(text[start])) {
    ++start;
  }
  return "..." + std::string(text.substr(start));
}

/// The first `limit` bytes of `text`, not ending inside a UTF-8 sequence, followed by "..." when
/// something was cut.
inline std::string head(std::string_view text, std::size_t limit = max_quoted_bytes) {
  if (text.size() <= limit) {
    return std::string(text);
  }
  std::size_t end = limit;
  while (end > 0 && is_utf8_continuation(text[end])) {
    --end;
  }
  return std::string(text.substr(0, end)) + "...";
}

inline bool contains_nul(std::string_view text) {
  return text.find('\0') != std::string_view::npos;
}

}  // namespace troupe::detail
