"""The writers of each file and their exits: the eyes of the commit point.

A file is final when every process that closed it written has exited 0 (or, for one that
keeps running, once it stayed closed for the write-back delay: see the registry's commit
point). At each close of a written file (the FUSE flush, which the closing task sends
synchronously, so it is alive and its /proc entry readable) the closing process is
identified by its thread group, and its exit is awaited:

  pidfd + PIDFD_GET_INFO (Linux 6.15+)   one pidfd per writing process, for any user; the
                                          exit status is read even after the parent reaped it
  the process-events connector (netlink)  older kernels, when the daemon may (CAP_NET_ADMIN)
  pidfd and /proc (Linux 5.3+)            the status is read from /proc while the process is a
                                          zombie; a parent that reaps it first leaves it unknown

An unknown exit never commits a file early: it waits the write-back delay as a writer that
keeps running does. A process that is already exiting at the close (killed mid-copy: its
files close after its exit code is set) is told at once by /proc.

Threads (each under its name in /proc/PID/task/*/comm: fs360/thread_names.py)
  fs360-exits   the watch: waits on the writers' pidfds (or netlink events) and settles their
                files; started with the first written file's close
  fs360-at-exit short-lived: what waits for a program's exit besides its files (a `.create`
                renamed into place by rsync: Writers.at_exit), run off the watch's thread

Locks: the FUSE threads call `closed` with no lock held (it takes the state lock, and inside it
`Writers._lock`), `joined_locked` with the state lock held. Inside `Writers._lock`, a new process
is watched under `PidfdWatch._lock`, a leaf (its thread takes it alone, and lets it go before
telling an exit). The watch's thread takes `Writers._lock` alone, then the state lock per file:
never both at once. Order: state lock -> Writers._lock -> PidfdWatch._lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import signal
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Callable

from ..engine.processes import read_proc, started_at
from ..engine.records import HELD_WAY_OUT

log = logging.getLogger(__name__)

PF_EXITING = 0x4
# Bounds the pidfds held at once: past it, a writer's exit is unknown (its file waits the delay).
MAX_WATCHED_PROCESSES = 4096


# How far up a program's own forked helpers are followed (rsync: client, generator, receiver).
MAX_HELPER_DEPTH = 8
# How far up a .create writer's ancestors are followed (Writers.family).
MAX_ANCESTORS = 64


@dataclass(frozen=True)
class Closer:
    """The program whose task closed (or renamed) a file: the thread group whose exit decides,
    its name, and the task's wait status when it is already exiting (None while it runs)."""
    tgid: int
    name: str
    exiting_status: int | None
    # When the program started (see engine/processes.py): journaled with a closed file.
    start: int = 0
    # The forked helper of the program that did the closing (0: the program itself), and when it
    # started: its exit is awaited too, and decides should the program end first (Writers.exited).
    helper: int = 0
    helper_start: int = 0


def closer_of(pid: int) -> Closer | None:
    """Who task `pid` works for, from /proc (None when it cannot be told).

    A program's forked helpers (rsync's receiver and generator: the same command line, no exec
    of their own) exit with statuses of their own (rsync's receiver 19, on the SIGUSR1 of a
    normal end): the program's first process decides, so its thread group is the one awaited,
    and the helper's with it (`helper`), whose own status counts only if it outlives the program."""
    task = _stat(pid)
    if task is None:
        return None
    name, ppid, flags, exit_code, start = task
    tgid = _thread_group_of(pid, start)
    if tgid is None:
        return None
    status = exit_code if flags & PF_EXITING else None
    program, program_start = _program_of(tgid, ppid)
    helper = helper_start = 0
    if program != tgid:
        helper, helper_start = tgid, start if pid == tgid else started_at(tgid) or 0
        if status is not None and not status & 0x7F:
            status = None  # a helper's own exit status says nothing here; its death by a signal does
    if program != pid:
        start = program_start or started_at(program) or 0
    return Closer(program, name, status, start, helper, helper_start)


