#pragma once

// traced<Impl>: the same actor as Impl (a caf::stateful_actor<State> with a function-based
// behavior), plus the two hooks that see every message: enqueue() on the sender's thread and
// consume() on the actor's own thread. Spawn sites pick traced<Impl> only when tracing is on,
// so an untraced actor carries no tracing code at all.
//
// A state may tell the tracer what it works on, read on the actor's own thread after each
// handled message:
//   std::string_view trace_run() const;    // the run id
//   std::string_view trace_node() const;   // the node id (node actors)
//   std::uint64_t trace_rows() const;      // rows committed so far (the writer)
//   std::uint64_t trace_batches() const;   // batches committed so far (the writer)

#include <atomic>
#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <caf/actor.hpp>
#include <caf/actor_config.hpp>
#include <caf/actor_system.hpp>
#include <caf/detail/init_fun_factory.hpp>
#include <caf/invoke_message_result.hpp>
#include <caf/local_actor.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/type_nr.hpp>

#include "actors/trace.hpp"

namespace troupe::trace {

/// The traced actor whose handler (or initial behavior) runs on this thread right now. A send
/// made from inside it starts its flow arrow from that handler's slice, labelled with what the
/// sender works on at that moment.
struct current_actor {
  std::uint64_t id = 0;
  std::uint32_t run = 0;
  std::uint32_t node = 0;
  void* owner = nullptr;                // the traced actor
  void (*refresh)(void* owner) = nullptr;  // re-reads run/node from the owner's state
};
extern thread_local current_actor* current;

template <class S>
concept has_trace_run = requires(const S& s) {
  { s.trace_run() } -> std::convertible_to<std::string_view>;
};
template <class S>
concept has_trace_node = requires(const S& s) {
  { s.trace_node() } -> std::convertible_to<std::string_view>;
};
template <class S>
concept has_trace_commits = requires(const S& s) {
  { s.trace_rows() } -> std::convertible_to<std::uint64_t>;
  { s.trace_batches() } -> std::convertible_to<std::uint64_t>;
};

/// Fills the message description of `e` from `x` (type key, request/response flags, sender).
inline void describe(const caf::mailbox_element& x, raw_event& e) {
  const auto& xs = x.content();
  if (xs.empty()) {
    e.what_is = what_kind::none;
  } else if (auto t = xs.type(0); t.first == caf::type_nr<caf::atom_value>::value) {
    e.what_is = what_kind::atom;
    e.what = static_cast<std::uint64_t>(*static_cast<const caf::atom_value*>(xs.get(0)));
  } else if (t.first != 0) {
    e.what_is = what_kind::numbered;
    e.what = t.first;
  } else {
    e.what_is = what_kind::type_info;
    e.what = reinterpret_cast<std::uint64_t>(t.second);
  }
  e.flags = x.mid.is_response() ? flag::response : x.mid.is_request() ? flag::request : 0;
  e.other = x.sender ? x.sender->id() : 0;
}

template <class Impl>
class traced final : public Impl {
 public:
  using state_type = std::remove_reference_t<decltype(std::declval<Impl&>().state)>;
  using init_fn = caf::detail::unique_function<caf::behavior(caf::local_actor*)>;

  // The behavior comes in as CAF's own init function (what spawn(fun, args...) would build),
  // so the function-based behavior runs unchanged with `this` as its Impl*.
  traced(caf::actor_config& cfg, tracer* t, init_fn init)
      : Impl(with_init(cfg, std::move(init))), tracer_(t) {
    self_.id = this->id();
    self_.owner = this;
    self_.refresh = &refresh_current;
    raw_event e;
    e.kind = record_kind::spawn;
    e.what_is = what_kind::text;
    e.what = reinterpret_cast<std::uint64_t>(kind_name());
    e.self = self_.id;
    e.other = cfg.parent != nullptr ? cfg.parent->id() : 0;
    stamp_sender(e);
    e.t_ns = tracer::now_ns();
    tracer_->record(e);
  }

  using Impl::enqueue;

  // Sender's thread: describe the message, never touch this actor's state.
  void enqueue(caf::mailbox_element_ptr x, caf::execution_unit* eu) override {
    if (x) {
      raw_event e;
      e.kind = record_kind::send;
      describe(*x, e);
      e.self = self_.id;
      e.addr = reinterpret_cast<std::uint64_t>(x.get());
      stamp_sender(e);
      e.t_ns = tracer::now_ns();
      tracer_->record(e);
      queued_.fetch_add(1, std::memory_order_relaxed);
    }
    Impl::enqueue(std::move(x), eu);
  }

