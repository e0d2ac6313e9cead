"""The gate every upload byte passes: a bandwidth limit and a pause switch.

One gate per engine, shared by all workers, so the limit is for all uploads
together, and it holds for every byte (as rsync's and rclone's `--bwlimit`): a
PUT body goes out in pieces (api/transport.PacedBody), and each piece may start
once the bytes before it have had their time at the current rate. The first
piece's turn is waited for before the PUT starts (`PutTurns.before_put`, send_file's
`should_stop`), so a PUT waiting for its turn has not gone out yet and may still be
cancelled; a pause, too, is waited out before a PUT, never inside one (the server
would drop a body that stops for long). Idle time earns no credit, so a transfer
never bursts above the limit after a pause.
"""

from __future__ import annotations

import threading
import time

from ..api.transport import BODY_PIECE
from ..options import parse_bwlimit

# How often a waiting worker looks at should_stop() and at a timetable's clock.
POLL_SECONDS = 0.2
NO_LIMIT = parse_bwlimit("off")
# Pieces sent are told at most this often per attempt (summed): a progress event per piece
# would cost more CPU than the piece itself at full speed (thousands a second).
TELL_INTERVAL = 0.1


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
        self._next_free = 0.0  # monotonic time from which the next piece may start

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def bwlimit(self) -> str:
        """The limit as given ("5M", a timetable), or "off" for any spelling of none ("0" too)."""
        return "off" if self._table == NO_LIMIT else self._spec

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
        return self._turn(nbytes, should_stop, wait_out_pause=True)

    def wait_piece(self, nbytes: int, should_stop) -> None:
        """Blocks until the `nbytes` of a piece of a PUT under way may be sent. A pause does
        not hold it (the PUT's next one does); once should_stop() is true the rest of the body
        goes unpaced, so a stopping engine never waits out a slow limit."""
        if self._table == NO_LIMIT:  # the usual case, for thousands of pieces a second: no lock
            return
        self._turn(nbytes, should_stop, wait_out_pause=False)

    def _turn(self, nbytes: int, should_stop, wait_out_pause: bool) -> bool:
        with self._cond:
            while True:
                if should_stop():
                    return False
                if self._paused and wait_out_pause:
                    self._wait(POLL_SECONDS)
                    continue
                rate = self.rate_now()
                now = self._clock()
                if rate is None:
                    return True
                if self._next_free <= now:
                    # A turn taken late by a waiter's wake-up is not idle time: the next one is
                    # spaced from when this one was due, so the wake-ups do not slow the rate.
                    due = self._next_free if now - self._next_free < POLL_SECONDS else now
                    self._next_free = due + nbytes / rate
                    return True
                self._wait(min(POLL_SECONDS, self._next_free - now))

    def turns(self, should_stop, on_sent) -> "PutTurns":
        """One upload attempt's turns at the gate (see PutTurns)."""
        return PutTurns(self, should_stop, on_sent, self._clock)


class PutTurns:
    """One attempt's PUTs through the gate: `before_put(n)` (send_file's should_stop) waits
    out a pause and the turn of the first piece of a body of n bytes, and is true, without
    waiting, when `should_stop()` is; the body's pieces then ask `wait_turn` (the first
    one's turn already taken) and tell `sent`, which goes on to `on_sent(n)` (progress within
    a chunk) every TELL_INTERVAL at most, and at `flush`: this object is the body's `pace`
    (api/transport.PacedBody)."""

    def __init__(self, gate: TransferGate, should_stop, on_sent, clock=time.monotonic):
        self._gate = gate
        self._should_stop = should_stop
        self._on_sent = on_sent
        self._clock = clock
        self._taken = 0  # bytes whose turn before_put took for the next piece
        self._untold = 0  # bytes sent and not yet told
        self._told_at = clock()

    def sent(self, nbytes: int) -> None:
        self._untold += nbytes
        if self._clock() - self._told_at >= TELL_INTERVAL:
            self.flush()

    def flush(self) -> None:
        """Tells the bytes sent since the last time (after a PUT, before the next one)."""
        if self._untold:
            self._on_sent(self._untold)
            self._untold = 0
        self._told_at = self._clock()

    def before_put(self, nbytes: int) -> bool:
        self.flush()  # the last PUT's bytes, before a wait
        first = min(nbytes, BODY_PIECE)
        if self._should_stop() or not self._gate.wait_turn(first, self._should_stop):
            return True
        self._taken = first
        return False

    def wait_turn(self, nbytes: int) -> None:
        if self._taken:
            self._taken = max(0, self._taken - nbytes)
            return
        self._gate.wait_piece(nbytes, self._should_stop)
