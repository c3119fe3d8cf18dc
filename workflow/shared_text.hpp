#pragma once

#include <compare>
#include <iosfwd>
#include <memory>
#include <string>
#include <string_view>

namespace troupe {

/// An immutable string whose copies share one buffer: a copy costs a reference count, not an
/// allocation. Rows carry their run's id (26 characters, longer than std::string's inline
/// buffer) and their engine's owner name; every row of a run shares the one the run made.
/// Thread-safe as `std::shared_ptr<const std::string>` is: copies may move between threads; the
/// text never changes. Assigning a new value replaces the buffer, never edits it in place.
class shared_text {
 public:
  shared_text() = default;
  shared_text(std::string text)  // NOLINT: implicit, rows are filled from strings
      : text_(text.empty() ? nullptr : std::make_shared<const std::string>(std::move(text))) {}
  shared_text(std::string_view text) : shared_text(std::string(text)) {}  // NOLINT
  shared_text(const char* text) : shared_text(std::string(text)) {}       // NOLINT

  shared_text& operator=(std::string text) {
    *this = shared_text(std::move(text));
    return *this;
  }
  shared_text& operator=(std::string_view text) { return *this = std::string(text); }
  shared_text& operator=(const char* text) { return *this = std::string(text); }

  const std::string& str() const { return text_ ? *text_ : empty_string(); }
  operator const std::string&() const { return str(); }  // NOLINT
  operator std::string_view() const { return str(); }    // NOLINT

  bool empty() const { return !text_ || text_->empty(); }
  std::size_t size() const { return str().size(); }
  const char* data() const { return str().data(); }
  const char* c_str() const { return str().c_str(); }

  friend bool operator==(const shared_text& a, const shared_text& b) {
    return a.text_ == b.text_ || a.str() == b.str();
  }
  friend bool operator==(const shared_text& a, std::string_view b) { return a.str() == b; }
  friend bool operator==(const shared_text& a, const std::string& b) { return a.str() == b; }
  friend bool operator==(const shared_text& a, const char* b) { return a.str() == b; }
  friend std::strong_ordering operator<=>(const shared_text& a, const shared_text& b) {
    return a.str() <=> b.str();
  }
  friend std::strong_ordering operator<=>(const shared_text& a, std::string_view b) {
    return std::string_view(a.str()) <=> b;
  }
  friend std::strong_ordering operator<=>(const shared_text& a, const std::string& b) {
    return a.str() <=> b;
  }
  friend std::strong_ordering operator<=>(const shared_text& a, const char* b) {
    return std::string_view(a.str()) <=> std::string_view(b);
  }
  friend std::string operator+(const shared_text& a, std::string_view b) {
    std::string s = a.str();
    s += b;
    return s;
  }
  friend std::string operator+(std::string_view a, const shared_text& b) {
    std::string s(a);
    s += b.str();
    return s;
  }
  friend std::ostream& operator<<(std::ostream& os, const shared_text& t);

 private:
  static const std::string& empty_string();
  std::shared_ptr<const std::string> text_;
};

}  // namespace troupe
