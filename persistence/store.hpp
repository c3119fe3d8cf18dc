#pragma once

// Stores behind one synchronous interface: in-memory, SQLite (the embedded default) and
// PostgreSQL. No actors here: the writer actor (actors/) owns a store and calls it from its own
// thread. A store object is used by one thread at a time unless an implementation says more.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "workflow/context.hpp"
#include "workflow/expected.hpp"
#include "workflow/json.hpp"
#include "workflow/run_state.hpp"
#include "workflow/shared_text.hpp"

namespace troupe {

/// Why a store operation failed. `transient` errors (locked database, connection lost, disk
/// full) are worth retrying with backoff; others (schema too new, bad URL) are not.
struct store_error {
  std::string message;
  bool transient = false;
};

/// Times are wall-clock microseconds since the Unix epoch (0: not set).
struct run_row {
  shared_text run_id;
  std::string workflow;
  std::string version;
  std::string plan_hash;
  run_status status = run_status::pending;
  json_ptr inputs;   // null pointer: SQL NULL
  json_ptr outputs;  // null pointer: SQL NULL
  std::string error;
  std::int64_t started_at = 0;
  std::int64_t finished_at = 0;
  std::string parent_run_id;  // child runs (workflow and dynamic tasks); empty otherwise
  std::string parent_node_id;
  /// Ownership (DESIGN.md, "Ownership, leases and fencing"). `owner` names the engine instance
  /// that runs it ("host/pid/start_us"), `lease_until` (wall µs, 0: no lease) is when another
  /// engine may claim it, `epoch` counts its owners (1 for a new run, +1 per claim).
  /// write() stores all three when it inserts the row; on update it keeps owner and epoch as
  /// they are (only claim_run() changes them) and keeps lease_until too (only claim_run() and
  /// renew_leases() move it), except that a row whose status is final (succeeded, failed,
  /// cancelled, timed_out) releases the lease (0), on insert too. `epoch` also fences the write
  /// (see write()); 0: an unfenced row (tests, tools).
  shared_text owner;
  std::int64_t lease_until = 0;
  std::int64_t epoch = 0;
};

/// One row per (run, node, item, attempt); item -1 outside for_each; attempt 0 is the
/// node-level record (see node_record in workflow/run_state.hpp).
struct node_row {
  shared_text run_id;  // shared by every row of a run: a copy is a reference count
  std::string node_id;
  std::int64_t item = -1;
  int attempt = 0;
  node_status status = node_status::pending;
  json_ptr input;
  json_ptr output;
  std::string error;
  cache_status cache = cache_status::off;
  std::int64_t started_at = 0;
  std::int64_t finished_at = 0;
  std::string worker;  // which process/node ran it; empty for the local engine
  /// `dynamic` nodes: whether the generated child plan came from the cache (`off` without
  /// `cache`, and for every other node).
  cache_status spec_cache = cache_status::off;
  /// `dynamic` and `workflow` nodes: the child run this execution started or resumed.
  std::string child_run_id;
  /// The run's event sequence numbers (run_event::seq) of this attempt's node_started and
  /// node_finished events; 0: not (yet) emitted. A run's event stream is replayed from its
  /// rows in this order (its run_started is 1, its run_finished follows the largest).
  std::int64_t started_seq = 0;
  std::int64_t finished_seq = 0;
  /// Cluster: how many times the worker running this attempt was lost and the attempt was
  /// dispatched again under the same execution key (a loss does not count against `retry`).
  std::int32_t lost = 0;
  /// The epoch of its run under which the row was made: fences the write (see write()); not
  /// stored. 0: unfenced.
  std::int64_t epoch = 0;
};

struct workflow_row {
  std::string name;
  std::string version;
  std::string hash;
  std::string document;  // the JSON text as registered
  std::int64_t registered_at = 0;
};

struct cache_row {
  std::string key;       // content hash of (task, rendered with, item, cache version)
  std::string workflow;  // for `cache list|clear --workflow`
  std::string node_id;
  json_ptr value;    // a node output, or a compiled dynamic child's document
  std::string kind;  // "output" or "spec"
  std::int64_t created_at = 0;
};

/// Everything one transaction writes. Upserts are idempotent: writing the same batch twice
/// leaves the same rows. Within a batch, later rows for the same key win.
struct write_batch {
  std::vector<run_row> runs;
  std::vector<node_row> nodes;
  std::vector<workflow_row> workflows;
  std::vector<cache_row> cache;