# (task id, its start time) -> its thread group: fixed for the task's life, and a task id used
# again has another start time. A close asks it each time; a writer closes thousands of files.
_thread_groups: dict[tuple[int, int], int] = {}
_THREAD_GROUPS_KEPT = 4096


def _thread_group_of(pid: int, start: int) -> int | None:
    tgid = _thread_groups.get((pid, start))
    if tgid is None:
        try:
            tgid = int(read_proc(f"/proc/{pid}/status").split(b"\nTgid:", 1)[1].split()[0])
        except (OSError, IndexError, ValueError):
            return None
        if len(_thread_groups) >= _THREAD_GROUPS_KEPT:
            _thread_groups.clear()
        _thread_groups[(pid, start)] = tgid
    return tgid


def _stat(pid: int) -> tuple[str, int, int, int, int] | None:
    """(name, parent pid, flags, exit code, start time) of task `pid`."""
    try:
        stat = read_proc(f"/proc/{pid}/stat")
        name = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode(errors="replace")
        # Fields after the command name (which may hold spaces and parentheses); field 3 is index 0.
        fields = stat[stat.rindex(b")") + 2:].split()
        return name, int(fields[4 - 3]), int(fields[9 - 3]), int(fields[52 - 3]), int(fields[22 - 3])
    except (OSError, IndexError, ValueError):
        return None


def _program_of(tgid: int, ppid: int) -> tuple[int, int | None]:
    """The first process of the program `tgid` is part of: up its parents while they have the
    same command line (forked, never exec'd anew); with its start time when it was read."""
    start = None
    try:
        for _ in range(MAX_HELPER_DEPTH):
            if ppid <= 1 or not _same_command_line(tgid, ppid):
                break
            parent = _stat(ppid)
            if parent is None:
                break
            tgid, ppid, start = ppid, parent[1], parent[4]
    except OSError:
        pass
    return tgid, start


def _same_command_line(pid: int, parent: int) -> bool:
    """Whether `pid` runs the command line of `parent`. The parent's (a shell's, usually short)
    is read first, then no more of `pid`'s than that: `cp *.jpg` has thousands of arguments."""
    expected = read_proc(f"/proc/{parent}/cmdline")
    return read_proc(f"/proc/{pid}/cmdline", limit=len(expected) + 1) == expected


# What the exit statuses of the programs users copy with mean, from their manuals: a held file's
# reason says it in words, not only as a number.
EXIT_MEANINGS = {
    "rsync": {1: "a syntax or usage error", 2: "protocol incompatibility", 3: "it could not select the files",
              5: "it could not start talking to the other side", 10: "a network error",
              11: "a file read or write error", 12: "an error in its data stream",
              13: "an error in its diagnostics", 14: "an error between its processes",
              19: "it was stopped by its other process: the copy was cut off", 20: "it was interrupted",
              21: "an error waiting for its processes", 22: "it ran out of memory",
              23: "some files were not transferred", 24: "some source files vanished meanwhile",
              25: "its --max-delete limit stopped deletions", 30: "a network timeout",
              35: "a timeout waiting for the daemon"},
    "curl": {6: "it could not resolve the host", 7: "it could not connect", 18: "the transfer ended early",
             22: "the server answered with an error", 23: "it could not write the file", 26: "a read error",
             28: "a timeout", 35: "a TLS handshake error", 52: "the server sent nothing",
             55: "a network error while sending", 56: "a network error while receiving"},
    "wget": {1: "an error", 2: "a parse error", 3: "a file read or write error", 4: "a network failure",
             5: "a TLS verification failure", 6: "the login was refused", 7: "a protocol error",
             8: "the server answered with an error"},
    "unzip": {1: "some files may have been skipped", 2: "the archive is damaged", 3: "the archive is damaged",
              9: "the archive was not found", 50: "the disk was full", 51: "the archive ended early",
              80: "it was interrupted", 81: "an unsupported compression or encryption", 82: "a wrong password"},
}


