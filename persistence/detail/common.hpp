#pragma once

// Shared by the three stores: status names, JSON text, the row layout of each table and the
// last-wins dedupe every backend applies before writing a batch.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "persistence/store.hpp"

namespace troupe::detail {

/// The schema version this build creates and understands.
inline constexpr int current_schema_version = 5;

/// The most bytes of a dead letter's `row` and `error` a store keeps (dead_letter_row).
inline constexpr std::size_t dead_letter_text_max = 64 * 1024;

/// One schema version: the statements that take a database from the version before to this
/// one, run in order inside the migration transaction (each backend spells its own SQL).
struct migration {
  int version;
  const char* const* statements;
  std::size_t count;
};

std::string schema_too_new_message(long long found);

std::optional<run_status> parse_run_status(std::string_view s);
std::optional<node_status> parse_node_status(std::string_view s);
std::optional<cache_status> parse_cache_status(std::string_view s);

/// A name for storage, or a non-transient error for an enum value out of range (storing
/// "unknown" would make the row unreadable later).
expected<std::string_view, store_error> status_name(run_status s);
expected<std::string_view, store_error> status_name(node_status s);
expected<std::string_view, store_error> status_name(cache_status s);

/// Parses JSON the store wrote itself: no size limits (the writer accepted the value already),
/// only a generous depth cap. A malformed value is a non-transient error naming `what`.
expected<json_ptr, store_error> json_from_text(std::string_view text, std::string_view what);

/// The url with any password replaced by "***" (userinfo and `password=` parameters).
std::string mask_url(std::string_view url);

/// Rows with an out-of-domain item (< -1) or attempt (< 0) are refused by every backend (the
/// SQL backends through CHECK constraints), so a bad row fails its whole batch everywhere.
bool valid_node_key(const node_row& r);

/// Checks every run and node row of `batch` before anything is written: statuses a store can
/// name, node keys in their domain, run ids without NUL bytes. Every backend runs it first, so a
/// batch with a bad row fails whole (non-transient) on all of them, whether or not that row's run
/// is fenced.
expected<bool, store_error> check_rows(const write_batch& batch);

/// Refuses, with a non-transient error every backend words alike, what no store keeps under an
/// Idempotency-Key: an empty key, a key longer than request_key_max_bytes, a key or scope that
/// holds a NUL byte (PostgreSQL text ends there) or is not valid UTF-8 (PostgreSQL refuses it,
/// SQLite would keep it).
expected<bool, store_error> check_request_key(std::string_view key, std::string_view scope);
/// check_request_key(), and the same for the row's request_hash and run_id.
expected<bool, store_error> check_request_row(const request_key_row& row);

/// Whether a run in this status is finished: writing it releases the run's lease (lease_until
/// 0). The SQL upsert of runs spells the same set (runs_table's lease_until column).
bool is_final(run_status s);

/// The distinct (run, epoch) pairs with epoch > 0 among the rows given to add(): the runs a
/// write fences. Keeps views of the run ids, which must outlive it. Consecutive rows of one run
/// (the common case) cost a comparison each; no allocation per row.
class fence_pairs {
 public:
  void add(std::string_view run_id, std::int64_t epoch) {
    if (epoch <= 0) {
      return;
    }
    if (!pairs_.empty() && pairs_.back().first == run_id && pairs_.back().second == epoch) {
      return;
    }
    pairs_.emplace_back(run_id, epoch);
    sorted_ = false;
  }
  bool empty() const { return pairs_.empty(); }
  /// Sorted by run id, then epoch; no duplicates.
  const std::vector<std::pair<std::string_view, std::int64_t>>& pairs() {
    if (!sorted_) {
      std::sort(pairs_.begin(), pairs_.end());
      pairs_.erase(std::unique(pairs_.begin(), pairs_.end()), pairs_.end());
      sorted_ = true;
    }
    return pairs_;
  }
  void clear() {
    pairs_.clear();
    sorted_ = true;
  }

