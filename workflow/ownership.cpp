#include "workflow/ownership.hpp"

#include <charconv>

namespace troupe {

std::string engine_identity::to_string() const {
  return host + "/" + std::to_string(pid) + "/" + std::to_string(start_us);
}

std::optional<engine_identity> engine_identity::parse(std::string_view text) {
  const auto b = text.rfind('/');
  if (b == std::string_view::npos || b == 0) {
    return std::nullopt;
  }
  const auto a = text.rfind('/', b - 1);
  if (a == std::string_view::npos || a == 0) {
    return std::nullopt;
  }
  engine_identity id;
  id.host = std::string(text.substr(0, a));
  auto number = [](std::string_view s, std::int64_t& out) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && p == s.data() + s.size() && !s.empty();
  };
  if (id.host.find('/') != std::string::npos || !number(text.substr(a + 1, b - a - 1), id.pid) ||
      !number(text.substr(b + 1), id.start_us)) {
    return std::nullopt;
  }
  return id;
}

run_id_generator::run_id_generator() {
  std::random_device rd;
  std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
  rng_.seed(seq);
}

run_id_generator::run_id_generator(std::uint64_t seed_hi, std::uint64_t seed_lo) {
  std::seed_seq seq{static_cast<std::uint32_t>(seed_hi >> 32), static_cast<std::uint32_t>(seed_hi),
                    static_cast<std::uint32_t>(seed_lo >> 32), static_cast<std::uint32_t>(seed_lo)};
  rng_.seed(seq);
}

std::string run_id_generator::next(std::int64_t unix_ms) {
  const auto ms = static_cast<std::uint64_t>(unix_ms < 0 ? 0 : unix_ms) & 0xFFFFFFFFFFFFull;
  if (unix_ms > last_ms_) {
    last_ms_ = unix_ms;
    // A fresh random start each millisecond, with room below the counter's top to count up.
    const std::uint64_t r = rng_();
    hi_ = (ms << 16) | ((r & 0x7FF) << 4) | ((r >> 11) & 0xF);
    lo_ = rng_();
  } else {
    // Same millisecond (or a clock that went back): count up in the 12-bit field, carrying into
    // the time bits on overflow, so ids stay ordered; the low bits are fresh random.
    hi_ += 1u << 4;
    lo_ = rng_();
  }
  static constexpr char alphabet[] = "0123456789abcdefghjkmnpqrstvwxyz";
  // 128 bits as 26 base-32 digits: the first digit holds the top 3 bits.
  std::string out(26, '0');
  for (int i = 25; i >= 0; --i) {
    const int shift = (25 - i) * 5;  // bit position of this digit's lowest bit
    std::uint64_t v;
    if (shift + 5 <= 64) {
      v = lo_ >> shift;
    } else if (shift >= 64) {
      v = hi_ >> (shift - 64);
    } else {
      v = (lo_ >> shift) | (hi_ << (64 - shift));
    }
    out[static_cast<std::size_t>(i)] = alphabet[v & 31];
  }
  return out;
}

}  // namespace troupe