def failure_of(status: int | None, program: str = "", after: str = "") -> str:
    """What a wait status says went wrong ('' for exit 0 or unknown): 'exited with status 18', with
    what that status means for `program` where its manual says (EXIT_MEANINGS), as its manual's
    word. `after`: the mount's refusal that came first ("the mount refused top.jpg (...)"), said
    instead: the manual's meaning of a status is the program's guess at the cause (unzip says
    "the disk was full" of any failed create), and the refusal is the cause the mount knows."""
    if status is None:
        return ""
    if status & 0x7F:
        try:
            name = signal.Signals(status & 0x7F).name
        except ValueError:
            name = f"signal {status & 0x7F}"
        return f"was killed by {name}"
    if status >> 8:
        if after:
            return f"exited with status {status >> 8} after {after}"
        meaning = EXIT_MEANINGS.get(program, {}).get(status >> 8)
        return f"exited with status {status >> 8}" + (f" (in {program}'s manual: {meaning})" if meaning else "")
    return ""


def _still_there(pid: int, start: int) -> bool:
    """Process `pid` (started at `start`) is in /proc: running, or dead and not reaped yet. A start
    that could not be read counts any process of that pid: unsure, its own exit decides too."""
    now = started_at(pid)
    return now is not None and (not start or now == start)


def dying_reason(closer: Closer | None) -> str:
    """Why a file closed by a process that is exiting abnormally is not whole ('' otherwise)."""
    failure = failure_of(closer.exiting_status, closer.name) if closer is not None else ""
    return f"{closer.name} {failure} while writing it; copy it again" if failure else ""


def held_reason(name: str, failure: str, after_refusal: bool = False) -> str:
    """`after_refusal`: the failure came after the mount refused that program something else."""
    if after_refusal:
        return (f"{name} {failure}, right after writing this file: it may well be whole (the program failed "
                f"over what the mount refused), but the mount cannot tell; {HELD_WAY_OUT}")
    reason = f"{name} {failure} right after writing it: it is probably incomplete; {HELD_WAY_OUT}"
    if name == "rsync":
        # rsync gives the file the source's size and time, so a plain re-run takes it for done.
        reason += " (a re-run of rsync skips it as unchanged: add -I, --ignore-times)"
    return reason


