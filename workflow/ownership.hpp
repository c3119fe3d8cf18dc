#pragma once

// Run ownership as values (DESIGN.md, "Ownership, leases and fencing"): who an engine instance
// is, run ids that any number of engines can mint without meeting, and the lease rules. No I/O
// and no clock here: times are passed in.

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>

namespace troupe {

/// An engine instance: the host it runs on, its process id and the process's start time (µs, as
/// the kernel reports it: two processes that reuse a pid differ here). Stored as a run's owner in
/// the form "host/pid/start_us".
struct engine_identity {
  std::string host;
  std::int64_t pid = 0;
  std::int64_t start_us = 0;

  std::string to_string() const;
  /// nullopt unless `text` has the form to_string() writes (a host may not contain '/').
  static std::optional<engine_identity> parse(std::string_view text);
  friend bool operator==(const engine_identity&, const engine_identity&) = default;
};

/// Lease rules. A run's lease lasts `lease_ms` from its last renewal; the owner renews every
/// lease_ms / 3, so two renewals may fail before the lease runs out.
class lease_terms {
 public:
  explicit lease_terms(std::int64_t lease_ms) : lease_ms_(lease_ms > 0 ? lease_ms : 1) {}

  std::int64_t lease_ms() const { return lease_ms_; }
  std::int64_t renew_every_ms() const { return lease_ms_ / 3 > 0 ? lease_ms_ / 3 : 1; }
  /// The lease a run holds after a renewal (or its start) at `now_us`.
  std::int64_t until(std::int64_t now_us) const { return now_us + lease_ms_ * 1000; }
  /// Whether another engine may take over a run whose lease ends at `lease_until_us`: once it
  /// has expired, or at once when its owner is known to be gone (a process of this host that no
  /// longer exists: `owner_gone`, found by the caller).
  static bool claimable(std::int64_t lease_until_us, std::int64_t now_us, bool owner_gone) {
    return owner_gone || lease_until_us <= now_us;
  }
  /// The `now` a claim should present to the store (store::claim_run takes a run whose
  /// lease_until <= now): the real time, or, for a gone owner, the lease's end (so the claim still
  /// fails if anyone renewed or claimed the run since it was read).
  static std::int64_t claim_time(std::int64_t lease_until_us, std::int64_t now_us,
                                 bool owner_gone) {
    return owner_gone && lease_until_us > now_us ? lease_until_us : now_us;
  }

 private:
  std::int64_t lease_ms_;
};

/// Mints run ids: 128 bits, time-ordered like UUIDv7 (48 bits of Unix milliseconds, then 80
/// random bits, the first 12 of them counting up within one millisecond so ids of one generator
/// sort in the order they were made), written as 26 lowercase Crockford base-32 characters
/// (0-9, a-z without i, l, o, u), e.g. "01jeqz3h7k8m2n4p6q8r0s2t4v". Ids of different generators
/// differ with overwhelming probability (80 random bits per millisecond). Not thread-safe: one
/// generator per thread, or a lock.
class run_id_generator {
 public:
  /// Seeded from std::random_device.
  run_id_generator();
  /// Seeded explicitly (tests).
  explicit run_id_generator(std::uint64_t seed_hi, std::uint64_t seed_lo);
  std::string next(std::int64_t unix_ms);

 private:
  std::mt19937_64 rng_;
  std::int64_t last_ms_ = -1;
  std::uint64_t hi_ = 0;  // 48 bits of time, 16 random bits (the first 12 count)
  std::uint64_t lo_ = 0;  // 64 random bits
};

}  // namespace troupe
