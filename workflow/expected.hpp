#pragma once

#include <type_traits>
#include <utility>
#include <variant>

namespace troupe {

/// Marks the error alternative when constructing an `expected`.
template <class E>
struct unexpected {
  E error;
};
template <class E>
unexpected<std::decay_t<E>> make_unexpected(E&& e) {
  return {std::forward<E>(e)};
}

/// A value or the reason there is none. Decoding and validation report failures through this,
/// never through exceptions, so errors can cross actor boundaries as plain values.
/// (std::expected is C++23; the project builds as C++20.)
template <class T, class E>
class expected {
 public:
  expected(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  template <class G>
  expected(unexpected<G> e) : v_(std::in_place_index<1>, std::move(e.error)) {}

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  E& error() & { return std::get<1>(v_); }
  const E& error() const& { return std::get<1>(v_); }
  E&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, E> v_;
};

}  // namespace troupe