class Writers:
    """Which processes wrote each file, and what their exits say (see the module's docstring).
    `engine`: the state lock, and its registry's commit-point methods."""

    def __init__(self, engine, identify: Callable[[int], "Closer | None"] = None):
        self.engine = engine
        # Who a task is (closer_of; tests pass their own, so no real process has to die), and
        # whether a process is still there, running or dead and not reaped (tests: any not ended).
        self.identify = identify or closer_of
        self.still_there = _still_there
        self.watch: ExitWatch | None = None
        # tgid -> the records it closed written, by id, exit awaited (a dict: cp -r of 100,000
        # files closes them all before it exits, and each close asks whether its record is there)
        self._records: dict[int, dict[int, object]] = {}
        self._names: dict[int, str] = {}      # tgid -> its command name, for the reasons
        # Forked helpers that closed files (closer_of): a program's tgid -> {helper tgid: its
        # start}; a helper's -> its program's; the helpers whose program ended before them,
        # unreaped: their own exit statuses decide too.
        self._helpers_of: dict[int, dict[int, int]] = {}
        self._program_of: dict[int, int] = {}
        self._outlived: set[int] = set()
        # tgid -> what runs at its exit (at_exit), given what the exit says went wrong.
        self._at_exit: dict[int, list[Callable[[str], None]]] = {}
        # A program's tgid -> the first path (from the mount's root) the mount refused it, with the
        # errno and how many refusals in all (note_refusal): its exit's words name it.
        self._refusals: dict[int, list] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        for watch in (PidfdWatch(self.exited, exit_info=True), NetlinkWatch(self.exited),
                      PidfdWatch(self.exited, exit_info=False)):
            if watch.start():
                self.watch = watch
                log.info("writers' exits are watched with %s", watch.kind)
                self._watch_again()
                return
        log.warning("writers' exits cannot be watched here: closed files upload after the write-back "
                    "delay, and a program that fails after closing its file is not told apart")

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()
            self.watch = None

    def _watch_again(self) -> None:
        """Files still closed from before a restart (their writers ran on): watched again."""
        with self.engine.lock:
            for record in self.engine.registry.awaiting_writers_locked():
                for tgid, start in list((record.writers or {}).items()):
                    task = _stat(tgid)
                    closer = Closer(tgid, task[0] if task else "the writer", None, start)
                    if not self._watch_locked(closer, record):
                        self.engine.registry.writer_unknown_locked(record)

    def dying(self, pid: int | None) -> str:
        """Why the process closing a file is ending abnormally ('' when it is not, or unknown)."""
        return dying_reason(self.identify(pid)) if pid else ""

    def family(self, pid: int | None) -> frozenset[int]:
        """The program task `pid` works for, its own process and every process above them (from
        /proc, as far as it can be read): who a .create speaks for."""
        if not pid:
            return frozenset()
        closer = self.identify(pid)
        members = {pid} | ({closer.tgid} if closer else set())
        ancestor = pid
        for _ in range(MAX_ANCESTORS):
            task = _stat(ancestor)
            if task is None or task[1] <= 1:
                break
            ancestor = task[1]
            members.add(ancestor)
        return frozenset(members)

    def closed(self, pid: int | None, record) -> tuple[str, Closer | None]:
        """Process `pid` closed `record` written (a flush). Returns why the file is not whole when
        that process is dying abnormally ('' otherwise: its exit is awaited by the commit point),
        and who it works for (None: not known)."""
        closer = self.identify(pid) if pid else None
        reason = dying_reason(closer)
        if not reason:
            self._await(closer, record)
        return reason, closer

    def joined_locked(self, closer: Closer | None, record) -> None:
        """`closer` (closer_of the renaming task) renamed the closed scratch file `record` to its
        final name: its exit decides too (rsync --partial renames a partial file, then exits 20)."""
        reason = dying_reason(closer)
        if reason:
            self.engine.registry.writer_failed_locked(record, reason, "held")
        else:
            self._await_locked(closer, record)

    def _await(self, closer: Closer | None, record) -> None:
        with self.engine.lock:
            self._await_locked(closer, record)

    def _await_locked(self, closer: Closer | None, record) -> None:
        if closer is not None and closer.exiting_status == 0:
            return  # closed by its exit(0): this writer succeeded
        if closer is None or self.watch is None or not self._watch_locked(closer, record):
            self.engine.registry.writer_unknown_locked(record)
            return
        self.engine.registry.writer_awaited_locked(record, closer.tgid, closer.start)
        if closer.helper:
            # The helper that wrote it: a program that exits 0 before it did not wait for its
            # work, so its exit 0 says nothing of it (a half file, then the helper's exit 1).
            helper = Closer(closer.helper, closer.name, None, closer.helper_start)
            if self._watch_locked(helper, record):
                with self._lock:
                    self._helpers_of.setdefault(closer.tgid, {})[closer.helper] = closer.helper_start
                    self._program_of[closer.helper] = closer.tgid
                self.engine.registry.writer_awaited_locked(record, closer.helper, closer.helper_start)

    def _note_outliving_helpers(self, program: int, name: str, helpers: dict[int, int]) -> None:
        """`program` ended: its helpers still there (running, or dead and not reaped by it) were not
        judged by its exit, so theirs decide (rsync reaps its helpers). /proc is read without
        self._lock (FUSE closes take it under the state lock); the one watch thread calls this
        before it handles any later exit, so a helper's own exit cannot come in between."""
        outlived = {helper for helper, start in helpers.items() if self.still_there(helper, start)}
        for helper in outlived:
            log.debug("%s (%d) ended before its helper %d: the helper's exit decides its files too",
                      name, program, helper)
        if outlived:
            with self._lock:
                self._outlived |= outlived

    def note_refusal(self, pid: int, path: str, error: int) -> None:
        """The mount refused task `pid` an operation on `path` (`session/name`) with `error`: if its
        program then exits non-zero, the reason of the files it wrote says so (`exited`)."""
        closer = self.identify(pid)
        if closer is None:
            return
        with self._lock:
            noted = self._refusals.get(closer.tgid)
            if noted is not None:
                noted[2] += 1
                return
            if len(self._refusals) >= MAX_WATCHED_PROCESSES:  # programs that never exit watched
                self._refusals.pop(next(iter(self._refusals)))
            self._refusals[closer.tgid] = [path, error, 1]

    def _refusal_words(self, refusal: list | None, record) -> str:
        """What the mount refused the exiting program, as seen from `record`'s folder ("the mount
        refused top.jpg (permission denied; see "refused" in status)"), or ''."""
        if refusal is None:
            return ""
        path, error, count = refusal
        session_name, _, name = path.partition("/")
        session = self.engine.registry.sessions.get(session_name)
        listed = session is not None and name in session.refused_names
        here = session is not None and self.engine.registry.session_of(record) is session
        shown = name if here and name else path
        why = os.strerror(error).lower() + ("; see \"refused\" in its folder's status" if listed else "")
        more = f" and {count - 1} more" if count > 1 else ""
        return f"the mount refused {shown} ({why}){more}"

    def at_exit(self, closer: Closer | None, action: Callable[[str], None]) -> bool:
        """Runs `action(failure)` once the program `closer` works for has exited, on a thread of
        its own (it may wait for other exits): `failure` is '' for exit 0, else what went wrong in
        words ('exited with status 23 (...)'). False, and nothing runs, when that exit cannot be
        told: no process, no watch, or a watch that may miss exit statuses."""
        if closer is None or self.watch is None or not getattr(self.watch, "statuses_known", False):
            return False
        with self._lock:
            if not self._watched(closer):
                return False
            self._at_exit.setdefault(closer.tgid, []).append(action)
        return True

    def _watched(self, closer: Closer) -> bool:
        """Needs self._lock. Whether the exit of `closer` is watched, asking the watch once per process."""
        if closer.tgid in self._records or closer.tgid in self._at_exit:
            return True
        if not self.watch.watch(closer.tgid):
            return False
        self._names[closer.tgid] = closer.name
        return True

    def _watch_locked(self, closer: Closer, record) -> bool:
        with self._lock:
            records = self._records.get(closer.tgid)
            if records is None:
                if not self._watched(closer):
                    return False
                records = self._records[closer.tgid] = {}
            elif len(records) >= 64 and len(records) & (len(records) - 1) == 0:
                # A long-running writer (a file manager): forget files committed meanwhile.
                for file_id in [i for i, r in records.items() if not r.awaits(closer.tgid)]:
                    del records[file_id]
            records.setdefault(record.id, record)
        return True

    def exited(self, tgid: int, status: int | None) -> None:
        """From the watch's thread: process `tgid` ended with wait status `status` (None: unknown)."""
        with self._lock:
            records = self._records.pop(tgid, None)
            actions = self._at_exit.pop(tgid, ())
            name = self._names.pop(tgid, "the writer")
            program = self._program_of.pop(tgid, None)
            helpers = {}
            if program is not None:
                self._helpers_of.get(program, {}).pop(tgid, None)
                if tgid not in self._outlived and status is not None and not status & 0x7F:
                    status = 0  # its program reaped it, and its own exit then decided
                self._outlived.discard(tgid)
            else:
                helpers = self._helpers_of.pop(tgid, {})
            refusal = self._refusals.pop(tgid, None)
            if program is not None and refusal is None:
                refusal = self._refusals.get(program)  # (its program's, dropped at the program's own exit)
        self._note_outliving_helpers(tgid, name, helpers)
        failure = failure_of(status, name)
        reason = held_reason(name, failure) if failure else ""
        for record in (records or {}).values():
            with self.engine.lock:
                if status is None:
                    # Unknown: it no longer counts as a writer, and the delay decides.
                    self.engine.registry.writer_unknown_locked(record, tgid)
                after = self._refusal_words(refusal, record) if failure else ""
                self.engine.registry.writer_exited_locked(
                    record, tgid, held_reason(name, failure_of(status, name, after), True) if after else reason)
        # After its files are settled (an action may wait for them); an unknown exit is no success.
        outcome = failure if status is not None else "ended without the mount learning its exit status"
        for action in actions:
            threading.Thread(target=action, args=(outcome,), name="fs360-at-exit", daemon=True).start()