 private:
  std::vector<std::pair<std::string_view, std::int64_t>> pairs_;
  bool sorted_ = true;
};

/// Sorts run ids and drops duplicates: write_outcome::fenced_runs and the runs renew_leases()
/// reports lost come out alike from every backend.
void sort_ids(std::vector<std::string>& runs);

/// `text` made storable anywhere as a dead letter: invalid UTF-8 and NUL bytes (which PostgreSQL
/// text refuses) replaced by U+FFFD, then cut to at most `max_bytes` on a character boundary. A
/// dead letter exists because its row was refused; its own text must not be refused too.
std::string storable_text(std::string_view text, std::size_t max_bytes = dead_letter_text_max);
/// `row` with its texts made storable (storable_text; run_id, table and key to 1 KiB).
dead_letter_row storable(const dead_letter_row& row);

/// One column of a table as the SQL backends declare and write it.
struct column_spec {
  const char* name;
  const char* pg_array_type;  // element type for PostgreSQL's unnest($n::type[])
  /// What an upsert sets the column to when the row exists already: nullptr, the new value
  /// (`excluded.name`); "", the stored value (the column is left out of the SET list); else this
  /// SQL expression (valid in SQLite and PostgreSQL; the stored row is `<table>.column`).
  const char* on_update = nullptr;
};

struct table_spec {
  const char* name;
  const column_spec* columns;
  std::size_t column_count;
  std::size_t key_count;  // the leading columns form the primary key
};

extern const table_spec runs_table;
extern const table_spec nodes_table;
extern const table_spec workflows_table;
extern const table_spec cache_table;

/// "a, b, c"
std::string column_list(const table_spec& t);
/// "ON CONFLICT (k1, k2) DO UPDATE SET c = excluded.c, ..." (valid in SQLite and PostgreSQL),
/// each column as its column_spec::on_update says.
std::string on_conflict_clause(const table_spec& t);

struct tuple_hash {
  template <class... T>
  std::size_t operator()(const std::tuple<T...>& t) const {
    std::size_t h = 0;
    std::apply(
        [&h](const auto&... v) {
          ((h ^= std::hash<std::decay_t<decltype(v)>>{}(v) + 0x9e3779b97f4a7c15ULL + (h << 6) +
                 (h >> 2)),
           ...);
        },
        t);
    return h;
  }
};

/// Ascending indices of the rows that a later row with the same key replaces (a batch may
/// carry a "running" and a "succeeded" record of the same execution). One open-addressing
/// table of row indices rather than a hash-map node per row: this runs on every batch, on the
/// committer's core, where every allocation shows in async mode's latency tail.
template <class Row, class KeyFn>
std::vector<std::size_t> superseded_rows(const std::vector<Row>& rows, KeyFn key) {
  std::vector<std::size_t> out;
  if (rows.size() < 2) {
    return out;
  }
  constexpr auto empty = static_cast<std::uint32_t>(-1);
  if (rows.size() >= empty) {  // 32-bit slots halve the table; no real batch comes near this
    throw std::length_error("superseded_rows: more than 2^32 - 2 rows in one batch");
  }
  std::size_t capacity = 4;
  while (capacity < rows.size() * 2) {
    capacity *= 2;
  }
  const std::size_t mask = capacity - 1;
  std::vector<std::uint32_t> slots(capacity, empty);  // the newest row seen for a key
  std::vector<std::size_t> hashes(rows.size());
  tuple_hash hasher;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto k = key(rows[i]);
    const std::size_t h = hasher(k);
    hashes[i] = h;
    // Mixed before masking: std::hash of an integer is the integer itself.
    std::size_t pos = (h ^ (h >> 29)) * 0xbf58476d1ce4e5b9ULL >> 17 & mask;
    for (;; pos = (pos + 1) & mask) {
      const std::uint32_t j = slots[pos];
      if (j == empty) {
        slots[pos] = static_cast<std::uint32_t>(i);
        break;
      }
      if (hashes[j] == h && key(rows[j]) == k) {
        out.push_back(j);
        slots[pos] = static_cast<std::uint32_t>(i);
        break;
      }
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// Calls `fn(i)` in ascending order for every index below `count` that is not in `gone`
/// (ascending, as superseded_rows returns it).
template <class Fn>
void for_each_kept(std::size_t count, const std::vector<std::size_t>& gone, Fn fn) {
  auto next_gone = gone.begin();
  for (std::size_t i = 0; i < count; ++i) {
    if (next_gone != gone.end() && *next_gone == i) {
      ++next_gone;
      continue;
    }
    fn(i);
  }
}

/// The rows to write, with only the last row for each key kept (PostgreSQL refuses one upsert
/// touching a row twice, and the second write would be wasted anyway). Keeps the order of the
/// kept rows.
template <class Row, class KeyFn>
std::vector<const Row*> last_wins(const std::vector<Row>& rows, KeyFn key) {
  const auto gone = superseded_rows(rows, key);
  std::vector<const Row*> out;
  out.reserve(rows.size() - gone.size());
  for_each_kept(rows.size(), gone, [&](std::size_t i) { out.push_back(&rows[i]); });
  return out;
}

/// The rows write() stores: all of them when the caller vouches that keys are unique
/// (write_batch::unique_keys), else last_wins().
template <class Row, class KeyFn>
std::vector<const Row*> rows_to_write(const std::vector<Row>& rows, KeyFn key, bool unique_keys) {
  if (!unique_keys) {
    return last_wins(rows, key);
  }
  std::vector<const Row*> out;
  out.reserve(rows.size());
  for (const Row& r : rows) {
    out.push_back(&r);
  }
  return out;
}

inline auto run_key(const run_row& r) {
  return std::tuple<std::string_view>(r.run_id);
}
inline auto node_key(const node_row& r) {
  return std::tuple<std::string_view, std::string_view, std::int64_t, int>(r.run_id, r.node_id,
                                                                           r.item, r.attempt);
}
inline auto workflow_key(const workflow_row& r) {
  return std::tuple<std::string_view, std::string_view>(r.name, r.version);
}
inline auto cache_key(const cache_row& r) {
  return std::tuple<std::string_view>(r.key);
}

/// Runs `f` and turns any exception into a non-transient store_error, so nothing escapes the
/// store interface.
template <class F>
auto guarded(std::string_view what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::exception& e) {
    return make_unexpected(store_error{std::string(what) + ": " + e.what(), false});
  } catch (...) {
    return make_unexpected(store_error{std::string(what) + ": unknown exception", false});
  }
}

// Backends, created by open_store().
std::unique_ptr<store> make_memory_store();
expected<std::unique_ptr<store>, store_error> open_sqlite_store(std::string path, std::string url);
expected<std::unique_ptr<store>, store_error> open_postgres_store(std::string url);

}  // namespace troupe::detail
