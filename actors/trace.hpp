#pragma once

// Actor traces (issue 6): every message sent to and handled by a traced actor becomes an event,
// written by a background thread as Chrome trace event JSON (Perfetto, chrome://tracing).
//
// Recording is lock-free: each thread appends fixed-size records to chunks of its own and
// publishes them with one release store; the writer thread reads every thread's chunks on its own
// schedule, pairs each send with its handling, resolves names and writes the file. Strings never
// travel on the hot path except when an actor's run or node changes (a "label", interned once).
// No CAF header here: the engine (and its config) only need the tracer's lifetime.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace troupe::trace {

enum class record_kind : std::uint8_t {
  send = 1,  // a message enqueued to a traced actor (sender's thread)
  handle,    // a traced actor handled a message (its own thread)
  spawn,     // a traced actor was created (the spawner's thread)
  init,      // a traced actor ran its initial behavior (its own thread)
  label,     // the text of a label id; the text follows in the next slots
};

/// What a message is, kept as raw keys; the writer turns them into names.
enum class what_kind : std::uint8_t {
  none,       // an empty message
  atom,       // `what` is a caf::atom_value
  numbered,   // `what` is a CAF builtin type number
  type_info,  // `what` is a const std::type_info*
  text,       // `what` is a const char* with static storage (an actor kind)
};

namespace flag {
inline constexpr std::uint8_t request = 1;
inline constexpr std::uint8_t response = 2;
/// The send happened inside the sender's own handler (its slice can anchor the flow arrow).
inline constexpr std::uint8_t inside = 4;
/// CAF dropped the message without calling a handler (a stale request timeout, say).
inline constexpr std::uint8_t dropped = 8;
}  // namespace flag

/// One fixed-size record. Label ids are 0 for "none".
struct raw_event {
  record_kind kind{};
  what_kind what_is = what_kind::none;
  std::uint8_t flags = 0;
  std::uint8_t pad = 0;
  std::uint32_t mailbox = 0;  // handle: messages still queued after it; label: text length
  std::uint64_t self = 0;     // the traced actor (receiver of a send; label: the label id)
  std::uint64_t other = 0;    // the sender (0: none, or not an actor)
  std::uint64_t addr = 0;     // the mailbox element, to pair a send with its handling
  std::int64_t t_ns = 0;      // steady clock
  std::int64_t dur_ns = 0;
  std::uint64_t what = 0;
  std::uint32_t run = 0;   // label: the run the actor works on (send: the sender's)
  std::uint32_t node = 0;  // label: the node, for node actors
  std::uint32_t rows = 0;  // rows the writer committed while handling this message
  std::uint32_t batches = 0;
};

struct thread_buffer;

/// One trace file. Create it before the actors it traces and stop() it after the last of them
/// has ended (the engine does both). Thread-safe.
class tracer {
 public:
  /// Opens (truncates) `path` and starts the writer thread; throws std::runtime_error naming
  /// the file when it cannot be opened.
  explicit tracer(const std::string& path);
  ~tracer();
  tracer(const tracer&) = delete;
  tracer& operator=(const tracer&) = delete;

  /// Hot path: appends to the calling thread's buffer. Never blocks (the first record of a
  /// thread registers its buffer under a mutex, once).
  void record(const raw_event& e);
  /// A new label id for `text`, whose text is recorded in this thread's buffer first.
  std::uint32_t label(std::string_view text);

  static std::int64_t now_ns();

  /// Writes everything recorded, closes the JSON document and joins the writer. Idempotent.
  /// Nothing may be recorded after it.
  void stop();

  /// Events written so far (read after stop() for the final count); empty error if all went well.
  std::uint64_t events_written() const;
  std::string error() const;

  struct impl;

 private:
  thread_buffer* local_buffer();

  std::unique_ptr<impl> impl_;
  std::uint64_t generation_;  // unique per tracer in the process: thread caches check it
  std::atomic<std::uint32_t> next_label_{1};
};

}  // namespace troupe::trace