class ExitWatch:
    """Calls `on_exit(tgid, wait status or None)` from a thread of its own when a watched
    process ends."""
    kind = ""
    # Whether every exit comes with its status (Writers.at_exit needs it).
    statuses_known = True

    def __init__(self, on_exit: Callable[[int, int | None], None]):
        self._on_exit = on_exit

    def start(self) -> bool:
        raise NotImplementedError

    def watch(self, tgid: int) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


# PIDFD_GET_INFO = _IOWR(0xFF, 11, struct pidfd_info) with the 64-byte first version of the
# struct: mask (u64), cgroupid (u64), eleven u32 ids, exit_code (s32) at offset 60.
PIDFD_GET_INFO = 0xC040FF0B
PIDFD_INFO_EXIT = 1 << 3


def pidfd_exit_status(pidfd: int) -> int | None:
    """The wait status of a reaped process (Linux 6.15+), None when the kernel cannot say."""
    info = bytearray(64)
    struct.pack_into("=Q", info, 0, PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, info)
    except OSError:
        return None
    if not struct.unpack_from("=Q", info, 0)[0] & PIDFD_INFO_EXIT:
        return None
    return struct.unpack_from("=i", info, 60)[0]


def zombie_status(tgid: int) -> int | None:
    """The wait status of a process that exited but was not reaped yet (None otherwise)."""
    try:
        with open(f"/proc/{tgid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        return int(fields[52 - 3]) if fields[0] in (b"Z", b"X") else None
    except (OSError, IndexError, ValueError):
        return None


class PidfdWatch(ExitWatch):
    """One pidfd per watched process, polled by one thread (a pipe wakes it for new ones)."""

    def __init__(self, on_exit, exit_info: bool):
        super().__init__(on_exit)
        self.exit_info = exit_info
        self.statuses_known = exit_info
        self.kind = "pidfds and PIDFD_GET_INFO" if exit_info else "pidfds and /proc (exit statuses may be missed)"
        self._fds: dict[int, int] = {}   # pidfd -> tgid
        self._lock = threading.Lock()
        self._poll = select.poll()
        self._wake_r = self._wake_w = -1
        self._running = False

    def start(self) -> bool:
        if not hasattr(os, "pidfd_open"):
            return False
        try:
            probe = os.pidfd_open(os.getpid())
        except OSError:
            return False
        try:
            if self.exit_info and not self._kernel_reports_exits(probe):
                return False
        finally:
            os.close(probe)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll.register(self._wake_r, select.POLLIN)
        self._running = True
        threading.Thread(target=self._loop, name="fs360-exits", daemon=True).start()
        return True

    @staticmethod
    def _kernel_reports_exits(pidfd: int) -> bool:
        """Whether PIDFD_GET_INFO exists (for a live process it answers without the exit bit)."""
        try:
            fcntl.ioctl(pidfd, PIDFD_GET_INFO, bytearray(64))
        except OSError:
            return False
        return True

    def watch(self, tgid: int) -> bool:
        with self._lock:
            if len(self._fds) >= MAX_WATCHED_PROCESSES or not self._running:
                return False
            try:
                fd = os.pidfd_open(tgid)
            except OSError:
                return False
            self._fds[fd] = tgid
            self._poll.register(fd, select.POLLIN)
            self._wake_locked()
        return True

    def stop(self) -> None:
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._wake_locked()

    def _wake_locked(self) -> None:
        """Under the lock the loop closes the pipe under, so the byte never goes to a closed (or
        reused) descriptor."""
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # full: the loop is woken already

    def _loop(self) -> None:
        try:
            while self._running:
                for fd, _ in self._poll.poll():
                    if fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                        continue
                    self._ended(fd)
        finally:
            with self._lock:
                for fd in self._fds:
                    os.close(fd)
                self._fds.clear()
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _ended(self, fd: int) -> None:
        with self._lock:
            tgid = self._fds.pop(fd)
            self._poll.unregister(fd)
        # Readable: the process is a zombie, or already reaped (then only the kernel can say).
        status = zombie_status(tgid)
        if status is None and self.exit_info:
            status = pidfd_exit_status(fd)
        os.close(fd)
        try:
            self._on_exit(tgid, status)
        except Exception:  # one bad exit must not end the watch
            log.exception("unexpected error while settling the exit of process %d", tgid)


NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
PROC_EVENT_EXIT = 0x80000000
NLMSG_HEADER = struct.Struct("=IHHII")           # len, type, flags, seq, pid
CN_MSG_HEADER = struct.Struct("=IIIIHH")         # idx, val, seq, ack, len, flags
EVENT_HEADER = struct.Struct("=IIQ")             # what, cpu, timestamp_ns
EXIT_EVENT = struct.Struct("=IIII")              # pid, tgid, exit_code, exit_signal


class NetlinkWatch(ExitWatch):
    """Every process's end, from the kernel's process-events connector (CAP_NET_ADMIN); only
    watched thread groups are reported."""
    kind = "the process-events connector"

    def __init__(self, on_exit):
        super().__init__(on_exit)
        self._sock: socket.socket | None = None

    def start(self) -> bool:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            sock.bind((0, CN_IDX_PROC))
            op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            body = CN_MSG_HEADER.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
            sock.send(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), NLMSG_DONE, 0, 0, os.getpid()) + body)
        except OSError:
            return False
        self._sock = sock
        threading.Thread(target=self._loop, name="fs360-exits", daemon=True).start()
        return True

    def watch(self, tgid: int) -> bool:
        return self._sock is not None  # every exit comes anyway

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _loop(self) -> None:
        while self._sock is not None:
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.warning("process events were dropped under load: some writers' exits are unknown")
                    continue
                return  # closed by stop()
            try:
                self._dispatch(data)
            except Exception:  # one bad message must not end the watch
                log.exception("unexpected process event")

    def _dispatch(self, data: bytes) -> None:
        offset = 0
        while offset + NLMSG_HEADER.size <= len(data):
            length = NLMSG_HEADER.unpack_from(data, offset)[0]
            if length < NLMSG_HEADER.size:
                return
            event = offset + NLMSG_HEADER.size + CN_MSG_HEADER.size
            if event + EVENT_HEADER.size + EXIT_EVENT.size <= offset + length:
                what = EVENT_HEADER.unpack_from(data, event)[0]
                if what == PROC_EVENT_EXIT:
                    pid, tgid, exit_code, _ = EXIT_EVENT.unpack_from(data, event + EVENT_HEADER.size)
                    if pid == tgid:  # the thread group's leader: the process's end
                        self._on_exit(tgid, exit_code)
            offset += (length + 3) & ~3
