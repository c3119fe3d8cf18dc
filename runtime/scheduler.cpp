#include "runtime/scheduler.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/detail/double_ended_queue.hpp>
#include <caf/policy/unprofiled.hpp>
#include <caf/resumable.hpp>
#include <caf/scheduler/coordinator.hpp>

namespace troupe {
namespace {

class waking_stealing;
scheduler_tuning tuning_of(caf::scheduler::abstract_coordinator* coordinator);

// Work stealing as CAF's `policy::work_stealing`, with one change in how idle workers wait.
// A worker with nothing to do spins for a bounded number of rounds (looking at its own queue and
// stealing from the others), then announces itself blocked (`blocked` true, the coordinator's
// `blocked_workers` one higher), looks at every queue once more, and only then waits on its
// condition variable. Whoever enqueues a job, on any thread, pushes it and then, if any worker
// is blocked, unblocks one: the job's own worker if that one is blocked, otherwise another one,
// which steals it. The announcement and the enqueue each issue a sequentially consistent fence
// between their write and their read, so either the enqueuer sees the blocked worker or the
// worker sees the job. A worker that was unblocked and finds nothing (someone else took the job)
// blocks again. Whoever flips a worker's `blocked` from true to false owns the decrement of
// `blocked_workers`.
class waking_stealing : public caf::policy::unprofiled {
public:
  using queue_type = caf::detail::double_ended_queue<caf::resumable>;

  struct coordinator_data {
    explicit coordinator_data(caf::scheduler::abstract_coordinator*) {}
    std::atomic<size_t> next_worker{0};
    std::atomic<size_t> blocked_workers{0};
  };

  struct worker_data {
    // Built once the coordinator is complete (in its start()), so its tuning can be read.
    explicit worker_data(caf::scheduler::abstract_coordinator* p)
        : spin_rounds(tuning_of(p).spin_rounds),
          steal_interval(std::max(1u, tuning_of(p).steal_interval)),
          blocked_recheck(tuning_of(p).blocked_recheck) {}
    worker_data(const worker_data& other)
        : spin_rounds(other.spin_rounds),
          steal_interval(other.steal_interval),
          blocked_recheck(other.blocked_recheck) {}

    queue_type queue;
    std::mutex lock;
    std::condition_variable wake;
    std::atomic<bool> blocked{false};
    size_t steal_from = 0;
    const size_t spin_rounds;
    const size_t steal_interval;
    const caf::timespan blocked_recheck;
  };

  template <class Coordinator>
  void central_enqueue(Coordinator* self, caf::resumable* job) {
    auto& data = d(self);
    const size_t workers = self->num_workers();
    // A blocked worker takes the job at once; a busy one would make it wait behind its work.
    if (data.blocked_workers.load(std::memory_order_relaxed) > 0) {
      for (size_t i = 0; i < workers; ++i) {
        auto* w = self->worker_by_id(i);
        if (d(w).blocked.load(std::memory_order_relaxed)) {
          w->external_enqueue(job);
          return;
        }
      }
    }
    self->worker_by_id(data.next_worker++ % workers)->external_enqueue(job);
  }

  template <class Worker>
  void external_enqueue(Worker* self, caf::resumable* job) {
    d(self).queue.append(job);
    notify(self);
  }

  template <class Worker>
  void internal_enqueue(Worker* self, caf::resumable* job) {
    d(self).queue.prepend(job);
    notify(self);
  }

  template <class Worker>
  void resume_job_later(Worker* self, caf::resumable* job) {
    d(self).queue.append(job);
    notify(self);
  }

  template <class Worker>
  caf::resumable* dequeue(Worker* self) {
    auto& data = d(self);
    for (;;) {
      for (size_t round = 0; round < data.spin_rounds; ++round) {
        if (auto* job = data.queue.take_head())
          return job;
        if (round % data.steal_interval == 0)
          if (auto* job = steal(self))
            return job;
      }
      auto& blocked_workers = d(self->parent()).blocked_workers;
      data.blocked.store(true, std::memory_order_seq_cst);
      blocked_workers.fetch_add(1, std::memory_order_seq_cst);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      auto* job = data.queue.take_head();
      if (job == nullptr)
        job = steal(self);
      if (job == nullptr) {
        std::unique_lock<std::mutex> guard(data.lock);
        data.wake.wait_for(guard, data.blocked_recheck, [&] {
          return !data.blocked.load(std::memory_order_seq_cst) || !data.queue.empty();
        });
      }
      if (data.blocked.exchange(false, std::memory_order_seq_cst))
        blocked_workers.fetch_sub(1, std::memory_order_seq_cst);
      if (job != nullptr)
        return job;
    }
  }

  template <class Worker, class UnaryFunction>
  void foreach_resumable(Worker* self, UnaryFunction f) {
    for (auto* job = d(self).queue.take_head(); job != nullptr; job = d(self).queue.take_head())
      f(job);
  }

  template <class Coordinator, class UnaryFunction>
  void foreach_central_resumable(Coordinator*, UnaryFunction) {}

private:
  // Takes the oldest job of another worker's queue, trying each other worker once.
  template <class Worker>
  caf::resumable* steal(Worker* self) {
    auto* parent = self->parent();
    const size_t workers = parent->num_workers();
    auto& data = d(self);
    for (size_t i = 0; i + 1 < workers; ++i) {
      data.steal_from = (data.steal_from + 1) % workers;
      if (data.steal_from == self->id())
        data.steal_from = (data.steal_from + 1) % workers;
      if (auto* job = d(parent->worker_by_id(data.steal_from)).queue.take_tail())
        return job;
    }
    return nullptr;
  }

  // Called after a job was pushed to `owner`'s queue: unblocks `owner` if it is blocked, else
  // any other blocked worker, which will steal the job.
  template <class Worker>
  void notify(Worker* owner) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    auto* parent = owner->parent();
    auto& blocked_workers = d(parent).blocked_workers;
    if (blocked_workers.load(std::memory_order_seq_cst) == 0)
      return;
    if (unblock(owner))
      return;
    const size_t workers = parent->num_workers();
    for (size_t i = 1; i < workers; ++i)
      if (unblock(parent->worker_by_id((owner->id() + i) % workers)))
        return;
  }

  template <class Worker>
  bool unblock(Worker* w) {
    auto& data = d(w);
    if (!data.blocked.load(std::memory_order_seq_cst) ||
        !data.blocked.exchange(false, std::memory_order_seq_cst))
      return false;
    d(w->parent()).blocked_workers.fetch_sub(1, std::memory_order_seq_cst);
    {
      // Taking the lock orders this wake-up after the worker's check of its predicate.
      std::lock_guard<std::mutex> guard(data.lock);
    }
    data.wake.notify_one();
    return true;
  }
};

class waking_coordinator : public caf::scheduler::coordinator<waking_stealing> {
public:
  waking_coordinator(caf::actor_system& system, scheduler_tuning tuning)
      : coordinator(system), tuning(tuning) {}
  const scheduler_tuning tuning;
};

scheduler_tuning tuning_of(caf::scheduler::abstract_coordinator* coordinator) {
  return static_cast<waking_coordinator*>(coordinator)->tuning;
}

} // namespace

void use_waking_scheduler(caf::actor_system_config& config, scheduler_tuning tuning) {
  config.module_factories.push_back(
      [tuning](caf::actor_system& system) -> caf::actor_system::module* {
        return new waking_coordinator(system, tuning);
      });
}

} // namespace troupe
