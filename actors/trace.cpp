#include "actors/trace.hpp"

#include <cxxabi.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <new>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>

#include "workflow/json.hpp"
#include <utility>
#include <vector>

#include <caf/atom.hpp>
#include <caf/type_nr.hpp>

#include "actors/traced_actor.hpp"

namespace troupe::trace {

thread_local current_actor* current = nullptr;

// ---- per-thread buffers --------------------------------------------------------------------

namespace {

struct chunk {
  static constexpr std::size_t capacity = 4096;
  std::atomic<std::size_t> published{0};
  std::atomic<chunk*> next{nullptr};
  // Raw storage: constructing 4096 records up front would touch every page of a new chunk on
  // the recording thread; a slot's memory is first written when it is recorded.
  alignas(raw_event) unsigned char storage[capacity * sizeof(raw_event)];
  raw_event* slots() { return reinterpret_cast<raw_event*>(storage); }
};
static_assert(std::is_trivially_copyable_v<raw_event>);

}  // namespace

// One producer (the thread that owns it) and one consumer (the writer). The producer fills
// `tail` and publishes a count with a release store; when a chunk is full it links a new one.
// The writer reads `head` up to the published count and frees a chunk once the producer has
// moved past it, so neither side ever waits for the other.
struct thread_buffer {
  chunk* tail;
  std::size_t used = 0;  // producer only
  chunk* head;           // writer only
  std::size_t read = 0;  // writer only

  thread_buffer() : tail(new chunk), head(tail) {}
  ~thread_buffer() {
    for (chunk* c = head; c != nullptr;) {
      chunk* next = c->next.load(std::memory_order_acquire);
      delete c;
      c = next;
    }
  }
  thread_buffer(const thread_buffer&) = delete;
  thread_buffer& operator=(const thread_buffer&) = delete;

  raw_event* reserve(std::size_t n) {
    if (used + n > chunk::capacity) {
      auto* c = new chunk;
      tail->next.store(c, std::memory_order_release);
      tail = c;
      used = 0;
    }
    return tail->slots() + used;
  }
  void publish(std::size_t n) {
    used += n;
    tail->published.store(used, std::memory_order_release);
  }
};

namespace {

std::atomic<std::uint64_t> next_generation{1};

// A thread may record for a few tracers over its life (one engine after another, or two at
// once); a handful of cached buffers keeps that from registering a new buffer per switch.
struct cached_buffer {
  std::uint64_t generation = 0;
  thread_buffer* buffer = nullptr;
};
thread_local cached_buffer cache[4];
thread_local unsigned cache_next = 0;

constexpr std::size_t max_label = 1024;
// How long a record may take from its timestamp to its publication before pairing gets it wrong
// (a preempted thread, say); pairing waits this long, so the writer holds this much in memory.
constexpr std::int64_t settle_ns = 100'000'000;

// A record is published right after its last clock read: a send's time, a handling's end.
std::int64_t published_by(const raw_event& e) {
  return e.t_ns + e.dur_ns;
}

// ---- output --------------------------------------------------------------------------------

struct pair_key {
  std::uint64_t self;
  std::uint64_t addr;
  bool operator==(const pair_key&) const = default;
};
struct pair_key_hash {
  std::size_t operator()(const pair_key& k) const noexcept {
    return std::hash<std::uint64_t>{}(k.self * 0x9e3779b97f4a7c15ULL ^ k.addr);
  }
};

struct waiting {
  std::vector<raw_event> sends;
  std::vector<raw_event> handles;
};

void append_escaped(std::string& out, std::string_view s) {
  append_json_string(out, s);
}

void append_int(std::string& out, std::uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

// Microseconds with nanosecond digits: the trace format's unit, exact.
void append_us(std::string& out, std::int64_t ns) {
  if (ns < 0) {
    ns = 0;
  }
  append_int(out, static_cast<std::uint64_t>(ns / 1000));
  char frac[4] = {'.', '0', '0', '0'};
  auto rem = static_cast<int>(ns % 1000);
  frac[1] = static_cast<char>('0' + rem / 100);
  frac[2] = static_cast<char>('0' + rem / 10 % 10);
  frac[3] = static_cast<char>('0' + rem % 10);
  out.append(frac, 4);
}

std::string demangle(const std::type_info& ti) {
  int status = 0;
  char* d = abi::__cxa_demangle(ti.name(), nullptr, nullptr, &status);
  std::string name = status == 0 && d ? d : ti.name();
  std::free(d);
  for (std::string_view ns : {"troupe::", "caf::"}) {
    for (auto pos = name.find(ns); pos != std::string::npos; pos = name.find(ns)) {
      name.erase(pos, ns.size());
    }
  }
  return name;
}

const char* kind_of(std::uint8_t flags) {
  return (flags & flag::response) ? "response" : (flags & flag::request) ? "request" : "async";
}

}  // namespace

struct tracer::impl {
  std::string path;
  std::FILE* out = nullptr;
  std::int64_t t0 = 0;

