#include "apps/runs.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <vector>

#include "apps/cli.hpp"
#include "apps/output.hpp"
#include "persistence/store.hpp"

namespace troupe::cli {
namespace {

constexpr run_status all_statuses[] = {run_status::pending,   run_status::running,
                                       run_status::succeeded, run_status::failed,
                                       run_status::cancelled, run_status::timed_out};

/// Opens the store for reading, or prints why it cannot be and returns null. A query must not
/// leave a side effect behind: opening a missing SQLite file would create an empty database
/// (schema and all) wherever the user happened to type the command, so that is refused instead,
/// as is memory://, which is empty in every new process.
std::unique_ptr<store> open_for_reading(const std::string& url, bool json_mode) {
  const std::string shown = display_url(url);
  const auto refuse = [&](const std::string& why) {
    print_errors(one_error("cannot open store '" + shown + "': " + why), json_mode);
    return nullptr;
  };
  constexpr std::string_view sqlite = "sqlite://";
  if (url.rfind(sqlite, 0) == 0 && url.size() > sqlite.size()) {
    const std::string path = url.substr(sqlite.size());
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      return refuse(errno == ENOENT ? "no database at '" + path + "' (nothing has run with it)"
                                    : "'" + path + "': " + std::strerror(errno));
    }
  }
  if (url == "memory://" || url == "memory:") {
    return refuse("a memory store lives only as long as the process that ran the workflows");
  }
  auto opened = open_store(url);
  if (!opened) {
    return refuse(opened.error().message);
  }
  return std::move(*opened);
}

int store_failure(const std::string& url, const store_error& e, bool json_mode) {
  print_errors(one_error("cannot read the log in '" + display_url(url) + "': " + e.message),
               json_mode);
  return exit_usage;
}

}  // namespace

bool parse_run_status(std::string_view text, run_status& out) {
  for (run_status s : all_statuses) {
    if (to_string(s) == text) {
      out = s;
      return true;
    }
  }
  return false;
}

std::string run_status_names() {
  std::string names;
  for (run_status s : all_statuses) {
    names += names.empty() ? "" : ", ";
    names += to_string(s);
  }
  return names;
}

int runs_list_command(const runs_list_options& o) {
  run_query q;
  if (!o.status.empty()) {
    run_status s{};
    if (!parse_run_status(o.status, s)) {
      print_errors(one_error("--status '" + o.status + "' is not a run status; expected one of " +
                             run_status_names()),
                   o.json);
      return exit_usage;
    }
    q.status = s;
  }
  q.workflow = o.workflow;
  q.parent_run_id = o.parent;
  q.limit = o.limit;
  auto db = open_for_reading(o.db, o.json);
  if (!db) {
    return exit_usage;
  }
  auto runs = db->list_runs(q);
  if (!runs) {
    return store_failure(o.db, runs.error(), o.json);
  }
  if (o.json) {
    std::cout << compact_json(runs_document(*runs)) << '\n';
  } else if (runs->empty()) {
    // An empty table would look like a bug; say what was searched.
    std::cout << "no runs in " << display_url(o.db)
              << (q.status || !q.workflow.empty() || !q.parent_run_id.empty() ? " match" : "")
              << '\n';
  } else {
    print_runs_table(std::cout, *runs);
  }
  std::cout.flush();
  return std::cout ? exit_ok : exit_run_failed;
}

int runs_show_command(const runs_show_options& o) {
  auto db = open_for_reading(o.db, o.json);
  if (!db) {
    return exit_usage;
  }
  auto run = db->get_run(o.run_id);
  if (!run) {
    return store_failure(o.db, run.error(), o.json);
  }
  if (!*run) {
    print_errors(one_error("no run '" + o.run_id + "' in " + display_url(o.db)), o.json);
    return exit_run_failed;
  }
  auto nodes = db->node_rows(o.run_id);
  if (!nodes) {
    return store_failure(o.db, nodes.error(), o.json);
  }
  if (o.json) {
    std::cout << compact_json(run_detail_document(**run, *nodes)) << '\n';
  } else {
    print_run_detail(std::cout, **run, *nodes);
  }
  std::cout.flush();
  return std::cout ? exit_ok : exit_run_failed;
}

int dead_letters_command(const dead_letters_options& o) {
  auto db = open_for_reading(o.db, o.json);
  if (!db) {
    return exit_usage;
  }
  auto letters = db->list_dead_letters(o.limit);
  if (!letters) {
    return store_failure(o.db, letters.error(), o.json);
  }
  if (o.json) {
    json::array list;
    for (const auto& d : *letters) {
      list.push_back(json::object{{"run_id", d.run_id},
                                  {"table", d.table},
                                  {"key", d.key},
                                  {"error", d.error},
                                  {"at", utc_time_json(d.at)},
                                  {"row", d.row}});
    }
    std::cout << compact_json(json::object{{"dead_letters", std::move(list)}}) << '\n';
  } else if (letters->empty()) {
    std::cout << "no dead letters in " << display_url(o.db) << '\n';
  } else {
    for (const auto& d : *letters) {
      std::cout << local_time(d.at) << "  " << d.table << "  " << d.key << "  " << d.error << '\n';
    }
  }
  std::cout.flush();
  return std::cout ? exit_ok : exit_run_failed;
}

int cache_list_command(const cache_options& o) {
  auto db = open_for_reading(o.db, o.json);
  if (!db) {
    return exit_usage;
  }
  auto entries = db->list_cache(o.workflow);
  if (!entries) {
    return store_failure(o.db, entries.error(), o.json);
  }
  if (o.json) {
    json::array list;
    for (const auto& e : *entries) {
      list.push_back(json::object{{"key", e.key},
                                  {"workflow", e.workflow},
                                  {"node_id", e.node_id},
                                  {"kind", e.kind},
                                  {"created_at", e.created_at},
                                  {"value", e.value ? *e.value : json::value(nullptr)}});
    }
    std::cout << compact_json(json::object{{"entries", std::move(list)}}) << '\n';
  } else if (entries->empty()) {
    std::cout << "no cache entries in " << display_url(o.db) << '\n';
  } else {
    for (const auto& e : *entries) {
      std::cout << e.key << "  " << e.workflow << "  " << e.node_id << "  " << e.kind << '\n';
    }
  }
  std::cout.flush();
  return std::cout ? exit_ok : exit_run_failed;
}

int cache_clear_command(const cache_options& o) {
  auto db = open_for_reading(o.db, o.json);
  if (!db) {
    return exit_usage;
  }
  auto removed = db->clear_cache(o.workflow);
  if (!removed) {
    return store_failure(o.db, removed.error(), o.json);
  }
  if (o.json) {
    std::cout << compact_json(json::object{{"removed", *removed}}) << '\n';
  } else {
    std::cout << "removed " << *removed << " cache entr" << (*removed == 1 ? "y" : "ies")
              << " from " << display_url(o.db) << '\n';
  }
  std::cout.flush();
  return std::cout ? exit_ok : exit_run_failed;
}

}  // namespace troupe::cli
