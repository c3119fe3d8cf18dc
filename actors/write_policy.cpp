#include "actors/write_policy.hpp"

#include <algorithm>
#include <iterator>
#include <utility>

namespace troupe {

namespace {
// Runs remembered as troubled until one of their waiters is told: enough for every run that can
// be open at once in practice, bounded so that runs never waited for cannot grow it forever.
constexpr std::size_t max_troubled_runs = 100000;
}  // namespace

write_policy::write_policy(writer_config config) : config_(std::move(config)) {}

void write_policy::absorb(persist rows, std::int64_t now_us) {
  const std::size_t n = rows.size();
  if (n == 0) {
    return;  // a caller asking for a commit of what it sent before
  }
  if (rows.sent_us <= 0) {
    rows.sent_us = now_us;
  }
  if (parts_.empty()) {
    front_seq_ = last_seq_ + 1;
  }
  ++last_seq_;
  pending_rows_ += n;
  parts_.push_back(std::move(rows));
}

write_policy::waiter_id write_policy::add_waiter(std::string run_id, std::int64_t now_us) {
  const waiter_id id = next_waiter_++;
  waiters_.push_back(waiter{id, last_seq_, now_us, std::move(run_id)});
  return id;
}

write_policy::step write_policy::next(std::int64_t now_us, bool queue_empty) {
  if (in_flight_ || retrying_) {
    return {};  // the outcome, or the backoff, decides what comes next
  }
  if (pending_rows_ == 0 && waiters_.empty()) {
    return {};
  }
  if (config_.mode == persistence_mode::sync || draining_) {
    return {step::kind::commit, now_us, generation_};
  }
  // The batch's age counts from when its oldest row was sent: rows that queued in the mailbox
  // during a long commit may already be due.
  std::int64_t due = config_.flush_ms * 1000;
  if (!parts_.empty()) {
    due = parts_.front().sent_us + config_.flush_ms * 1000 - now_us;
  }
  if (!waiters_.empty()) {
    // Group commit: waiting callers make the batch due after the commit window.
    due = std::min(due, waiters_.front().since_us + config_.commit_delay_us - now_us);
  }
  if (pending_rows_ >= config_.batch_max || (due <= 0 && queue_empty)) {
    return {step::kind::commit, now_us, generation_};
  }
  if (due <= 0) {
    // Due, but more is queued: absorb it first (a writer that is behind must batch more, not
    // commit each message alone), then commit.
    if (flush_queued_) {
      return {};
    }
    flush_queued_ = true;
    return {step::kind::flush_behind_queue, now_us, generation_};
  }
  // A waiter can make the batch due sooner than the armed timer: arm another one (same
  // generation; whichever comes first commits, the later one is stale).
  if (!timer_armed_ || now_us + due < timer_due_us_) {
    timer_armed_ = true;
    timer_due_us_ = now_us + due;
    return {step::kind::arm_timer, timer_due_us_, generation_};
  }
  return {};
}

bool write_policy::flush(std::uint64_t generation) {
  if (generation != generation_) {
    return false;  // stale: its rows were taken by an earlier commit
  }
  timer_armed_ = false;
  flush_queued_ = false;
  return !in_flight_ && !retrying_;
}

commit_job write_policy::take_job() {
  ++generation_;  // flushes armed for these rows are stale from now on
  timer_armed_ = false;
  flush_queued_ = false;
  commit_job job;
  job.each = config_.mode == persistence_mode::sync;
  const std::size_t max_rows = 4 * std::max<std::size_t>(config_.batch_max, 1);
  std::size_t k = 0;
  std::size_t rows = 0;
  while (k < parts_.size() && (k == 0 || rows < max_rows)) {
    rows += parts_[k++].size();
  }
  job.parts.assign(std::make_move_iterator(parts_.begin()),
                   std::make_move_iterator(parts_.begin() + static_cast<std::ptrdiff_t>(k)));
  parts_.erase(parts_.begin(), parts_.begin() + static_cast<std::ptrdiff_t>(k));
  // Durable and sync callers wait for the commit itself: a slice given away lengthens their
  // wait. Async callers never wait.
  job.yield = config_.yield_slices && config_.mode == persistence_mode::async && !draining_ &&
              rows < max_rows;
  flight_last_seq_ = front_seq_ + k - 1;
  front_seq_ += k;
  in_flight_ = true;
  flight_rows_ = rows;
  pending_rows_ -= rows;
  flight_first_sent_us_ = job.parts.empty() ? 0 : job.parts.front().sent_us;
  auto covered = std::find_if(waiters_.begin(), waiters_.end(),
                              [this](const waiter& w) { return w.seq > flight_last_seq_; });
  flight_waiters_.assign(std::make_move_iterator(waiters_.begin()),
                         std::make_move_iterator(covered));
  waiters_.erase(waiters_.begin(), covered);
  return job;
}

std::vector<write_policy::answer> write_policy::answer_idle() {
  ++generation_;
  timer_armed_ = false;
  flush_queued_ = false;
  std::vector<answer> out;
  out.reserve(waiters_.size());
  for (auto& w : waiters_) {
    out.push_back(answer_for(w));
  }
  waiters_.clear();
  return out;
}

std::vector<write_policy::answer> write_policy::settle(commit_outcome& o, std::int64_t now_us) {
  in_flight_ = false;
  flight_rows_ = 0;
  for (const auto& run : o.fenced_runs) {
    note_trouble(run, "run " + run +
                          " lost its ownership: another engine claimed it, and the rows written "
                          "under the old ownership were refused");
  }
  for (const auto& run : o.refused_runs) {
    note_trouble(run, "the database refused rows of run " + run +
                          " for good (kept as dead letters): " + o.refused_error);
  }
  std::vector<answer> out;
  if (o.error && !o.retry.empty()) {
    // Back in front of what arrived meanwhile: those changes are newer and win when coalesced.
    // Its callers keep waiting for a commit that includes their rows.
    persist back;
    back.nodes = std::move(o.retry.nodes);
    back.runs = std::move(o.retry.runs);
    back.workflows = std::move(o.retry.workflows);
    back.cache = std::move(o.retry.cache);
    back.sent_us = flight_first_sent_us_;
    pending_rows_ += back.size();
    parts_.insert(parts_.begin(), std::move(back));
    front_seq_ = flight_last_seq_;  // it stands for every change the failed job held
    waiters_.insert(waiters_.begin(), std::make_move_iterator(flight_waiters_.begin()),
                    std::make_move_iterator(flight_waiters_.end()));
    flight_waiters_.clear();
    retrying_ = true;
    backoff_ms_ = backoff_ms_ == 0 ? config_.retry_initial_ms
                                   : std::min(backoff_ms_ * 2, config_.retry_max_ms);
    return out;
  }
  last_lag_us_ = now_us - flight_first_sent_us_;
  retrying_ = false;
  backoff_ms_ = 0;
  for (auto& w : flight_waiters_) {
    out.push_back(answer_for(w));
  }
  flight_waiters_.clear();
  // Callers that asked while the job was out, for changes it held or older ones.
  auto done = std::find_if(waiters_.begin(), waiters_.end(),
                           [this](const waiter& w) { return w.seq > flight_last_seq_; });
  for (auto w = waiters_.begin(); w != done; ++w) {
    out.push_back(answer_for(*w));
  }
  waiters_.erase(waiters_.begin(), done);
  return out;
}

bool write_policy::drained() const {
  return draining_ && pending_rows_ == 0 && !in_flight_ && waiters_.empty() &&
         flight_waiters_.empty();
}

std::vector<write_policy::answer> write_policy::give_up(const std::string& why,
                                                        std::size_t& dropped) {
  dropped = uncommitted();
  std::vector<answer> out;
  for (auto* list : {&flight_waiters_, &waiters_}) {
    for (auto& w : *list) {
      out.push_back(answer{w.id, why});
    }
    list->clear();
  }
  parts_.clear();
  pending_rows_ = 0;
  flight_rows_ = 0;
  in_flight_ = false;  // a late outcome of the job out is not settled: the owner has quit
  retrying_ = false;
  trouble_.clear();
  trouble_order_.clear();
  ++generation_;
  return out;
}

write_policy::answer write_policy::answer_for(waiter& w) {
  answer a{w.id, {}};
  if (!w.run_id.empty() && !trouble_.empty()) {
    if (auto it = trouble_.find(w.run_id); it != trouble_.end()) {
      a.error = std::move(it->second);
      trouble_.erase(it);
    }
  }
  return a;
}

void write_policy::note_trouble(const std::string& run_id, const std::string& message) {
  if (config_.mode != persistence_mode::durable && config_.mode != persistence_mode::sync) {
    return;  // nobody waits to be told: the metrics and the log say it
  }
  auto [it, inserted] = trouble_.emplace(run_id, message);
  if (!inserted) {
    return;  // the first trouble is what the caller hears
  }
  trouble_order_.push_back(run_id);
  while (trouble_order_.size() > max_troubled_runs) {
    trouble_.erase(trouble_order_.front());
    trouble_order_.pop_front();
  }
}

}  // namespace troupe
