#include "runtime/ownership.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>

namespace troupe {

namespace {

// The start time of process `pid`, in µs after boot: field 22 of /proc/PID/stat (clock ticks
// after boot), which never changes for the life of a process, unlike a wall time derived from
// it (the boot time is rebuilt from the realtime clock). 0 when it cannot be read.
std::int64_t process_start_us(long pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos || close + 2 > text.size()) {
    return 0;
  }
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  long long ticks = -1;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 22) {
      ticks = std::stoll(field);
    }
  }
  const long hz = ::sysconf(_SC_CLK_TCK);
  if (ticks < 0 || hz <= 0) {
    return 0;
  }
  return ticks * 1'000'000 / hz;
}

// What makes pids comparable: the same boot of the same kernel and the same pid namespace.
std::string pid_space() {
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(boot, id);
  std::string hex;
  for (char c : id) {
    if (c != '-' && hex.size() < 8) {
      hex += c;
    }
  }
  struct stat ns {};
  const unsigned long long inode =
      ::stat("/proc/self/ns/pid", &ns) == 0 ? static_cast<unsigned long long>(ns.st_ino) : 0;
  return (hex.empty() ? std::string("noboot") : hex) + "~" + std::to_string(inode);
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') {
    return "localhost";
  }
  std::string h(buf);
  for (auto& c : h) {
    if (c == '/') {
      c = '_';  // the identity's separator
    }
  }
  return h;
}

}  // namespace

engine_identity this_process_identity() {
  static const engine_identity me = [] {
    engine_identity id;
    // The host part names the pid space too, so that only an engine that can see the owner's
    // process ever judges it gone.
    id.host = host_name() + "~" + pid_space();
    id.pid = ::getpid();
    id.start_us = process_start_us(::getpid());
    return id;
  }();
  return me;
}

bool owner_gone(std::string_view owner) {
  auto id = engine_identity::parse(owner);
  if (!id || id->host != this_process_identity().host || id->pid <= 0) {
    return false;
  }
  if (::kill(static_cast<pid_t>(id->pid), 0) != 0 && errno == ESRCH) {
    return true;
  }
  const std::int64_t start = process_start_us(static_cast<long>(id->pid));
  return start != 0 && start != id->start_us;
}

std::int64_t wall_now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string utc_text(std::int64_t wall_us) {
  const std::time_t seconds = static_cast<std::time_t>(wall_us / 1'000'000);
  std::tm tm{};
  ::gmtime_r(&seconds, &tm);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%s.%03lldZ", date,
                static_cast<long long>(wall_us % 1'000'000 / 1000));
  return buf;
}

expected<claim_result, std::string> claim_for_resume(detail::query_store& store, const run_row& run,
                                                     const std::string& me,
                                                     const lease_terms& terms) {
  const std::int64_t now = wall_now_us();
  const bool gone = !run.owner.empty() && owner_gone(run.owner);
  const std::int64_t at = lease_terms::claim_time(run.lease_until, now, gone);
  auto claim = store.with(
      [&](troupe::store& s) { return s.claim_run(run.run_id, me, at, terms.until(now)); });
  if (!claim) {
    return make_unexpected("cannot claim run '" + run.run_id + "': " + claim.error().message);
  }
  if (!claim->found) {
    return make_unexpected("no run '" + run.run_id + "' to claim");
  }
  if (!claim->claimed) {
    if (claim->status == run_status::succeeded) {
      return make_unexpected("run '" + run.run_id + "' already succeeded");
    }
    return make_unexpected("run '" + run.run_id + "' is owned by " +
                           (claim->owner.empty() ? std::string("another engine") : claim->owner) +
                           " until " + utc_text(claim->lease_until) +
                           " (its lease is live: resume it after that, or let its engine finish "
                           "it)");
  }
  return *claim;
}

}  // namespace troupe
