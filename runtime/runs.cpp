#include "runtime/runs.hpp"

#include <algorithm>

#include <cstdio>
#include <random>
#include <utility>

namespace troupe {

// ---- run_index -----------------------------------------------------------------------------

bool run_index::add(const std::string& id, run_ptr run) {
  std::lock_guard<std::mutex> lock(mutex_);
  return runs_.emplace(id, std::move(run)).second;
}

void run_index::remove(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    runs_.erase(id);
  }
  empty_.notify_all();
}

bool run_index::contains(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return runs_.count(id) != 0;
}

std::size_t run_index::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return runs_.size();
}

std::vector<run_index::run_ptr> run_index::live() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<run_ptr> out;
  out.reserve(runs_.size());
  for (const auto& [id, run] : runs_) {
    out.push_back(run);
  }
  return out;
}

bool run_index::wait_until_empty(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return empty_.wait_for(lock, timeout, [&] { return runs_.empty(); });
}

void run_index::wait_until_empty() {
  std::unique_lock<std::mutex> lock(mutex_);
  empty_.wait(lock, [&] { return runs_.empty(); });
}

// ---- memory_log ----------------------------------------------------------------------------

namespace {

run_row row_of(const run_result& r) {
  run_row row;
  row.run_id = r.run_id;
  row.workflow = r.workflow;
  row.status = r.status;
  row.outputs = r.status == run_status::succeeded ? make_json(r.outputs) : nullptr;
  row.error = r.error;
  return row;
}

}  // namespace

void memory_log::remember(const run_result& r) {
  auto kept = std::make_shared<const run_result>(r);
  std::lock_guard<std::mutex> lock(mutex_);
  runs_.push_back(std::move(kept));
  while (runs_.size() > capacity_) {
    runs_.pop_front();
  }
}

// Newest first, as the stores list them: these rows carry no start time (0), and run ids are
// time-ordered, so by run id descending. Only top-level runs are kept here: a parent filter
// matches none.
std::vector<run_row> memory_log::list(const run_query& q) const {
  std::vector<run_row> out;
  if (!q.parent_run_id.empty()) {
    return out;
  }
  std::vector<std::shared_ptr<const run_result>> matches;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& r : runs_) {
      if ((q.status && *q.status != r->status) ||
          (!q.workflow.empty() && q.workflow != r->workflow)) {
        continue;
      }
      if (!q.before_run_id.empty() &&
          !(0 < q.before_started_at ||
            (0 == q.before_started_at && r->run_id < q.before_run_id))) {
        continue;
      }
      matches.push_back(r);
    }
  }
  std::sort(matches.begin(), matches.end(),
            [](const auto& a, const auto& b) { return a->run_id > b->run_id; });
  for (const auto& r : matches) {
    if (q.limit != 0 && out.size() >= q.limit) {
      break;
    }
    out.push_back(row_of(*r));
  }
  return out;
}

std::optional<run_row> memory_log::get(std::string_view run_id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& r : runs_) {
    if (r->run_id == run_id) {
      return row_of(*r);
    }
  }
  return std::nullopt;
}

std::vector<node_row> memory_log::node_rows(std::string_view run_id) const {
  std::vector<node_row> out;
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& r : runs_) {
    if (r->run_id != run_id) {
      continue;
    }
    for (const auto& n : r->nodes) {
      node_row row;
      row.run_id = r->run_id;
      row.node_id = n.id;
      row.attempt = n.attempts;
      row.status = n.status;
      row.error = n.error;
      row.cache = n.cache;
      out.push_back(std::move(row));
    }
  }
  return out;
}

// ---- run_ids -------------------------------------------------------------------------------

std::string run_ids::next() {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  std::lock_guard<std::mutex> lock(mutex_);
  return gen_.next(ms);
}

}  // namespace troupe
