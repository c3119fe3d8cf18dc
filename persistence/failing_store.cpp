#include "persistence/failing_store.hpp"

#include <utility>

namespace troupe {

failing_store::failing_store(std::unique_ptr<store> inner) : forwarding_store(std::move(inner)) {}

void failing_store::fail_next_writes(std::size_t n, store_error error, fail_point when) {
  std::lock_guard lock(mu_);
  next_error_ = std::move(error);
  next_point_ = when;
  fail_next_ += n;
}

void failing_store::set_failing(bool on, store_error error, fail_point when) {
  std::lock_guard lock(mu_);
  switch_error_ = std::move(error);
  switch_point_ = when;
  failing_ = on;
}

void failing_store::heal() {
  std::lock_guard lock(mu_);
  fail_next_ = 0;
  failing_ = false;
}

std::optional<std::pair<store_error, failing_store::fail_point>> failing_store::take_failure() {
  // Fast path without the lock: nothing armed.
  if (!failing_.load() && fail_next_.load() == 0) {
    return std::nullopt;
  }
  std::lock_guard lock(mu_);
  if (failing_.load()) {
    return std::make_pair(switch_error_, switch_point_);
  }
  if (fail_next_.load() > 0) {
    --fail_next_;
    return std::make_pair(next_error_, next_point_);
  }
  return std::nullopt;
}

std::string failing_store::describe() const {
  return "failing(" + inner().describe() + ")";
}

expected<write_outcome, store_error> failing_store::write(const write_batch& batch) {
  ++attempts_;
  auto failure = take_failure();
  if (failure && failure->second == fail_point::before) {
    ++injected_;
    return make_unexpected(std::move(failure->first));
  }
  auto r = inner().write(batch);
  if (!r) {
    return r;
  }
  if (failure) {
    ++injected_;
    return make_unexpected(std::move(failure->first));
  }
  ++successes_;
  rows_ += batch.size();
  return r;
}

}  // namespace troupe
