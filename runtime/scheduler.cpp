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

// The coordinator and worker whose thread this is (set when a worker first looks for work).
thread_local const void* tl_coordinator = nullptr;
thread_local size_t tl_worker_id = 0;

// Work stealing as CAF's `policy::work_stealing` (a queue per worker; a worker takes the newest
// job of its own queue and steals the oldest of another's), with another way to be idle.
//
// Waiting: a worker with nothing to do spins for a bounded number of rounds (`spinning` true:
// looking at its own queue and stealing from the others), then announces itself blocked
// (`blocked` true, the coordinator's `blocked_workers` one higher), looks at every queue once
// more, and only then waits on its condition variable. The announcement and every enqueue that
// may wake issue a sequentially consistent fence between their write and their read, so either
// the enqueuer sees the blocked worker or the worker sees the job. Whoever flips a worker's
// `blocked` from true to false owns the decrement of `blocked_workers`; a worker unblocked for
// a job someone else took blocks again.
//
// Waking, by where a job comes from:
// - a thread outside the workers (a caller, the clock, an I/O thread): the job goes to a
//   spinning worker (no system call), else to a blocked one, woken, else round-robin; a busy
//   owner gets a blocked worker woken to steal it.
// - a worker, for itself (an actor's message to an idle actor, a spawn, a callback that starts
//   a run): the worker runs it after its current job; only a job queued behind another wakes a
//   blocked worker (unless one is spinning), so a lone run does not pay a system call per
//   message, and a job waits at most for its worker's current job.
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
    std::atomic<bool> spinning{false};  // looking for work, not blocked: it will find a job
    size_t steal_from = 0;
    const size_t spin_rounds;
    const size_t steal_interval;
    const caf::timespan blocked_recheck;
  };

  // From a thread outside an actor. A worker's own thread (a callback that starts a run, say)
  // queues for itself, as from inside an actor. Another thread gives the job to a worker that
  // is looking for work (no system call), else to a blocked one (woken), else round-robin.
  template <class Coordinator>
  void central_enqueue(Coordinator* self, caf::resumable* job) {
    if (tl_coordinator == self)
      return internal_enqueue(self->worker_by_id(tl_worker_id), job);
    auto& data = d(self);
    const size_t workers = self->num_workers();
    for (size_t i = 0; i < workers; ++i) {
      auto* w = self->worker_by_id(i);
      if (d(w).spinning.load(std::memory_order_relaxed))
        return w->external_enqueue(job);
    }
    if (data.blocked_workers.load(std::memory_order_relaxed) > 0) {
      for (size_t i = 0; i < workers; ++i) {
        auto* w = self->worker_by_id(i);
        if (d(w).blocked.load(std::memory_order_relaxed))
          return w->external_enqueue(job);
      }
    }
    self->worker_by_id(data.next_worker++ % workers)->external_enqueue(job);
  }

  // The job's worker runs it unless that worker is busy: then a blocked one is woken to steal
  // it. A blocked owner is woken.
  template <class Worker>
  void external_enqueue(Worker* self, caf::resumable* job) {
    d(self).queue.append(job);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (d(self->parent()).blocked_workers.load(std::memory_order_seq_cst) == 0 || unblock(self) ||
        d(self).spinning.load(std::memory_order_relaxed))
      return;
    wake_another(self);
  }

  // A job a worker queues for itself runs when the worker's current job ends; only a job
  // queued behind another one (it would wait for two jobs) wakes a blocked worker to steal it,
  // unless another worker is looking for work already. Waking on every message would make a
  // lone run pay a system call per message while the other worker sleeps.
  template <class Worker>
  void internal_enqueue(Worker* self, caf::resumable* job) {
    const bool behind_another = !d(self).queue.empty();
    d(self).queue.prepend(job);
    if (behind_another)
      help_with_backlog(self);
  }

  // The worker is about to run a job while others wait in its queue: another worker takes them
  // meanwhile.
  template <class Worker>
  void before_resume(Worker* self, caf::resumable*) {
    if (!d(self).queue.empty() &&
        d(self->parent()).blocked_workers.load(std::memory_order_relaxed) > 0)
      help_with_backlog(self);
  }

  template <class Worker>
  void resume_job_later(Worker* self, caf::resumable* job) {
    d(self).queue.append(job);
    help_with_backlog(self);
  }

  template <class Worker>
  caf::resumable* dequeue(Worker* self) {
    auto& data = d(self);
    tl_coordinator = self->parent();
    tl_worker_id = self->id();
    auto found = [&data](caf::resumable* job) {
      data.spinning.store(false, std::memory_order_relaxed);
      return job;
    };
    for (;;) {
      data.spinning.store(true, std::memory_order_relaxed);
      for (size_t round = 0; round < data.spin_rounds; ++round) {
        if (auto* job = data.queue.take_head())
          return found(job);
        if (round % data.steal_interval == 0)
          if (auto* job = steal(self))
            return found(job);
      }
      data.spinning.store(false, std::memory_order_relaxed);
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

  // `owner` has more queued than it can run now: unless another worker is looking for work
  // already, a blocked one is woken to steal.
  template <class Worker>
  void help_with_backlog(Worker* owner) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    auto* parent = owner->parent();
    if (d(parent).blocked_workers.load(std::memory_order_seq_cst) == 0)
      return;
    const size_t workers = parent->num_workers();
    for (size_t i = 1; i < workers; ++i)
      if (d(parent->worker_by_id((owner->id() + i) % workers)).spinning.load(std::memory_order_relaxed))
        return;
    wake_another(owner);
  }

  // Wakes a blocked worker other than `owner`, if there is one.
  template <class Worker>
  void wake_another(Worker* owner) {
    auto* parent = owner->parent();
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
