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

void failing_store::refuse_rows_of(std::string run_id, store_error error) {
  std::lock_guard lock(mu_);
  refused_.insert_or_assign(std::move(run_id), std::move(error));
  refusing_ = true;
}

void failing_store::heal() {
  std::lock_guard lock(mu_);
  fail_next_ = 0;
  failing_ = false;
  refused_.clear();
  refusing_ = false;
}

std::optional<store_error> failing_store::refusal(const write_batch& batch) const {
  // Fast path without the lock: no run refused.
  if (!refusing_.load()) {
    return std::nullopt;
  }
  std::lock_guard lock(mu_);
  auto find = [&](const std::string& run_id) -> const store_error* {
    auto it = refused_.find(run_id);
    return it == refused_.end() ? nullptr : &it->second;
  };
  for (const auto& r : batch.runs) {
    if (const store_error* e = find(r.run_id)) {
      return *e;
    }
  }
  for (const auto& n : batch.nodes) {
    if (const store_error* e = find(n.run_id)) {
      return *e;
    }
  }
  return std::nullopt;
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
  if (auto refused = refusal(batch)) {
    ++injected_;
    return make_unexpected(std::move(*refused));
  }
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
