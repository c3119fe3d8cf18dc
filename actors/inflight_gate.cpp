#include "actors/inflight_gate.hpp"

#include <algorithm>

#include <caf/send.hpp>

#include "messages/messages.hpp"

namespace troupe {

bool inflight_gate::try_acquire() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (used_ >= limit_) {
    return false;
  }
  ++used_;
  return true;
}

void inflight_gate::wake_one(std::unique_lock<std::mutex>& lock) {
  if (waiters_.empty() || used_ >= limit_) {
    return;
  }
  caf::actor next = std::move(waiters_.front());
  waiters_.pop_front();
  lock.unlock();
  caf::anon_send(next, permit_atom::value);
}

void inflight_gate::release() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (used_ > 0) {
    --used_;
  }
  wake_one(lock);
}

void inflight_gate::wait(const caf::actor& run) {
  std::unique_lock<std::mutex> lock(mutex_);
  waiters_.push_back(run);
  // A slot may have freed between the caller's failed try_acquire and now.
  wake_one(lock);
}

void inflight_gate::pass() {
  std::unique_lock<std::mutex> lock(mutex_);
  wake_one(lock);
}

void inflight_gate::leave(const caf::actor& run) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto it = std::find(waiters_.begin(), waiters_.end(), run);
  if (it != waiters_.end()) {
    waiters_.erase(it);
    return;
  }
  wake_one(lock);
}

std::size_t inflight_gate::in_use() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return used_;
}

}  // namespace troupe
