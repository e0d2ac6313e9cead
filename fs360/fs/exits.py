"""Writers that die: telling a file closed by a dying process from a finished one.

The FUSE flush tells a writer killed in the middle of a write (it closes its files
while exiting: /proc shows it exiting). Some writers catch the signal, close their
output, then die by the same signal (GNU dd on SIGINT): their close looks normal, and
only their death, moments later, says the file was not finished. ExitWatcher listens
for those deaths on the Linux process-events connector (netlink); it needs
CAP_NET_ADMIN (a mount run as root); without it, it is simply off.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import struct
import threading
import time

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
PROC_EVENT_EXIT = 0x80000000
NLMSG_HEADER = struct.Struct("=IHHII")           # len, type, flags, seq, pid
CN_MSG_HEADER = struct.Struct("=IIIIHH")         # idx, val, seq, ack, len, flags
EVENT_HEADER = struct.Struct("=IIQ")             # what, cpu, timestamp_ns
EXIT_EVENT = struct.Struct("=IIII")              # pid, tgid, exit_code, exit_signal
PF_EXITING = 0x4
# A writer that dies of a signal this soon after closing a file normally closed it from its
# signal handler (GNU dd on SIGINT): that file is not finished either.
DEATH_AFTER_CLOSE_SECONDS = 2.0


def exit_reason(pid: int) -> str:
    """Why process `pid` is ending abnormally ("" when it is not, or it cannot be told).

    Called at the FUSE flush, which the closing task sends synchronously: a task that is
    exiting closes its files after its exit code is set, so /proc shows the signal that
    killed it, or a non-zero exit status, while the close is in flight.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return ""
    # Fields after the command name (which may hold spaces and parentheses); field 3 is index 0.
    fields = text[text.rindex(b")") + 2:].split()
    try:
        flags, exit_code = int(fields[9 - 3]), int(fields[52 - 3])
    except (IndexError, ValueError):
        return ""
    if not flags & PF_EXITING:
        return ""
    return describe_exit(exit_code)


def describe_exit(exit_code: int, signals_only: bool = False) -> str:
    """The reason to give for a file whose writer ended with `exit_code` (wait status form)."""
    if exit_code & 0x7F:
        try:
            name = signal.Signals(exit_code & 0x7F).name
        except ValueError:
            name = f"signal {exit_code & 0x7F}"
        return f"the writer was killed by {name} before it finished; copy it again"
    if exit_code >> 8 and not signals_only:
        return f"the writer exited with status {exit_code >> 8} while writing it; copy it again"
    return ""


class WriterExits:
    """The closes of files written, against the deaths of the processes that closed them.

    `engine` marks a file unfinished (its `lock` and `mark_unfinished_locked`)."""

    def __init__(self, engine):
        self.engine = engine
        # None when deaths are not watched: then no close is remembered.
        self.watcher: ExitWatcher | None = None
        # The last file each process closed for writing: pid -> (record, monotonic time of the close).
        self._last_close: dict[int, tuple[object, float]] = {}
        self._lock = threading.Lock()

    def watch(self) -> None:
        """Watches process deaths (when the system lets us)."""
        watcher = ExitWatcher(self.process_exited)
        if watcher.start():
            self.watcher = watcher

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def closed(self, pid: int | None, record, may_die_after: bool) -> str:
        """Process `pid` closed `record` written: why the writer is dying ("" when it is not).
        A close by a living writer is remembered when `may_die_after`, for `process_exited`."""
        reason = self.dying(pid)
        if reason:
            self.opened_for_writing(pid)  # its death is explained by this file
        elif pid and may_die_after and self.watcher is not None:
            with self._lock:
                self._last_close[pid] = (record, time.monotonic())
        return reason

    @staticmethod
    def dying(pid: int | None) -> str:
        """Why the process closing a file is ending abnormally ("" when it is not, or unknown)."""
        return exit_reason(pid) if pid else ""

    def opened_for_writing(self, pid: int) -> None:
        """Process `pid` went on to write another file (or died holding one): the file it
        closed before was finished, whatever becomes of the process."""
        with self._lock:
            self._last_close.pop(pid, None)

    def process_exited(self, pid: int, tgid: int, exit_code: int) -> None:
        with self._lock:
            closed = self._last_close.pop(pid, None) or self._last_close.pop(tgid, None)
        if closed is None:
            return
        record, closed_at = closed
        reason = describe_exit(exit_code, signals_only=True)
        if reason and time.monotonic() - closed_at < DEATH_AFTER_CLOSE_SECONDS:
            with self.engine.lock:
                self.engine.mark_unfinished_locked(record, reason)


class ExitWatcher:
    """Calls `on_exit(pid, tgid, exit_code)` for every process that ends, from its own thread."""

    def __init__(self, on_exit):
        self._on_exit = on_exit
        self._sock: socket.socket | None = None

    def start(self) -> bool:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            sock.bind((0, CN_IDX_PROC))
            op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            body = CN_MSG_HEADER.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
            sock.send(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), NLMSG_DONE, 0, 0, os.getpid()) + body)
        except OSError as exc:
            log.info("process exits are not watched (%s): a writer that closes its file before dying "
                     "of a signal is not told apart", exc.strerror or exc)
            return False
        self._sock = sock
        threading.Thread(target=self._loop, name="fs360-exits", daemon=True).start()
        return True

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
                    continue  # events were dropped under load; go on with the next ones
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
                    self._on_exit(pid, tgid, exit_code)
            offset += (length + 3) & ~3
