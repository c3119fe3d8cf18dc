#pragma once

// `troupe runs list|show`: read the execution log that `troupe run` (or any engine) wrote. They
// open the store directly: a query needs no actor system.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "workflow/run_state.hpp"

namespace troupe::cli {

/// The store every command uses unless `--db` says otherwise (DESIGN.md: the embedded default).
inline constexpr const char* default_db = "sqlite://troupe.db";

struct runs_list_options {
  std::string db = default_db;
  std::string status;  // empty: any
  std::string workflow;
  std::string parent;  // only the child runs of this run
  std::size_t limit = 50;
  bool json = false;
};

struct runs_show_options {
  std::string db = default_db;
  std::string run_id;
  bool json = false;
};

/// `troupe runs resume RUN`: runs again what did not succeed, on a durable engine over the log.
struct runs_resume_options {
  std::string db = default_db;
  std::string run_id;  // empty with `all`
  /// Every unfinished run whose owner is gone or whose lease has expired.
  bool all = false;
  std::vector<std::string> registers;  // workflows a `workflow` task of the run calls
  int threads = 0;
  bool json = false;
};

/// `troupe runs dead-letters`: rows the database refused for good, newest first.
struct dead_letters_options {
  std::string db = default_db;
  std::size_t limit = 50;
  bool json = false;
};

/// `troupe cache list|clear [--workflow W]`: the memoized node outputs in the log's database.
struct cache_options {
  std::string db = default_db;
  std::string workflow;  // empty: all
  bool json = false;
};

bool parse_run_status(std::string_view text, run_status& out);
/// "pending, running, ..." for error messages.
std::string run_status_names();

int runs_list_command(const runs_list_options& o);
int runs_show_command(const runs_show_options& o);
int dead_letters_command(const dead_letters_options& o);
int cache_list_command(const cache_options& o);
int cache_clear_command(const cache_options& o);
/// Defined in cli.cpp: it shares the run command's engine set-up and result printing.
int runs_resume_command(const runs_resume_options& o);

}  // namespace troupe::cli
