#include "persistence/store.hpp"

#include "persistence/detail/common.hpp"

namespace troupe {

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
