"""Exit codes of processes, from the Linux process-events connector (netlink).

The FUSE flush tells a writer killed in the middle of a write (it closes its files
while exiting). Some writers catch the signal, close their output, then die by the
same signal (GNU dd on SIGINT): their close looks normal, and only their death,
moments later, says the file was not finished. This listens for those deaths.
It needs CAP_NET_ADMIN (a mount run as root); without it, it is simply off.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading

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
