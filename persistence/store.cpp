#include "persistence/store.hpp"

#include "persistence/detail/common.hpp"

namespace troupe {
namespace {

template <class Row, class KeyFn>
std::size_t drop_superseded(std::vector<Row>& rows, KeyFn key) {
  const auto gone = detail::superseded_rows(rows, key);
  if (gone.empty()) {
    return 0;
  }
  std::size_t kept = 0;
  detail::for_each_kept(rows.size(), gone, [&](std::size_t i) {
    if (kept != i) {
      rows[kept] = std::move(rows[i]);
    }
    ++kept;
  });
  rows.erase(rows.begin() + static_cast<std::ptrdiff_t>(kept), rows.end());
  return gone.size();
}

}  // namespace

std::size_t keep_newest_rows(write_batch& batch) {
  return drop_superseded(batch.runs, detail::run_key) +
         drop_superseded(batch.nodes, detail::node_key) +
         drop_superseded(batch.workflows, detail::workflow_key) +
         drop_superseded(batch.cache, detail::cache_key);
}

namespace {
store_error unsupported(std::string_view what, const store& s) {
  return store_error{std::string(what) + " is not supported by " + s.describe(), false};
}
}  // namespace

expected<claim_result, store_error> store::claim_run(std::string_view, std::string_view,
                                                     std::int64_t, std::int64_t) {
  return make_unexpected(unsupported("claim_run", *this));
}

expected<std::vector<std::string>, store_error> store::renew_leases(std::string_view,
                                                                    const std::vector<lease_ref>&,
                                                                    std::int64_t) {
  return make_unexpected(unsupported("renew_leases", *this));
}

expected<bool, store_error> store::write_dead_letters(const std::vector<dead_letter_row>&) {
  return make_unexpected(unsupported("write_dead_letters", *this));
}

expected<std::vector<dead_letter_row>, store_error> store::list_dead_letters(std::size_t) {
  return make_unexpected(unsupported("list_dead_letters", *this));
}

int schema_version() {
  return detail::current_schema_version;
}

expected<std::unique_ptr<store>, store_error> open_store(std::string_view url) {
  return detail::guarded("open_store", [&]() -> expected<std::unique_ptr<store>, store_error> {
    constexpr std::string_view memory = "memory://";
    constexpr std::string_view sqlite = "sqlite://";
    if (url == memory || url == "memory:") {
      return detail::make_memory_store();
    }
    if (url.starts_with(sqlite)) {
      // sqlite://troupe.db is relative, sqlite:///abs/path.db absolute: the path is everything
      // after the scheme's two slashes, taken literally (no query parameters).
      std::string path(url.substr(sqlite.size()));
      if (path.empty()) {
        return make_unexpected(
            store_error{"sqlite:// needs a file path, e.g. sqlite://troupe.db", false});
      }
      return detail::open_sqlite_store(std::move(path), std::string(url));
    }
    if (url.starts_with("postgres://") || url.starts_with("postgresql://")) {
      return detail::open_postgres_store(std::string(url));
    }
    return make_unexpected(
        store_error{"unknown store URL '" + detail::mask_url(url) +
                        "': expected memory://, sqlite://PATH, postgres://... or postgresql://...",
                    false});
  });
}

}  // namespace troupe

namespace troupe {
std::string masked_store_url(std::string_view url) {
  return detail::mask_url(url);
}
}  // namespace troupe
