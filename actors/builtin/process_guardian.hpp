#pragma once

// The process guardian: a small process that kills the process groups of running `shell`
// children when troupe dies, however it dies (SIGKILL included). Private to actors/builtin and
// its tests.
//
// A parent-death signal (set in each shell child) reaches only the direct child; `sh -c 'a & b'`
// leaves grandchildren in the child's process group. The guardian is forked once per process, the
// first time a shell child is started, and reads 4-byte records from a pipe whose only write end
// is troupe's (close-on-exec, so exec'd programs never hold it): +pgid registers a group, -pgid
// forgets it. When the pipe reaches end of file (every write end closed: troupe exited or was
// killed) it sends SIGKILL to every group still registered, and exits. It is forked from a
// multi-threaded process, so it only makes async-signal-safe calls (no allocation: its set is a
// static bitmap indexed by pgid).
//
// Protocol (what keeps a group id from being reused before the guardian forgets it):
// - the child registers its own group between setpgid(0, 0) and exec (guardian_register_self), so
//   no program runs unguarded;
// - the parent forgets the group once the leader has exited or the group was killed, and before
//   it reaps the leader (guardian_forget): an unreaped leader keeps its pid, so the group id
//   cannot name another group while it is registered. (Once troupe is dead, init may reap a
//   leader that had exited before the guardian acts; the kernel hands out pids cyclically, so
//   that pid names another group only after pid_max new processes: not within that moment.)
// A process the task leaves running after the task ended (a daemon started with `&` whose shell
// exited) is not guarded: its group is forgotten when the task ends.
//
// One guardian serves the whole process for its whole life (any number of engines). A process
// forked from troupe without exec shares its parent's guardian: running shell tasks in such a
// copy is not supported (CAF is not fork-safe either).

#include <sys/types.h>

#include <cstddef>

namespace troupe::detail {

/// The write end of the guardian's pipe, for a child to register itself with. Starts the guardian
/// on the first call in this process (thread-safe, at most once). -1 when the guardian could not
/// be started or has died; either is reported once on stderr, and shell tasks still run (their
/// direct children keep their parent-death signal).
int guardian_fd();

/// Registers the calling process's own group (it must lead it: setpgid(0, 0) done). For the
/// forked child before exec: async-signal-safe; changes the SIGPIPE disposition to default. Does
/// nothing when `fd` is -1.
void guardian_register_self(int fd);

/// Tells the guardian to forget the group `pgid`. Call it once the group's leader has exited or
/// the group was killed, and before the leader is reaped. Thread-safe: one atomic 4-byte write,
/// which never raises SIGPIPE.
void guardian_forget(pid_t pgid);

/// The guardian's pid, or -1 when none was started (or it failed). For tests and diagnostics.
pid_t guardian_pid();

/// write(2) that reports EPIPE instead of raising SIGPIPE: pipes (unlike sockets) have no
/// MSG_NOSIGNAL. SIGPIPE from write is thread-directed, so blocking it on this thread and
/// consuming the one we caused leaves the rest of the process untouched. Retries EINTR.
ssize_t write_without_sigpipe(int fd, const char* data, std::size_t size);

}  // namespace troupe::detail