  /// The caller guarantees that no two rows of a table share a key (keep_newest_rows() ran):
  /// the store then skips its own deduplication. A batch that breaks the promise may fail
  /// (PostgreSQL refuses an upsert touching a row twice) or store either row.
  bool unique_keys = false;

  bool empty() const { return runs.empty() && nodes.empty() && workflows.empty() && cache.empty(); }
  std::size_t size() const { return runs.size() + nodes.size() + workflows.size() + cache.size(); }
};

/// What write() did besides storing rows.
struct write_outcome {
  /// Runs whose rows were refused because another owner holds them now (the stored epoch differs
  /// from the rows' epoch): none of their rows in the batch was written. The rest was. Sorted,
  /// no duplicates.
  std::vector<std::string> fenced_runs;
};

/// The answer to claim_run().
struct claim_result {
  bool found = false;    // false: no such run
  bool claimed = false;  // true: the caller owns the run now, under `epoch`
  /// The run's owner, lease and epoch after the call (the caller's when claimed; the holder's
  /// when refused), and its status.
  std::string owner;
  std::int64_t lease_until = 0;
  std::int64_t epoch = 0;
  run_status status = run_status::pending;
};

/// A run an engine holds, under an epoch (for renew_leases()).
struct lease_ref {
  std::string run_id;
  std::int64_t epoch = 0;
};

/// A row a database refused for good (a permanent error), kept aside so that the rest of its
/// batch could be committed: `troupe runs dead-letters` lists them.
struct dead_letter_row {
  std::string run_id;   // empty for workflow and cache rows
  std::string table;    // "runs", "node_executions", "workflows", "cache_entries"
  std::string key;      // the row's key, readable: "run/node/item/attempt", "name@version", ...
  std::string row;      // the row as JSON text, cut at 64 KiB
  std::string error;    // what the database said
  std::int64_t at = 0;  // wall µs
  // Stores keep every text storable whatever it holds: invalid UTF-8 and NUL bytes become
  // U+FFFD, `row` and `error` are cut to 64 KiB (run_id, table, key to 1 KiB) on a character
  // boundary.
};

/// A request the service has seen under an Idempotency-Key (issue 15): a retry with the same key
/// for the same workflow gets the run the first request started.
struct request_key_row {
  std::string key;              // the client's Idempotency-Key
  std::string scope;            // what the key is scoped to (the workflow name)
  std::string request_hash;     // digest of the request, to tell a retry from a different request
  std::string run_id;           // the run the first request started
  std::int64_t created_at = 0;  // wall µs
};

/// The longest Idempotency-Key a store keeps, in bytes (request_key_row::key).
inline constexpr std::size_t request_key_max_bytes = 255;

struct run_query {
  std::optional<run_status> status;
  std::string workflow;    // empty: any
  std::size_t limit = 50;  // 0: no limit
  /// Empty: any; else only the child runs of that run. After limit, so that aggregate
  /// initializers written as {status, workflow, limit} keep their meaning.
  std::string parent_run_id;
  /// Only runs without a parent (top-level runs), when set. With parent_run_id set too, no run
  /// matches. The fields below come after the older ones for the same reason as parent_run_id.
  bool top_level = false;
  /// Paging, newest first: only runs strictly after this position in the list order, i.e. with
  /// (started_at, run_id) < (before_started_at, before_run_id). Empty before_run_id: from the
  /// start. With the last row of each page as the cursor of the next, the pages concatenate to
  /// the whole list: no run twice, none missed (of the runs that exist throughout; a run started
  /// meanwhile sorts before the cursor and shows up only in a new first page).
  std::int64_t before_started_at = 0;
  std::string before_run_id;
};

class store {
 public:
  virtual ~store() = default;

  /// The URL the store was opened with, with any password masked.
  virtual std::string describe() const = 0;