  std::mutex mutex;
  std::condition_variable cv;
  bool stopping = false;
  bool stopped = false;
  std::vector<std::unique_ptr<thread_buffer>> buffers;  // guarded by mutex
  std::thread thread;

  // The writer thread's own state.
  std::string text;
  bool first = true;
  std::atomic<std::uint64_t> written{0};
  std::unordered_map<std::uint32_t, std::string> labels;
  using pending_map = std::unordered_map<pair_key, waiting, pair_key_hash>;
  pending_map pending;
  // Keys to pair up once every record that could belong before theirs has surely been read:
  // (when the record was published, roughly; key), in roughly increasing time.
  std::deque<std::pair<std::int64_t, pair_key>> ripening;
  std::vector<std::pair<raw_event, raw_event>> deferred;  // matched, a label not read yet
  std::unordered_map<std::uint64_t, std::string> names;    // message type names by key
  std::uint64_t next_flow = 1;
  mutable std::mutex error_mutex;
  std::string error;

  void run();
  void drain(thread_buffer& b);
  void take(const raw_event* slots, std::size_t n);
  void match(pending_map::iterator it, std::int64_t watermark);
  bool ready(const raw_event& e) const;
  std::string_view label_text(std::uint32_t id) const;
  const std::string& name_of(const raw_event& e);
  void emit(const raw_event& s, const raw_event& h);
  void emit_unhandled(const raw_event& s);
  void begin_event();
  void finish();
  void flush_text(bool force);
  void fail(const std::string& what);
};

tracer::tracer(const std::string& path)
    : impl_(std::make_unique<impl>()), generation_(next_generation.fetch_add(1)) {
  auto& m = *impl_;
  m.path = path;
  m.out = std::fopen(path.c_str(), "w");
  if (m.out == nullptr) {
    throw std::runtime_error("cannot open trace file '" + path + "': " + std::strerror(errno));
  }
  m.t0 = now_ns();
  m.text = "{\"traceEvents\":[\n";
  m.begin_event();
  m.text += R"({"name":"process_name","ph":"M","pid":1,"tid":0,"args":{"name":"troupe"}})";
  m.begin_event();
  m.text +=
      R"j({"name":"thread_name","ph":"M","pid":1,"tid":0,"args":{"name":"outside actors (timers, I/O, callers)"}})j";
  m.thread = std::thread([&m] { m.run(); });
}

tracer::~tracer() {
  stop();
}

std::int64_t tracer::now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

thread_buffer* tracer::local_buffer() {
  for (auto& c : cache) {
    if (c.generation == generation_) {
      return c.buffer;
    }
  }
  auto b = std::make_unique<thread_buffer>();
  thread_buffer* raw = b.get();
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->buffers.push_back(std::move(b));
  }
  cache[cache_next++ % std::size(cache)] = {generation_, raw};
  return raw;
}

void tracer::record(const raw_event& e) {
  thread_buffer* b = local_buffer();
  new (b->reserve(1)) raw_event(e);
  b->publish(1);
}

std::uint32_t tracer::label(std::string_view text) {
  text = text.substr(0, max_label);
  const std::uint32_t id = next_label_.fetch_add(1, std::memory_order_relaxed);
  thread_buffer* b = local_buffer();
  const std::size_t slots = 1 + (text.size() + sizeof(raw_event) - 1) / sizeof(raw_event);
  raw_event* p = b->reserve(slots);
  new (p) raw_event{};
  p->kind = record_kind::label;
  p->self = id;
  p->mailbox = static_cast<std::uint32_t>(text.size());
  std::memcpy(static_cast<void*>(p + 1), text.data(), text.size());
  b->publish(slots);
  return id;
}

void tracer::stop() {
  auto& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    if (m.stopping) {
      return;
    }
    m.stopping = true;
  }
  m.cv.notify_all();
  m.thread.join();
}

