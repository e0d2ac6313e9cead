"""Client-side pacing: one sliding window per endpoint, shared by all threads.

The server counts requests in a sliding window of W seconds. Each endpoint here
keeps the times of its last `allowed` sends, `allowed` being 95% of the documented
limit: a send may go once the oldest of them is a full window old. So a burst uses
the whole budget at once (28 new sessions open together; only the 29th waits), and
no window ever holds more than 95% of the limit, whatever the pattern.

Only requests that reached the server count: a send that never connected (a refused
or unreachable port) gives its place back (`unsent`). A 429's `Retry-After` is not
kept here: it holds that endpoint for everyone in api/troubles.py.
"""

from __future__ import annotations

import threading
import time
from collections import deque

# Endpoints the documentation gives no limit for, paced with the window of a documented one.
PACED_WITH = {"list_projects": "get_project"}
# The share of a documented limit used: the rest absorbs the skew between our send times
# and the server's arrival times.
MARGIN = 0.95
EPSILON = 1e-3


class SlidingWindow:
    """At most `allowed` send times in any window (t - W, t], as the server counts them.

    Sends may be booked ahead (`reserve`): the caller is told how long to wait, so
    concurrent callers queue in order. A booking that never reached the server is given
    back (`unbook`).
    """

    def __init__(self, limit: int, window: float, margin: float = MARGIN, clock=time.monotonic):
        self._clock = clock
        self.window = window
        self.allowed = max(1, int(limit * margin))
        self._sends: deque[float] = deque(maxlen=self.allowed)  # nondecreasing
        self._lock = threading.Lock()

    def _earliest_locked(self, now: float) -> float:
        """Needs self._lock held. The first time a new send may go."""
        earliest = now
        if self._sends:
            earliest = max(earliest, self._sends[-1])
            if len(self._sends) == self.allowed:
                # Just past the window: the oldest send must have left it (float sums are inexact).
                earliest = max(earliest, self._sends[0] + self.window + EPSILON)
        return earliest

    def book(self) -> tuple[float, float]:
        """Books the first free send time: (how long the caller must wait for it, that time)."""
        with self._lock:
            now = self._clock()
            at = self._earliest_locked(now)
            self._sends.append(at)
            return at - now, at

    def reserve(self) -> float:
        """Books the first free send time; returns how long the caller must wait for it."""
        return self.book()[0]

    def try_book(self) -> tuple[float, float | None]:
        """Books a send now if one may go now: (0, its time); else books nothing: (the wait, None)."""
        with self._lock:
            now = self._clock()
            wait = self._earliest_locked(now) - now
            if wait <= 0:
                self._sends.append(now)
                return 0.0, now
            return wait, None

    def unbook(self, at: float) -> None:
        """The send booked at `at` never reached the server: its place is free again."""
        with self._lock:
            try:
                self._sends.remove(at)
            except ValueError:
                pass  # long out of the window (the deque dropped it)


# A booked send: the window it counts in and its time (None: nothing was booked).
Booking = tuple  # (SlidingWindow, float)


class Pacer:
    def __init__(self, limits: dict[str, tuple[int, float]], enabled: bool = True, window_scale: float = 1.0,
                 sleep=time.sleep, clock=time.monotonic):
        self.enabled = enabled
        self._sleep = sleep
        self._clock = clock
        self.limits = dict(limits)
        self._windows = {name: SlidingWindow(n, w * window_scale, clock=clock) for name, (n, w) in limits.items()}
        # The requests sleeping for their turn now: a token -> (endpoint, its booked time), for
        # status (`waiting`): a worker asleep here shows a file "uploading" with nothing moving.
        self._waiting: dict[object, tuple[str, float]] = {}
        # For /metrics: how often, and how long in all, a request waited for its budget.
        self.waits = 0
        self.waited_seconds = 0.0
        self._counts_lock = threading.Lock()

    def _window(self, endpoint: str) -> SlidingWindow | None:
        window = self._windows.get(PACED_WITH.get(endpoint, endpoint))
        return window if self.enabled else None

    def acquire(self, endpoint: str) -> float:
        """Blocks until a request to `endpoint` may go; returns the seconds waited."""
        return self.acquire_booking(endpoint)[0]

    def acquire_booking(self, endpoint: str) -> tuple[float, Booking | None]:
        """Like `acquire`; also returns the booking, for `unsent`."""
        window = self._window(endpoint)
        if window is None:
            return 0.0, None
        wait, at = window.book()
        if wait > 0:
            token = object()
            with self._counts_lock:
                self.waits += 1
                self.waited_seconds += wait
                self._waiting[token] = (PACED_WITH.get(endpoint, endpoint), at)
            try:
                self._sleep(wait)
            finally:
                with self._counts_lock:
                    del self._waiting[token]
        return wait, (window, at)

    def waiting(self) -> dict[str, tuple[int, float, float]]:
        """The endpoints whose requests sleep for their turn now: endpoint -> (how many, seconds
        until the first of them goes, seconds until the last of them goes)."""
        with self._counts_lock:
            booked = list(self._waiting.values())
        now = self._clock()
        out: dict[str, tuple[int, float, float]] = {}
        for endpoint, at in booked:
            count, first, last = out.get(endpoint, (0, at - now, at - now))
            out[endpoint] = (count + 1, max(0.0, min(first, at - now)), max(0.0, last, at - now))
        return out

    def try_acquire(self, endpoint: str) -> float:
        """0 when a request to `endpoint` may go now (and it is counted); else the seconds until
        one may, with nothing counted: the caller does other work meanwhile instead of sleeping."""
        return self.try_acquire_booking(endpoint)[0]

    def try_acquire_booking(self, endpoint: str) -> tuple[float, Booking | None]:
        """Like `try_acquire`; also returns the booking (None when nothing was booked)."""
        window = self._window(endpoint)
        if window is None:
            return 0.0, None
        wait, at = window.try_book()
        return wait, (window, at) if at is not None else None

    @staticmethod
    def unsent(booking: Booking | None) -> None:
        """The request booked never reached the server (it did not connect): it does not count."""
        if booking is not None:
            window, at = booking
            window.unbook(at)
