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