std::uint64_t tracer::events_written() const {
  return impl_->written.load();
}

std::string tracer::error() const {
  std::lock_guard<std::mutex> lock(impl_->error_mutex);
  return impl_->error;
}

// ---- the writer thread ---------------------------------------------------------------------

void tracer::impl::run() {
  std::vector<thread_buffer*> snapshot;
  for (;;) {
    bool last = false;
    const std::int64_t cycle_start = now_ns();
    {
      std::unique_lock<std::mutex> lock(mutex);
      // Not waiting for a state change: a periodic flush, so memory held in chunks stays small
      // under load; stop() wakes it at once.
      cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return stopping; });
      last = stopping;
      snapshot.clear();
      for (auto& b : buffers) {
        snapshot.push_back(b.get());
      }
    }
    for (auto* b : snapshot) {
      drain(*b);
    }
    // Buffers are read one after another, so a record published just after its buffer was read
    // can be missing while a later one from another thread is already here: pair only what is
    // older than a margin (all of it at the end).
    const std::int64_t watermark =
        last ? std::numeric_limits<std::int64_t>::max() : cycle_start - settle_ns;
    while (!ripening.empty() && ripening.front().first <= watermark) {
      const pair_key k = ripening.front().second;
      ripening.pop_front();
      if (auto it = pending.find(k); it != pending.end()) {
        match(it, watermark);
      }
    }
    // A label read only now (another thread's buffer) lets earlier matches go out.
    std::vector<std::pair<raw_event, raw_event>> again;
    again.swap(deferred);
    for (auto& [s, h] : again) {
      if (ready(s) && ready(h)) {
        emit(s, h);
      } else {
        deferred.emplace_back(s, h);
      }
    }
    if (last) {
      finish();
      return;
    }
    flush_text(false);
  }
}

void tracer::impl::drain(thread_buffer& b) {
  for (;;) {
    chunk* c = b.head;
    std::size_t p = c->published.load(std::memory_order_acquire);
    take(c->slots() + b.read, p - b.read);
    b.read = p;
    chunk* next = c->next.load(std::memory_order_acquire);
    if (next == nullptr) {
      return;
    }
    // The producer published its last records in `c` before linking `next`.
    p = c->published.load(std::memory_order_acquire);
    take(c->slots() + b.read, p - b.read);
    delete c;
    b.head = next;
    b.read = 0;
  }
}

void tracer::impl::take(const raw_event* slots, std::size_t n) {
  for (std::size_t i = 0; i < n;) {
    const raw_event& e = slots[i];
    if (e.kind == record_kind::label) {
      const char* chars = reinterpret_cast<const char*>(&slots[i + 1]);
      labels[static_cast<std::uint32_t>(e.self)].assign(chars, e.mailbox);
      i += 1 + (e.mailbox + sizeof(raw_event) - 1) / sizeof(raw_event);
      continue;
    }
    ++i;
    const bool is_send = e.kind == record_kind::send || e.kind == record_kind::spawn;
    // A spawn pairs with the actor's init, a send with the handling of that mailbox element
    // (addresses are reused, but only after the element was handled and freed).
    pair_key k{e.self, e.kind == record_kind::spawn || e.kind == record_kind::init ? 0 : e.addr};
    auto& w = pending[k];
    (is_send ? w.sends : w.handles).push_back(e);
    ripening.emplace_back(published_by(e), k);
  }
}

// Sends and handlings of one key alternate in time (a mailbox element is freed after it was
// handled, and only then can its address carry the next message): a handling belongs to the
// latest send before it, once every earlier handling of the key has been paired.
void tracer::impl::match(pending_map::iterator it, std::int64_t watermark) {
  waiting& w = it->second;
  auto by_time = [](const raw_event& a, const raw_event& b) { return a.t_ns < b.t_ns; };
  std::sort(w.sends.begin(), w.sends.end(), by_time);
  std::sort(w.handles.begin(), w.handles.end(), by_time);
  std::size_t used_sends = 0;
  std::size_t used_handles = 0;
  while (used_handles < w.handles.size()) {
    const raw_event& h = w.handles[used_handles];
    if (published_by(h) > watermark) {
      break;
    }
    std::size_t best = used_sends;
    while (best + 1 < w.sends.size() && w.sends[best + 1].t_ns <= h.t_ns) {
      ++best;
    }
    if (best >= w.sends.size() || w.sends[best].t_ns > h.t_ns) {
      break;  // its send is not read yet
    }
    // Older sends to this key were never handled (the receiver had quit).
    for (std::size_t i = used_sends; i < best; ++i) {
      emit_unhandled(w.sends[i]);
    }
    const raw_event& s = w.sends[best];
    if (ready(s) && ready(h)) {
      emit(s, h);
    } else {
      deferred.emplace_back(s, h);
    }
    used_sends = best + 1;
    ++used_handles;
  }
  w.sends.erase(w.sends.begin(), w.sends.begin() + static_cast<std::ptrdiff_t>(used_sends));
  w.handles.erase(w.handles.begin(), w.handles.begin() + static_cast<std::ptrdiff_t>(used_handles));
  if (w.sends.empty() && w.handles.empty()) {
    pending.erase(it);
  }
}

