#include "runtime/detail/run_handle_shared.hpp"

#include <caf/send.hpp>

#include "messages/messages.hpp"

namespace troupe {

void run_handle::shared::finished(const run_result& r) {
  std::vector<std::function<void(const run_result&)>> cbs;
  {
    std::lock_guard<std::mutex> lock(mutex);
    result = std::make_shared<const run_result>(r);
    cbs.swap(callbacks);
    actor = caf::actor{};
  }
  // The engine's bookkeeping first: a caller woken below may at once read the run back
  // (memory mode's log) or resume it, and must not find it still listed as running.
  if (on_end) {
    on_end();
  }
  cv.notify_all();
  for (auto& cb : cbs) {
    cb(r);
  }
}

run_handle::run_handle(std::shared_ptr<shared> s) : s_(std::move(s)) {}

const std::string& run_handle::id() const {
  return s_->id;
}

std::optional<run_result> run_handle::wait_for(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(s_->mutex);
  if (!s_->cv.wait_for(lock, timeout, [&] { return s_->result != nullptr; })) {
    return std::nullopt;
  }
  return *s_->result;
}

run_result run_handle::wait() const {
  std::unique_lock<std::mutex> lock(s_->mutex);
  s_->cv.wait(lock, [&] { return s_->result != nullptr; });
  return *s_->result;
}

std::optional<run_result> run_handle::try_result() const {
  std::lock_guard<std::mutex> lock(s_->mutex);
  if (!s_->result) {
    return std::nullopt;
  }
  return *s_->result;
}

void run_handle::on_finished(std::function<void(const run_result&)> callback) const {
  std::unique_lock<std::mutex> lock(s_->mutex);
  if (s_->result) {
    run_result r = *s_->result;
    lock.unlock();
    callback(r);
    return;
  }
  s_->callbacks.push_back(std::move(callback));
}

void run_handle::cancel() const {
  caf::actor a;
  {
    std::lock_guard<std::mutex> lock(s_->mutex);
    a = s_->actor;
  }
  if (a) {
    caf::anon_send(a, cancel_atom::value);
  }
}

}  // namespace troupe
