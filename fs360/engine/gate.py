"""The gate every upload passes before each PUT: a bandwidth limit and a pause switch.

One gate per engine, shared by all workers, so the limit is for all uploads
together. It waits inside the `should_stop()` that `send_file` asks before each
PUT (see `gated`), as rsync's and rclone's `--bwlimit`. The limit is a pacing of PUT
starts: a PUT of n bytes may start once the previous ones' bytes have had their
time at the current rate. Idle time earns no credit, so a transfer never
bursts above the limit after a pause.
"""

from __future__ import annotations

import threading
import time

from ..options import parse_bwlimit

# How often a waiting worker looks at should_stop() and at a timetable's clock.
POLL_SECONDS = 0.2


def rate_at(table: list[tuple[int, float | None]], minute: int) -> float | None:
    """The entry in force at `minute`: the last one started, else yesterday's last."""
    current = table[-1][1]
    for start, rate in table:
        if start <= minute:
            current = rate
    return current


class TransferGate:
    def __init__(self, bwlimit: str = "off", clock=time.monotonic, wait=None):
        """`clock` and `wait(seconds)` (a wait on the gate's condition, lock held) are the
        gate's time; tests pass a fake clock whose wait moves the clock on."""
        self._cond = threading.Condition()
        self._clock = clock
        self._wait = wait or self._cond.wait
        self._table = parse_bwlimit(bwlimit)
        self._spec = bwlimit
        self._paused = False
        self._next_free = 0.0  # monotonic time from which the next PUT may start

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def bwlimit(self) -> str:
        return self._spec

    def set_bwlimit(self, spec: str) -> None:
        table = parse_bwlimit(spec)  # raises ValueError before anything changes
        with self._cond:
            self._table, self._spec = table, spec
            self._cond.notify_all()

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self._paused = paused
            self._cond.notify_all()

    def rate_now(self) -> float | None:
        now = time.localtime()
        return rate_at(self._table, now.tm_hour * 60 + now.tm_min)

    def wait_open(self, should_stop) -> bool:
        """Blocks while paused; False if should_stop() became true first. Asked before a file's
        first PUT is claimed, so a file waiting out a pause holds no claim and may still change."""
        with self._cond:
            while self._paused:
                if should_stop():
                    return False
                self._wait(POLL_SECONDS)
            return not should_stop()

    def wait_turn(self, nbytes: int, should_stop) -> bool:
        """Blocks until `nbytes` may be sent and the gate is open; False if should_stop()
        became true first (the caller then stops without sending)."""
        with self._cond:
            while True:
                if should_stop():
                    return False
                if self._paused:
                    self._wait(POLL_SECONDS)
                    continue
                rate = self.rate_now()
                now = self._clock()
                if rate is None:
                    return True
                if self._next_free <= now:
                    self._next_free = now + nbytes / rate
                    return True
                self._wait(min(POLL_SECONDS, self._next_free - now))

    def gated(self, size: int, start: int, chunk_size: int, on_progress, should_stop):
        """(on_progress, should_stop) for send_file: the new should_stop() waits for the
        turn of the PUT about to go (a chunk, or the whole file), knowing where the file
        stands from on_progress; it is true, without waiting, when the old one is."""
        sent = start

        def progress(received: int) -> None:
            nonlocal sent
            sent = received
            on_progress(received)

        def stop() -> bool:
            return should_stop() or not self.wait_turn(min(chunk_size, size - sent), should_stop)

        return progress, stop