bool tracer::impl::ready(const raw_event& e) const {
  return (e.run == 0 || labels.contains(e.run)) && (e.node == 0 || labels.contains(e.node));
}

std::string_view tracer::impl::label_text(std::uint32_t id) const {
  if (id == 0) {
    return {};
  }
  auto it = labels.find(id);
  return it == labels.end() ? std::string_view("?") : std::string_view(it->second);
}

const std::string& tracer::impl::name_of(const raw_event& e) {
  const std::uint64_t key =
      e.what_is == what_kind::numbered ? (e.what | (std::uint64_t{1} << 63)) : e.what;
  auto it = names.find(key);
  if (it != names.end()) {
    return it->second;
  }
  std::string name;
  switch (e.what_is) {
    case what_kind::none:
      name = "()";
      break;
    case what_kind::atom:
      name = caf::to_string(static_cast<caf::atom_value>(e.what));
      if (name.rfind("tr_", 0) == 0) {
        name.erase(0, 3);  // the project's prefix says nothing to a reader
      }
      break;
    case what_kind::numbered:
      name = e.what > 0 && e.what <= caf::type_nrs - 1 ? caf::numbered_type_names[e.what - 1]
                                                       : "builtin#" + std::to_string(e.what);
      break;
    case what_kind::type_info:
      name = demangle(*reinterpret_cast<const std::type_info*>(e.what));
      break;
    case what_kind::text:
      name = reinterpret_cast<const char*>(e.what);
      break;
  }
  return names.emplace(key, std::move(name)).first->second;
}

void tracer::impl::begin_event() {
  if (!first) {
    text += ",\n";
  }
  first = false;
  written.fetch_add(1, std::memory_order_relaxed);
}