  caf::invoke_message_result consume(caf::mailbox_element& x) override {
    raw_event e;
    e.kind = record_kind::handle;
    describe(x, e);  // before the handler: it may move the content out
    e.self = self_.id;
    e.addr = reinterpret_cast<std::uint64_t>(&x);
    [[maybe_unused]] auto before = commits();
    current_actor* outer = current;
    current = &self_;
    e.t_ns = tracer::now_ns();
    auto res = Impl::consume(x);
    const auto t1 = tracer::now_ns();
    current = outer;
    if (res == caf::invoke_message_result::skipped) {
      return res;  // still queued (held back by an `await`): handled later
    }
    if (res == caf::invoke_message_result::dropped) {
      e.flags |= flag::dropped;
    }
    e.dur_ns = t1 - e.t_ns;
    // Not mailbox().size(): it moves newly arrived messages into the queue in the middle of
    // CAF's round, which made the detached writer miss a wake-up (a hang, reproduced).
    e.mailbox = queued_.fetch_sub(1, std::memory_order_relaxed) - 1;
    finish(e, before);
    return res;
  }

  void initialize() override {
    raw_event e;
    e.kind = record_kind::init;
    e.what_is = what_kind::text;
    e.what = reinterpret_cast<std::uint64_t>(kind_name());
    e.self = self_.id;
    [[maybe_unused]] auto before = commits();
    current_actor* outer = current;
    current = &self_;
    e.t_ns = tracer::now_ns();
    Impl::initialize();
    const auto t1 = tracer::now_ns();
    current = outer;
    e.dur_ns = t1 - e.t_ns;
    e.mailbox = queued_.load(std::memory_order_relaxed);
    finish(e, before);
  }

 private:
  struct counts {
    std::uint64_t rows = 0;
    std::uint64_t batches = 0;
  };

  static caf::actor_config& with_init(caf::actor_config& cfg, init_fn init) {
    cfg.init_fun = std::move(init);
    return cfg;
  }

  const char* kind_name() const { return this->name(); }

  bool state_alive() const {
    return !this->getf(caf::abstract_actor::is_cleaned_up_flag);
  }

  counts commits() {
    if constexpr (has_trace_commits<state_type>) {
      if (state_alive()) {
        return {this->state.trace_rows(), this->state.trace_batches()};
      }
    }
    return {};
  }

  void finish(raw_event& e, [[maybe_unused]] counts before) {
    refresh_labels();
    e.run = self_.run;
    e.node = self_.node;
    if constexpr (has_trace_commits<state_type>) {
      auto after = commits();
      e.rows = static_cast<std::uint32_t>(after.rows - before.rows);
      e.batches = static_cast<std::uint32_t>(after.batches - before.batches);
    }
    tracer_->record(e);
  }

  // Labels change rarely (a node actor takes another node): compare, intern only on change.
  void refresh_labels() {
    if (!state_alive()) {
      return;
    }
    if constexpr (has_trace_run<state_type>) {
      update(run_text_, self_.run, this->state.trace_run());
    }
    if constexpr (has_trace_node<state_type>) {
      update(node_text_, self_.node, this->state.trace_node());
    }
  }

  void update(std::string& cached, std::uint32_t& id, std::string_view now) {
    if (now.empty()) {
      if (!cached.empty()) {
        cached.clear();
        id = 0;
      }
      return;
    }
    if (id == 0 || now != cached) {
      cached.assign(now);
      id = tracer_->label(now);
    }
  }

  static void refresh_current(void* owner) { static_cast<traced*>(owner)->refresh_labels(); }

  void stamp_sender(raw_event& e) {
    if (current_actor* c = current; c != nullptr && c->id == e.other && e.other != 0) {
      c->refresh(c->owner);
      e.flags |= flag::inside;
      e.run = c->run;
      e.node = c->node;
    }
  }

  tracer* tracer_;
  // Messages enqueued and not handled yet: the mailbox depth, counted here because reading
  // CAF's mailbox size from a handler is not safe (see consume()).
  std::atomic<std::uint32_t> queued_{0};
  current_actor self_;
  std::string run_text_;
  std::string node_text_;
};

/// spawn(fun, xs...) of the traced actor type (`Os` as for spawn: detached, monitored, ...).
/// `spawner` is the actor system or the spawning actor.
template <class Impl, caf::spawn_options Os = caf::no_spawn_options, class Spawner, class F,
          class... Ts>
caf::actor spawn_traced(Spawner& spawner, tracer* t, F fun, Ts&&... xs) {
  caf::detail::init_fun_factory<Impl, F> make_init;
  return spawner.template spawn<traced<Impl>, Os>(t, make_init(std::move(fun),
                                                               std::forward<Ts>(xs)...));
}

}  // namespace troupe::trace