  /// Writes the whole batch in one transaction (one round trip where the backend allows):
  /// either every row is stored or none is, apart from fenced runs. Fencing: for every run that
  /// rows of the batch belong to (with epoch > 0), the stored run's epoch is read inside the
  /// transaction, holding it against a concurrent claim_run(); when it exists and differs from
  /// the rows' epoch, every row of that run in the batch is dropped and the run is named in
  /// write_outcome::fenced_runs. A run not stored yet is not fenced (its first rows insert it).
  /// Rows of one run are meant to carry one epoch: when they carry several (epoch 0 aside), the
  /// run is fenced if any of them differs from the stored one. A run with only epoch 0 rows in
  /// the batch is never fenced; its rows are written whatever epoch is stored. A batch with a
  /// row that cannot be stored at all (a status out of range, a node item < -1 or attempt < 0)
  /// fails whole, fenced or not, with a non-transient error. Without any row of epoch > 0 the
  /// write costs nothing more than before fencing existed.
  virtual expected<write_outcome, store_error> write(const write_batch& batch) = 0;

  /// Takes a run over: succeeds when the run exists, has not succeeded, and its lease has
  /// expired (lease_until <= now_us; a finished run's lease is released, 0). Then, atomically,
  /// owner = `owner`, epoch = epoch + 1, lease_until = `lease_until_us`; its status and every
  /// other column stay. Otherwise changes nothing and reports who holds it (as stored when the
  /// refusal is read back). A claim waits for a write that holds the run (its fence), and a
  /// write that begins after the claim committed is fenced by it.
  virtual expected<claim_result, store_error> claim_run(std::string_view run_id,
                                                        std::string_view owner, std::int64_t now_us,
                                                        std::int64_t lease_until_us);
  /// Extends to `lease_until_us` the leases of the given runs that `owner` still holds at the
  /// given epochs and that are pending or running, in one transaction. Returns the runs it
  /// holds no more (stored with another owner or epoch), sorted; runs not stored (yet) are not
  /// reported, nor finished ones of the same epoch.
  virtual expected<std::vector<std::string>, store_error> renew_leases(
      std::string_view owner, const std::vector<lease_ref>& runs, std::int64_t lease_until_us);

  /// Keeps rows a database refused for good, in one transaction (texts made storable, see
  /// dead_letter_row).
  virtual expected<bool, store_error> write_dead_letters(const std::vector<dead_letter_row>& rows);
  /// The `limit` (0: all) most recently written dead letters, newest first: by the order they
  /// were written in (within one call, its last row first), not by `at`.
  virtual expected<std::vector<dead_letter_row>, store_error> list_dead_letters(std::size_t limit);

  /// Remembers `row` unless an entry for (row.key, row.scope) created at or after
  /// `expired_before_us` exists; an older entry is replaced. Returns the entry stored after the
  /// call: `row` when it was stored, else the earlier one, whatever its request_hash. Atomic
  /// against concurrent callers, in this process or another: of two calls with one key and
  /// scope, exactly one stores its row and both return that row. A key that is empty, longer
  /// than request_key_max_bytes, or a text of the row that holds a NUL byte or is not valid
  /// UTF-8, is refused with a non-transient error on every backend.
  virtual expected<request_key_row, store_error> remember_request(
      const request_key_row& row, std::int64_t expired_before_us) = 0;
  /// The entry for (key, scope), if any (expired or not). A key or scope that no entry could
  /// hold (see remember_request()) is refused with a non-transient error.
  virtual expected<std::optional<request_key_row>, store_error> find_request(
      std::string_view key, std::string_view scope) = 0;
  /// Removes the entries created before `before_us`; returns how many.
  virtual expected<std::size_t, store_error> forget_requests(std::int64_t before_us) = 0;