// One handled message: its slice on the receiver's track, and a flow arrow from the send (on the
// sender's track when it was sent from inside a handler, else from an anchor on the outside track).
void tracer::impl::emit(const raw_event& s, const raw_event& h) {
  const bool is_init = h.kind == record_kind::init;
  const bool has_send = s.kind != record_kind{};
  // For an init, name_of() is the actor's kind ("run", "node", "writer").
  const std::string& name = name_of(h);
  const std::string msg = is_init ? "spawn" : name;
  const std::uint64_t flow = has_send ? next_flow++ : 0;

  if (is_init) {
    // Tracks are named once, at init: "run <run id>", "node <node> (run <run>) #17", "writer".
    std::string track(name);
    if (auto node = label_text(h.node); !node.empty()) {
      track += " ";
      track += node;
    }
    if (auto run = label_text(h.run); !run.empty()) {
      track += h.node != 0 ? " (run " + std::string(run) + ")" : " " + std::string(run);
    }
    track += " #" + std::to_string(h.self);
    begin_event();
    text += R"({"name":"thread_name","ph":"M","pid":1,"tid":)";
    append_int(text, h.self);
    text += R"(,"args":{"name":)";
    append_escaped(text, track);
    text += "}}";
  }

  if (has_send) {
    const bool inside = (s.flags & flag::inside) != 0;
    const std::uint64_t from_track = inside ? s.other : 0;
    if (!inside) {
      begin_event();
      text += R"({"name":)";
      append_escaped(text, "send " + msg);
      text += R"(,"cat":"send","ph":"X","dur":0,"pid":1,"tid":0,"ts":)";
      append_us(text, s.t_ns - t0);
      text += R"(,"args":{"from":)";
      append_int(text, s.other);
      text += R"(,"to":)";
      append_int(text, h.self);
      text += "}}";
    }
    begin_event();
    text += R"({"name":)";
    append_escaped(text, msg);
    text += R"(,"cat":"msg","ph":"s","id":)";
    append_int(text, flow);
    text += R"(,"pid":1,"tid":)";
    append_int(text, from_track);
    text += R"(,"ts":)";
    append_us(text, s.t_ns - t0);
    text += "}";
    begin_event();
    text += R"({"name":)";
    append_escaped(text, msg);
    text += R"(,"cat":"msg","ph":"f","bp":"e","id":)";
    append_int(text, flow);
    text += R"(,"pid":1,"tid":)";
    append_int(text, h.self);
    text += R"(,"ts":)";
    append_us(text, h.t_ns - t0);
    text += "}";
  }

  begin_event();
  text += R"({"name":)";
  append_escaped(text, is_init ? std::string("init") : name);
  text += is_init ? R"(,"cat":"init")" : R"(,"cat":"handle")";
  text += R"(,"ph":"X","pid":1,"tid":)";
  append_int(text, h.self);
  text += R"(,"ts":)";
  append_us(text, h.t_ns - t0);
  text += R"(,"dur":)";
  append_us(text, h.dur_ns);
  text += R"(,"args":{"kind":)";
  text += is_init ? "\"spawn\"" : std::string("\"") + kind_of(h.flags) + "\"";
  text += R"(,"mailbox":)";
  append_int(text, h.mailbox);
  if (auto run = label_text(h.run); !run.empty()) {
    text += R"(,"run":)";
    append_escaped(text, run);
  }
  if (auto node = label_text(h.node); !node.empty()) {
    text += R"(,"node":)";
    append_escaped(text, node);
  }
  if (has_send) {
    text += R"(,"from":)";
    append_int(text, s.other);
    text += R"(,"sent":)";
    append_us(text, s.t_ns - t0);
    text += R"(,"queued_us":)";
    append_us(text, h.t_ns - s.t_ns);
    text += R"(,"flow":)";
    append_int(text, flow);
    if (!(s.flags & flag::inside)) {
      text += R"(,"from_outside":true)";
    }
    if (auto run = label_text(s.run); !run.empty()) {
      text += R"(,"from_run":)";
      append_escaped(text, run);
    }
    if (auto node = label_text(s.node); !node.empty()) {
      text += R"(,"from_node":)";
      append_escaped(text, node);
    }
  }
  if (h.rows != 0 || h.batches != 0) {
    text += R"(,"rows":)";
    append_int(text, h.rows);
    text += R"(,"batches":)";
    append_int(text, h.batches);
  }
  if (h.flags & flag::dropped) {
    text += R"(,"dropped":true)";
  }
  text += "}}";
}

// A message that was enqueued but never handled (its receiver had quit): an instant event.
void tracer::impl::emit_unhandled(const raw_event& s) {
  begin_event();
  text += R"({"name":)";
  append_escaped(text, name_of(s) + " (not handled)");
  text += R"(,"cat":"lost","ph":"i","s":"t","pid":1,"tid":)";
  append_int(text, (s.flags & flag::inside) ? s.other : 0);
  text += R"(,"ts":)";
  append_us(text, s.t_ns - t0);
  text += R"(,"args":{"to":)";
  append_int(text, s.self);
  text += R"(,"from":)";
  append_int(text, s.other);
  text += "}}";
}

void tracer::impl::finish() {
  for (auto& [s, h] : deferred) {
    emit(s, h);  // a label that never came prints as "?"
  }
  deferred.clear();
  for (auto& [k, w] : pending) {
    for (auto& s : w.sends) {
      emit_unhandled(s);
    }
    for (auto& h : w.handles) {
      emit(raw_event{}, h);  // its send was not traced
    }
  }
  pending.clear();
  text += "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\"producer\":\"troupe\"}}\n";
  flush_text(true);
  if (std::fclose(out) != 0) {
    fail(std::strerror(errno));
  }
  out = nullptr;
}

void tracer::impl::flush_text(bool force) {
  if (text.empty() || (!force && text.size() < (1u << 16))) {
    return;
  }
  if (std::fwrite(text.data(), 1, text.size(), out) != text.size()) {
    fail(std::strerror(errno));
  }
  text.clear();
}

void tracer::impl::fail(const std::string& what) {
  std::lock_guard<std::mutex> lock(error_mutex);
  if (error.empty()) {
    error = "cannot write trace file '" + path + "': " + what;
  }
}

}  // namespace troupe::trace