  /// Newest first (by started_at, then run_id, both descending), filtered as `q` says, at most
  /// q.limit rows. SQL backends seek the (started_at, run_id) index (runs_parent for
  /// parent_run_id) to the cursor, so a page costs its rows, not the rows before it.
  virtual expected<std::vector<run_row>, store_error> list_runs(const run_query& q) = 0;
  virtual expected<std::optional<run_row>, store_error> get_run(std::string_view run_id) = 0;
  /// Ordered by started_at, node_id, item, attempt.
  virtual expected<std::vector<node_row>, store_error> node_rows(std::string_view run_id) = 0;
  /// Runs whose status is pending or running, with their owners and leases (for resume after a
  /// restart: only those whose lease has expired may be claimed).
  virtual expected<std::vector<run_row>, store_error> unfinished_runs() = 0;

  virtual expected<std::optional<workflow_row>, store_error> get_workflow(
      std::string_view name, std::string_view version) = 0;

  virtual expected<std::optional<cache_row>, store_error> get_cache(std::string_view key) = 0;
  virtual expected<std::vector<cache_row>, store_error> list_cache(std::string_view workflow) = 0;
  /// Returns the number of entries removed; empty workflow: all.
  virtual expected<std::size_t, store_error> clear_cache(std::string_view workflow) = 0;

  /// Installs a function that write() calls between slices of a batch of at most
  /// `write_slice_rows` rows each (never before the first nor after the last), on the writing
  /// thread, inside the batch's transaction (SQLite: one multi-row statement per slice;
  /// PostgreSQL: one statement, one round trip, per slice of 32 rows; the memory store: every
  /// 64 rows). The async writer's committer installs sched_yield: a commit of hundreds of rows
  /// then gives its core back every ~100-200 µs, so that a scheduler thread woken meanwhile
  /// runs at once instead of after the whole commit (on a 2-core VM this took async mode's p99
  /// on SQLite from 3.6-4.1x memory mode's to 1.1-1.6x, on PostgreSQL from 5.0-7.8x to
  /// 1.75x: docs/benchmarks.md, session 4). The batch stays all or nothing. The function must
  /// not throw (SQL stores then roll back, but the memory store may keep part of the batch)
  /// nor call this store (its lock is held). Set it from the writing thread, never during a
  /// write(). Empty function: no slices (the default).
  virtual void set_write_yield(std::function<void()> yield) { write_yield_ = std::move(yield); }

  /// Housekeeping the writer runs after it has answered the callers of a commit, so that no
  /// caller waits for it (SQLite checkpoints its write-ahead log here rather than inside a
  /// commit). Failures are not reported: the next write meets any real trouble.
  virtual void maintain() {}

 protected:
  /// For implementations: whether a yield is installed (then slices are due), and the call.
  bool slices_writes() const { return static_cast<bool>(write_yield_); }
  const std::function<void()>& write_yield() const { return write_yield_; }
  void yield_between_slices() const {
    if (write_yield_) {
      write_yield_();
    }
  }

 private:
  std::function<void()> write_yield_;
};

/// The most rows a store writes between two calls of the function given to set_write_yield().
inline constexpr std::size_t write_slice_rows = 64;

/// Calls `yield` (when there is one) between slices of write_slice_rows rows of work done one
/// row at a time: next_row() before each row.
class slice_pacer {
 public:
  explicit slice_pacer(const std::function<void()>& yield) : yield_(yield) {}
  void next_row() {
    if (yield_ && rows_ > 0 && rows_ % write_slice_rows == 0) {
      yield_();
    }
    ++rows_;
  }

 private:
  const std::function<void()>& yield_;
  std::size_t rows_ = 0;
};

/// Keeps only the newest row for each key in every table of `batch` (the last one sent wins, as
/// write() would let it), in the order the kept rows had. Returns how many rows it removed.
std::size_t keep_newest_rows(write_batch& batch);

/// Opens a store by URL: `memory://`, `sqlite://PATH` (relative or absolute; `sqlite://troupe.db`
/// is the default), `postgres://...` or `postgresql://...` (a libpq connection URI). Applies
/// schema migrations; a database whose schema is newer than this program knows is refused.
expected<std::unique_ptr<store>, store_error> open_store(std::string_view url);

/// `url` with any password replaced by `***` (user:pass@ and password=...), for messages.
std::string masked_store_url(std::string_view url);

/// The schema version this program writes.
int schema_version();

}  // namespace troupe
